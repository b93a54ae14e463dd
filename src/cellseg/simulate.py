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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from cellseg.errors import InputError
from cellseg.simconfig import MIXED_PRESETS, PRESETS, SHAPES, SimConfig, _check_args, _config, _seed, _size

__all__ = ["MIXED_PRESETS", "PRESETS", "SHAPES", "SimConfig", "check_memory", "iter_dataset", "simulate_dataset",
           "simulate_image"]

Progress = Callable[[float, str], None]


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
