"""Image folders: list the images of a folder and load an image folder or image/mask folder pairs."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellseg.errors import InputError
from cellseg.images import SUPPORTED_SUFFIXES, _has_partial_alpha, check_image, read_image
from cellseg.masks import check_annotations, check_mask, read_mask

__all__ = ["by_stem", "list_images", "load_images", "load_pairs"]


def list_images(folder: str | os.PathLike) -> list[Path]:
    """List the image files (:data:`SUPPORTED_SUFFIXES`) of a folder, sorted by name.

    Hidden files (starting with '.') are skipped, e.g. temporary files of :func:`write_image`.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(f"{folder}: folder not found")
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES and not p.name.startswith(".")
    )
    if not files:
        raise InputError(f"{folder}: no images ({', '.join(SUPPORTED_SUFFIXES)}) in folder")
    return files


def by_stem(files: Sequence[Path], folder: str | os.PathLike) -> dict[str, Path]:
    """Map file stems to files; two files with one stem (``a.tif``, ``a.png``) are an :class:`InputError`
    naming both, because their outputs (labels ``a.tif``) or their masks would be confused."""
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            raise InputError(f"{folder}: two files with the same name '{p.stem}' ({out[p.stem].name}, {p.name}); "
                             "rename one of them")
        out[p.stem] = p
    return out


def load_images(folder: str | os.PathLike) -> tuple[list[str], list[np.ndarray]]:
    """Read and validate all images of a folder.

    Returns
    -------
    names : list of str
        File stems, sorted.
    images : list of ndarray
        ``YX``/``YXC`` images (see :func:`read_image`, :func:`check_image`).
    """
    files = list_images(folder)
    names = [p.stem for p in files]
    by_stem(files, Path(folder))
    images = [check_image(read_image(p), str(p)) for p in files]
    return names, images


def _check_channels(files: Sequence[Path], images: Sequence[np.ndarray], folder: Path) -> None:
    """All images of a training set need the same number of channels: name the odd one out (not the image
    after it, as a model built for the first image would)."""
    from collections import Counter

    counts = [1 if im.ndim == 2 else im.shape[-1] for im in images]
    if len(set(counts)) < 2:
        return
    common, n_common = Counter(counts).most_common(1)[0]
    odd = next(k for k, c in enumerate(counts) if c != common)
    example = next(f for f, c in zip(files, counts) if c == common)
    alpha = (" (a PNG whose alpha channel is not fully opaque, so it is read as one more channel: save it "
             "without transparency)") if _has_partial_alpha(files[odd]) else ""
    raise InputError(f"{files[odd]}: image has {counts[odd]} channel(s){alpha}, but {n_common} of the "
                     f"{len(files)} images in {folder} have {common} (e.g. {example.name}); all images need the "
                     "same channels")


def load_pairs(
    images_dir: str | os.PathLike, masks_dir: str | os.PathLike, label_components: bool = False
) -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """Load an image folder and its mask folder, matched by file stem.

    A mask may have another suffix than its image (``a.png`` / ``a.tif``), but not JPEG (lossy, see
    :func:`read_mask`). Masks without an image are ignored; images without a mask, shape mismatches,
    images whose channels differ from the others', invalid masks (see :func:`check_mask`) and a set of only
    empty masks raise InputError.

    Returns
    -------
    names, images, masks
        Sorted file stems, validated images and uint16/uint32 label masks (see :func:`check_mask`).
    """
    images_dir, masks_dir = Path(images_dir), Path(masks_dir)
    image_files = by_stem(list_images(images_dir), images_dir)
    mask_files = by_stem(list_images(masks_dir), masks_dir)
    missing = [stem for stem in image_files if stem not in mask_files]
    if missing:
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise InputError(f"{masks_dir}: no mask for {len(missing)} image(s): {shown}")
    names, images, masks = [], [], []
    for stem, ipath in image_files.items():
        mpath = mask_files[stem]
        img = check_image(read_image(ipath), str(ipath))
        msk = read_mask(mpath)
        if msk.ndim == 3 and msk.shape[-1] == 1:
            msk = msk[..., 0]
        if msk.ndim == 2 and msk.shape[:2] != img.shape[:2]:
            raise InputError(f"{mpath}: mask shape {msk.shape} does not match image shape {img.shape} ({ipath.name})")
        names.append(stem)
        images.append(img)
        masks.append(check_mask(msk, str(mpath), label_components=label_components))
    _check_channels(list(image_files.values()), images, images_dir)
    check_annotations(masks, str(masks_dir))
    return names, images, masks
