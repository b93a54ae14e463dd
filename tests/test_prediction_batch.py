"""predict / predict_batch / predict_many give stardist's predict_instances labels exactly (one segmentation step)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from cellseg.config import ModelConfig
from cellseg.errors import CancelledError, InputError
from cellseg.models import CellsegModel
from cellseg.prediction import predict, predict_batch, predict_many
from cellseg.segment import network_outputs, pad_for_network
from cellseg.simulate import simulate_image


def _omp_threads(n: int) -> None:
    """Set the OpenMP threads of stardist's C extension (its NMS spins badly on an oversubscribed CPU)."""
    import ctypes

    import stardist.lib.stardist2d  # noqa: F401  (loads libgomp)

    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libgomp" in line:
            ctypes.CDLL(line.split()[-1]).omp_set_num_threads(n)
            return


@pytest.fixture(scope="module")
def model() -> CellsegModel:
    """A tiny real network (seeded, untrained) with a probability threshold that gives a few dozen objects."""
    _omp_threads(1)
    m = CellsegModel.create(ModelConfig(n_rays=16, unet_n_depth=2, unet_n_filter_base=8, patch_size=(64, 64)),
                            seed=3)
    img = simulate_image((128, 128), seed=0)[0]
    from cellseg import images as cimages

    x, _ = pad_for_network(cimages.normalize(img)[..., None], m.config.divisor)
    prob, _ = network_outputs(m, x[None])
    m.thresholds = {"prob": float(np.quantile(prob, 0.97)), "nms": 0.3}
    yield m
    _omp_threads(os.cpu_count() or 1)


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    sizes = [(128, 128), (128, 128), (128, 128), (100, 90), (131, 77), (128, 128)]
    return [simulate_image(s, seed=i)[0] for i, s in enumerate(sizes)]


def test_batch_equals_one_at_a_time(model, images):
    expected = [predict(model, im) for im in images]
    assert sum(int(lab.max()) for lab, _ in expected) > 10  # there are objects to compare
    for network_batch in (1, 3):
        got = predict_batch(model, images, network_batch=network_batch, names=[f"im{i}" for i in range(6)])
        for (lab, obj), (lab_b, obj_b) in zip(expected, got):
            assert lab_b.dtype == lab.dtype
            if network_batch == 1:
                assert np.array_equal(lab, lab_b)
                assert obj.equals(obj_b)
            else:  # stacked images: float noise ~1e-7 may only flip exact ties; objects agree
                assert abs(int(lab.max()) - int(lab_b.max())) <= 1
    thr = predict_batch(model, images[:2], prob_thresh=0.99, nms_thresh=0.5)
    assert [int(lab.max()) for lab, _ in thr] == [int(predict(model, im, prob_thresh=0.99, nms_thresh=0.5)[0].max())
                                                  for im in images[:2]]


@pytest.mark.parametrize("n_tiles", [None, (2, 2)])
def test_predict_is_stardists_predict_instances(model, images, n_tiles):
    """The one segmentation step (network called directly, stardist's candidates, NMS and rendering) gives
    the labels and polygons of stardist's own pipeline, untiled and with stardist's network tiling."""
    import contextlib
    import io

    from cellseg import images as cimages

    thr = model.thresholds
    kwargs = {"n_tiles": n_tiles} if n_tiles else {}
    for im in images[:2] + images[3:5]:
        with contextlib.redirect_stdout(io.StringIO()):
            ref, details = model.stardist.predict_instances(cimages.normalize(im), prob_thresh=thr["prob"],
                                                            nms_thresh=thr["nms"], show_tile_progress=False, **kwargs)
        labels, objects = predict(model, im, n_tiles=n_tiles)
        assert labels.dtype == np.int32 and np.array_equal(labels, ref)
        assert np.allclose(objects["probability"], details["prob"][objects["label"] - 1])


def test_predict_many_batches_with_progress_and_cancel(model, images):
    expected = [predict(model, im)[0] for im in images]
    seen = []
    got = list(predict_many(model, images, batch_size=4, progress=lambda f, m: seen.append(f)))
    assert all(np.array_equal(a, b) for a, (b, _) in zip(expected, got))
    assert seen[-1] == pytest.approx(1.0) and len(seen) == len(images)
    polls = []

    def cancel() -> bool:
        polls.append(1)
        return len(polls) > 1  # cancel before the second batch

    it = predict_many(model, images, batch_size=2, should_cancel=cancel)
    assert len([next(it), next(it)]) == 2
    with pytest.raises(CancelledError):
        next(it)


def test_bad_input(model, images):
    with pytest.raises(InputError, match="im1"):
        predict_batch(model, [images[0], np.full((64, 64), np.nan)], names=["im0", "im1"])
    with pytest.raises(InputError, match="2 channel"):
        predict_batch(model, [np.zeros((64, 64, 2))])
    with pytest.raises(InputError, match="batch_size"):
        list(predict_many(model, images, batch_size=0))
