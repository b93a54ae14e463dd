"""Settings of the nuclei simulator: :class:`SimConfig`, the named presets, and the argument checks
shared by :mod:`cellseg.simulate` (images in memory) and :mod:`cellseg.simulate_folders` (files)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cellseg.errors import InputError

__all__ = ["MIXED_PRESETS", "PRESETS", "SHAPES", "SimConfig"]

#: Object shapes: HL60-like ellipses, granulocyte-like lobed nuclei, or a random mix per object.
SHAPES = ("round", "lobed", "mixed")



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
