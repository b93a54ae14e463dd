"""Input adaptation (issue 14): channels grey<->RGB, polarity, object scale, validation patches."""

from __future__ import annotations

import numpy as np
import pytest

from cellseg.adapt import (
    InputConfig,
    InputSpec,
    adapt_channels,
    check_scale,
    estimate_scale,
    image_background,
    match_channels,
    median_object_size,
    prepare_input,
    resize_mask,
)
from cellseg.config import TrainConfig
from cellseg.errors import InputError, ModelLoadError
from cellseg.models import from_bytes
from cellseg.prediction import predict
from cellseg.streaming import predict_large
from cellseg.trainingdata import split_patches


def _disc_mask(shape, centres, r):
    yy, xx = np.indices(shape)
    m = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        m[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = i
    return m


def test_match_channels_grey_rgb_and_refusals():
    x = np.random.default_rng(0).random((8, 9, 3), dtype=np.float32)
    grey = match_channels(x, 1)
    assert grey.shape == (8, 9, 1) and np.allclose(grey[..., 0], x.mean(-1))
    rgb = match_channels(grey, 3)
    assert rgb.shape == (8, 9, 3) and np.array_equal(rgb[..., 2], grey[..., 0])
    with pytest.raises(InputError, match=r"im: image has 2 channel\(s\) but the model expects 5"):
        match_channels(np.zeros((4, 4, 2), np.float32), 5, "im")


def test_background_and_inversion():
    dark = np.zeros((32, 32, 1), np.float32)
    dark[10:14, 10:14] = 1
    assert image_background(dark) == "dark" and image_background(1 - dark) == "bright"
    bright_raw = (255 - dark[..., 0] * 200).astype(np.uint8)  # dark object on a bright background
    x, s = prepare_input(bright_raw, 1, InputSpec("dark"))
    assert s == 1 and image_background(x) == "dark"  # inverted to the model's polarity
    x_no, _ = prepare_input(bright_raw, 1, InputSpec("dark"), invert="no")
    assert image_background(x_no) == "bright"
    with pytest.raises(InputError, match="invert='maybe' must be auto, yes or no"):
        InputConfig(invert="maybe")


def test_scale_bounds_name_the_setting():
    assert check_scale(0.5, (100, 100)) == 0.5
    with pytest.raises(InputError, match=r"scale=0.1 makes image \(100x100\) 10x10 pixels, smaller than the network"):
        check_scale(0.1, (100, 100))
    with pytest.raises(InputError, match=r"scale=20 makes image .* more than"):
        check_scale(20, (5000, 5000))
    with pytest.raises(InputError, match=r"scale=0(\.0)? must be in \[0.05, 20"):
        InputConfig(scale=0)
    with pytest.raises(InputError, match=r"scale=-1"):
        TrainConfig(scale=-1)


def test_zero_time_budget_and_bad_channels_mode_are_refused():
    with pytest.raises(InputError, match=r"minutes=0(\.0)? must be in \(0, 10080\]"):
        TrainConfig(minutes=0)
    with pytest.raises(InputError, match=r"channels='copy' must be auto, convert or adapt"):
        TrainConfig(channels="copy")


def test_estimate_scale_from_masks():
    small = [_disc_mask((128, 128), [(30, 30), (80, 80)], 5)]  # diameter ~10
    s, note = estimate_scale(InputSpec(object_size=20.0), small)
    assert s == pytest.approx(20 / median_object_size(small), rel=1e-3) and s > 1.8
    assert "objects of" in note
    assert estimate_scale(InputSpec(object_size=20.0), [_disc_mask((64, 64), [(30, 30)], 12)])[0] == 1.0  # ~1.2x
    assert estimate_scale(InputSpec(object_size=20.0, object_range=(8.0, 40.0)), small)[0] == 1.0  # in range
    big = [_disc_mask((200, 200), [(60, 60), (140, 140)], 30)]
    assert estimate_scale(InputSpec(object_size=20.0, object_range=(8.0, 40.0)), big)[0] == pytest.approx(
        20 / median_object_size(big), rel=1e-3)
    assert estimate_scale(InputSpec(), small)[0] == 1.0


def test_resize_mask_keeps_labels():
    m = _disc_mask((40, 60), [(20, 20), (20, 45)], 8)
    small = resize_mask(m, (20, 30))
    assert small.shape == (20, 30) and set(np.unique(small)) == {0, 1, 2}
    assert np.array_equal(resize_mask(small, (40, 60))[::2, ::2], small)


def test_split_patches_hold_back_one_patch_per_image():
    X = [np.zeros((256, 320), np.float32), np.zeros((100, 100), np.float32)]
    Y = [np.zeros((256, 320), np.int32), np.zeros((100, 100), np.int32)]
    Xt, Yt, Xv, Yv = split_patches(X, Y, (128, 128), seed=0)
    assert [v.shape for v in Xv] == [(128, 128)]  # the small image cannot spare a patch
    assert sorted(x.shape for x in Xt) == sorted([(128, 320), (128, 192), (100, 100)])
    assert sum(x.size for x in Xt) + sum(v.size for v in Xv) == 256 * 320 + 100 * 100  # nothing lost


def test_prediction_scale_gives_labels_at_the_original_size(tiny_copy):
    model = tiny_copy
    img = np.random.default_rng(1).random((96, 80)).astype(np.float32)
    for scale in (0.5, 2.0):
        labels, objects = predict(model, img, scale=scale, prob_thresh=0.0)
        assert labels.shape == (96, 80)
        if len(objects):
            assert objects["centroid_y"].max() < 96 and objects["centroid_x"].max() < 80
    tiled, _ = predict(model, img, scale=0.5, n_tiles=2, prob_thresh=0.0)  # stardist's network tiling
    assert tiled.shape == (96, 80)
    labels_large, _ = predict_large(model, img, tile_size=64, scale=0.5, prob_thresh=0.0)
    assert labels_large.shape == (96, 80)
    with pytest.raises(InputError, match="scale=0.1 makes"):
        predict(model, img, scale=0.1)


def test_rgb_image_into_grey_model_and_adapted_first_layer(tiny_copy):
    model = tiny_copy
    grey = (np.random.default_rng(2).random((64, 64)) * 255).astype(np.uint8)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    ref, _ = predict(model, grey, invert="no")
    converted, _ = predict(model, rgb, invert="no")
    assert np.array_equal(ref, converted)
    adapted = adapt_channels(model, 3)
    assert adapted.config.n_channel_in == 3 and model.config.n_channel_in == 1
    x = prepare_input(grey, 1, InputSpec(), invert="no")[0][np.newaxis]
    p1 = model.keras_model.predict_on_batch(x)[0]
    p3 = adapted.keras_model.predict_on_batch(np.repeat(x, 3, axis=-1))[0]
    assert np.allclose(p1, p3, atol=1e-4)  # equal channels: the same network output as before
    with pytest.raises(InputError, match="cannot be adapted to 5"):
        adapt_channels(model, 5)


def test_input_spec_travels_with_the_bundle(tiny_copy):
    model = tiny_copy.copy()
    model.input_spec = InputSpec("bright", 31.5, 0.5, (10.0, 40.0))
    again = from_bytes(model.to_bytes())
    assert again.input_spec == InputSpec("bright", 31.5, 0.5, (10.0, 40.0))
    assert again.summary()["input"] == {"background": "bright", "scale": 0.5, "object_size": 31.5,
                                        "object_range": [10.0, 40.0]}
    assert InputSpec.from_json(None) == InputSpec()
    with pytest.raises(InputError, match="input.background='grey'"):
        InputSpec.from_json({"background": "grey"})


def test_broken_input_entry_is_a_load_error(tiny_copy, tmp_path):
    import json
    import zipfile

    model = tiny_copy.copy()
    model.input_spec = InputSpec("dark", 20.0, 3.0)
    path = model.save(tmp_path / "m.zip")
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n) for n in z.namelist()}
    meta = json.loads(files["cellseg.json"])
    meta["input"]["scale"] = 0
    files["cellseg.json"] = json.dumps(meta).encode()
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(bad, "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    from cellseg.models import load_model

    with pytest.raises(ModelLoadError, match=r"cellseg.json: input.scale=0(\.0)? must be"):
        load_model(bad)


def test_streamed_rgb_is_not_inverted_when_its_background_matches(tiny_copy):
    """The streamed path decides inversion as the untiled one: a dark-background RGB image given to a
    grey model is converted, not inverted (a converted copy is not an inversion)."""
    from cellseg.adapt import needs_inversion
    from cellseg.streaming import _Inputs

    rng = np.random.default_rng(3)
    grey = (rng.random((64, 64)) * 60).astype(np.uint8)
    grey[20:30, 20:30] = 250
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    inputs = _Inputs(tiny_copy, rgb, 1.0, "auto")
    assert inputs.invert == "no" and not needs_inversion(prepare_input(rgb, 1, InputSpec(), invert="no")[0],
                                                         InputSpec())
    assert _Inputs(tiny_copy, 255 - rgb, 1.0, "auto").invert == "yes"
    ref, _ = predict(tiny_copy, rgb, prob_thresh=0.0)
    streamed, _ = predict_large(tiny_copy, rgb, tile_size=256, prob_thresh=0.0)
    assert np.array_equal(ref > 0, streamed > 0)
