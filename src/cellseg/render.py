"""Previews: an image with its labels drawn as coloured, outlined regions (KNIME tables, reports)."""

from __future__ import annotations

import numpy as np

from cellseg.errors import InputError
from cellseg.images import check_image, normalize

__all__ = ["overlay"]


def _label_colors(n: int) -> np.ndarray:
    """`n` distinct bright RGB colours (float, 0..1), golden-ratio hue steps."""
    from skimage.color import hsv2rgb

    hues = (np.arange(n) * 0.618033988749895 + 0.1) % 1.0
    hsv = np.stack([hues, np.full(n, 0.85), np.ones(n)], axis=-1)[None]
    return hsv2rgb(hsv)[0]


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.4, max_size: int | None = None) -> np.ndarray:
    """Render a uint8 RGB preview of an image with coloured label outlines.

    The image is percentile-normalised (grey, or its first 3 channels as RGB), objects are tinted with
    opacity `alpha` and their outlines (:func:`skimage.segmentation.find_boundaries`) drawn opaque, each
    label in its own colour. With `max_size` the preview is downscaled so that its longer side is at
    most `max_size` (labels with nearest neighbour), which keeps KNIME tables and reports small.
    """
    from skimage.segmentation import find_boundaries
    from skimage.transform import resize

    img = check_image(image, "overlay image")
    lbl = np.asarray(labels)
    if lbl.ndim == 3 and lbl.shape[-1] == 1:
        lbl = lbl[..., 0]
    if lbl.shape != img.shape[:2]:
        raise InputError(f"overlay: labels shape {lbl.shape} does not match image shape {img.shape}")
    if not (np.issubdtype(lbl.dtype, np.integer) or lbl.dtype == bool):
        raise InputError(f"overlay: labels are not integer (dtype {lbl.dtype})")
    if not 0 <= alpha <= 1:
        raise InputError(f"overlay: alpha must be in [0, 1], got {alpha}")
    if img.ndim == 3:
        img = img[..., :3] if img.shape[-1] >= 3 else img.mean(axis=-1)
    rgb = normalize(img, 1.0, 99.8, clip=True)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    if max_size is not None:
        if max_size < 1:
            raise InputError(f"overlay: max_size must be >= 1, got {max_size}")
        h, w = lbl.shape
        scale = max_size / max(h, w)
        if scale < 1:
            shape = (max(1, round(h * scale)), max(1, round(w * scale)))
            rgb = resize(rgb, (*shape, 3), order=1, anti_aliasing=True, preserve_range=True)
            lbl = resize(lbl, shape, order=0, anti_aliasing=False, preserve_range=True).astype(lbl.dtype)
    uniq, inverse = np.unique(lbl, return_inverse=True)
    inverse = inverse.reshape(lbl.shape)
    colors = _label_colors(len(uniq))
    if uniq[0] == 0:
        colors[0] = 0
    fg = lbl > 0
    col = colors[inverse]
    out = rgb.astype(np.float64)
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    edges = find_boundaries(lbl, mode="inner") & fg
    out[edges] = col[edges]
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
