"""The command line end to end on tiny data, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from cellseg import images as cimages
from cellseg.cli import main

TINY = ["--epochs", "1", "--steps-per-epoch", "3", "--patch-size", "64", "--no-optimize-thresholds"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["-q", "simulate", "--out", str(out), "--n", "4", "--size", "96", "--preset", "low_noise",
                 "--seed", "1"]) == 0
    return out


def test_simulate_writes_pairs(sim):
    images = sorted(p.name for p in (sim / "images").iterdir())
    masks = sorted(p.name for p in (sim / "masks").iterdir())
    assert images == masks and len(images) == 4
    assert cimages.read_image(sim / "images" / images[0]).shape == (96, 96)


def test_train_retrain_predict_evaluate(sim, tmp_path, capsys):
    model = tmp_path / "model"
    assert main(["-q", "train", "--images", str(sim / "images"), "--masks", str(sim / "masks"), "--out", str(model),
                 "--n-rays", "16", "--depth", "2", "--filters", "8", "--history", str(tmp_path / "h.csv"), *TINY]) == 0
    assert (model / "weights_best.h5").is_file() and (model / "cellseg.json").is_file()
    assert len(pd.read_csv(tmp_path / "h.csv")) == 1
    retrained = tmp_path / "retrained.zip"
    assert main(["-q", "retrain", "--model", str(model), "--images", str(sim / "images"), "--masks",
                 str(sim / "masks"), "--out", str(retrained), *TINY]) == 0
    assert retrained.is_file()
    assert main(["info", str(retrained)]) == 0
    info = json.loads(capsys.readouterr().out.split("model saved to")[-1].split("\n", 1)[1])
    assert info["steps_trained"] == 6 and info["provenance"]["retrained_from"][0]["steps_trained"] == 3

    pred = tmp_path / "pred"
    assert main(["-q", "predict", "--model", str(retrained), "--images", str(sim / "images"), "--out", str(pred),
                 "--prob-thresh", "0.5"]) == 0
    names = sorted(p.stem for p in (sim / "images").iterdir())
    assert sorted(p.stem for p in pred.glob("*.tif")) == names
    objects = pd.read_csv(pred / "objects.csv")
    assert list(objects.columns[:3]) == ["image", "label", "centroid_y"] or objects.empty
    scores = tmp_path / "scores.json"
    assert main(["evaluate", "--pred", str(pred), "--masks", str(sim / "masks"), "--json", str(scores)]) == 0
    payload = json.loads(scores.read_text())
    assert len(payload["summary"]) == 10 and len(payload["per_image"]) == 40
    assert all(0 <= row["f1"] <= 1 for row in payload["summary"])
    # a perfect prediction scores 1 (evaluate the masks against themselves)
    assert main(["evaluate", "--pred", str(sim / "masks"), "--masks", str(sim / "masks"),
                 "--json", str(scores)]) == 0
    assert json.loads(scores.read_text())["mean_ap"] == pytest.approx(1.0)


def test_errors_are_one_line_and_name_the_file(sim, tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    first = sorted((sim / "masks").iterdir())[0]
    cimages.write_image(masks / first.name, cimages.read_image(first)[:50])
    code = main(["-q", "train", "--images", str(sim / "images"), "--masks", str(masks), "--out",
                 str(tmp_path / "m"), *TINY])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("cellseg: error:") and "no mask" in err[0]
    assert not (tmp_path / "m").exists()

    code = main(["predict", "--model", str(tmp_path / "nope"), "--images", str(sim / "images"), "--out",
                 str(tmp_path / "p")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "not found" in err[-1]

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x.tif").write_bytes(b"II*\x00garbage")
    code = main(["evaluate", "--pred", str(bad), "--masks", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and "x.tif" in err[-1]


def test_binary_masks_need_label_components(tmp_path, capsys):
    from cellseg import simulate

    img, lab = simulate.simulate_image(96, seed=3)
    cimages.write_image(tmp_path / "i" / "a.tif", img)
    cimages.write_image(tmp_path / "m" / "a.tif", (lab > 0).astype(np.uint8))
    args = ["-q", "train", "--images", str(tmp_path / "i"), "--masks", str(tmp_path / "m"), "--out",
            str(tmp_path / "model"), "--n-rays", "8", "--depth", "1", "--filters", "4", *TINY]
    assert main(args) == 2
    assert "--label-components" in capsys.readouterr().err
    assert main([*args, "--label-components"]) == 0


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "cellseg", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for command in ("simulate", "train", "retrain", "predict", "evaluate", "demo"):
        assert command in out.stdout


def test_retrain_adapts_rgb_and_scale_and_refuses_bad_settings(sim, tmp_path, capsys):
    """Issue 14: an RGB, bright-field, 2x larger version of the data retrains a grey model (converted,
    inverted, scale estimated and stored); bad settings are one-line errors naming the setting."""
    model = tmp_path / "model"
    assert main(["-q", "train", "--images", str(sim / "images"), "--masks", str(sim / "masks"), "--out", str(model),
                 "--n-rays", "16", "--depth", "2", "--filters", "8", *TINY]) == 0
    rgb, masks = tmp_path / "rgb" / "images", tmp_path / "rgb" / "masks"
    rgb.mkdir(parents=True)
    masks.mkdir()
    for p in sorted((sim / "images").iterdir()):
        img = cimages.read_image(p).astype(np.float32)
        big = np.kron(img, np.ones((2, 2), np.float32))
        bright = (255 * (1 - (big - big.min()) / (np.ptp(big) + 1e-9))).astype(np.uint8)  # dark nuclei
        cimages.write_image(rgb / p.name, np.repeat(bright[..., None], 3, axis=-1))
        mask = cimages.read_image(sim / "masks" / p.name)
        cimages.write_image(masks / p.name, np.kron(mask, np.ones((2, 2), mask.dtype)))
    capsys.readouterr()
    out = tmp_path / "rgb_model"
    assert main(["retrain", "--model", str(model), "--images", str(rgb), "--masks", str(masks), "--out", str(out),
                 *TINY, "--patience", "none"]) == 0
    printed = capsys.readouterr().out
    assert "images converted from 3 to 1 channel(s)" in printed and "scale 0.5" in printed
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_channel_in"] == 1 and info["input"]["scale"] == pytest.approx(0.5, abs=0.02)
    pred = tmp_path / "pred"
    assert main(["-q", "predict", "--model", str(out), "--images", str(rgb), "--out", str(pred)]) == 0
    name = sorted(rgb.iterdir())[0].name
    assert cimages.read_image(pred / name).shape == cimages.read_image(rgb / name).shape[:2]

    base = ["-q", "retrain", "--model", str(model), "--images", str(rgb), "--masks", str(masks)]
    for flags, message in ((["--minutes", "0"], "argument --minutes: expected a number in (0, 10080]"),
                           (["--scale", "0.01"], "argument --scale: expected a number in [0.05, 20]"),
                           (["--scale", "0.1"], "sim_0000: scale=0.1 makes the image (192x192) 19x19 pixels, "
                                                 "smaller than the patch size 64x64; use a larger scale"),
                           (["--channels", "copy"], "argument --channels: expected one of auto, convert or adapt")):
        try:
            code = main([*base, "--out", str(tmp_path / "never"), *TINY, *flags])
        except SystemExit as exit_info:  # argparse's errors
            code = exit_info.code
        assert code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], (flags, err)
        assert not (tmp_path / "never").exists()
