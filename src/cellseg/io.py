"""Temporary compatibility module: the former ``cellseg.io``, split by concept into

* :mod:`cellseg.files` -- atomic writes, output location checks, memory;
* :mod:`cellseg.images` -- image files, TIFF/PNG bytes, normalisation, :class:`InputWarning`;
* :mod:`cellseg.masks` -- label masks and annotations;
* :mod:`cellseg.folders` -- image folders and image/mask folder pairs;
* :mod:`cellseg.render` -- label overlays for previews.

This module only re-exports their names for imports not yet moved; it will be deleted. Import from the
modules above. (Patching a name here does not change the module that uses it.)
"""

from __future__ import annotations

from cellseg.files import (
    Recogniser,
    atomic_folder,
    atomic_path,
    available_memory,
    check_distinct_outputs,
    check_output_file,
    check_output_folder,
    check_outside_inputs,
    check_writable_location,
    format_bytes,
    set_default_mode,
    write_bytes_atomic,
)
from cellseg.files import _exchange as _exchange
from cellseg.files import _renameat2 as _renameat2
from cellseg.folders import by_stem, list_images, load_images, load_pairs
from cellseg.images import (
    MAX_CHANNELS,
    MAX_UNLABELLED_PAGES,
    SUPPORTED_SUFFIXES,
    InputWarning,
    check_image,
    decode_tiff,
    encode_png,
    encode_tiff,
    normalize,
    read_image,
    write_image,
)
from cellseg.masks import (
    INTENSITY_NEIGHBOUR_DIFF,
    INTENSITY_PATCH_SIZE,
    binary_mask_problem,
    check_annotations,
    check_mask,
    read_mask,
)
from cellseg.render import overlay

__all__ = [
    "INTENSITY_NEIGHBOUR_DIFF",
    "INTENSITY_PATCH_SIZE",
    "MAX_CHANNELS",
    "MAX_UNLABELLED_PAGES",
    "SUPPORTED_SUFFIXES",
    "InputWarning",
    "Recogniser",
    "atomic_folder",
    "atomic_path",
    "available_memory",
    "binary_mask_problem",
    "by_stem",
    "check_annotations",
    "check_distinct_outputs",
    "check_image",
    "check_mask",
    "check_output_file",
    "check_output_folder",
    "check_outside_inputs",
    "check_writable_location",
    "decode_tiff",
    "encode_png",
    "encode_tiff",
    "format_bytes",
    "list_images",
    "load_images",
    "load_pairs",
    "normalize",
    "overlay",
    "read_image",
    "read_mask",
    "set_default_mode",
    "write_bytes_atomic",
    "write_image",
]
