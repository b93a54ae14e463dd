"""Simulated data sets written as image/mask folder pairs (``images/<prefix>_0000.tif``, ``masks/...``),
all or nothing, one image in memory at a time."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cellseg.errors import InputError
from cellseg.simulate import Progress, _check_dataset_args, iter_dataset

__all__ = ["check_prefix", "dataset_names", "simulate_to_folder", "write_dataset"]


def check_prefix(prefix: object) -> str:
    """A file name prefix for :func:`write_dataset`: a plain name, so that every file stays in its folder
    (no ``/``, ``\\`` or ``..``), and not hidden (folders are read without hidden files)."""
    if not isinstance(prefix, str):
        raise InputError(f"prefix {prefix!r}: expected a string")
    seps = {"/", "\\", os.sep, *([os.altsep] if os.altsep else [])}
    if any(c in prefix for c in seps) or "\0" in prefix:
        raise InputError(f"prefix {prefix!r}: must be a plain file name prefix without '/' or '\\'; the files "
                         "are written into the images/ and masks/ folders of the output folder")
    if prefix.startswith("."):
        raise InputError(f"prefix {prefix!r}: must not start with '.' (hidden files, which are not read as images)")
    if len(prefix) > 200:
        raise InputError(f"prefix {prefix[:20]!r}...: too long ({len(prefix)} characters, at most 200)")
    return prefix


def dataset_names(n: int, prefix: str = "sim") -> list[str]:
    """File names of :func:`write_dataset`: ``<prefix>_0000.tif``, ..."""
    return [f"{check_prefix(prefix)}_{i:04d}.tif" for i in range(n)]


def _check_dataset_target(out: Path, names: Sequence[str], overwrite: bool) -> None:
    """Before any work: the dataset folders can be written and no file there would be replaced."""
    from cellseg.files import check_writable_location

    for d in (out, out / "images", out / "masks"):
        if os.path.lexists(d) and (d.is_symlink() or not d.is_dir()):
            raise InputError(f"{d} exists and is not a folder; choose a new output folder")
    if not overwrite:
        existing = [p for name in names for p in (out / "images" / name, out / "masks" / name) if os.path.lexists(p)]
        if existing:
            raise InputError(f"{existing[0]} exists ({len(existing)} of the {2 * len(names)} files to write "
                             "exist already); refusing to overwrite them: choose a new output folder or another "
                             "prefix")
    check_writable_location(out / "images", "dataset folder")


@contextlib.contextmanager
def _temporary_dataset(out: Path) -> Iterator[tuple[Path, bool]]:
    """A temporary folder for the new files: ``(folder, move)``. A missing or empty `out` is written whole
    and renamed into place (:func:`cellseg.files.atomic_folder`); in an existing folder the files are written
    to a hidden sibling first and moved in at the end (``move`` True). Removed on failure either way."""
    from cellseg.files import atomic_folder

    if not os.path.lexists(out) or not any(out.iterdir()):
        with atomic_folder(out, "dataset folder") as tmp:
            yield tmp, False
        return
    tmp = Path(tempfile.mkdtemp(prefix=".simulate.", suffix=".tmp", dir=out))
    try:
        yield tmp, True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write_pairs(out_dir: str | os.PathLike, pairs: Iterable[tuple[np.ndarray, np.ndarray]], names: Sequence[str],
                 overwrite: bool) -> tuple[Path, Path]:
    from cellseg.images import write_image

    out = Path(out_dir)
    _check_dataset_target(out, names, overwrite)
    with _temporary_dataset(out) as (tmp, move):
        for name, (img, lbl) in zip(names, pairs, strict=True):
            write_image(tmp / "images" / name, img)
            write_image(tmp / "masks" / name, lbl)
        if not names:
            (tmp / "images").mkdir()
            (tmp / "masks").mkdir()
        if move:  # all files are written: move them in (the folders are checked above)
            for sub in ("images", "masks"):
                (out / sub).mkdir(exist_ok=True)
                for name in names:
                    os.replace(tmp / sub / name, out / sub / name)
    return out / "images", out / "masks"


def write_dataset(
    out_dir: str | os.PathLike,
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    prefix: str = "sim",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write images and labels as ``out_dir/images/<prefix>_0000.tif`` and ``out_dir/masks/<same>``.

    The layout is the image/mask folder pair that :func:`cellseg.folders.load_pairs` and the CLI read.
    `prefix` is a plain name (:func:`check_prefix`), so nothing is written outside those folders.
    Existing files of the same names are an InputError unless `overwrite`; the set is written all or
    nothing (into a temporary folder first).

    Returns
    -------
    images_dir, masks_dir : Path
    """
    if len(images) != len(labels):
        raise InputError(f"{out_dir}: {len(images)} images but {len(labels)} label images")
    names = dataset_names(len(images), prefix)
    return _write_pairs(out_dir, zip(images, labels), names, overwrite)


def simulate_to_folder(
    out_dir: str | os.PathLike,
    n: int,
    size: int | tuple[int, int] = 256,
    preset: str = "low_noise",
    seed: int = 0,
    prefix: str = "sim",
    overwrite: bool = False,
    progress: Progress | None = None,
    **overrides,
) -> tuple[Path, Path]:
    """Simulate `n` images (as :func:`simulate_dataset`) straight into a dataset folder (as
    :func:`write_dataset`), one image in memory at a time. Everything is checked before the first image
    is made: the arguments, the output location (nothing is overwritten unless `overwrite`) and the memory
    for one image."""
    n, shape = _check_dataset_args(n, size, preset, seed, overrides)
    names = dataset_names(n, prefix)
    _check_dataset_target(Path(out_dir), names, overwrite)
    pairs = iter_dataset(n, shape, preset, seed, progress, **overrides)
    return _write_pairs(out_dir, pairs, names, overwrite)
