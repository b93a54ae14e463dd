"""How images meet a model's input: channel count, polarity (dark or bright background) and object scale.

A model records what its network was trained on in its bundle (``cellseg.json``, key ``input``, an
:class:`InputSpec`): the background of its training images (``dark`` as in fluorescence, ``bright`` as in
bright-field and H&E), the median diameter of its objects in network pixels (``object_size``) and the
factor by which images are resized before the network (``scale``). Prediction and training bring every
image to that contract in one function, :func:`prepare_input`: normalise, convert the channels (grey and
RGB into each other), invert when the image's background is not the model's, resize by the scale. Labels
and objects come back at the image's own resolution (:func:`cellseg.segment.candidates` maps the network's
candidates back).

:func:`estimate_scale` derives the scale for retraining from annotated masks; :func:`adapt_channels`
gives a model another number of input channels by adapting its first layer (the alternative to
converting the images). Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cellseg import images as cimages
from cellseg.errors import InputError, require_number
from cellseg.settings import check_settings, setting, strict_init

BACKGROUNDS = ("dark", "bright")
INVERT_CHOICES = ("auto", "yes", "no")
CHANNEL_MODES = ("auto", "convert", "adapt")
#: What ``channels="auto"`` does when the images' channels are not the model's (chosen from the figures in
#: docs/transfer-learning.md).
AUTO_CHANNEL_MODE = "convert"
#: Channel counts :func:`match_channels` converts into each other (grey and RGB).
CONVERTIBLE = {(3, 1), (1, 3)}
#: Scale factors accepted anywhere (a setting's bounds).
SCALE_BOUNDS = (0.05, 20.0)
#: Smallest image side the network is given after scaling, and most pixels of a scaled image in memory.
MIN_SIDE, MAX_SCALED_PIXELS = 16, 2**28
#: Without a recorded size range, objects within this factor of the model's size are not resized.
SCALE_TOLERANCE = 1.5

INVERT_HELP = ("invert intensities: auto = when an image's background (bright or dark) is not the one the "
               "model was trained on (e.g. bright-field or H&E images for a fluorescence model); yes; no")


@dataclass
class InputSpec:
    """What a model's network expects, kept in its bundle: background, object size, scale."""

    background: str = "dark"
    object_size: float | None = None  # median object diameter in network pixels (None: not known)
    scale: float = 1.0  # images are resized by this before the network
    #: The range of per-image median object diameters (network pixels) the network was trained on
    #: (10th-90th percentile): objects in this range need no resizing.
    object_range: tuple[float, float] | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {"background": self.background, "scale": round(float(self.scale), 6)}
        if self.object_size is not None:
            d["object_size"] = round(float(self.object_size), 3)
        if self.object_range is not None:
            d["object_range"] = [round(float(v), 3) for v in self.object_range]
        return d

    @classmethod
    def from_json(cls, d: Any, where: str = "input") -> InputSpec:
        """An InputSpec from :meth:`to_json`'s output; :class:`InputError` naming the bad key."""
        if d is None:
            return cls()
        if not isinstance(d, dict):
            raise InputError(f"{where} must be a JSON object, not {type(d).__name__}")
        unknown = sorted(set(d) - {"background", "scale", "object_size", "object_range"})
        if unknown:
            raise InputError(f"{where}: unknown key(s) {', '.join(unknown)}")
        background = d.get("background", "dark")
        if background not in BACKGROUNDS:
            raise InputError(f"{where}.background={background!r} must be 'dark' or 'bright'")
        scale = require_number(d.get("scale", 1.0), f"{where}.scale", *SCALE_BOUNDS)
        size = d.get("object_size")
        if size is not None:
            size = require_number(size, f"{where}.object_size", 0, 1e5, lo_open=True)
        span = d.get("object_range")
        if span is not None:
            if not isinstance(span, (list, tuple)) or len(span) != 2:
                raise InputError(f"{where}.object_range={span!r} must be [smallest, largest]")
            lo = require_number(span[0], f"{where}.object_range[0]", 0, 1e5, lo_open=True)
            hi = require_number(span[1], f"{where}.object_range[1]", lo, 1e5)
            span = (lo, hi)
        return cls(background, size, scale, span)

    def is_default(self) -> bool:
        return self == InputSpec()


@strict_init
@dataclass
class InputConfig:
    """Prediction-time input settings (declared once; the CLI's ``predict`` and the Predictor use them)."""

    scale: float | None = setting(None, "resize images by this factor before the network; labels come back at "
                                  "the image's size (default: the model's own, estimated when it was "
                                  "retrained; 1 otherwise)", "float", label="Scale", lo=SCALE_BOUNDS[0],
                                  hi=SCALE_BOUNDS[1])
    invert: str = setting("auto", INVERT_HELP, label="Invert intensities", choices=INVERT_CHOICES)

    def __post_init__(self) -> None:
        check_settings(self)


# -- one image ------------------------------------------------------------------------------------

def image_background(x: np.ndarray) -> str:
    """``bright`` when most of a normalised ``YXC`` image is bright (bright-field, H&E), else ``dark``."""
    step = max(1, int(math.sqrt(x.shape[0] * x.shape[1] / 250_000)))
    return "bright" if float(np.median(x[::step, ::step].mean(axis=-1))) > 0.5 else "dark"


def match_channels(x: np.ndarray, n: int, name: str = "image") -> np.ndarray:
    """A normalised ``YXC`` image with ``n`` channels: RGB becomes grey (channel mean), grey is repeated
    into RGB; other mismatches raise :class:`InputError` naming the image and the ``channels``."""
    c = x.shape[-1]
    if c == n:
        return x
    if (c, n) == (3, 1):
        return x.mean(axis=-1, keepdims=True, dtype=np.float32)
    if (c, n) == (1, 3):
        return np.repeat(x, 3, axis=-1)
    raise InputError(f"{name}: image has {c} channel(s) but the model expects {n}; only grey (1) and RGB (3) "
                     "channels are converted into each other: give images with the model's channels")


def is_stained(image: np.ndarray) -> bool:
    """Is ``image`` a colour bright-field image (H&E-like: 3 channels that differ, bright background)?

    Such images go to a grey model as their hematoxylin channel (:func:`hematoxylin`): nuclei bright on a
    dark background, like the fluorescence such models know; grey images stored as RGB and dark-field
    colour images are not stained.
    """
    if image.ndim != 3 or image.shape[-1] != 3:
        return False
    step = max(1, int(math.sqrt(image.shape[0] * image.shape[1] / 250_000)))
    x = image[::step, ::step].astype(np.float32)
    lo, hi = np.percentile(x, (1, 99.8))
    if hi <= lo:
        return False
    grey = (x.mean(axis=-1) - lo) / (hi - lo)
    colour = float(np.mean(np.abs(x[..., 0] - x[..., 2]))) / (hi - lo)
    return float(np.median(grey)) > 0.5 and colour > 0.05


def hematoxylin(image: np.ndarray, top: float | None = None) -> np.ndarray:
    """The hematoxylin optical density of an RGB bright-field image (colour deconvolution, scikit-image's
    :func:`~skimage.color.rgb2hed`), float32: high in nuclei. ``top`` is the full-transmission value
    (default :func:`white_level`; tiles of one image share their image's)."""
    from skimage.color import rgb2hed

    top = white_level(image) if top is None else top
    return rgb2hed(np.clip(image.astype(np.float32) / np.float32(top), 0, 1))[..., 0].astype(np.float32)


def white_level(image: np.ndarray) -> float:
    """Full transmission of a bright-field image: 255 for 8 bits, else the brightest value (at least 1)."""
    if image.dtype == np.uint8:
        return 255.0
    return max(1.0, float(np.max(image)))


def scaled_shape(shape: Sequence[int], scale: float) -> tuple[int, int]:
    """The ``(Y, X)`` shape of an image of ``shape`` resized by ``scale``."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def check_scale(scale: Any, shape: Sequence[int], name: str = "image", what: str = "scale",
                max_pixels: int = MAX_SCALED_PIXELS) -> float:
    """``scale`` as a float, or :class:`InputError` naming ``what`` when it is out of bounds or makes
    the image smaller than :data:`MIN_SIDE` or larger than ``max_pixels``."""
    s = require_number(scale, what, *SCALE_BOUNDS)
    h, w = scaled_shape(shape, s)
    if min(h, w) < MIN_SIDE:
        raise InputError(f"{what}={s:g} makes {name} ({shape[0]}x{shape[1]}) {h}x{w} pixels, smaller than the "
                         f"network's minimum of {MIN_SIDE}; use a larger {what}")
    if h * w > max_pixels:
        raise InputError(f"{what}={s:g} makes {name} ({shape[0]}x{shape[1]}) {h}x{w} pixels, more than "
                         f"{max_pixels:,} in memory; use a smaller {what} (or tiled prediction)")
    return s


def resize(x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A float ``YXC`` image resized to ``shape`` (linear; smoothed first when shrinking, against aliasing)."""
    from skimage.transform import resize as _resize

    if tuple(x.shape[:2]) == tuple(shape[:2]):
        return x
    smaller = shape[0] < x.shape[0] or shape[1] < x.shape[1]
    out = _resize(x, (shape[0], shape[1], x.shape[2]), order=1, mode="reflect", anti_aliasing=smaller,
                  preserve_range=True)
    return out.astype(np.float32, copy=False)


def resize_mask(y: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """A label image resized to ``shape`` by nearest neighbour (labels stay labels)."""
    if tuple(y.shape) == tuple(shape[:2]):
        return y
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * y.shape[0] / shape[0]).astype(np.intp), y.shape[0] - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * y.shape[1] / shape[1]).astype(np.intp), y.shape[1] - 1)
    return y[np.ix_(rows, cols)]


def needs_inversion(x: np.ndarray, spec: InputSpec, invert: str = "auto") -> bool:
    """Is ``x`` (normalised ``YXC``) to be inverted: ``invert`` is ``yes``, or ``auto`` and its background
    is not the model's?"""
    return invert == "yes" or (invert == "auto" and image_background(x) != spec.background)


def adapt_polarity(x: np.ndarray, spec: InputSpec, invert: str = "auto") -> np.ndarray:
    """``x`` (normalised ``YXC``) inverted when :func:`needs_inversion` says so."""
    return np.float32(1) - x if needs_inversion(x, spec, invert) else x


def prepare_input(image: np.ndarray, n_channel_in: int, spec: InputSpec, *, scale: float | None = None,
                  invert: str = "auto", normalize: bool = True, name: str = "image") -> tuple[np.ndarray, float]:
    """A checked ``YX``/``YXC`` image as the network's float32 ``YXC`` input, and the scale applied.

    Percentile-normalised (unless not ``normalize``), channels matched (:func:`match_channels`; a stained
    colour bright-field image, :func:`is_stained`, becomes its hematoxylin channel instead),
    inverted (:func:`adapt_polarity`) and resized by ``scale`` (default: the model's ``spec.scale``).
    """
    if n_channel_in == 1 and is_stained(image):
        image = hematoxylin(image)
    x = cimages.normalize(image) if normalize else np.asarray(image, dtype=np.float32)
    x = x[..., np.newaxis] if x.ndim == 2 else x
    x = adapt_polarity(match_channels(x, n_channel_in, name), spec, invert)
    s = spec.scale if scale is None else scale
    if s != 1:
        s = check_scale(s, x.shape, name)
        x = resize(x, scaled_shape(x.shape, s))
    return x, float(s)


# -- object size and scale ------------------------------------------------------------------------

def object_diameters(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Equivalent diameters (of a disc of the same area) of all labelled objects in ``masks``."""
    areas = []
    for m in masks:
        m = np.asarray(m)
        if m.ndim == 2 and np.issubdtype(m.dtype, np.integer):  # others are refused, naming them, elsewhere
            areas.append(np.unique(m[m > 0], return_counts=True)[1])
    a = np.concatenate(areas) if areas else np.zeros(0)
    return np.sqrt(4 * a / np.pi)


def median_object_size(masks: Sequence[np.ndarray]) -> float | None:
    """Median equivalent diameter of the objects in ``masks`` (None without objects)."""
    d = object_diameters(masks)
    return float(np.median(d)) if len(d) else None


def object_range(masks: Sequence[np.ndarray]) -> tuple[float, float] | None:
    """10th-90th percentile of the per-image median object diameters of ``masks`` (None without objects)."""
    medians = [m for m in (median_object_size([mask]) for mask in masks) if m is not None]
    if not medians:
        return None
    lo, hi = np.percentile(medians, [10, 90])
    return float(lo), float(hi)


def estimate_scale(spec: InputSpec, masks: Sequence[np.ndarray]) -> tuple[float, str]:
    """The scale for retraining a model with input ``spec`` on ``masks``, and a note saying why.

    Objects whose median diameter lies in the range the model was trained on (``spec.object_range``; else
    within :data:`SCALE_TOLERANCE` of ``spec.object_size``) are not resized: the network knows such sizes
    and resizing only loses detail. Others are resized to the model's median size
    (``spec.object_size / size``), clipped to :data:`SCALE_BOUNDS`. 1 when the model records no size.
    """
    size = median_object_size(masks)
    if spec.object_size is None or size is None:
        return 1.0, "scale 1 (the model does not record the size of its objects)"
    lo, hi = spec.object_range or (spec.object_size / SCALE_TOLERANCE, spec.object_size * SCALE_TOLERANCE)
    note = f"objects of {size:.1f} px (median diameter); the model knows {lo:.0f}-{hi:.0f} px"
    if lo <= size <= hi:
        return 1.0, f"scale 1: {note}"
    s = float(min(max(spec.object_size / size, SCALE_BOUNDS[0]), SCALE_BOUNDS[1]))
    return round(s, 4), f"scale {s:.3g}: {note}, resized to its median {spec.object_size:.0f} px"


def plan_input(model: Any, data: Any, scale: float | None, fresh: bool) -> tuple[InputSpec, str]:
    """The input spec a training run of ``model`` on ``data`` (a TrainingData) uses and stores, and a note.

    Retraining (``fresh`` False) keeps the model's background (images whose background differs are
    inverted) and object size, and uses ``scale`` or the one :func:`estimate_scale` finds. Training a new
    model (``fresh``) takes the background most images have, ``scale`` or 1, and the objects' size.
    """
    spec = model.input_spec
    masks = [np.asarray(m) for m in data.masks]
    if fresh:
        seen = [image_background(_normalised(im)) for im in data.images]
        background = max(BACKGROUNDS, key=seen.count)
        s = 1.0 if scale is None else float(scale)
        size, span = median_object_size(masks), object_range(masks)
        spec = InputSpec(background, None if size is None else size * s, s,
                         None if span is None else (span[0] * s, span[1] * s))
        return spec, f"background {background}, scale {s:g}" + (f", objects {size:.1f} px" if size else "")
    if scale is not None:
        s, note = float(scale), f"scale {float(scale):g} (given)"
    else:
        s, note = estimate_scale(spec, masks)
    size, span = spec.object_size, spec.object_range
    if size is None:
        measured, span = median_object_size(masks), object_range(masks)
        size = None if measured is None else measured * s
        span = None if span is None else (span[0] * s, span[1] * s)
    return InputSpec(spec.background, size, s, span), note


def _normalised(image: Any) -> np.ndarray:
    x = cimages.normalize(np.asarray(image, dtype=np.float32))
    return x[..., np.newaxis] if x.ndim == 2 else x


# -- adapting the network -------------------------------------------------------------------------

def adapt_channels(model: Any, n: int) -> Any:
    """A copy of ``model`` whose network takes ``n`` input channels: the first layer's kernels are summed
    over the old channels and spread evenly over the new ones, so that an image whose channels are all
    equal gives the same output as before; all other weights are copied. Grey <-> RGB only."""
    from dataclasses import replace

    from cellseg.models import CellsegModel

    c = model.config.n_channel_in
    if c == n:
        return model.copy()
    if (c, n) not in CONVERTIBLE:
        raise InputError(f"channels: a model with {c} input channel(s) cannot be adapted to {n}; only grey (1) "
                         "and RGB (3) are adapted into each other")
    new = CellsegModel.create(replace(model.config, n_channel_in=n), seed=0, name=model.name)
    weights = []
    for old, fresh in zip(model.keras_model.get_weights(), new.keras_model.get_weights()):
        if old.shape != fresh.shape:  # the first convolution's kernel (ky, kx, c, filters)
            old = np.repeat(old.sum(axis=2, keepdims=True) / n, n, axis=2)
        weights.append(old)
    new.keras_model.set_weights(weights)
    new.thresholds = model.thresholds
    new.provenance.clear()
    new.provenance.update(copy.deepcopy(model.provenance))
    new.input_spec = InputSpec(**vars(model.input_spec))
    return new
