"""Never destroy a user's data (issue 12): outputs never replace what the command did not make, every output
location is checked before any work, predict is all or nothing, and wide label ids never merge.

Every refusal test snapshots the bystander files and asserts that they survive byte for byte.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from cellseg import files as cfiles
from cellseg.bundle import check_model_target
from cellseg.cli import main
from cellseg.errors import InputError
from cellseg.folders import load_pairs
from cellseg.images import read_image, write_image
from cellseg.masks import check_mask
from cellseg.models import load_model
from cli_helpers import TINY_ARCH, one_line_error, snapshot

TINY = ["--epochs", "1", "--steps-per-epoch", "2", "--patch-size", "32", "--no-optimize-thresholds"]


@pytest.fixture(scope="module")
def model_zip(tiny_copy, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.zip"
    tiny_copy.save(path)
    return path


@pytest.fixture()
def no_training(monkeypatch):
    """Fail the test if training or model loading starts (the checks must come first)."""
    import cellseg.models
    import cellseg.training

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the outputs were checked")

    monkeypatch.setattr(cellseg.training, "train", forbidden)
    monkeypatch.setattr(cellseg.training, "retrain", forbidden)
    monkeypatch.setattr(cellseg.models, "load_model", forbidden)


# -- 1. saving a model never replaces anything but a model ------------------------------------------

def _bystander_targets(tmp_path: Path, data: Path) -> dict[str, Path]:
    thesis = tmp_path / "thesis"
    thesis.mkdir()
    (thesis / "chapter1.tex").write_text("three years of work")
    (thesis / "figures").mkdir()
    (thesis / "figures" / "fig1.png").write_bytes(b"\x89PNG fake")
    model_plus = tmp_path / "model_plus_notes"
    (model_plus / "config.json").parent.mkdir()
    (model_plus / "config.json").write_text("{}")
    (model_plus / "weights_best.h5").write_bytes(b"weights")
    (model_plus / "notes.txt").write_text("my notes")
    afile = tmp_path / "notes.txt"
    afile.write_text("a file, not a model")
    azip = tmp_path / "photos.zip"
    import zipfile

    with zipfile.ZipFile(azip, "w") as zf:
        zf.writestr("holiday.jpg", b"jpeg")
    return {"folder": thesis, "images folder": data / "images", "dataset root": data,
            "model folder with other files": model_plus, "file": afile, "non-model zip": azip}


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("command", ["train", "retrain"])
def test_train_and_retrain_never_replace_a_non_model(command, overwrite, tmp_path, data, model_zip, capsys,
                                                     no_training):
    targets = _bystander_targets(tmp_path, data)
    before = snapshot(tmp_path)
    for kind, target in targets.items():
        args = ["-q", command, "--images", str(data / "images"), "--masks", str(data / "masks"),
                "--out", str(target), *TINY]
        if command == "retrain":
            args[2:2] = ["--model", str(model_zip)]
        else:
            args += TINY_ARCH
        if overwrite:
            args.append("--overwrite")
        assert main(args) == 2, kind
        message = one_line_error(capsys)
        assert str(target) in message, (kind, message)
    assert snapshot(tmp_path) == before
    assert not (tmp_path / ".notes.txt.old").exists()


def test_save_never_replaces_a_non_model(tmp_path, data, tiny_copy):
    targets = _bystander_targets(tmp_path, data)
    before = snapshot(tmp_path)
    for kind, target in targets.items():
        for overwrite in (False, True):
            with pytest.raises(InputError) as info:
                tiny_copy.save(target, overwrite=overwrite)
            assert str(target) in str(info.value) and "\n" not in str(info.value), kind
    with pytest.raises(InputError, match="is a file, not a folder"):
        tiny_copy.save(tmp_path / "notes.txt" / "model")
    assert snapshot(tmp_path) == before
    assert {p.name for p in tmp_path.iterdir()} == {"data", *(t.name for t in targets.values() if t.parent == tmp_path)}


def test_save_replaces_a_model_only_with_overwrite(tmp_path, tiny_copy):
    for name in ("m", "m.zip"):
        target = tmp_path / name
        assert tiny_copy.save(target) == target
        before = snapshot(tmp_path)
        with pytest.raises(InputError, match="already holds a model.*--overwrite"):
            tiny_copy.save(target)
        assert snapshot(tmp_path) == before
        copy = load_model(target)
        copy.thresholds = {"prob": 0.3, "nms": 0.2}
        copy.save(target, overwrite=True)
        assert load_model(target).thresholds == {"prob": 0.3, "nms": 0.2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m", "m.zip"]  # no temporary or .old left
    # an empty folder holds nothing to lose: accepted without overwrite
    (tmp_path / "empty").mkdir()
    tiny_copy.save(tmp_path / "empty")
    assert (tmp_path / "empty" / "config.json").is_file()


def test_failed_replacement_keeps_the_old_model(tmp_path, tiny_copy, monkeypatch):
    target = tmp_path / "m"
    tiny_copy.save(target)
    before = snapshot(tmp_path)

    def broken(folder):
        (folder / "config.json").write_text("half")
        raise OSError(28, "No space left on device")

    copy = load_model(target)
    monkeypatch.setattr(copy, "_write_files", broken)
    with pytest.raises(OSError):
        copy.save(target, overwrite=True)
    assert snapshot(tmp_path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_replacement_without_atomic_exchange_restores_on_failure(tmp_path, tiny_copy, monkeypatch):
    """Where the OS cannot swap two folders in one step, the old model is moved back if the new one fails."""
    target = tmp_path / "m"
    tiny_copy.save(target)
    before = snapshot(tmp_path)
    monkeypatch.setattr(cfiles, "_exchange", lambda a, b: False)
    real_rename = os.rename

    def rename(src, dst):
        if str(src).endswith(".tmp") and Path(dst) == target:
            raise OSError(5, "Input/output error")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(InputError, match="cannot write model"):
        tiny_copy.save(target, overwrite=True)
    assert snapshot(tmp_path) == before and [p.name for p in tmp_path.iterdir()] == ["m"]
    monkeypatch.setattr(os, "rename", real_rename)
    tiny_copy.save(target, overwrite=True)  # and the fallback path works
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_replacing_a_model_never_leaves_the_path_empty(tmp_path, tiny_copy):
    if cfiles._renameat2() is None:
        pytest.skip("no renameat2 here: the two-rename fallback has a short gap")
    target = tmp_path / "m"
    tiny_copy.save(target)
    stop, missing = threading.Event(), []

    def watch():
        while not stop.is_set():
            if not (target / "config.json").is_file():
                missing.append(1)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for _ in range(5):
            tiny_copy.save(target, overwrite=True)
    finally:
        stop.set()
        watcher.join()
    assert not missing
    assert [p.name for p in tmp_path.iterdir()] == ["m"]


def test_check_model_target(tmp_path, tiny_copy):
    assert check_model_target(tmp_path / "new" / "model") == tmp_path / "new" / "model"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    assert check_model_target(str(tmp_path / "m.zip")) == tmp_path / "m.zip"
    tiny_copy.save(tmp_path / "m")
    with pytest.raises(InputError, match="already holds a model"):
        check_model_target(tmp_path / "m")
    assert check_model_target(tmp_path / "m", overwrite=True) == tmp_path / "m"
    (tmp_path / "f").write_text("x")
    with pytest.raises(InputError, match="is a file, not a model folder"):
        check_model_target(tmp_path / "f", overwrite=True)
    with pytest.raises(InputError, match="is a file, not a folder"):
        check_model_target(tmp_path / "f" / "model")
    (tmp_path / "x.zip").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a model zip"):
        check_model_target(tmp_path / "x.zip", overwrite=True)
    (tmp_path / "dir.zip").mkdir()
    with pytest.raises(InputError, match="is not a file"):
        check_model_target(tmp_path / "dir.zip", overwrite=True)
    with pytest.raises(InputError, match="symbolic link"):
        (tmp_path / "link").symlink_to(tmp_path / "m")
        check_model_target(tmp_path / "link", overwrite=True)


def test_train_overwrite_replaces_a_model_in_place(tmp_path, data, tiny_copy, capsys):
    out = tmp_path / "model"
    tiny_copy.save(out)
    before = snapshot(tmp_path)
    args = ["-q", "train", "--images", str(data / "images"), "--masks", str(data / "masks"), "--out", str(out),
            *TINY_ARCH, *TINY]
    assert main(args) == 2 and "--overwrite" in one_line_error(capsys)
    assert snapshot(tmp_path) == before
    assert main([*args, "--overwrite", "--history", str(tmp_path / "h.csv")]) == 0
    assert json.loads((out / "cellseg.json").read_text())["provenance"]["steps_trained"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "h.csv", "model"]
    assert snapshot(data) == {k[len("data/"):]: v for k, v in before.items() if k.startswith("data/")}


# -- 2, 3, 6. predict: outputs outside the inputs, unique names, all or nothing -------------------

def _predict(model_zip, images, out, *extra):
    return main(["-q", "predict", "--model", str(model_zip), "--images", str(images), "--out", str(out),
                 "--tiled", "never", *extra])


def test_predict_refuses_an_output_that_is_in_or_around_an_input(tmp_path, data, model_zip, capsys, no_training):
    before = snapshot(tmp_path)
    cases = {data / "images": "is the images folder", data / "images" / "pred": "lies inside the images folder",
             data: "contains the images folder", model_zip.parent: "contains the model"}
    for out, relation in cases.items():
        for extra in ((), ("--overwrite",)):
            assert _predict(model_zip, data / "images", out, *extra) == 2
            message = one_line_error(capsys)
            assert relation in message and str(out) in message, message
    # the masks folder (or any used folder) is not an earlier prediction: refused even with --overwrite
    for extra in ((), ("--overwrite",)):
        assert _predict(model_zip, data / "images", data / "masks", *extra) == 2
        assert "not empty" in one_line_error(capsys)
    assert snapshot(tmp_path) == before
    assert not (data / "images" / "pred").exists()


def test_predict_same_stem_is_an_error_before_any_work(tmp_path, model_zip, capsys, no_training):
    img = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    write_image(tmp_path / "in" / "a.tif", img)
    write_image(tmp_path / "in" / "a.png", img)
    assert _predict(model_zip, tmp_path / "in", tmp_path / "out") == 2
    message = one_line_error(capsys)
    assert "a.tif" in message and "a.png" in message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in"]


def test_predict_is_all_or_nothing(tmp_path, data, model_zip, capsys):
    out = tmp_path / "pred"
    assert _predict(model_zip, data / "images", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["im0.tif", "im1.tif", "objects.csv"]
    first = snapshot(out)
    # a re-run into a used folder needs --overwrite
    assert _predict(model_zip, data / "images", out) == 2 and "--overwrite" in one_line_error(capsys)
    # an image that fails half way (one image per step with --n-tiles): nothing of the new run is kept
    broken = tmp_path / "broken"
    write_image(broken / "a.tif", read_image(data / "images" / "im0.tif"))
    (broken / "b.tif").write_bytes(b"II*\x00garbage")
    assert _predict(model_zip, broken, out, "--n-tiles", "1,1", "--overwrite") == 2
    assert "b.tif" in one_line_error(capsys)
    assert snapshot(out) == first
    assert _predict(model_zip, broken, tmp_path / "fresh", "--n-tiles", "1,1") == 2
    assert "b.tif" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "data", "pred"]
    # a successful re-run replaces the whole set: no stale labels beside the new objects.csv
    (broken / "b.tif").unlink()
    assert _predict(model_zip, broken, out, "--overwrite") == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "objects.csv"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken", "data", "pred"]
    # an existing empty folder is fine
    (tmp_path / "empty").mkdir()
    assert _predict(model_zip, broken, tmp_path / "empty") == 0
    assert (tmp_path / "empty" / "objects.csv").is_file()


# -- 4. wide label ids ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.uint64, np.int64])
def test_wide_labels_are_never_merged(dtype):
    mask = np.zeros((40, 40), dtype)
    ids = [1, 2**32 + 1, 2**40, 2**32 - 1, 2**33]
    for k, v in enumerate(ids):
        mask[2 + 7 * k: 6 + 7 * k, 2:8] = v
    out = check_mask(mask, "wide.tif")
    assert out.dtype in (np.uint16, np.uint32)
    assert len(np.unique(out)) == len(ids) + 1
    for v in ids:  # one output label per input label, and the other way round
        assert len(np.unique(out[mask == v])) == 1
    # the order of the ids is kept
    assert [out[mask == v][0] for v in sorted(ids)] == sorted(out[mask == v][0] for v in ids)


def test_evaluate_uint64_masks_against_themselves_is_perfect(tmp_path, data, capsys):
    for k, p in enumerate(sorted((data / "masks").iterdir())):
        lab = read_image(p).astype(np.uint64)
        lab[lab > 0] += np.uint64(2**32 + 7 * k)  # ids beyond uint32, which a cast would wrap onto 1, 2, ...
        lab[lab == lab.max()] = 3  # and one small id beside them
        write_image(tmp_path / "wide" / p.name, lab)
    assert read_image(tmp_path / "wide" / "im0.tif").dtype == np.uint64
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(tmp_path / "wide"), "--masks", str(tmp_path / "wide"),
                 "--json", str(scores)]) == 0
    assert json.loads(scores.read_text())["mean_ap"] == pytest.approx(1.0)
    _, _, masks = load_pairs(data / "images", tmp_path / "wide")  # the training path reads the same
    for m, p in zip(masks, sorted((tmp_path / "wide").iterdir())):
        assert len(np.unique(m)) == len(np.unique(read_image(p)))


# -- 5. every output location is checked before any work ---------------------------------------------

def test_bad_output_locations_fail_before_any_work(tmp_path, data, model_zip, capsys, no_training):
    afile = tmp_path / "afile"
    afile.write_text("x")
    before = snapshot(tmp_path)
    train = ["-q", "train", "--images", str(data / "images"), "--masks", str(data / "masks"), *TINY_ARCH, *TINY]
    retrain = ["-q", "retrain", "--model", str(model_zip), "--images", str(data / "images"), "--masks",
               str(data / "masks"), *TINY]
    evaluate = ["evaluate", "--pred", str(data / "masks"), "--masks", str(data / "masks")]
    cases = [
        ([*train, "--out", str(afile / "model")], "is a file, not a folder"),
        ([*retrain, "--out", str(afile / "m.zip")], "is a file, not a folder"),
        ([*train, "--out", str(tmp_path / "m"), "--history", str(afile / "h.csv")], "is a file, not a folder"),
        ([*train, "--out", str(tmp_path / "m"), "--history", str(tmp_path)], "is a folder"),
        ([*retrain, "--out", str(tmp_path / "m"), "--history", str(data / "masks" / "im0.tif")],
         "would overwrite a file of the masks folder"),
        ([*train, "--out", str(tmp_path / "m.zip"), "--history", str(tmp_path / "m.zip")], "same path"),
        ([*train, "--out", str(tmp_path / "m"), "--history", str(tmp_path / "m" / "h.csv")], "lies inside"),
        (["-q", "predict", "--model", str(model_zip), "--images", str(data / "images"), "--out",
          str(afile / "pred")], "is a file, not a folder"),
        (["-q", "predict", "--model", str(model_zip), "--images", str(data / "images"), "--out", str(afile)],
         "is not a folder"),
        ([*evaluate, "--json", str(afile / "s.json")], "is a file, not a folder"),
        ([*evaluate, "--csv", str(data)], "is a folder"),
        ([*evaluate, "--csv", str(data / "masks" / "im1.tif")], "would overwrite a file of the predictions"),
        ([*evaluate, "--json", str(tmp_path / "s"), "--csv", str(tmp_path / "s")], "same path"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        message = one_line_error(capsys)
        assert expected in message, (args, message)
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "data"]


def test_evaluate_same_stem_predictions_are_an_error(tmp_path, data, capsys):
    pred = tmp_path / "pred"
    for p in (data / "masks").iterdir():
        write_image(pred / p.name, read_image(p))
    write_image(pred / "im0.png", read_image(data / "masks" / "im0.tif").astype(np.uint8))
    assert main(["evaluate", "--pred", str(pred), "--masks", str(data / "masks")]) == 2
    message = one_line_error(capsys)
    assert "im0.tif" in message and "im0.png" in message


def test_sigterm_leaves_no_temporary_folder(tmp_path):
    script = textwrap.dedent("""
        import os, signal, sys, time
        from pathlib import Path
        from cellseg.files import atomic_folder
        from cellseg.cliutil import Terminated, _raise_terminated

        signal.signal(signal.SIGTERM, _raise_terminated)
        try:
            with atomic_folder(Path(sys.argv[1]) / "out", "output folder") as tmp:
                (tmp / "a.tif").write_bytes(b"half")
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(30)
        except Terminated:
            sys.exit(143)
    """)
    run = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 143, run.stderr
    assert list(tmp_path.iterdir()) == []
