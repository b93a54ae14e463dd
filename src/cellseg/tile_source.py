"""Region reader of a large image for tiled prediction, and the header checks it needs.

:class:`TileSource` reads ``[y0:y1, x0:x1]`` regions of a ``YX``/``YXC`` image without holding the whole
image: an uncompressed TIFF row by row (``os.pread``: a memory map's touched pages would count in the
resident memory), a compressed or tiled TIFF segment by segment (tifffile's ``TiffPage.decode`` of the
strips/tiles a region covers), other formats and arrays whole. :func:`stack_problem` refuses TIFF
stacks that are not one 2D image; :func:`image_size` reads (H, W) from a file header.
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from cellseg import images as cimages
from cellseg.errors import InputError
from cellseg.images import MAX_UNLABELLED_PAGES

#: Most pixels sampled (per channel) for the normalisation percentiles of a large image.
SAMPLE_PIXELS = 1 << 19
#: Side of the blocks read while sampling.
_SAMPLE_BLOCK = 1024


class TileSource:
    """Region reader of a ``YX``/``YXC`` image: an array, an uncompressed TIFF's rows or a TIFF's segments."""

    def __init__(self, source: str | os.PathLike | np.ndarray) -> None:
        self.tif: Any = None
        self.array: np.ndarray | None = None
        if isinstance(source, np.ndarray):
            self.name = "image"
            self.array = source.astype(np.uint8) if source.dtype == bool else source
            self._set_layout(source.shape, self.array.dtype)
            return
        if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
            raise InputError(f"source={source!r} must be an image file (path) or a YX/YXC numpy array, not "
                             f"{type(source).__name__}")
        path = Path(source)
        self.name = str(path)
        if not path.is_file():
            raise InputError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
        if path.suffix.lower() not in (".tif", ".tiff"):
            self.array = cimages.read_image(path)
            self._set_layout(self.array.shape, self.array.dtype)
            return
        self._open_tiff(path)

    def _set_layout(self, shape: tuple[int, ...], dtype: Any) -> None:
        if len(shape) not in (2, 3) or min(shape[:2]) < 1:
            raise InputError(f"{self.name}: image has shape {tuple(shape)}; expected a 2D YX or YXC image")
        self.full_shape = tuple(int(s) for s in shape)
        self.shape = (int(shape[0]), int(shape[1]))
        self.channels = 1 if len(shape) == 2 else int(shape[2])
        self.ndim = len(shape)
        self.dtype = np.dtype(dtype)
        if not (np.issubdtype(self.dtype, np.integer) or np.issubdtype(self.dtype, np.floating)
                or self.dtype == bool):
            raise InputError(f"{self.name}: image dtype {self.dtype} is not numeric")

    def _open_tiff(self, path: Path) -> None:
        import tifffile

        try:
            self.tif = tifffile.TiffFile(path)
            page = self.tif.pages.first
            shape = tuple(page.shape)
            size = path.stat().st_size
            ends = np.asarray(page.dataoffsets, np.int64) + np.asarray(page.databytecounts, np.int64)
        except Exception as exc:  # tifffile raises many kinds on broken files
            self.close()
            raise InputError(f"{path}: cannot read TIFF, the file is truncated or corrupt "
                             f"({type(exc).__name__}: {exc})") from exc
        self.page = page
        if len(ends) == 0 or ends.max() > size or (np.asarray(page.databytecounts) == 0).any():
            self.close()
            raise InputError(f"{path}: TIFF is truncated (image data ends at byte {int(ends.max(initial=0))}, "
                             f"the file has {size} bytes)")
        if len(shape) == 3 and page.planarconfig == 2:  # separate planes (CYX)
            self.close()
            raise InputError(f"{path}: planar multi-channel TIFFs cannot be streamed; save channels last "
                             "(contiguous) or predict without tiling")
        try:
            stack = stack_problem(path, self.tif)
        except Exception as exc:  # tifffile raises many kinds on broken files
            stack = f"{path}: cannot read TIFF, the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        if stack is not None:
            with contextlib.suppress(Exception):
                self.close()
            raise InputError(stack)
        self._set_layout(shape, page.dtype)
        self.contiguous = None
        if page.is_memmappable:
            # uncompressed, in one block: read rows with pread (a memory map's touched pages count in RSS)
            self.contiguous = (int(page.dataoffsets[0]), np.dtype(page.dtype).newbyteorder(self.tif.byteorder))
            self.fd = os.open(path, os.O_RDONLY)
        else:
            self.seg_shape = ((page.tilelength, page.tilewidth) if page.is_tiled
                              else (page.rowsperstrip, self.shape[1]))
            self.seg_grid = (math.ceil(self.shape[0] / self.seg_shape[0]), math.ceil(self.shape[1] / self.seg_shape[1]))

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The region ``[y0:y1, x0:x1]`` as a new array (YX or YXC, the file's dtype)."""
        if self.array is not None:
            return np.array(self.array[y0:y1, x0:x1])
        if self.contiguous is not None:
            return self._read_contiguous(y0, y1, x0, x1)
        out = np.empty((y1 - y0, x1 - x0) + ((self.channels,) if self.ndim == 3 else ()), self.dtype)
        sh, sw = self.seg_shape
        fh = self.tif.filehandle
        for gy in range(y0 // sh, (y1 - 1) // sh + 1):
            for gx in range(x0 // sw, (x1 - 1) // sw + 1):
                index = gy * self.seg_grid[1] + gx
                try:
                    fh.seek(self.page.dataoffsets[index])
                    data = fh.read(self.page.databytecounts[index])
                    seg = self.page.decode(data, index, jpegtables=self.page.jpegtables)[0]
                except Exception as exc:
                    raise InputError(f"{self.name}: cannot decode image data at segment {index}, the file is "
                                     f"truncated or corrupt ({type(exc).__name__}: {exc})") from exc
                seg = seg.reshape(seg.shape[-3:]) if self.ndim == 3 else seg.reshape(seg.shape[-3:-1])
                sy0, sx0 = gy * sh, gx * sw
                ya, yb = max(y0, sy0), min(y1, sy0 + seg.shape[0])
                xa, xb = max(x0, sx0), min(x1, sx0 + seg.shape[1])
                out[ya - y0:yb - y0, xa - x0:xb - x0] = seg[ya - sy0:yb - sy0, xa - sx0:xb - sx0]
        return out

    def _read_contiguous(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        offset, dtype = self.contiguous  # type: ignore[misc]
        px = self.channels * dtype.itemsize
        row_bytes = self.shape[1] * px
        out = np.empty((y1 - y0, (x1 - x0) * self.channels), dtype)
        n = (x1 - x0) * px
        for k, y in enumerate(range(y0, y1)):
            data = os.pread(self.fd, n, offset + y * row_bytes + x0 * px)
            if len(data) != n:
                raise InputError(f"{self.name}: TIFF is truncated (row {y} cannot be read)")
            out[k] = np.frombuffer(data, dtype)
        out = out.astype(dtype.newbyteorder("="), copy=False)
        return out.reshape(y1 - y0, x1 - x0, self.channels) if self.ndim == 3 else out

    def sample(self, max_pixels: int = SAMPLE_PIXELS) -> np.ndarray:
        """A strided subsample (every ``s``-th pixel per axis) with at most about ``max_pixels`` pixels."""
        h, w = self.shape
        s = max(1, math.ceil(math.sqrt(h * w / max_pixels)))
        if self.array is not None:
            return np.array(self.array[::s, ::s])
        if self.contiguous is not None:
            return np.stack([self._read_contiguous(y, y + 1, 0, w)[0, ::s] for y in range(0, h, s)])
        block = max(s, _SAMPLE_BLOCK // s * s)
        rows = []
        for y in range(0, h, block):
            parts = [self.read(y, min(h, y + block), x, min(w, x + block))[::s, ::s] for x in range(0, w, block)]
            rows.append(np.concatenate(parts, axis=1))
        return np.concatenate(rows, axis=0)

    def close(self) -> None:
        if getattr(self, "contiguous", None) is not None:
            os.close(self.fd)
            self.contiguous = None
        if self.tif is not None:
            self.tif.close()
            self.tif = None
        self.array = None


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) from the file header (TIFF) or by reading the image (other formats)."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                shape = tif.pages.first.shape
                stack = stack_problem(path, tif, streaming=False)
        except Exception as exc:
            raise InputError(f"{path}: cannot read TIFF header, the file is truncated or corrupt ({exc})") from exc
        if stack is not None:
            raise InputError(stack)
        return int(shape[0]), int(shape[1])
    from PIL import Image

    try:
        with Image.open(path) as im:
            return int(im.height), int(im.width)
    except Exception as exc:
        raise InputError(f"{path}: cannot read image header ({exc})") from exc


def stack_problem(path: Path, tif: Any, streaming: bool = True) -> str | None:
    """Why the TIFF ``tif`` cannot be segmented as one 2D image (None if it can), judged from its first
    series' axes as :func:`cellseg.images.read_image` does: Z stacks and time series (axes ``Z``, ``T``) and
    stacks of more than ``MAX_UNLABELLED_PAGES`` pages without axes metadata are refused. Channels
    stored as separate pages (ImageJ/OME ``C``, or a few unlabelled pages, which ``read_image`` reads as
    channels) cannot be streamed: refused only when ``streaming``."""
    series = tif.series[0]
    axes, shape = str(series.axes), tuple(int(n) for n in series.shape)
    size = "x".join(str(n) for n in shape)
    stacks = [(a, n) for a, n in zip(axes, shape) if a not in "YXCS" and n > 1]
    named = {"Z": ("Z stack", "slices", "slice"), "T": ("time series", "time points", "time point")}
    for a, n in stacks:
        if a in named:
            kind, planes, plane = named[a]
            return (f"{path}: a {kind} of {n} {planes} (axes {axes}, shape {size}), not a 2D image; cellseg "
                    f"segments 2D images: save one {plane} or a projection as its own file")
    max_pages = MAX_UNLABELLED_PAGES
    samples = any(a in "CS" and n > 1 for a, n in zip(axes, shape))
    if stacks and (len(stacks) > 1 or stacks[0][1] > max_pages or samples):
        total = math.prod(n for _, n in stacks)
        return (f"{path}: a stack of {total} pages (axes {axes}, shape {size}) without metadata that says they "
                "are channels; cellseg segments 2D images (a Z stack or time series needs one plane or a "
                "projection saved as its own file)")
    paged = stacks or [(a, n) for a, n in zip(axes, shape) if a == "C" and n > 1]
    if paged and streaming:
        return (f"{path}: stores {paged[0][1]} channels as separate pages (axes {axes}, shape {size}); tiled "
                "prediction reads channels-last images: save it as YXC or predict it untiled (--tiled never)")
    return None
