"""Bad inputs (issue 12): every one is a one-line error before any work (``cellseg: error: ...``, status 2, no
traceback) or, where the data may be right, a warning that names the file (``cellseg: warning: ...``).

The sections follow docs/errors.md: report paths, run-workflow, numeric flags, simulate, messages that name the
right thing, wrong annotations, SIGTERM during training.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from cellseg import files as cfiles
from cellseg import simulate, simulate_folders
from cellseg.cli import build_parser, main
from cellseg.errors import InputError
from cellseg.files import available_memory
from cellseg.images import InputWarning, check_image, decode_tiff, read_image, write_image
from cellseg.masks import check_annotations, check_mask, read_mask
from cli_helpers import TINY_ARCH, one_line_error, snapshot

REPO = Path(__file__).resolve().parents[1]
CELLSEG = [sys.executable, "-m", "cellseg"]
TINY = ["--epochs", "1", "--steps-per-epoch", "1", "--patch-size", "32", "--no-optimize-thresholds"]


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("cellseg: warning:")]


def _forbidden(*args, **kwargs):
    raise AssertionError("work started before the inputs were checked")


@pytest.fixture()
def no_work(monkeypatch):
    """Fail the test if training or model loading starts (the checks must come first)."""
    import cellseg.models
    import cellseg.training

    monkeypatch.setattr(cellseg.training, "train", _forbidden)
    monkeypatch.setattr(cellseg.training, "retrain", _forbidden)
    monkeypatch.setattr(cellseg.models, "load_model", _forbidden)


@pytest.fixture()
def no_simulating(monkeypatch):
    """Fail the test if an image is simulated (memory and output checks come first)."""
    monkeypatch.setattr(simulate, "_draw_objects", _forbidden)


@pytest.fixture()
def private_tmp(tmp_path, monkeypatch) -> Path:
    """A private temporary folder for this process (``tempfile``) and its children (``TMPDIR``)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    return temp


@pytest.fixture()
def read_only(tmp_path):
    """A folder this process cannot write to (chmod for users; root needs the immutable attribute), or skip."""
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        ro.chmod(0o555)
        yield ro
        ro.chmod(0o755)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(ro)], capture_output=True).returncode:
        pytest.skip("no way to make a read-only folder as root here (chattr +i)")
    try:
        yield ro
    finally:
        subprocess.run(["chattr", "-i", str(ro)], capture_output=True)


# -- 1. report paths (--history, --json, --csv) ------------------------------------------------------

def test_report_paths_are_checked_before_any_work(tmp_path, data, read_only, capsys, no_work):
    afile = tmp_path / "afile"
    afile.write_text("x")
    before = snapshot(tmp_path)
    train = ["-q", "train", "--images", str(data / "images"), "--masks", str(data / "masks"), "--out",
             str(tmp_path / "m"), *TINY_ARCH, *TINY]
    evaluate = ["evaluate", "--pred", str(data / "masks"), "--masks", str(data / "masks")]
    cases = [
        ([*train, "--history", ""], "history file: the path is empty"),
        ([*train, "--history", str(tmp_path)], "is a folder; give a file name"),
        ([*train, "--history", str(read_only / "h.csv")], f"folder {read_only} is not writable"),
        ([*train, "--history", str(read_only / "sub" / "h.csv")], f"folder {read_only} is not writable"),
        ([*train, "--history", str(afile / "h.csv")], "is a file, not a folder"),
        ([*evaluate, "--json", ""], "--json file: the path is empty"),
        ([*evaluate, "--csv", ""], "--csv file: the path is empty"),
        ([*evaluate, "--json", str(read_only / "s.json")], f"folder {read_only} is not writable"),
        ([*evaluate, "--csv", str(afile / "sub" / "s.csv")], "is a file, not a folder"),
        ([*evaluate, "--csv", str(tmp_path)], "is a folder; give a file name"),
    ]
    if Path("/proc/self").is_dir():  # a missing parent that cannot be created
        cases += [([*train, "--history", "/proc/cellseg-nope/h.csv"], "cannot create files in /proc"),
                  ([*evaluate, "--json", "/proc/cellseg-nope/s.json"], "cannot create files in /proc")]
    for args, expected in cases:
        assert main(args) == 2, args
        message = one_line_error(capsys)
        assert expected in message, (args, message)
    assert snapshot(tmp_path) == before


# -- 2. run-workflow ------------------------------------------------------------------------------------

def _example(tmp_path: Path, name: str = "train_simulated") -> Path:
    dest = tmp_path / name
    shutil.copytree(REPO / "workflows" / name, dest)
    return dest


def _edit(wf_file: Path, old: str, new: str) -> None:
    text = wf_file.read_text()
    assert old in text
    wf_file.write_text(text.replace(old, new, 1))


def _bad_workflows(tmp_path: Path) -> list[tuple[Path, str]]:
    tmp_path.mkdir()
    cases = []
    p = tmp_path / "text.knwf"
    p.write_text("not a zip")
    cases.append((p, "text.knwf: not a KNIME workflow archive (a .knwf is a zip of the workflow folder; BadZip"))
    p = tmp_path / "empty.knwf"
    p.write_bytes(b"")
    cases.append((p, "empty.knwf: not a KNIME workflow archive (a .knwf is a zip of the workflow folder; it is empty)"))
    p = tmp_path / "cut.knwf"
    p.write_bytes((REPO / "workflows" / "train_simulated.knwf").read_bytes()[:300])
    cases.append((p, "cut.knwf: not a KNIME workflow archive"))
    p = tmp_path / "nothing.knwf"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("w/readme.txt", "hello")
    cases.append((p, "nothing.knwf: no workflow.knime in the archive"))
    p = tmp_path / "emptyzip.knwf"
    zipfile.ZipFile(p, "w").close()
    cases.append((p, "emptyzip.knwf: no workflow.knime in the archive"))
    p = tmp_path / "plain"
    p.mkdir()
    cases.append((p, "plain: not a KNIME workflow folder (no workflow.knime)"))
    cases.append((tmp_path / "missing.knwf", "missing.knwf: not found"))
    p = tmp_path / "image.tif"
    write_image(p, np.zeros((8, 8), np.uint8))
    cases.append((p, "image.tif: not a KNIME workflow"))
    w = _example(tmp_path / "garbage")
    (w / "workflow.knime").write_text("garbage")
    cases.append((w, "workflow.knime: not valid XML"))
    w = _example(tmp_path / "id_text")
    _edit(w / "workflow.knime", '<entry key="id" type="xint" value="1"/>', '<entry key="id" type="xint" value="one"/>')
    cases.append((w, "workflow.knime: node_1: 'id' has the value 'one', not a valid xint"))
    w = _example(tmp_path / "id_string")
    _edit(w / "workflow.knime", '<entry key="id" type="xint" value="1"/>', '<entry key="id" type="xstring" value="one"/>')
    cases.append((w, "workflow.knime: node_1: 'id' is 'one', expected an integer"))
    w = _example(tmp_path / "port_float")
    _edit(w / "workflow.knime", 'key="sourcePort" type="xint" value="1"', 'key="sourcePort" type="xint" value="1.5"')
    cases.append((w, "'sourcePort' has the value '1.5', not a valid xint"))
    w = _example(tmp_path / "id_null")
    _edit(w / "workflow.knime", '<entry key="sourceID" type="xint" value="1"/>',
          '<entry key="sourceID" type="xint" isnull="true" value=""/>')
    cases.append((w, "'sourceID' is None, expected an integer"))
    w = _example(tmp_path / "escape")
    _edit(w / "workflow.knime", 'value="Nuclei Simulator (#1)/settings.xml"', 'value="../../../etc/settings.xml"')
    cases.append((w, "node_settings_file: '../../../etc/settings.xml' points outside the workflow folder"))
    return cases


def test_run_workflow_bad_inputs_are_one_line_errors(tmp_path, private_tmp, capsys):
    cases = _bad_workflows(tmp_path / "in")
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases.append(("--out-file", f"output folder {afile} exists and is not a folder"))
    for path, expected in cases:
        if path == "--out-file":
            args = ["-q", "run-workflow", str(REPO / "workflows" / "train_simulated"), "--out", str(afile)]
        else:
            args = ["-q", "run-workflow", str(path), "--out", str(tmp_path / "out")]
        assert main(args) == 2, args
        message = one_line_error(capsys)
        assert expected in message, (args, message)
        assert list(private_tmp.iterdir()) == [], path  # no cellseg-workflow-* / cellseg-knwf-* left
        assert not (tmp_path / "out").exists()
    # --list of a broken archive: the same error
    assert main(["run-workflow", str(tmp_path / "in" / "text.knwf"), "--list"]) == 2
    assert "not a KNIME workflow archive" in one_line_error(capsys)


SMALL_SIM = ["--set", "#1.n_images=2", "--set", "#1.image_size=64", "--set", "#2.n_images=1",
             "--set", "#2.image_size=64", "--set", "#1.preview=false", "--set", "#2.preview=false"]


def test_run_workflow_failing_node_leaves_no_temporary_folder(tmp_path, private_tmp, capsys):
    knwf = REPO / "workflows" / "train_simulated.knwf"
    assert main(["-q", "run-workflow", str(knwf), "--out", str(tmp_path / "out"), *SMALL_SIM,
                 "--set", "#3.training.patch_size=4096"]) == 2
    err = capsys.readouterr().err.strip().splitlines()  # the runner's progress lines, then the error
    assert [line for line in err if "error" in line] == err[-1:] and err[-1].startswith("cellseg: error: "), err
    assert "node 'StarDist Learner' (#3): execute failed" in err[-1] and "patch size" in err[-1]
    assert list(private_tmp.iterdir()) == []


def test_run_workflow_sigterm_leaves_no_temporary_folder(tmp_path):
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    proc = subprocess.Popen([*CELLSEG, "-q", "run-workflow", str(REPO / "workflows" / "train_simulated"), "--out",
                             str(tmp_path / "out"), *SMALL_SIM, "--set", "#3.training.patch_size=64",
                             "--set", "#3.training.epochs=50", "--set", "#3.architecture.unet_n_depth=1",
                             "--set", "#3.architecture.unet_n_filter_base=4"],
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = ""
    while "[2/6]" not in seen:  # both simulators are done: the learner trains now
        line = proc.stderr.readline()
        assert line, seen
        seen += line
    time.sleep(3)
    assert any(p.name.startswith("cellseg-workflow-") for p in temp.iterdir())
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 143, err
    assert list(temp.iterdir()) == []


# -- 3. numeric flags --------------------------------------------------------------------------------

_REQUIRED = {
    "simulate": ["--out", "o"],
    "train": ["--images", "i", "--masks", "m", "--out", "o"],
    "retrain": ["--model", "x", "--images", "i", "--masks", "m", "--out", "o"],
    "predict": ["--model", "x", "--images", "i", "--out", "o"],
    "demo": [],
    "tl-eval": ["--out", "o"],
}

BAD_FLAGS = [
    ("simulate", "--n", "0"), ("simulate", "--n", "1.5"), ("simulate", "--size", "15"), ("simulate", "--seed", "-1"),
    ("simulate", "--seed", "4294967296"),
    ("train", "--n-rays", "2"), ("train", "--grid", "3"), ("train", "--grid", "0"), ("train", "--depth", "0"),
    ("train", "--depth", "7"), ("train", "--filters", "0"), ("train", "--epochs", "0"),
    ("train", "--steps-per-epoch", "-5"), ("train", "--learning-rate", "0"), ("train", "--learning-rate", "nan"),
    ("train", "--learning-rate", "1"), ("train", "--batch-size", "0"), ("train", "--patch-size", "0"),
    ("train", "--patch-size", "64,abc"), ("train", "--val-fraction", "1"), ("train", "--val-fraction", "-0.1"),
    ("train", "--seed", "-1"),
    ("retrain", "--freeze-encoder-epochs", "-1"), ("retrain", "--encoder-lr-factor", "1.5"),
    ("retrain", "--mix-fraction", "0"), ("retrain", "--mix-fraction", "inf"), ("retrain", "--seed", "-1"),
    ("retrain", "--epochs", "0"),
    ("predict", "--prob-thresh", "-0.1"), ("predict", "--prob-thresh", "inf"), ("predict", "--nms-thresh", "2"),
    ("predict", "--n-tiles", "0"), ("predict", "--tiled-above", "-1"), ("predict", "--tile-size", "0"),
    ("demo", "--n-sim", "0"), ("demo", "--pretrain-steps", "0"), ("demo", "--retrain-steps", "-1"),
    ("demo", "--n-train", "0"), ("demo", "--n-test", "0"), ("demo", "--seed", "-1"),
    ("tl-eval", "--sizes", "0"), ("tl-eval", "--sizes", ","), ("tl-eval", "--seeds", "1,-2"),
    ("tl-eval", "--steps", "0"), ("tl-eval", "--checkpoints", "0"), ("tl-eval", "--pretrain-steps", "0"),
    ("tl-eval", "--n-pretrain-images", "0"), ("tl-eval", "--n-test", "0"), ("tl-eval", "--image-size", "8"),
    ("tl-eval", "--target-ap", "0"), ("tl-eval", "--learning-rate", "-1"), ("tl-eval", "--filters", "0"),
    ("tl-eval", "--depth", "9"),
]


@pytest.mark.parametrize("command, flag, value", BAD_FLAGS)
def test_out_of_range_flags_are_refused_naming_the_flag(command, flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:  # parsing only: a flag that got through would start no work
        build_parser().parse_args([command, *_REQUIRED[command], flag, value])
    assert exit_info.value.code == 2
    message = one_line_error(capsys)
    assert message.startswith(f"cellseg: error: argument {flag}: expected "), message
    assert f"see 'cellseg {command} --help'" in message


def test_every_numeric_flag_has_bounds():
    """No subcommand flag is a bare int or float (which accepts -1, 0, nan, inf)."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, p in sub.choices.items():
        for action in p._actions:
            assert action.type not in (int, float), (name, action.option_strings)


def test_edge_values_are_accepted():
    parser = build_parser()
    args = parser.parse_args(["train", *_REQUIRED["train"], "--seed", "0", "--val-fraction", "0", "--grid", "1,2"])
    assert (args.seed, args.validation_fraction, args.grid) == (0, 0.0, (1, 2))
    args = parser.parse_args(["predict", *_REQUIRED["predict"], "--prob-thresh", "0", "--nms-thresh", "1",
                              "--tiled-above", "0"])
    assert (args.prob_thresh, args.nms_thresh, args.tiled_above) == (0.0, 1.0, 0)
    assert parser.parse_args(["simulate", "--out", "o", "--seed", str(2**32 - 1)]).seed == 2**32 - 1


def test_usage_errors_are_one_line_too(capsys):
    for argv in (["simulate"], ["frobnicate"], ["train", "--images", "i"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args(argv)
        assert exit_info.value.code == 2
        one_line_error(capsys)


# -- 4. simulate: memory and --prefix --------------------------------------------------------------

def test_simulate_checks_memory_before_allocating(tmp_path, monkeypatch, capsys, no_simulating):
    monkeypatch.setattr(cfiles, "available_memory", lambda: 2**30)
    assert main(["-q", "simulate", "--out", str(tmp_path / "s"), "--size", "60000"]) == 2
    message = one_line_error(capsys)
    assert "'size'=60000" in message and "60000x60000" in message and "GiB of memory" in message
    assert "only 1.0 GiB is available" in message
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(InputError, match=r"100 images of 4096x4096 pixels needs about .* fewer images"):
        simulate.simulate_dataset(100, 4096)
    with pytest.raises(InputError, match="'size'=20000"):
        simulate.simulate_image(20000)


def test_available_memory_is_known_on_linux():
    if not Path("/proc/meminfo").is_file():
        pytest.skip("no /proc/meminfo")
    avail = available_memory()
    assert isinstance(avail, int) and avail > 0


@pytest.mark.parametrize("prefix", ["../x", "/abs/x", "a/b", "..", ".hidden", "x\\y"])
def test_simulate_prefix_cannot_leave_the_output_folder(prefix, tmp_path, capsys, no_simulating):
    (tmp_path / "keep.txt").write_text("mine")
    before = snapshot(tmp_path)
    assert main(["-q", "simulate", "--out", str(tmp_path / "sim"), "--n", "1", "--size", "32",
                 "--prefix", prefix]) == 2
    assert f"prefix {prefix!r}" in one_line_error(capsys)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(InputError, match="prefix"):
        simulate_folders.write_dataset(tmp_path / "api", [np.zeros((16, 16), np.uint16)], [np.zeros((16, 16), np.uint16)],
                               prefix=prefix)


def test_simulate_never_overwrites_files(tmp_path, capsys):
    out = tmp_path / "sim"
    assert main(["-q", "simulate", "--out", str(out), "--n", "2", "--size", "32"]) == 0
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    assert main(["-q", "simulate", "--out", str(out), "--n", "2", "--size", "32", "--seed", "5"]) == 2
    message = one_line_error(capsys)
    assert "sim_0000.tif exists (4 of the 4 files to write exist already); refusing to overwrite" in message
    assert snapshot(out) == before
    # another prefix adds files next to the others, which stay as they are
    assert main(["-q", "simulate", "--out", str(out), "--n", "1", "--size", "32", "--prefix", "b"]) == 0
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert sorted(set(after) - set(before)) == ["images/b_0000.tif", "masks/b_0000.tif"]
    assert not [p for p in out.rglob(".*")]  # no temporary folder left
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(["-q", "simulate", "--out", str(afile), "--n", "1", "--size", "32"]) == 2
    assert "exists and is not a folder" in one_line_error(capsys)


def test_simulate_negative_seed_api():
    with pytest.raises(InputError, match="'seed'=-1"):
        simulate.simulate_dataset(1, 32, seed=-1)
    with pytest.raises(InputError, match="'seed'=-3"):
        simulate.simulate_image(32, seed=-3)


# -- 5. messages that name the right thing ------------------------------------------------------------

def test_semi_transparent_rgba_png_is_named_not_the_next_image(tmp_path, capsys, no_work):
    images, masks = tmp_path / "i", tmp_path / "m"
    for k, name in enumerate("abc"):
        img, lab = simulate.simulate_image(64, seed=k)
        grey = (img / img.max() * 255).astype(np.uint8)
        rgb = np.stack([grey] * 3, axis=-1)
        images.mkdir(exist_ok=True)
        if name == "a":
            Image.fromarray(np.concatenate([rgb, np.full((64, 64, 1), 128, np.uint8)], axis=-1), "RGBA").save(
                images / "a.png")
        else:
            Image.fromarray(rgb).save(images / f"{name}.png")
        write_image(masks / f"{name}.tif", lab)
    assert main(["-q", "train", "--images", str(images), "--masks", str(masks), "--out", str(tmp_path / "model"),
                 *TINY_ARCH, *TINY]) == 2
    message = one_line_error(capsys)
    assert f"error: {images / 'a.png'}: image has 4 channel(s)" in message
    assert "alpha channel is not fully opaque" in message and "(e.g. b.png)" in message


def test_corrupt_tiff_is_called_corrupt_not_empty(tmp_path, capfd):
    cases = {"header.tif": b"II*\x00\x08\x00\x00\x00", "offset.tif": b"II*\x00\xff\xff\x00\x00" + b"\x00" * 64,
             "noifd.tif": b"II*\x00\x00\x00\x00\x00", "zeroifd.tif": b"II*\x00\x08\x00\x00\x00" + b"\x00" * 6}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InputError) as info:
            read_image(tmp_path / name)
        assert "cannot read image, the file is truncated or corrupt" in str(info.value), str(info.value)
        assert "empty" not in str(info.value)
        with pytest.raises(InputError, match="truncated or corrupt"):
            decode_tiff(data, name)
    assert capfd.readouterr().err == ""  # tifffile's log messages end up in the error, not on stderr


def _tiffs(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    z = rng.integers(0, 255, (128, 24, 32), dtype=np.uint8)
    files = {}

    def put(name, arr, **kw):
        files[name] = tmp_path / f"{name}.tif"
        tifffile.imwrite(files[name], arr, **kw)

    put("z128_imagej", z, imagej=True, metadata={"axes": "ZYX"})
    put("z3_imagej", z[:3], imagej=True, metadata={"axes": "ZYX"})
    put("z3_ome", z[:3], ome=True, metadata={"axes": "ZYX"})
    put("t5_imagej", z[:5], imagej=True, metadata={"axes": "TYX"})
    put("zc_imagej", z[:6].reshape(3, 2, 24, 32), imagej=True, metadata={"axes": "ZCYX"})
    put("c3_imagej", z[:3], imagej=True, metadata={"axes": "CYX"})
    put("c3_ome", z[:3], ome=True, metadata={"axes": "CYX"})
    put("pages128", z, metadata=None)
    files["pages3"] = tmp_path / "pages3.tif"
    for plane in z[:3]:
        tifffile.imwrite(files["pages3"], plane, append=True, metadata=None)
    return files


def test_stacks_are_told_from_channels(tmp_path):
    files = _tiffs(tmp_path)
    expected_errors = {
        "z128_imagej": "a Z stack of 128 slices (axes ZYX, shape 128x24x32), not a 2D image",
        "z3_imagej": "a Z stack of 3 slices (axes ZYX, shape 3x24x32)",
        "z3_ome": "a Z stack of 3 slices (axes ZYX",
        "t5_imagej": "a time series of 5 time points (axes TYX",
        "zc_imagej": "a Z stack of 3 slices, 2 channels (axes ZCYX",
        "pages128": "a stack of 128 pages (axes IYX, shape 128x24x32) without metadata that says they are channels",
    }
    for name, expected in expected_errors.items():
        with pytest.raises(InputError) as info:
            read_image(files[name])
        assert str(info.value).startswith(f"{files[name]}: {expected}"), str(info.value)
        assert "channels (max" not in str(info.value)
    z3 = tifffile.imread(files["c3_imagej"])
    for name in ("c3_imagej", "c3_ome"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert np.array_equal(read_image(files[name]), np.moveaxis(z3, 0, -1))
    # three pages without metadata: channels, with a warning naming the file
    with pytest.warns(InputWarning, match=r"pages3.tif: 3 pages without metadata .* read as 3 channels"):
        assert read_image(files["pages3"]).shape == (24, 32, 3)
    # TIFF bytes (KNIME cells) and arrays
    with pytest.raises(InputError, match="cell: a Z stack of 3 slices"):
        decode_tiff(files["z3_imagej"].read_bytes(), "cell")
    with pytest.raises(InputError, match=r"32 channels \(max 16\) if channels are last, or a stack of 128 planes "
                                         r"of 24x32 \(Z slices or time points\?\)"):
        check_image(np.zeros((128, 24, 32), np.uint8), "array")


def test_cli_names_a_z_stack(tmp_path, data, capsys, no_work):
    stack = tmp_path / "stack"
    stack.mkdir()
    tifffile.imwrite(stack / "im0.tif", np.zeros((3, 64, 64), np.uint8), imagej=True, metadata={"axes": "ZYX"})
    assert main(["-q", "train", "--images", str(stack), "--masks", str(data / "masks"), "--out",
                 str(tmp_path / "m"), *TINY_ARCH, *TINY]) == 2
    assert f"{stack / 'im0.tif'}: a Z stack of 3 slices" in one_line_error(capsys)


# -- 6. wrong annotations --------------------------------------------------------------------------

def _labels(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    img, lab = simulate.simulate_image(256, seed=seed)
    return img, lab.astype(np.uint16)


def _isolated_pair(lab: np.ndarray) -> tuple[int, int]:
    """Two labels that touch neither each other, nor another label, nor the image border."""
    from scipy import ndimage as ndi

    ok = []
    for v, box in enumerate(ndi.find_objects(lab), 1):
        region = lab == v
        ring = ndi.binary_dilation(region, iterations=2) & ~region
        if box[0].start > 2 and box[1].start > 2 and box[0].stop < lab.shape[0] - 2 and box[1].stop < lab.shape[1] - 2 \
                and not lab[ring].any():
            ok.append(v)
    assert len(ok) >= 2
    return ok[0], ok[1]


def test_label_of_separate_pieces_is_a_warning_naming_file_and_label():
    _, lab = _labels()
    a, b = _isolated_pair(lab)
    two = lab.copy()
    two[lab == b] = a
    with pytest.warns(InputWarning, match=rf"two.tif: label {a} is made of 2 separate pieces \(\d+ \+ \d+ px\)"):
        out = check_mask(two, "two.tif")
    assert np.array_equal(out, two)  # kept as given
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_mask(two, "pred.tif", annotation=False)  # predictions: no warning
        check_mask(two, "two.tif", label_components=True)  # every piece gets its own id


def test_pieces_at_the_border_or_cut_by_a_neighbour_are_no_warning():
    lab = np.zeros((64, 64), np.uint16)
    lab[0:10, 0:6] = 1  # one object leaving and re-entering the image at the left border
    lab[20:30, 0:6] = 1
    lab[40:50, 20:40] = 2  # object 2 cut in two by object 3 drawn over it
    lab[40:50, 28:32] = 3
    lab[44:46, 10:15] = 4
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_mask(lab, "ok.tif")
    lab[2:5, 40:43] = 4  # a stray piece of label 4, away from it: warned
    with pytest.warns(InputWarning, match=r"label 4 is made of 2 separate pieces \(10 \+ 9 px\)"):
        check_mask(lab, "stray.tif")


def test_class_masks_and_intensity_images_are_errors():
    img, lab = _labels()
    classes = np.zeros_like(lab)
    rng = np.random.default_rng(0)
    for v in range(1, lab.max() + 1):
        classes[lab == v] = rng.integers(1, 4)
    with pytest.raises(InputError, match=r"cls.tif: does not look like instance labels: its 3 label value\(s\) mark "
                                         r"\d+ separate objects .* as in a class mask"):
        check_mask(classes, "cls.tif")
    check_mask(classes, "cls.tif", label_components=True)  # labelled by components, as asked
    merged = (lab + 1) // 2  # every id used for two objects
    with pytest.raises(InputError, match="does not look like instance labels"):
        check_mask(merged, "merged.tif")
    for lc in (False, True):
        with pytest.raises(InputError, match=r"img.tif: looks like an image of intensities, not instance labels"):
            check_mask(img, "img.tif", label_components=lc)
    smooth = np.round(np.clip(img.astype(float) / img.max() * 255, 0, 255)).astype(np.uint8)
    with pytest.raises(InputError, match="looks like an image of intensities"):
        check_mask(smooth, "smooth.png")


def test_simulated_masks_pass_and_their_images_do_not():
    images, masks = simulate.simulate_dataset(8, 128, preset="mixed", seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for k, (img, lab) in enumerate(zip(images, masks)):
            check_mask(lab, f"sim{k}")
            with pytest.raises(InputError, match="image of intensities"):
                check_mask(img, f"img{k}")


DSB = REPO.parent / "shared" / "data" / "dsb2018"


@pytest.mark.skipif(not DSB.is_dir(), reason="no shared DSB 2018 data")
@pytest.mark.parametrize("subset", ["fluorescence", "brightfield"])
def test_dsb2018_masks_pass_without_warnings_and_its_images_do_not(subset):
    masks = sorted((DSB / subset / "masks").glob("*.tif"))
    # every 8th mask, and the two with a label of two pieces (cut by the image border) that the README lists
    chosen = sorted(set(masks[::8]) | {m for m in masks if m.name.startswith(("f6863b83d75e", "ef3ef194e565"))})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for m in chosen:
            check_mask(read_mask(m), str(m))
    for m in chosen[:10]:
        img = read_image(DSB / subset / "images" / m.name)
        with pytest.raises(InputError, match="image of intensities"):
            check_mask(img if img.ndim == 2 else img[..., 0], m.name)


def test_jpeg_and_empty_masks_are_refused(tmp_path):
    _, lab = _labels()
    Image.fromarray(lab.astype(np.uint8)).save(tmp_path / "a.jpg", quality=100)
    with pytest.raises(InputError, match=r"a.jpg: a JPEG mask; JPEG compression is lossy"):
        read_mask(tmp_path / "a.jpg")
    check_annotations([lab, np.zeros_like(lab)], "masks")  # some empty masks are fine
    with pytest.raises(InputError, match=r"masks: all 2 mask\(s\) are empty \(only background 0\), nothing to learn"):
        check_annotations([np.zeros_like(lab)] * 2, "masks")


def test_cli_refuses_wrong_annotations_before_training(tmp_path, data, capsys, no_work):
    images, masks = data / "images", data / "masks"
    train = ["-q", "train", "--images", str(images), "--out", str(tmp_path / "m"), *TINY_ARCH, *TINY]
    jpeg, empty = tmp_path / "jpeg", tmp_path / "empty"
    for p in masks.iterdir():
        jpeg.mkdir(exist_ok=True)
        Image.fromarray(read_image(p).astype(np.uint8)).save(jpeg / f"{p.stem}.jpg")
        write_image(empty / p.name, np.zeros((64, 64), np.uint16))
    cases = [
        ([*train, "--masks", str(images)], f"{images / 'im0.tif'}: looks like an image of intensities"),
        ([*train, "--masks", str(jpeg)], f"{jpeg / 'im0.jpg'}: a JPEG mask"),
        ([*train, "--masks", str(empty)], f"{empty}: all 2 mask(s) are empty"),
        (["evaluate", "--pred", str(masks), "--masks", str(images)], "looks like an image of intensities"),
        (["evaluate", "--pred", str(masks), "--masks", str(jpeg)], "a JPEG mask"),
        (["evaluate", "--pred", str(jpeg), "--masks", str(masks)], "a JPEG mask"),
        (["evaluate", "--pred", str(masks), "--masks", str(empty)], "nothing to score against"),
    ]
    for args, expected in cases:
        assert main(args) == 2, args
        message = one_line_error(capsys)
        assert expected in message, (args, message)


def test_cli_warns_once_about_a_split_label_and_trains(tmp_path, capsys):
    img, lab = _labels()
    a, b = _isolated_pair(lab)
    two = lab.copy()
    two[lab == b] = a
    for name, mask in (("a", two), ("b", lab)):
        write_image(tmp_path / "i" / f"{name}.tif", img)
        write_image(tmp_path / "m" / f"{name}.tif", mask)
    assert main(["-q", "train", "--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"), "--out",
                 str(tmp_path / "model"), *TINY_ARCH, *TINY]) == 0
    found = warnings_of(capsys.readouterr().err)  # checked when read and again by train(): reported once
    assert len(found) == 1, found
    assert found[0].startswith(f"cellseg: warning: {tmp_path / 'm' / 'a.tif'}: label {a} is made of 2 separate "
                               "pieces"), found
    assert (tmp_path / "model").is_dir()


# -- 7. SIGTERM during training --------------------------------------------------------------------

@pytest.fixture(scope="module")
def old_model(tmp_path_factory) -> Path:
    from cellseg.config import ModelConfig
    from cellseg.models import CellsegModel

    path = tmp_path_factory.mktemp("old") / "model"
    CellsegModel.create(ModelConfig(n_rays=8, grid=(1, 1), unet_n_depth=1, unet_n_filter_base=4,
                                    patch_size=(32, 32), batch_size=2), seed=0, name="old").save(path)
    return path


def _terminate_training(cmd: list[str], cwd: Path, temp: Path) -> tuple[int, str]:
    proc = subprocess.Popen([*CELLSEG, *cmd], stderr=subprocess.PIPE, text=True, cwd=cwd,
                            env={**os.environ, "TMPDIR": str(temp)})
    seen = ""
    while "training:" not in seen:  # the progress bar of the training loop
        ch = proc.stderr.read(1)
        assert ch, seen
        seen += ch
    time.sleep(2)
    proc.send_signal(signal.SIGTERM)
    err = seen + proc.stderr.read()
    return proc.wait(timeout=120), err


@pytest.mark.parametrize("command", ["train", "retrain"])
def test_sigterm_during_training_keeps_the_previous_model(command, tmp_path, old_model, data):
    temp = tmp_path / "tmp"
    temp.mkdir()
    work = tmp_path / "work"
    shutil.copytree(old_model, work / "model")
    before = snapshot(work)
    long = ["--epochs", "100", "--steps-per-epoch", "50", "--patch-size", "32", "--no-optimize-thresholds"]
    args = [command, *(["--model", str(old_model)] if command == "retrain" else TINY_ARCH), "--images",
            str(data / "images"), "--masks", str(data / "masks"), *long]
    code, err = _terminate_training([*args, "--out", "model", "--overwrite"], work, temp)
    assert code == 143, err
    assert err.strip().splitlines()[-1] == "cellseg: terminated; outputs left as they were"
    assert snapshot(work) == before and sorted(p.name for p in work.iterdir()) == ["model"]
    code, err = _terminate_training([*args, "--out", "new.zip"], work, temp)
    assert code == 143, err
    assert sorted(p.name for p in work.iterdir()) == ["model"]  # nothing at --out, no temporary file
    assert list(temp.iterdir()) == []


def test_tensorflow_start_up_lines_do_not_reach_stderr():
    script = "from cellseg.cliutil import _quiet_tensorflow; _quiet_tensorflow(); import tensorflow; print('ok')"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok"
    assert run.stderr == "", run.stderr
