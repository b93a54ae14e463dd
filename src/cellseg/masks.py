"""Label masks: read and validate instance label masks and sets of annotations.

Label masks are integer ``YX`` arrays with 0 as background and one id per object. Masks that are not
instance labels (foreground masks, class masks, images of intensities) raise
:class:`cellseg.errors.InputError`; labels made of separate pieces give an :class:`InputWarning`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cellseg.errors import InputError
from cellseg.images import _warn, read_image

__all__ = [
    "INTENSITY_NEIGHBOUR_DIFF",
    "INTENSITY_PATCH_SIZE",
    "binary_mask_problem",
    "check_annotations",
    "check_mask",
    "read_mask",
]


def read_mask(path: str | os.PathLike) -> np.ndarray:
    """Read a label mask file (see :func:`read_image`); JPEG is refused, because its lossy compression
    changes pixel values, so that label ids cannot be stored exactly."""
    path = Path(path)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        raise InputError(f"{path}: a JPEG mask; JPEG compression is lossy and cannot store label ids exactly "
                         "(object borders get stray values): save the masks as PNG or TIFF")
    return read_image(path)



#: Share of touching foreground pixel pairs with different values above which a "mask" may be an image of
#: intensities (instance masks: at most 3.4% in DSB 2018; its images: at least 22%).
INTENSITY_NEIGHBOUR_DIFF = 0.15
#: Mean size (pixels) of the equal-valued patches below which such a "mask" is taken as intensities (DSB 2018
#: masks: at least 58 px per object; its images: at most 15 px per patch).
INTENSITY_PATCH_SIZE = 16


def _neighbour_diff(arr: np.ndarray) -> float:
    """Share of 4-neighbour pixel pairs, both foreground, whose values differ (0 for a clean label image
    without touching objects, most pairs for a noisy intensity image)."""
    fg = arr > 0
    pairs = differ = 0
    for a, b, fa, fb in ((arr[:, :-1], arr[:, 1:], fg[:, :-1], fg[:, 1:]), (arr[:-1], arr[1:], fg[:-1], fg[1:])):
        both = fa & fb
        pairs += int(both.sum())
        differ += int((both & (a != b)).sum())
    return differ / pairs if pairs else 0.0


def _cut_by_neighbour(arr: np.ndarray, pieces: np.ndarray, ids: np.ndarray, boxes: list, value: int) -> bool:
    """Does one other label touch every piece of `value` (an object cut in two by an overlapping one)?"""
    from scipy import ndimage as ndi

    common: set | None = None
    for i in ids:
        box = boxes[i - 1]
        sl = tuple(slice(max(b.start - 1, 0), b.stop + 1) for b in box)
        region = pieces[sl] == i
        ring = ndi.binary_dilation(region, structure=np.ones((3, 3), bool)) & ~region
        touching = set(np.unique(arr[sl][ring]).tolist()) - {0, int(value)}
        common = touching if common is None else common & touching
        if not common:
            return False
    return bool(common)


def _check_label_structure(arr: np.ndarray, name: str, label_components: bool, annotation: bool) -> None:
    """Refuse images of intensities and class masks given as instance masks; warn about split labels.

    The mask is cut into *pieces*: 8-connected regions of one value. Instance labels have about one piece
    per label value. An intensity image (the raw image given as its mask, a probability map) has many small
    pieces per value and neighbouring pixels that mostly differ; a class (semantic) mask has many objects
    per value. A label of several pieces counts unless all its pieces touch the image border (an object
    leaving and re-entering the image) or one other label touches all of them (an object cut by an
    overlapping one); such labels occur in real annotations (DSB 2018 has two). A few such labels are an
    :class:`InputWarning` (with `annotation`); half of the labels (at least 3), or twice as many pieces as
    labels, an error.
    """
    from scipy import ndimage as ndi
    from skimage.measure import label as sk_label

    pieces = sk_label(arr, background=0, connectivity=2)
    n_pieces = int(pieces.max())
    if n_pieces == 0:
        return
    flat = pieces.ravel()
    value = np.zeros(n_pieces + 1, arr.dtype)
    value[flat] = arr.ravel()
    size = np.bincount(flat, minlength=n_pieces + 1)
    labels, per_label = np.unique(value[1:], return_counts=True)
    n_labels = len(labels)
    fragmented = n_pieces >= 2 * n_labels and n_pieces - n_labels >= 3
    mean_piece = float(size[1:].mean())
    diff = _neighbour_diff(arr)
    if diff > INTENSITY_NEIGHBOUR_DIFF and (fragmented or mean_piece < INTENSITY_PATCH_SIZE):
        raise InputError(
            f"{name}: looks like an image of intensities, not instance labels: its {n_labels} values form "
            f"{n_pieces} separate patches ({mean_piece:.1f} px on average) and {diff:.0%} of neighbouring "
            "foreground pixels differ; a mask has 0 for background and one integer id per object (was an image "
            "given as its mask?)")
    if label_components:
        return
    split = []  # (label, piece sizes) of labels made of separate pieces
    if not fragmented:
        border = set(np.unique(np.concatenate([pieces[0], pieces[-1], pieces[:, 0], pieces[:, -1]])).tolist())
        boxes = ndi.find_objects(pieces)
        order = np.argsort(value[1:], kind="stable") + 1  # piece ids grouped by label value
        starts = np.concatenate([[0], np.cumsum(per_label)])
        for k in np.nonzero(per_label > 1)[0]:
            ids = order[starts[k]:starts[k + 1]]
            if all(int(i) in border for i in ids) or _cut_by_neighbour(arr, pieces, ids, boxes, labels[k]):
                continue
            split.append((int(labels[k]), sorted((int(size[i]) for i in ids), reverse=True)))
    if fragmented or len(split) >= max(3, n_labels / 2):
        top = np.argsort(-per_label, kind="stable")[:3]
        examples = ", ".join(f"label {labels[i]}: {per_label[i]} pieces" for i in top)
        raise InputError(
            f"{name}: does not look like instance labels: its {n_labels} label value(s) mark {n_pieces} separate "
            f"objects ({examples}), as in a class mask; each object needs its own id: pass label_components=True "
            "(CLI --label-components) to label its connected components")
    if not split or not annotation:
        return
    v, sizes = split[0]
    shown = " + ".join(str(x) for x in sizes[:4]) + (" + ..." if len(sizes) > 4 else "")
    more = ""
    if len(split) > 1:
        others = ", ".join(str(w) for w, _ in split[1:6]) + (", ..." if len(split) > 6 else "")
        more = f"; so are {len(split) - 1} more label(s): {others}"
    _warn(f"{name}: label {v} is made of {len(sizes)} separate pieces ({shown} px){more}; an id should mark one "
          "object: check the annotation, or pass label_components=True (CLI --label-components) to give every "
          "piece its own id", ("pieces", arr.shape, tuple((w, len(z)) for w, z in split)))


def binary_mask_problem(mask: np.ndarray) -> str | None:
    """``"binary (values 0 and v) with n separate objects"`` if `mask` is a foreground mask rather than
    instance labels (only one label value, several connected objects), else None."""
    from skimage.measure import label as sk_label

    values = np.unique(mask)
    if len(values) == 2 and values[0] == 0:
        n_components = int(sk_label(mask > 0, connectivity=2).max())
        if n_components > 1:
            return f"binary (values 0 and {values[1]}) with {n_components} separate objects"
    return None


def check_mask(mask: np.ndarray, name: str = "mask", label_components: bool = False,
               annotation: bool = True) -> np.ndarray:
    """Validate an instance label mask and return it as uint16 (uint32 if needed) labels.

    Labels above the uint32 range (uint64/int64 ids) are renumbered ``1..N`` in their order
    (:func:`skimage.segmentation.relabel_sequential`), so distinct objects always stay distinct.

    A mask must be integer (bool counts as binary) and non-negative. A *binary* mask (values only
    ``{0, v}``) with more than one connected object is almost always a foreground mask, not instance
    labels, and would teach a model to merge nuclei; it is rejected unless `label_components` is True,
    which labels connected components (:func:`skimage.measure.label`; regions of different labels stay
    separate). Likewise a *class mask* (far more separate objects than label values) is rejected, and so
    is an image of intensities given as a mask (many small patches of equal value, neighbouring pixels
    that mostly differ), whatever `label_components`. With `annotation` (ground truth), a label made of
    separate pieces gives an :class:`InputWarning` naming the file and the label, unless its pieces all
    touch the image border or are separated by one other label. Holes inside labels are filled
    (:func:`stardist.fill_label_holes`) as StarDist expects.

    Parameters
    ----------
    mask : ndarray
        ``YX`` label image (a trailing singleton channel is dropped).
    name : str
        Name used in error messages (file name).
    label_components : bool
        Label connected components (the CLI flag ``--label-components``).
    annotation : bool
        The mask is an annotation (training, ground truth): warn about labels made of separate pieces.
        False for predictions, whose objects may be cut by later, overlapping ones.
    """
    from skimage.measure import label as sk_label
    from stardist import fill_label_holes

    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        raise InputError(f"{name}: mask has shape {arr.shape}, a colour image; expected a 2D YX label image "
                         "(one integer id per object, 0 for background), e.g. a 16-bit TIFF")
    if arr.ndim != 2:
        raise InputError(f"{name}: mask has shape {arr.shape}; expected a 2D YX label image")
    if arr.size == 0:
        raise InputError(f"{name}: mask is empty (shape {arr.shape})")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"{name}: mask is not integer (dtype {arr.dtype}); expected instance labels 0, 1, 2, ...")
    if np.issubdtype(arr.dtype, np.signedinteger) and arr.min() < 0:
        raise InputError(f"{name}: mask has negative values (min {arr.min()}); expected labels >= 0")
    if not label_components:
        problem = binary_mask_problem(arr)
        if problem:
            raise InputError(f"{name}: mask looks {problem}, not instance labels; pass label_components=True "
                             "(CLI --label-components) to label its connected components")
    _check_label_structure(arr, name, label_components, annotation)
    if label_components:
        arr = sk_label(arr, background=0, connectivity=2)
    if arr.max(initial=0) > np.iinfo(np.uint32).max:
        # labels that do not fit uint32 (e.g. uint64 ids) are renumbered 1..N, never cast: a cast wraps them
        # around, so that distinct objects merge or vanish
        from skimage.segmentation import relabel_sequential

        arr = relabel_sequential(arr)[0]
    arr = compact_labels(arr)
    return np.ascontiguousarray(fill_label_holes(arr).astype(arr.dtype, copy=False))


def compact_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as uint16, or uint32 when an id does not fit: the one rule for label images written or
    returned. Never casts ids above the uint32 range (that would merge objects): those stay as they are."""
    top = int(np.max(labels, initial=0))
    if top <= np.iinfo(np.uint16).max:
        return labels.astype(np.uint16, copy=False)
    return labels.astype(np.uint32, copy=False) if top <= np.iinfo(np.uint32).max else labels


def check_annotations(masks: Sequence[np.ndarray], where: str, purpose: str = "to learn from") -> None:
    """Raise :class:`InputError` if every mask of a set is empty (only background): nothing `purpose`.
    Some empty masks are fine (images without objects); all of them are almost always the wrong files."""
    if len(masks) and all(int(np.max(m, initial=0)) == 0 for m in masks):
        raise InputError(f"{where}: all {len(masks)} mask(s) are empty (only background 0), nothing {purpose}; "
                         "are these the right masks?")
