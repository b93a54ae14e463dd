"""Tests of cellseg.data: shared DSB 2018 data (skipped when absent) and the stardist sample."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cellseg import data
from cellseg.errors import InputError

HAVE_SHARED = data.shared_data_dir() is not None and (data.shared_data_dir() / "dsb2018").is_dir()
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason="shared DSB 2018 data (../shared/data/dsb2018) not present")


def test_stardist_sample_always_works():
    names, images, masks = data.stardist_sample(128)
    assert len(names) == len(images) == len(masks) == 16
    assert len(set(names)) == 16 and names[1] == "nuclei2d_y0000_x0128"
    for img, m in zip(images, masks, strict=True):
        assert img.shape == m.shape == (128, 128)
        assert m.dtype == np.uint16
        assert np.array_equal(np.unique(m), np.arange(m.max() + 1))
    assert sum(int(m.max()) for m in masks) > 50
    assert len(data.stardist_sample(256)[0]) == 4
    with pytest.raises(InputError, match="crop"):
        data.stardist_sample(1000)


def test_shared_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    assert data.shared_data_dir() == tmp_path.resolve()
    monkeypatch.setenv(data.ENV_VAR, "")
    assert data.shared_data_dir() is None
    assert data.dsb2018_fluorescence("train") is None
    fallback = data.real_annotated(n_train=3, n_test=5, seed=1)
    assert "stardist" in fallback["source"]
    assert len(fallback["train"][0]) == 3 and len(fallback["test"][0]) == 5
    assert not set(fallback["train"][0]) & set(fallback["test"][0])
    assert data.real_annotated(3, 5, seed=1)["test"][0] == fallback["test"][0]  # deterministic


def test_shared_data_dir_walks_up(monkeypatch, tmp_path):
    monkeypatch.delenv(data.ENV_VAR, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert data.shared_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_bad_split():
    with pytest.raises(InputError, match="split 'val'"):
        data.dsb2018_fluorescence("val")


@needs_shared
def test_dsb2018_fluorescence_subsets():
    train = data.dsb2018_fluorescence("train", max_images=3)
    names, images, masks = train
    assert names == sorted(names) and len(names) == 3
    for img, m in zip(images, masks, strict=True):
        assert img.ndim == 2 and img.dtype == np.uint8 and m.shape == img.shape and m.dtype == np.uint16
        assert m.max() >= 1
    test = data.dsb2018_fluorescence("test", max_images=2, min_size=500)
    assert not set(test[0]) & set(names)
    assert all(min(i.shape) >= 500 for i in test[1])
    split = Path(data.shared_data_dir()) / "dsb2018" / "fluorescence" / "split.csv"
    n_test = sum(1 for line in split.read_text().splitlines() if line.endswith(",test"))
    assert n_test == 81


@needs_shared
def test_real_annotated_prefers_dsb_256():
    d = data.real_annotated(n_train=2, n_test=3, seed=0)
    assert "DSB 2018" in d["source"]
    assert len(d["train"][0]) == 2 and len(d["test"][0]) == 3
    assert all(img.shape == (256, 256) for img in d["train"][1] + d["test"][1])
    assert d["test"][0] == data.real_annotated(n_train=2, n_test=3, seed=0)["test"][0]
