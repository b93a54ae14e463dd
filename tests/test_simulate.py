"""Tests of cellseg.simulate: label validity, determinism, noise presets and speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from scipy import ndimage as ndi

from cellseg.errors import InputError
from cellseg.folders import load_pairs
from cellseg.simconfig import MIXED_PRESETS, PRESETS, SimConfig
from cellseg.simulate import simulate_dataset, simulate_image
from cellseg.simulate_folders import write_dataset

ALL_PRESETS = [*PRESETS, "mixed"]


def _snr(image: np.ndarray, labels: np.ndarray) -> float:
    """(mean object - mean background) / background std, background = 3 px away from objects."""
    bg = ~ndi.binary_dilation(labels > 0, iterations=3)
    fg = ndi.binary_erosion(labels > 0, iterations=1)
    img = image.astype(np.float64)
    return float((img[fg].mean() - img[bg].mean()) / img[bg].std())


@pytest.mark.parametrize("preset", ALL_PRESETS)
def test_labels_contiguous_one_component_each(preset):
    images, labels = simulate_dataset(6, size=(128, 160), preset=preset, seed=5)
    for img, lbl in zip(images, labels, strict=True):
        assert img.shape == lbl.shape == (128, 160)
        assert img.dtype == np.uint16 and lbl.dtype == np.uint16
        n = int(lbl.max())
        assert n > 3
        assert np.array_equal(np.unique(lbl), np.arange(n + 1))  # contiguous 1..N
        for i, sl in enumerate(ndi.find_objects(lbl), start=1):
            assert ndi.label(lbl[sl] == i)[1] == 1  # one 4-connected component
        assert img.max() <= 2 ** PRESETS["low_noise"].bit_depth - 1


def test_objects_touch_or_keep_gap():
    _, lbl = simulate_image(256, seed=2, n_objects=(60, 60), cluster_fraction=0.9)
    # with touching allowed, some different labels are 4-neighbours
    a, b = lbl[:, :-1], lbl[:, 1:]
    assert np.any((a > 0) & (b > 0) & (a != b))
    _, lbl = simulate_image(256, seed=2, n_objects=(60, 60), cluster_fraction=0.9, touching=False, gap=2)
    for i in range(1, lbl.max() + 1):
        grown = ndi.binary_dilation(lbl == i, iterations=2)
        assert set(np.unique(lbl[grown])) <= {0, i}


def test_deterministic_by_seed():
    a = simulate_dataset(3, size=96, preset="mixed", seed=11)
    b = simulate_dataset(3, size=96, preset="mixed", seed=11)
    c = simulate_dataset(3, size=96, preset="mixed", seed=12)
    for x, y in zip(a[0] + a[1], b[0] + b[1], strict=True):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0][0], c[0][0])
    # image i does not depend on n
    d = simulate_dataset(1, size=96, preset="mixed", seed=11)
    assert np.array_equal(d[1][0], a[1][0])
    i1, l1 = simulate_image(96, seed=3)
    i2, l2 = simulate_image(96, seed=3)
    assert np.array_equal(i1, i2) and np.array_equal(l1, l2)


def test_presets_differ_in_noise_and_shape():
    snr = {p: np.mean([_snr(*simulate_image(128, p, seed=s)) for s in range(3)]) for p in PRESETS}
    assert snr["low_noise"] > 4 * snr["high_noise"]
    assert snr["granulocyte_low_noise"] > 4 * snr["granulocyte_high_noise"]
    assert snr["high_noise"] > 1.0  # still visible
    # lobed nuclei are less convex than round ones
    from skimage.measure import regionprops

    def solidity(preset):
        lbls = simulate_dataset(4, 128, preset, seed=1)[1]
        return np.median([r.solidity for lbl in lbls for r in regionprops(lbl)])

    assert solidity("granulocyte_low_noise") < solidity("low_noise") - 0.03
    assert set(MIXED_PRESETS) <= set(PRESETS)


def test_size_overrides_and_errors():
    img, lbl = simulate_image((64, 100), seed=0, photons=50.0, bit_depth=16)
    assert img.shape == (64, 100)
    with pytest.raises(InputError, match="preset 'nope'"):
        simulate_image(64, preset="nope")
    with pytest.raises(InputError, match="'radiuss'"):
        simulate_image(64, radiuss=(3, 4))
    with pytest.raises(InputError, match="'photons'"):
        simulate_image(64, photons=-1.0)
    with pytest.raises(InputError, match="'shape'"):
        simulate_image(64, shape="square")
    with pytest.raises(InputError, match="'radius'"):
        simulate_dataset(2, 64, radius=(9, 3))
    with pytest.raises(InputError, match="'size'"):
        simulate_image("big")
    with pytest.raises(InputError, match="'bit_depth'"):
        SimConfig(bit_depth=32).validate()


def test_progress_and_write_dataset(tmp_path):
    calls = []
    images, labels = simulate_dataset(3, 64, seed=0, progress=lambda f, m: calls.append(f))
    assert calls == pytest.approx([1 / 3, 2 / 3, 1.0])
    images_dir, masks_dir = write_dataset(tmp_path / "sim", images, labels, prefix="hl60")
    assert sorted(p.name for p in images_dir.iterdir()) == ["hl60_0000.tif", "hl60_0001.tif", "hl60_0002.tif"]
    names, imgs, masks = load_pairs(images_dir, masks_dir)
    assert names[0] == "hl60_0000"
    assert np.array_equal(imgs[1], images[1]) and np.array_equal(masks[2], labels[2])


def test_speed_at_least_10_images_per_second():
    simulate_image(256, seed=0)  # warm up
    n = 20
    t0 = time.perf_counter()
    simulate_dataset(n, 256, preset="mixed", seed=1)
    rate = n / (time.perf_counter() - t0)
    assert rate >= 10, f"{rate:.1f} images/s"
