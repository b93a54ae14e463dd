"""Tests of cellseg.images, masks, folders and render: reading/writing, TIFF bytes, normalisation, validation."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tifffile
from csbdeep.utils import normalize as csb_normalize
from PIL import Image

from cellseg.errors import InputError
from cellseg.folders import list_images, load_images, load_pairs
from cellseg.images import (
    check_image,
    decode_tiff,
    encode_png,
    encode_tiff,
    normalize,
    read_image,
    write_image,
)
from cellseg.masks import check_mask
from cellseg.render import overlay

DTYPES = [
    np.uint8,
    np.uint16,
    np.uint32,
    np.int8,
    np.int16,
    np.int32,
    np.int64,
    np.float16,
    np.float32,
    np.float64,
]
SHAPES = [(17, 23), (17, 23, 1), (17, 23, 2), (17, 23, 3), (17, 23, 4), (17, 23, 7)]


def _random(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    if np.issubdtype(dtype, np.floating):
        return (rng.standard_normal(shape) * 1000).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tiff_bytes_round_trip_is_bit_exact(shape, dtype):
    x = _random(shape, dtype)
    y = decode_tiff(encode_tiff(x))
    assert y.dtype == x.dtype and y.shape == x.shape
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8))  # bit-exact, NaN-safe


def test_tiff_bytes_bool_becomes_uint8():
    x = np.random.default_rng(1).random((10, 12)) > 0.5
    y = decode_tiff(encode_tiff(x))
    assert y.dtype == np.uint8 and np.array_equal(y, x.astype(np.uint8))


@pytest.mark.parametrize("shape", [(31, 29), (31, 29, 2), (31, 29, 3)])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32, np.int32])
@pytest.mark.parametrize("suffix", [".tif", ".tiff"])
def test_write_read_tiff_file_round_trip(tmp_path, shape, dtype, suffix):
    x = _random(shape, dtype, seed=3)
    path = write_image(tmp_path / "sub" / f"a{suffix}", x)
    assert path.is_file()
    y = read_image(path)
    assert y.dtype == x.dtype and y.shape == x.shape and np.array_equal(x, y)


@pytest.mark.parametrize("shape", [(20, 30), (20, 30, 3), (20, 30, 4)])
def test_write_read_png_round_trip_uint8(tmp_path, shape):
    x = _random(shape, np.uint8)
    if len(shape) == 3 and shape[-1] == 4:
        x[..., 3] = 7  # a real (not all-opaque) alpha is kept
    y = read_image(write_image(tmp_path / "a.png", x))
    assert y.dtype == np.uint8 and np.array_equal(x, y)


def test_png_uint16_and_encode_png(tmp_path):
    x = _random((20, 30), np.uint16)
    assert np.array_equal(read_image(write_image(tmp_path / "a.png", x)), x)
    data = encode_png(_random((8, 9, 3), np.uint8))
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(InputError, match="PNG"):
        encode_png(np.zeros((8, 9), np.float32))


def test_read_drops_opaque_alpha_and_moves_channels(tmp_path):
    rgb = _random((20, 30, 3), np.uint8)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(read_image(tmp_path / "rgba.png"), rgb)
    # planar CYX TIFF and singleton axes
    cyx = _random((3, 20, 30), np.uint16)
    tifffile.imwrite(tmp_path / "cyx.tif", cyx, photometric="minisblack")
    assert np.array_equal(read_image(tmp_path / "cyx.tif"), np.moveaxis(cyx, 0, -1))
    tifffile.imwrite(tmp_path / "s.tif", cyx[:1, None])
    assert read_image(tmp_path / "s.tif").shape == (20, 30)


def test_read_jpeg(tmp_path):
    Image.fromarray(_random((20, 30, 3), np.uint8)).save(tmp_path / "a.jpg")
    img = read_image(tmp_path / "a.jpg")
    assert img.shape == (20, 30, 3) and img.dtype == np.uint8


def test_read_missing_and_unsupported(tmp_path):
    with pytest.raises(InputError, match="nope.tif.*not found"):
        read_image(tmp_path / "nope.tif")
    (tmp_path / "a.bmp").write_bytes(b"x")
    with pytest.raises(InputError, match="a.bmp.*unsupported"):
        read_image(tmp_path / "a.bmp")


@pytest.mark.parametrize("compression", [None, "zlib"])
@pytest.mark.parametrize("keep", [0.5, 0.95, 0.01])
def test_truncated_tiff_file_and_bytes_raise_input_error(tmp_path, compression, keep):
    x = _random((64, 64), np.uint16)
    path = tmp_path / "ok.tif"
    tifffile.imwrite(path, x, compression=compression)
    data = path.read_bytes()
    bad = tmp_path / "broken.tif"
    bad.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(InputError, match="broken.tif"):
        read_image(bad)
    with pytest.raises(InputError, match="cell_7"):
        decode_tiff(data[: int(len(data) * keep)], name="cell_7")


def test_corrupt_and_empty_bytes(tmp_path):
    with pytest.raises(InputError, match="row 3.*empty"):
        decode_tiff(b"", name="row 3")
    with pytest.raises(InputError, match="row 4"):
        decode_tiff(b"II*\x00garbage" * 10, name="row 4")
    (tmp_path / "junk.png").write_bytes(b"not a png at all")
    with pytest.raises(InputError, match="junk.png"):
        read_image(tmp_path / "junk.png")
    png = encode_png(_random((64, 64), np.uint8))
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    with pytest.raises(InputError, match="cut.png"):
        read_image(tmp_path / "cut.png")


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path, monkeypatch):
    target = tmp_path / "out.tif"
    original = _random((10, 10), np.uint8)
    write_image(target, original)

    def fail(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(InputError, match="out.tif"):
        write_image(target, _random((10, 10), np.uint8, seed=9))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]  # no temp file left
    assert np.array_equal(read_image(target), original)  # old file untouched


def test_written_files_get_the_permissions_of_the_umask(tmp_path):
    # temporary files are private (0600); what is renamed into place must be readable as a plain write's is
    mask = os.umask(0o022)
    os.umask(mask)
    write_image(tmp_path / "a.tif", _random((10, 10), np.uint8))
    assert (tmp_path / "a.tif").stat().st_mode & 0o777 == 0o666 & ~mask


def test_write_creates_parents_and_unwritable_folder(tmp_path):
    p = write_image(tmp_path / "a" / "b" / "c.tif", np.zeros((4, 4), np.uint8))
    assert p.is_file() and os.listdir(p.parent) == ["c.tif"]
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InputError, match="afile"):
        write_image(tmp_path / "afile" / "x.tif", np.zeros((4, 4), np.uint8))
    with pytest.raises(InputError, match="bmp"):
        write_image(tmp_path / "x.bmp", np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("shape", [(40, 50), (40, 50, 3)])
@pytest.mark.parametrize("clip", [False, True])
def test_normalize_equals_csbdeep(shape, clip):
    x = _random(shape, np.uint16).astype(np.float64) * np.linspace(0.1, 1, shape[-1])
    ours = normalize(x, 2.0, 99.5, clip=clip)
    ref = csb_normalize(x, 2.0, 99.5, axis=(0, 1), clip=clip)
    assert ours.dtype == np.float32 and ours.shape == x.shape
    np.testing.assert_array_equal(ours, ref)
    np.testing.assert_array_equal(normalize(x), csb_normalize(x, 1.0, 99.8, axis=(0, 1)))
    if len(shape) == 3:  # per channel
        for c in range(3):
            np.testing.assert_allclose(ours[..., c], normalize(x[..., c], 2.0, 99.5, clip=clip), rtol=1e-6)


def test_check_image():
    img = np.zeros((8, 9), np.float32)
    assert check_image(img, "a") is img
    img[1, 2] = np.nan
    img[3, 3] = np.inf
    with pytest.raises(InputError, match="a.tif: image has 2 pixel"):
        check_image(img, "a.tif")
    with pytest.raises(InputError, match="empty"):
        check_image(np.zeros((0, 5)), "e")
    with pytest.raises(InputError, match="shape"):
        check_image(np.zeros((2, 3, 4, 5)), "z")
    with pytest.raises(InputError, match="channels"):
        check_image(np.zeros((8, 8, 17)), "c")
    with pytest.raises(InputError, match="numeric"):
        check_image(np.array([["a", "b"], ["c", "d"]]), "s")


def _blobs():
    m = np.zeros((30, 30), np.uint8)
    m[2:8, 2:8] = 1
    m[15:25, 15:25] = 1
    return m


def test_check_mask_binary_detection_and_label_components():
    binary = _blobs() * 255
    with pytest.raises(InputError, match=r"m.png: mask looks binary.*--label-components"):
        check_mask(binary, "m.png")
    with pytest.raises(InputError, match="binary"):
        check_mask(binary.astype(bool), "m.png")
    labels = check_mask(binary, "m.png", label_components=True)
    assert labels.dtype == np.uint16 and labels.max() == 2
    assert set(np.unique(labels[2:8, 2:8])) == {1} and set(np.unique(labels[15:25, 15:25])) == {2}
    # a single object, or proper instance labels, pass unchanged
    single = np.zeros((10, 10), np.uint8)
    single[2:5, 2:5] = 1
    assert np.array_equal(check_mask(single, "s"), single)
    inst = _blobs().astype(np.int32)
    inst[15:25, 15:25] = 2
    out = check_mask(inst, "i")
    assert out.dtype == np.uint16 and np.array_equal(out, inst)
    # touching instances stay separate with label_components
    touch = np.zeros((10, 10), np.uint16)
    touch[2:6, 2:5], touch[2:6, 5:8] = 3, 7
    out = check_mask(touch, "t", label_components=True)
    assert len(np.unique(out)) == 3 and out[3, 3] != out[3, 6]


def test_check_mask_errors_dtype_and_holes():
    with pytest.raises(InputError, match="f.tif: mask is not integer"):
        check_mask(np.zeros((5, 5), np.float32), "f.tif")
    with pytest.raises(InputError, match="negative"):
        check_mask(np.full((5, 5), -1, np.int16), "n")
    big = np.zeros((5, 5), np.int64)
    big[1, 1] = 70000
    assert check_mask(big, "b").dtype == np.uint32
    ring = np.zeros((9, 9), np.uint16)
    ring[2:7, 2:7] = 4
    ring[4, 4] = 0
    assert check_mask(ring, "r")[4, 4] == 4  # holes filled


def _make_pairs(tmp_path, n=3, mask_suffix=".png"):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i in range(n):
        write_image(tmp_path / "images" / f"im{i}.tif", _random((20, 24), np.uint16, seed=i))
        m = np.zeros((20, 24), np.uint8)
        m[3:9, 3:9] = 1
        m[12:18, 12:20] = 2
        write_image(tmp_path / "masks" / f"im{i}{mask_suffix}", m)
    return tmp_path / "images", tmp_path / "masks"


def test_list_and_load_images(tmp_path):
    with pytest.raises(InputError, match="folder not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(InputError, match="no images"):
        list_images(tmp_path)
    images_dir, _ = _make_pairs(tmp_path)
    (images_dir / "notes.txt").write_text("x")
    (images_dir / ".hidden.tif").write_bytes(b"")
    assert [p.name for p in list_images(images_dir)] == ["im0.tif", "im1.tif", "im2.tif"]
    names, images = load_images(images_dir)
    assert names == ["im0", "im1", "im2"] and images[1].shape == (20, 24)


def test_load_pairs(tmp_path):
    images_dir, masks_dir = _make_pairs(tmp_path)
    names, images, masks = load_pairs(images_dir, masks_dir)
    assert names == ["im0", "im1", "im2"]
    assert masks[0].dtype == np.uint16 and masks[0].max() == 2 and images[2].dtype == np.uint16


def test_load_pairs_missing_masks_and_shape_mismatch(tmp_path):
    images_dir, masks_dir = _make_pairs(tmp_path, n=8)
    for i in range(1, 8):
        (masks_dir / f"im{i}.png").unlink()
    with pytest.raises(InputError, match=r"no mask for 7 image\(s\): im1, im2, im3, im4, im5 and 2 more"):
        load_pairs(images_dir, masks_dir)
    for i in range(1, 8):
        (images_dir / f"im{i}.tif").unlink()
    write_image(masks_dir / "im0.png", np.zeros((21, 24), np.uint8))
    with pytest.raises(InputError, match=r"im0.png: mask shape \(21, 24\) does not match image shape \(20, 24\)"):
        load_pairs(images_dir, masks_dir)


def test_load_pairs_binary_masks(tmp_path):
    images_dir, masks_dir = _make_pairs(tmp_path, n=1)
    write_image(masks_dir / "im0.png", (_blobs()[:20, :24] * 255).astype(np.uint8))
    with pytest.raises(InputError, match="im0.png: mask looks binary"):
        load_pairs(images_dir, masks_dir)
    _, _, masks = load_pairs(images_dir, masks_dir, label_components=True)
    assert masks[0].max() == 2


def test_overlay():
    img = _random((40, 60), np.uint16)
    lbl = np.zeros((40, 60), np.uint16)
    lbl[5:15, 5:15], lbl[20:35, 30:50] = 1, 2
    out = overlay(img, lbl)
    assert out.shape == (40, 60, 3) and out.dtype == np.uint8
    edge1, edge2 = out[5, 10], out[20, 40]
    assert not np.array_equal(edge1, edge2)  # distinct colours
    assert out[5, 10].tolist() != [int(v) for v in out[0, 0]]
    small = overlay(_random((40, 60, 3), np.uint8), lbl, max_size=30)
    assert small.shape == (20, 30, 3)
    with pytest.raises(InputError, match="shape"):
        overlay(img, lbl[:10])
