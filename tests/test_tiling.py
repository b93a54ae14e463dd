"""Tile planning and merging (cellseg.tiling) and streamed prediction of large images (cellseg.streaming).

Most tests use a model whose network is replaced by a fast, deterministic stand-in (probability = the
smoothed image, distances = a constant radius), so that objects have realistic sizes and straddle tile
borders without training; the stardist post-processing, tiling and merging are the real ones.
"""

from __future__ import annotations

import os
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cellseg.config import ModelConfig
from cellseg.errors import CancelledError, InputError
from cellseg.metrics import score_image
from cellseg.models import CellsegModel
from cellseg.prediction import predict
from cellseg.segment import OBJECT_COLUMNS
from cellseg.simulate import simulate_image
from cellseg.streaming import predict_large
from cellseg.tiling import (
    Tile,
    TilingWarning,
    default_overlap,
    merge_labels,
    plan_tiles,
    split_image,
)

RADIUS = 9.0


def omp_threads(n: int) -> None:
    """Set the OpenMP threads of stardist's C extension (its NMS spins badly when the CPU is oversubscribed)."""
    import ctypes

    import stardist.lib.stardist2d  # noqa: F401  (loads libgomp)

    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libgomp" in line:
            ctypes.CDLL(line.split()[-1]).omp_set_num_threads(n)
            return


@pytest.fixture(scope="module", autouse=True)
def _single_thread_nms():
    omp_threads(1)
    yield
    omp_threads(os.cpu_count() or 1)


class _BlobNet:
    """Stand-in network (grid 2): prob > 0.5 only at bright local maxima of the smoothed input (few
    candidates, so NMS is fast), dist = RADIUS on every ray."""

    def __init__(self, n_rays: int) -> None:
        self.n_rays = n_rays

    def predict_on_batch(self, x: np.ndarray) -> list[np.ndarray]:
        from scipy.ndimage import gaussian_filter, maximum_filter

        x = np.asarray(x, np.float32)[:, ::2, ::2, 0]
        g = np.stack([gaussian_filter(im, 1.5) for im in x])
        peak = (g >= maximum_filter(g, size=(1, 7, 7))) & (g > 0.3)
        prob = np.where(peak, 0.5 + 0.5 * np.clip(g, 0, 1), 0)[..., None].astype(np.float32)
        dist = np.full(prob.shape[:3] + (self.n_rays,), RADIUS, np.float32)
        return [prob, dist]

    def predict(self, x: np.ndarray, **kwargs) -> list[np.ndarray]:
        return self.predict_on_batch(x)

    def get_weights(self) -> list[np.ndarray]:
        return []


@pytest.fixture(scope="module")
def blob_model() -> CellsegModel:
    model = CellsegModel.create(ModelConfig(n_rays=16, unet_n_depth=2, unet_n_filter_base=4, patch_size=(64, 64)))
    model.stardist.keras_model = _BlobNet(16)
    model.thresholds = {"prob": 0.5, "nms": 0.3}
    # the stand-in's reach (~4 sigma * grid; its impulse response is nil: a lone pixel is below 0.3)
    model.geometry = {"receptive_field": 16, "fingerprint": model.fingerprint()}
    return model


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return simulate_image((300, 260), seed=4, n_objects=(60, 70))[0]


def test_plan_tiles_cores_partition_the_image():
    tiles = plan_tiles((1030, 515), tile_size=256, overlap=20, divisor=8)
    cover = np.zeros((1030, 515), int)
    shapes = set()
    for t in tiles:
        cover[t.core_y0:t.core_y1, t.core_x0:t.core_x1] += 1
        assert t.y0 <= t.core_y0 and t.core_y1 <= t.y1 and t.x0 <= t.core_x0 and t.core_x1 <= t.x1
        assert t.y0 % 8 == 0 and t.x0 % 8 == 0
        assert t.core_y0 - t.y0 >= min(24, t.core_y0) and t.y1 - t.core_y1 >= min(24, 1030 - t.core_y1)
        shapes.add(t.shape)
    assert (cover == 1).all()
    # one network shape: per axis, only a last tile may be cut by the image edge
    assert len({s[0] for s in shapes}) <= 2 and len({s[1] for s in shapes}) <= 2
    assert [t.index for t in tiles] == list(range(len(tiles)))
    assert plan_tiles((50, 40), tile_size=1024)[0] == Tile(0, 0, 0, 50, 40, 0, 0, 50, 40)


def test_plan_tiles_shrinks_extents_to_what_covers_the_image():
    # two tiles per axis: extents of (2048 + 2 * 96) / 2 = 1120, cores meeting in the middle of the overlap
    tiles = plan_tiles((2048, 2048), tile_size=1024, overlap=96, divisor=8)
    assert len(tiles) == 4 and {t.shape for t in tiles} == {(1120, 1120)}
    assert [(t.y0, t.y1, t.core_y0, t.core_y1) for t in tiles[::2]] == [(0, 1120, 0, 1024), (928, 2048, 1024, 2048)]
    # a side up to tile_size + 2 * overlap is one tile; otherwise extents stay within that bound
    assert plan_tiles((1200, 1216), tile_size=1024, overlap=96, divisor=8)[0].shape == (1200, 1216)
    rng = np.random.default_rng(0)
    for size, tile, overlap, divisor in rng.integers([1, 1, 0, 1], [3000, 600, 100, 17], size=(300, 4)):
        ov = -(-overlap // divisor) * divisor
        spans = {(t.y0, t.y1, t.core_y0, t.core_y1) for t in plan_tiles((size, 1), tile, overlap, divisor)}
        cover = np.zeros(size, int)
        for y0, y1, c0, c1 in spans:
            cover[c0:c1] += 1
            assert y0 % divisor == 0 and y0 <= c0 < c1 <= y1 <= size
            assert c0 - y0 >= min(ov, c0) and y1 - c1 >= min(ov, size - c1)
            assert len(spans) == 1 or y1 - y0 <= -(-tile // divisor) * divisor + 2 * ov + divisor
        assert (cover == 1).all()


def test_split_image_views():
    img = np.arange(100 * 70).reshape(100, 70)
    parts = split_image(img, tile_size=32, overlap=8)
    for t, part in parts:
        assert np.array_equal(part, img[t.y0:t.y1, t.x0:t.x1])
    with pytest.raises(InputError):
        split_image(np.zeros((2, 3, 4, 5)))


def test_merge_labels_keeps_each_object_once():
    truth = np.zeros((120, 100), np.int32)
    yy, xx = np.mgrid[:120, :100]
    centres = [(30, 30), (30, 58), (62, 50), (90, 20), (100, 90), (5, 95)]
    for k, (cy, cx) in enumerate(centres, 1):
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = k
    parts = split_image(truth, tile_size=40, overlap=16)
    # per-tile labels as a per-tile segmenter would produce them: arbitrary ids, cut objects at the edges
    tile_labels = [np.where(p > 0, p * 7 + t.index, 0) for t, p in parts]
    merged = merge_labels(truth.shape, [t for t, _ in parts], tile_labels)
    ids = np.unique(merged)
    assert list(ids) == list(range(len(centres) + 1))  # unique, contiguous
    s = score_image(truth, merged, thresholds=[0.99])
    assert int(s["tp"].iloc[0]) == len(centres) and int(s["fp"].iloc[0]) == 0
    with pytest.raises(InputError, match="tile 0"):
        merge_labels(truth.shape, [parts[0][0]], [np.zeros((3, 3), int)])


def test_tiled_matches_untiled_and_objects_come_out_once(blob_model, image):
    ref, _ = predict(blob_model, image)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TilingWarning)
        labels, objects = predict_large(blob_model, image, tile_size=64, overlap=32)
    assert labels.shape == image.shape
    s = score_image(ref, labels, thresholds=[0.5])
    assert float(s["f1"].iloc[0]) >= 0.95
    assert ref.max() > 30
    # straddling objects: no duplicates (no two objects overlapping much), labels unique and in the table
    tiles = plan_tiles(image.shape, 64, 32, blob_model.config.divisor)
    border_ids = set()
    for t in tiles[1:]:
        border_ids |= set(np.unique(labels[t.core_y0, :])) | set(np.unique(labels[:, t.core_x0]))
    assert len(border_ids - {0}) >= 5
    assert list(objects.columns) == OBJECT_COLUMNS
    assert objects["label"].is_unique
    present = set(np.unique(labels)) - {0}
    assert present == set(objects["label"])
    # areas and centroids, accumulated block by block, are those of the label image
    lab = objects["label"].to_numpy()
    assert np.array_equal(objects["area"].to_numpy(), np.bincount(labels.ravel())[lab])
    yy, xx = np.indices(labels.shape)
    sum_y = np.bincount(labels.ravel(), weights=yy.ravel())[lab]
    assert np.allclose(objects["centroid_y"].to_numpy(), sum_y / objects["area"].to_numpy())
    polys = objects["polygon"]
    assert polys.str.startswith("POLYGON").all()
    cy = objects["centroid_y"].to_numpy()
    cx = objects["centroid_x"].to_numpy()
    d = np.hypot(cy[:, None] - cy[None], cx[:, None] - cx[None]) + np.eye(len(cy)) * 1e9
    assert d.min() > 2.0  # no object found twice
    # a whole-image tile gives exactly the untiled labels
    whole, _ = predict_large(blob_model, image, tile_size=1024)
    assert np.array_equal(whole, ref)


def test_tiff_stream_writes_tiled_labels(blob_model, image, tmp_path):
    src = tmp_path / "in.tif"
    tifffile.imwrite(src, image, tile=(64, 64), compression="zlib")  # not memory-mappable: segment reads
    out, objects = predict_large(blob_model, src, tmp_path / "out" / "labels.tif", tile_size=96, overlap=32)
    expected, expected_objects = predict_large(blob_model, image, tile_size=96, overlap=32)
    with tifffile.TiffFile(out) as tif:
        assert tif.pages.first.is_tiled
        assert tif.pages.first.dtype == np.uint32
        assert np.array_equal(tif.asarray(), expected)
    assert np.allclose(objects["centroid_y"], expected_objects["centroid_y"])
    assert list(os.listdir(out.parent)) == ["labels.tif"]


def test_bad_input(blob_model, image, tmp_path):
    with pytest.raises(InputError, match="missing.tif"):
        predict_large(blob_model, tmp_path / "missing.tif", tmp_path / "o.tif")
    full = tmp_path / "full.tif"
    tifffile.imwrite(full, image)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.tif.*truncated"):
        predict_large(blob_model, cut, tmp_path / "o.tif")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if not os.access(locked, os.W_OK):  # root ignores permissions
            with pytest.raises(InputError, match="not writable"):
                predict_large(blob_model, full, locked / "o.tif")
    finally:
        locked.chmod(0o700)
    with pytest.warns(TilingWarning, match="set tile_size"):
        predict_large(blob_model, image[:64, :64], tile_size=8, overlap=32)
    with pytest.warns(TilingWarning, match="set overlap"):
        predict_large(blob_model, image[:100, :100], tile_size=48, overlap=4)
    odd, _ = predict_large(blob_model, image[:131, :77], tile_size=40, overlap=32)  # not a multiple of the grid
    assert odd.shape == (131, 77)


def test_cancel_leaves_no_file(blob_model, image, tmp_path):
    calls = []

    def cancel() -> bool:
        calls.append(1)
        return len(calls) > 3

    out = tmp_path / "labels.tif"
    with pytest.raises(CancelledError):
        predict_large(blob_model, image, out, tile_size=64, overlap=32, should_cancel=cancel)
    assert list(tmp_path.iterdir()) == []


def test_bounded_memory(blob_model, tmp_path):
    """A 2048² image streamed with 256² tiles: numpy memory stays far below one full-image float copy."""
    base = simulate_image((512, 512), seed=5)[0]
    big = np.tile(base, (4, 4))
    src = tmp_path / "big.tif"
    tifffile.imwrite(src, big)  # uncompressed: memory-mapped
    del big
    full_float = 2048 * 2048 * 4  # 16.8 MB: the normalised image alone, untiled (labels: as much again)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        _, objects = predict_large(blob_model, src, tmp_path / "labels.tif", tile_size=256, overlap=32)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(objects) > 1000
    # what is held: one tile, one output block and the normalisation sample (<= SAMPLE_PIXELS), all
    # independent of the image size
    assert peak < full_float / 3, f"peak traced memory {peak / 1e6:.1f} MB"



def _proc_status_bytes(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux /proc/self/clear_refs")
def test_rss_growth_is_flat_in_image_size(blob_model, tmp_path):
    """Peak resident memory (VmHWM, reset before each run) grows by far less than one float copy of the
    image, and about as much for a 4096² image as for a 1024² one."""
    base = simulate_image((512, 512), seed=5, n_objects=(60, 70))[0]

    def growth(side: int) -> tuple[int, int]:
        src = tmp_path / f"im{side}.tif"
        tifffile.imwrite(src, np.tile(base, (side // 512, side // 512)))
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        before = _proc_status_bytes("VmRSS")
        _, objects = predict_large(blob_model, src, tmp_path / "labels.tif", tile_size=256, overlap=32)
        return _proc_status_bytes("VmHWM") - before, len(objects)

    growth(1024)  # warm-up: imports, first allocations
    small, n_small = growth(1024)
    big, n_big = growth(4096)
    assert n_big > 10 * n_small > 0
    full_float = 4096 * 4096 * 4  # 67 MB: the normalised image alone, untiled (labels: as much again)
    assert big < full_float / 2, f"RSS grew by {big / 1e6:.1f} MB for 4096²"
    assert big < small + 24e6, f"RSS growth {small / 1e6:.1f} MB at 1024² vs {big / 1e6:.1f} MB at 4096²"

def test_default_overlap_and_cli_predictor(blob_model, tmp_path):
    from cellseg.cli import _large_image_predictor

    assert default_overlap(blob_model) % blob_model.config.divisor == 0
    assert default_overlap(blob_model) >= 16

    class Args:
        tiled, tiled_above, tile_size, prob_thresh, nms_thresh, quiet = "auto", 100 * 100, 64, None, None, True
        scale, invert = None, "auto"

    small, large = tmp_path / "small.tif", tmp_path / "large.tif"
    tifffile.imwrite(small, simulate_image((64, 64), seed=1)[0])
    tifffile.imwrite(large, simulate_image((128, 128), seed=1)[0])
    pred = _large_image_predictor(Args(), blob_model)
    assert pred is not None and not pred.wants(small) and pred.wants(large)
    objects = pred.run(large, tmp_path / "out" / "large.tif")
    assert list(objects.columns) == OBJECT_COLUMNS and (tmp_path / "out" / "large.tif").is_file()
    Args.tiled = "never"
    assert _large_image_predictor(Args(), blob_model) is None
    Args.tiled = "always"
    assert _large_image_predictor(Args(), blob_model).wants(Path(small))


def test_receptive_field_is_measured_once_and_saved_with_the_model(tiny_model_bytes, tmp_path):
    import contextlib
    import io

    from cellseg.models import from_bytes, load_model
    from cellseg.tiling import receptive_field

    model = from_bytes(tiny_model_bytes)
    with contextlib.redirect_stdout(io.StringIO()):
        expected = int(max(max(r) for r in model.stardist._compute_receptive_field()))
    assert receptive_field(model) == expected
    assert model.geometry == {"receptive_field": expected, "fingerprint": model.fingerprint()}
    model.save(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert again.geometry == model.geometry
    # a stale record (weights changed since it was measured) is measured anew
    again.geometry["receptive_field"] = 1
    assert receptive_field(again) == 1
    weights = again.keras_model.get_weights()
    again.keras_model.set_weights([w * 1.01 for w in weights])
    assert receptive_field(again) > 1 and again.geometry["fingerprint"] == again.fingerprint()
