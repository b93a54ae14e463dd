"""Simulated fluorescence nuclei images with instance ground truth.

The simulator is the pretraining-data source of cellseg, in the spirit of CytoPacq's synthetic HL60 and
granulocyte data sets: nuclei are drawn as star-shaped objects ('round' HL60-like ellipses with a slightly
irregular outline, 'lobed' granulocyte-like chains of 2-4 lobes), given a smooth texture, blurred by a
Gaussian PSF and imaged by a camera model (Poisson photon noise, Gaussian read noise, offset, gain and a
finite bit depth). Every object is drawn in its bounding box only, so a 256x256 image takes a few ms.

Labels are contiguous ``1..N``; objects never overlap (they may touch), a later object is only drawn
on free pixels so it never splits an earlier one, and each label is one 4-connected component.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from cellseg.errors import InputError

__all__ = [
    "MIXED_PRESETS",
    "PRESETS",
    "SHAPES",
    "SimConfig",
    "check_memory",
    "check_prefix",
    "iter_dataset",
    "simulate_dataset",
    "simulate_image",
    "simulate_to_folder",
    "write_dataset",
]

#: Object shapes: HL60-like ellipses, granulocyte-like lobed nuclei, or a random mix per object.
SHAPES = ("round", "lobed", "mixed")

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class SimConfig:
    """Parameters of one simulated image type.

    Attributes
    ----------
    n_objects : (int, int)
        Range of the number of objects in a 256x256 image (scaled by area for other sizes). Fewer may
        be placed when the image is crowded.
    radius : (float, float)
        Range of the object radius in pixels (geometric mean of the half axes; for 'lobed' nuclei the
        radius of the whole lobe chain).
    shape : str
        'round', 'lobed' or 'mixed' (each object picks 'round' or 'lobed').
    elongation : (float, float)
        Range of the long/short axis ratio of an ellipse (a lobe for 'lobed').
    irregularity : float
        Relative amplitude of the random outline wobble (harmonics 2-5 of the radius).
    lobes : (int, int)
        Range of the number of lobes of a 'lobed' nucleus.
    cluster_fraction : float
        Fraction of objects placed next to an already placed object, producing clumps.
    touching : bool
        Allow objects to touch (a later object may be cut where it meets an earlier one). If False,
        objects keep a gap of at least `gap` pixels.
    max_overlap : float
        With `touching`, the largest fraction of a new object that may be covered by earlier ones.
    gap : int
        Minimum gap in pixels between objects when `touching` is False.
    texture : float
        Relative amplitude of the smooth intra-nuclear intensity texture.
    texture_scale : float
        Correlation length (Gaussian sigma, pixels) of the texture.
    brightness : (float, float)
        Range of the relative brightness of an object (1 = reference).
    psf_sigma : float
        Sigma in pixels of the Gaussian point spread function.
    background : float
        Background level relative to an object of brightness 1.
    photons : float
        Expected photons per pixel of an object of brightness 1; Poisson noise sets SNR ~ sqrt(photons).
    read_noise : float
        Camera read noise (Gaussian sigma, in photo-electrons).
    offset : float
        Camera offset (digital counts added to every pixel).
    bit_depth : int
        Camera bit depth (8-16); values are clipped to ``2**bit_depth - 1`` and stored as uint16.
    """

    n_objects: tuple[int, int] = (15, 35)
    radius: tuple[float, float] = (7.0, 13.0)
    shape: str = "round"
    elongation: tuple[float, float] = (1.0, 1.5)
    irregularity: float = 0.05
    lobes: tuple[int, int] = (2, 4)
    cluster_fraction: float = 0.4
    touching: bool = True
    max_overlap: float = 0.15
    gap: int = 1
    texture: float = 0.15
    texture_scale: float = 2.0
    brightness: tuple[float, float] = (0.6, 1.0)
    psf_sigma: float = 1.0
    background: float = 0.08
    photons: float = 300.0
    read_noise: float = 2.0
    offset: float = 100.0
    bit_depth: int = 12

    def validate(self) -> SimConfig:
        """Check all parameters; raise InputError naming the first bad one. Returns self."""

        def bad(name: str, why: str) -> InputError:
            return InputError(f"simulation parameter '{name}'={getattr(self, name)!r}: {why}")

        for name in ("n_objects", "lobes"):
            v = getattr(self, name)
            if not (_is_pair(v) and all(float(x).is_integer() for x in v) and 0 <= v[0] <= v[1]):
                raise bad(name, "expected a range (min, max) of integers with 0 <= min <= max")
        for name, lo in (("radius", 1.0), ("elongation", 1.0)):
            v = getattr(self, name)
            if not (_is_pair(v) and lo <= v[0] <= v[1]):
                raise bad(name, f"expected a range (min, max) with {lo} <= min <= max")
        if self.lobes[0] < 1:
            raise bad("lobes", "need at least 1 lobe")
        v = self.brightness
        if not (_is_pair(v) and 0 < v[0] <= v[1]):
            raise bad("brightness", "expected a range (min, max) with 0 < min <= max")
        if self.shape not in SHAPES:
            raise bad("shape", f"expected one of {', '.join(SHAPES)}")
        for name, lo, hi in (
            ("irregularity", 0.0, 0.3),
            ("cluster_fraction", 0.0, 1.0),
            ("max_overlap", 0.0, 0.5),
            ("texture", 0.0, 1.0),
        ):
            if not _is_number(getattr(self, name)) or not lo <= getattr(self, name) <= hi:
                raise bad(name, f"expected a number in [{lo}, {hi}]")
        for name in ("psf_sigma", "background", "read_noise", "offset", "gap"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "expected a number >= 0")
        for name in ("photons", "texture_scale"):
            if not _is_number(getattr(self, name)) or getattr(self, name) <= 0:
                raise bad(name, "expected a number > 0")
        if not isinstance(self.touching, (bool, np.bool_)):
            raise bad("touching", "expected True or False")
        if not (isinstance(self.bit_depth, (int, np.integer)) and 8 <= self.bit_depth <= 16):
            raise bad("bit_depth", "expected an integer in [8, 16]")
        if self.offset >= 2**self.bit_depth - 1:
            raise bad("offset", f"must be below the maximum value {2**self.bit_depth - 1} of bit_depth")
        return self


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) and np.isfinite(v)


def _is_pair(v: object) -> bool:
    return isinstance(v, (tuple, list)) and len(v) == 2 and all(_is_number(x) for x in v)


#: Named simulation settings. HL60-like ('low_noise', 'high_noise') and granulocyte-like nuclei.
PRESETS: dict[str, SimConfig] = {
    "low_noise": SimConfig(),
    "high_noise": SimConfig(psf_sigma=1.5, background=0.15, photons=30.0, read_noise=5.0),
    "granulocyte_low_noise": SimConfig(
        shape="lobed", n_objects=(12, 28), radius=(9.0, 15.0), elongation=(1.0, 1.4), irregularity=0.04
    ),
    "granulocyte_high_noise": SimConfig(
        shape="lobed",
        n_objects=(12, 28),
        radius=(9.0, 15.0),
        elongation=(1.0, 1.4),
        irregularity=0.04,
        psf_sigma=1.5,
        background=0.15,
        photons=30.0,
        read_noise=5.0,
    ),
}

#: Presets that ``preset="mixed"`` draws from (one per image).
MIXED_PRESETS: tuple[str, ...] = ("low_noise", "high_noise", "granulocyte_low_noise", "granulocyte_high_noise")


def _config(preset: str, rng: np.random.Generator, overrides: dict) -> SimConfig:
    if preset == "mixed":
        preset = MIXED_PRESETS[int(rng.integers(len(MIXED_PRESETS)))]
    cfg = PRESETS[preset]
    return dataclasses.replace(cfg, **overrides).validate() if overrides else cfg


def _check_args(preset: str, overrides: dict) -> None:
    if preset != "mixed" and preset not in PRESETS:
        raise InputError(f"preset '{preset}': unknown simulation preset (known: {', '.join([*PRESETS, 'mixed'])})")
    names = {f.name for f in dataclasses.fields(SimConfig)}
    for key in overrides:
        if key not in names:
            raise InputError(f"simulation parameter '{key}': unknown (known: {', '.join(sorted(names))})")
    if overrides:
        dataclasses.replace(PRESETS[MIXED_PRESETS[0] if preset == "mixed" else preset], **overrides).validate()


def _size(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        shape = (int(size), int(size))
    elif isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, (int, np.integer)) for s in size):
        shape = (int(size[0]), int(size[1]))
    else:
        raise InputError(f"simulation parameter 'size'={size!r}: expected an int or (height, width)")
    if min(shape) < 16:
        raise InputError(f"simulation parameter 'size'={size!r}: images must be at least 16x16")
    return shape


def _seed(seed: object) -> None:
    """Seeds are integers >= 0 (or None); NumPy refuses negative ones with a bare ValueError."""
    if seed is None or isinstance(seed, np.random.Generator):
        return
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"simulation parameter 'seed'={seed!r}: expected an integer >= 0")


#: Peak memory of :func:`simulate_image` per pixel (float32 work arrays of the renderer; measured 34 bytes
#: with tracemalloc for 512² to 2048² images, all presets), with a margin.
WORK_BYTES_PER_PIXEL = 40
#: Memory per pixel of a finished image and its labels (uint16 each).
KEPT_BYTES_PER_PIXEL = 4


def check_memory(shape: tuple[int, int], n_kept: int = 0) -> None:
    """Refuse, before allocating, a simulation that does not fit in the available memory.

    One image needs about :data:`WORK_BYTES_PER_PIXEL` bytes per pixel while it is made, and each of
    `n_kept` finished images held in memory (by :func:`simulate_dataset`) another
    :data:`KEPT_BYTES_PER_PIXEL`. The available memory is :func:`cellseg.files.available_memory`.
    """
    from cellseg.files import available_memory, format_bytes

    h, w = shape
    need = h * w * (WORK_BYTES_PER_PIXEL + KEPT_BYTES_PER_PIXEL * max(int(n_kept) - 1, 0))
    avail = available_memory()
    if avail is not None and need > avail:
        what = f"{n_kept} images" if n_kept > 1 else "an image"
        raise InputError(f"simulation parameter 'size'={h if h == w else (h, w)}: simulating {what} of {h}x{w} "
                         f"pixels needs about {format_bytes(need)} of memory, but only {format_bytes(avail)} is "
                         "available; choose a smaller size" + (" or fewer images" if n_kept > 1 else ""))


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


# ----------------------------------------------------------------------------------------------
# object shapes
# ----------------------------------------------------------------------------------------------
@dataclass
class _Lobe:
    """An ellipse with a wobbly outline, centred at (dy, dx) relative to the object centre."""

    dy: float
    dx: float
    a: float  # long half axis
    b: float  # short half axis
    theta: float
    harm_amp: np.ndarray = field(default_factory=lambda: np.zeros(0))
    harm_phase: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def extent(self) -> float:
        return float(np.hypot(self.dy, self.dx) + self.a * (1 + np.abs(self.harm_amp).sum()))

    def inside(self, yy: np.ndarray, xx: np.ndarray, grow: float = 0.0) -> np.ndarray:
        """Boolean mask of the grid points inside the (grown) lobe."""
        dy, dx = yy - self.dy, xx - self.dx
        rho = np.hypot(dy, dx)
        phi = np.arctan2(dy, dx)
        t = phi - self.theta
        r = self.a * self.b / np.sqrt((self.b * np.cos(t)) ** 2 + (self.a * np.sin(t)) ** 2)
        if len(self.harm_amp):
            k = np.arange(2, 2 + len(self.harm_amp))
            r = r * (1 + (self.harm_amp * np.cos(k * phi[..., None] + self.harm_phase)).sum(axis=-1))
        return rho <= r + grow


def _wobble(rng: np.random.Generator, irregularity: float) -> tuple[np.ndarray, np.ndarray]:
    k = np.arange(2, 6)
    amp = irregularity * rng.uniform(-1, 1, size=len(k)) / np.sqrt(k - 1)
    return amp, rng.uniform(0, 2 * np.pi, size=len(k))


def _make_object(rng: np.random.Generator, kind: str, radius: float, cfg: SimConfig) -> list[_Lobe]:
    """Random nucleus of the given kind as a list of lobes (one lobe for 'round')."""
    if kind == "round":
        e = rng.uniform(*cfg.elongation)
        a, b = radius * np.sqrt(e), radius / np.sqrt(e)
        return [_Lobe(0.0, 0.0, a, b, rng.uniform(0, np.pi), *_wobble(rng, cfg.irregularity))]
    # lobed: a bent chain of overlapping small ellipses, centred on the object centre
    n = int(rng.integers(cfg.lobes[0], cfg.lobes[1] + 1))
    r_lobe = radius / (1.0 + 0.45 * (n - 1))
    lobes: list[_Lobe] = []
    y = x = 0.0
    direction = rng.uniform(0, 2 * np.pi)
    for i in range(n):
        rl = r_lobe * rng.uniform(0.85, 1.15)
        e = rng.uniform(*cfg.elongation)
        a, b = rl * np.sqrt(e), rl / np.sqrt(e)
        if i > 0:
            # consecutive lobes overlap: their distance is below the sum of the short half axes
            step = 0.8 * (lobes[-1].b + b) * rng.uniform(0.8, 1.0)
            direction += rng.uniform(-1.0, 1.0)
            y, x = y + step * np.sin(direction), x + step * np.cos(direction)
        amp, phase = _wobble(rng, cfg.irregularity)
        lobes.append(_Lobe(y, x, a, b, rng.uniform(0, np.pi), amp, phase))
    cy = np.mean([lb.dy for lb in lobes])
    cx = np.mean([lb.dx for lb in lobes])
    for lb in lobes:
        lb.dy -= cy
        lb.dx -= cx
    return lobes


def _raster(lobes: list[_Lobe], yy: np.ndarray, xx: np.ndarray, grow: float = 0.0) -> np.ndarray:
    mask = lobes[0].inside(yy, xx, grow)
    for lb in lobes[1:]:
        mask |= lb.inside(yy, xx, grow)
    return mask


def _largest_component(mask: np.ndarray) -> np.ndarray:
    lab, n = ndi.label(mask)  # 4-connectivity
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    return lab == int(np.argmax(sizes))


# ----------------------------------------------------------------------------------------------
# images
# ----------------------------------------------------------------------------------------------
def _draw_objects(
    shape: tuple[int, int], cfg: SimConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Place objects; return uint16 labels and float32 per-pixel object brightness."""
    h, w = shape
    labels = np.zeros(shape, np.uint16)
    bright = np.zeros(shape, np.float32)
    scale = h * w / 256.0**2
    lo, hi = cfg.n_objects
    n_target = int(round(rng.integers(lo, hi + 1) * scale))
    n_target = min(n_target, np.iinfo(np.uint16).max)
    centers: list[tuple[float, float]] = []
    radii: list[float] = []
    n = 0
    attempts = 0
    max_attempts = 20 * n_target + 20
    while n < n_target and attempts < max_attempts:
        attempts += 1
        radius = rng.uniform(*cfg.radius)
        kind = cfg.shape if cfg.shape != "mixed" else ("round", "lobed")[int(rng.integers(2))]
        if centers and rng.random() < cfg.cluster_fraction:
            j = int(rng.integers(len(centers)))
            ang = rng.uniform(0, 2 * np.pi)
            dist = (radii[j] + radius) * rng.uniform(0.85, 1.1) + (0 if cfg.touching else cfg.gap)
            cy, cx = centers[j][0] + dist * np.sin(ang), centers[j][1] + dist * np.cos(ang)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        lobes = _make_object(rng, kind, radius, cfg)
        ext = max(lb.extent() for lb in lobes) + (0 if cfg.touching else cfg.gap) + 1
        y0, y1 = max(int(np.floor(cy - ext)), 0), min(int(np.ceil(cy + ext)) + 1, h)
        x0, x1 = max(int(np.floor(cx - ext)), 0), min(int(np.ceil(cx + ext)) + 1, w)
        if y1 - y0 < 2 or x1 - x0 < 2:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        yy -= cy
        xx -= cx
        mask = ndi.binary_fill_holes(_raster(lobes, yy, xx))
        area = int(mask.sum())
        min_area = max(8.0, 0.1 * np.pi * radius**2)
        if area < min_area:
            continue
        region = labels[y0:y1, x0:x1]
        occupied = region > 0
        if cfg.touching:
            covered = int((mask & occupied).sum())
            if covered > cfg.max_overlap * area:
                continue
            if covered:
                mask = _largest_component(mask & ~occupied)
                if mask.sum() < max(min_area, 0.75 * area):
                    continue
        else:
            halo = _raster(lobes, yy, xx, grow=cfg.gap) if cfg.gap else mask
            if (halo & occupied).any():
                continue
        mask = _largest_component(mask)
        n += 1
        region[mask] = n
        bright[y0:y1, x0:x1][mask] = rng.uniform(*cfg.brightness)
        centers.append((cy, cx))
        radii.append(radius)
    return labels, bright


def _render(labels: np.ndarray, bright: np.ndarray, cfg: SimConfig, rng: np.random.Generator) -> np.ndarray:
    """Texture, PSF blur and camera noise: the uint16 image of an object brightness map."""
    signal = bright
    if cfg.texture > 0:
        tex = ndi.gaussian_filter(rng.standard_normal(labels.shape).astype(np.float32), cfg.texture_scale)
        tex /= tex.std() + 1e-12
        signal = bright * np.clip(1 + cfg.texture * tex, 0, None)
    if cfg.psf_sigma > 0:
        signal = ndi.gaussian_filter(signal, cfg.psf_sigma)
    expected = cfg.photons * (signal + cfg.background)
    electrons = rng.poisson(expected).astype(np.float32)
    if cfg.read_noise > 0:
        electrons += cfg.read_noise * rng.standard_normal(labels.shape, dtype=np.float32)
    vmax = 2**cfg.bit_depth - 1
    # the brightest expected object uses about half of the dynamic range above the offset
    gain = 0.5 * (vmax - cfg.offset) / (cfg.photons * (cfg.brightness[1] * (1 + cfg.texture) + cfg.background))
    if cfg.read_noise > 0:  # keep the read noise of the background clear of the clipping at 0
        gain = min(gain, cfg.offset / (5 * cfg.read_noise)) if cfg.offset > 0 else gain
    counts = np.rint(cfg.offset + gain * electrons)
    return np.clip(counts, 0, vmax).astype(np.uint16)


def simulate_image(
    size: int | tuple[int, int] = 256,
    preset: str = "low_noise",
    seed: int | np.random.Generator | None = None,
    **overrides,
) -> tuple[np.ndarray, np.ndarray]:
    """Simulate one fluorescence nuclei image and its instance labels.

    Parameters
    ----------
    size : int or (int, int)
        Image size; an int gives a square image.
    preset : str
        A key of :data:`PRESETS`, or 'mixed' to draw one of :data:`MIXED_PRESETS`.
    seed : int, Generator or None
        Random seed; the same seed gives the same image.
    **overrides
        :class:`SimConfig` fields that replace the preset's values, e.g. ``photons=50``.

    Returns
    -------
    image : ndarray of uint16, shape (H, W)
        Camera counts (at most ``2**bit_depth - 1``).
    labels : ndarray of uint16, shape (H, W)
        Instance labels ``1..N`` (0 = background), each one connected object.

    Raises
    ------
    InputError
        For an unknown preset or a bad/unknown parameter (the message names it).
    """
    shape = _size(size)
    _check_args(preset, overrides)
    _seed(seed)
    check_memory(shape)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cfg = _config(preset, rng, overrides)
    labels, bright = _draw_objects(shape, cfg, rng)
    return _render(labels, bright, cfg, rng), labels


def _check_dataset_args(n: object, size: int | Sequence[int], preset: str, seed: object,
                        overrides: dict) -> tuple[int, tuple[int, int]]:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise InputError(f"simulation parameter 'n'={n!r}: expected an integer >= 0")
    shape = _size(size)
    _check_args(preset, overrides)
    _seed(seed)
    return int(n), shape


def iter_dataset(
    n: int,
    size: int | tuple[int, int] = 256,
    preset: str = "low_noise",
    seed: int = 0,
    progress: Progress | None = None,
    **overrides,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The images of :func:`simulate_dataset` one at a time (image and labels), so that only one image is
    in memory. The arguments are checked (and the memory for one image) before the first image is made."""
    n, shape = _check_dataset_args(n, size, preset, seed, overrides)
    check_memory(shape)

    def generate() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i, child in enumerate(np.random.SeedSequence(seed).spawn(n)):
            yield simulate_image(shape, preset, np.random.default_rng(child), **overrides)
            if progress is not None:
                progress((i + 1) / n, f"simulated image {i + 1}/{n}")

    return generate()


def simulate_dataset(
    n: int,
    size: int | tuple[int, int] = 256,
    preset: str = "low_noise",
    seed: int = 0,
    progress: Progress | None = None,
    **overrides,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Simulate `n` images with labels, deterministically for a given `seed`.

    Image ``i`` uses its own child seed of `seed` (:class:`numpy.random.SeedSequence`), so it is the same
    whatever `n` is. `progress(fraction, message)` is called after each image. Before any image is made,
    the memory they need is checked (:func:`check_memory`): a dataset that does not fit is an InputError
    (:func:`iter_dataset` and :func:`simulate_to_folder` hold only one image at a time).

    Returns
    -------
    images, labels : list of ndarray
        uint16 images and uint16 label images (see :func:`simulate_image`).
    """
    n, shape = _check_dataset_args(n, size, preset, seed, overrides)
    check_memory(shape, n_kept=n)
    images, labels = [], []
    for img, lbl in iter_dataset(n, shape, preset, seed, progress, **overrides):
        images.append(img)
        labels.append(lbl)
    return images, labels


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
