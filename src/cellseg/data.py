"""Sample datasets with instance annotations, for demos, tests and benchmarks.

Real data comes from ``shared/data/dsb2018`` (DSB 2018 stage1_train, community-fixed, CC0) when that
folder exists next to the repository; otherwise the annotated nuclei sample bundled inside the stardist
wheel is used, which needs no download.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from cellseg.errors import InputError

__all__ = ["dsb2018_fluorescence", "real_annotated", "shared_data_dir", "stardist_sample"]

#: Environment variable overriding where the shared data folder is ("" disables it).
ENV_VAR = "CELLSEG_SHARED_DATA"

Dataset = tuple[list[str], list[np.ndarray], list[np.ndarray]]


def shared_data_dir() -> Path | None:
    """Locate the shared data folder, or None when there is none.

    ``$CELLSEG_SHARED_DATA`` wins when set (an empty value or a missing folder means none). Otherwise the
    first existing ``<ancestor>/../shared/data`` or ``<ancestor>/shared/data`` walking up from the current
    working directory, then from this file, because the repository is cloned next to ``shared/``.
    """
    env = os.environ.get(ENV_VAR)
    if env is not None:
        path = Path(env).expanduser()
        return path.resolve() if env and path.is_dir() else None
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for anc in (start, *start.parents):
            for cand in (anc.parent / "shared" / "data", anc / "shared" / "data"):
                if cand.is_dir():
                    return cand.resolve()
    return None


def _dsb_root() -> Path | None:
    base = shared_data_dir()
    if base is None:
        return None
    root = base / "dsb2018" / "fluorescence"
    return root if (root / "split.csv").is_file() and (root / "images").is_dir() else None


def _dsb_table(root: Path):
    """split.csv joined with manifest.csv (height, width), sorted by file name."""
    import pandas as pd

    table = pd.read_csv(root / "split.csv")
    manifest = root / "manifest.csv"
    if manifest.is_file():
        table = table.merge(pd.read_csv(manifest)[["file", "height", "width"]], on="file", how="left")
    return table.sort_values("file").reset_index(drop=True)


def _read_dsb(root: Path, files: list[str]) -> Dataset:
    from cellseg.images import read_image

    names = [Path(f).stem for f in files]
    images = [read_image(root / "images" / f) for f in files]
    masks = [read_image(root / "masks" / f) for f in files]
    return names, images, masks


def dsb2018_fluorescence(
    split: str = "train", max_images: int | None = None, min_size: int | None = None
) -> Dataset | None:
    """DSB 2018 fluorescence images (uint8 ``YX``) and uint16 instance masks, or None if absent.

    Parameters
    ----------
    split : {'train', 'test', 'all'}
        Subset from ``split.csv`` (460 train / 81 test images).
    max_images : int, optional
        Keep only the first `max_images` images (sorted by name).
    min_size : int, optional
        Keep only images whose height and width are both at least `min_size`, e.g. the training patch
        size.

    Returns
    -------
    names, images, masks
        Sorted by name (file stems); masks are as annotated (labels ``1..N``, holes not filled).
    """
    if split not in ("train", "test", "all"):
        raise InputError(f"split '{split}': expected 'train', 'test' or 'all'")
    root = _dsb_root()
    if root is None:
        return None
    table = _dsb_table(root)
    if split != "all":
        table = table[table["split"] == split]
    if min_size is not None:
        if "height" not in table:
            raise InputError(f"{root / 'manifest.csv'}: missing, cannot filter by min_size")
        table = table[(table["height"] >= min_size) & (table["width"] >= min_size)]
    files = list(table["file"])
    if max_images is not None:
        files = files[: max(int(max_images), 0)]
    return _read_dsb(root, files)


def stardist_sample(crop: int = 128) -> Dataset:
    """Non-overlapping ``crop`` x ``crop`` tiles of the annotated nuclei sample in the stardist wheel.

    The 512x512 image (uint16) of ``stardist.data.test_image_nuclei_2d`` is split row by row; masks are
    relabelled ``1..N`` per crop. It is always available (no download), so tests and demos can rely on it.

    Returns
    -------
    names, images, masks
        Names like ``nuclei2d_y0128_x0256``.
    """
    from skimage.segmentation import relabel_sequential
    from stardist.data import test_image_nuclei_2d

    image, mask = test_image_nuclei_2d(return_mask=True)
    h, w = image.shape[:2]
    if not isinstance(crop, (int, np.integer)) or not 16 <= crop <= min(h, w):
        raise InputError(f"crop {crop!r}: expected an integer between 16 and {min(h, w)}")
    names, images, masks = [], [], []
    for y in range(0, h - crop + 1, crop):
        for x in range(0, w - crop + 1, crop):
            names.append(f"nuclei2d_y{y:04d}_x{x:04d}")
            images.append(np.ascontiguousarray(image[y : y + crop, x : x + crop]))
            lbl = relabel_sequential(mask[y : y + crop, x : x + crop])[0]
            masks.append(np.ascontiguousarray(lbl.astype(np.uint16)))
    return names, images, masks


def _pick(rng: np.random.Generator, table, n: int, prefer: tuple[int, int]) -> list[str]:
    """`n` random files of `table`, preferring images of shape `prefer`; returned sorted."""
    if "height" in table:
        pref = (table["height"] == prefer[0]) & (table["width"] == prefer[1])
        first, rest = list(table.loc[pref, "file"]), list(table.loc[~pref, "file"])
    else:
        first, rest = list(table["file"]), []
    chosen = [first[i] for i in rng.permutation(len(first))[:n]]
    if len(chosen) < n:
        chosen += [rest[i] for i in rng.permutation(len(rest))[: n - len(chosen)]]
    return sorted(chosen)


def real_annotated(n_train: int = 4, n_test: int = 8, seed: int = 0) -> dict:
    """A small real annotated train/test set for demos and benchmarks.

    DSB 2018 fluorescence (its train/test split, preferring 256x256 images so demos stay fast) when the
    shared data is present, else crops of the stardist sample (128x128, randomly split). Deterministic
    for a given `seed`.

    Returns
    -------
    data : dict
        ``source`` (a human-readable description of the data), ``train`` and ``test`` (each
        ``(names, images, masks)``).
    """
    if n_train < 0 or n_test < 0:
        raise InputError(f"n_train={n_train}, n_test={n_test}: expected counts >= 0")
    rng = np.random.default_rng(seed)
    root = _dsb_root()
    if root is not None:
        table = _dsb_table(root)
        train = _pick(rng, table[table["split"] == "train"], n_train, (256, 256))
        test = _pick(rng, table[table["split"] == "test"], n_test, (256, 256))
        return {
            "source": f"DSB 2018 stage1_train fluorescence nuclei (community-fixed, CC0), {root}; "
            f"{len(train)} train / {len(test)} test images from split.csv",
            "train": _read_dsb(root, train),
            "test": _read_dsb(root, test),
        }
    names, images, masks = stardist_sample(128)
    order = rng.permutation(len(names))
    n_tr = min(n_train, len(names))
    n_te = min(n_test, len(names) - n_tr)
    parts = {}
    for key, idx in (("train", order[:n_tr]), ("test", order[n_tr : n_tr + n_te])):
        idx = sorted(idx)
        parts[key] = ([names[i] for i in idx], [images[i] for i in idx], [masks[i] for i in idx])
    return {
        "source": "stardist bundled sample (stardist.data.test_image_nuclei_2d), 128x128 crops "
        f"({n_tr} train / {n_te} test, random split, seed {seed}); no shared DSB 2018 data found",
        **parts,
    }
