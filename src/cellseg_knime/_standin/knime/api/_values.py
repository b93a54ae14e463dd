"""Stand-in internals: the data of logical-type columns (PNG image and Path cells) in tables.

In KNIME, ``knime._arrow`` stores a logical column as a pyarrow extension type over the storage type of
its Java value factory; pandas sees it as an extension dtype whose cells are decoded on access. This
module mirrors that for the stand-in (own code):

* :class:`LogicalArrowType` -- what ``ktype.to_pyarrow()`` returns; ``Table.from_pyarrow`` accepts it;
* :class:`LogicalDtype` / :class:`LogicalArray` -- what ``ktype.to_pandas()`` returns and what
  ``Table.to_pandas()`` gives for such columns. Each access of a cell decodes it anew, as in KNIME: a PNG
  cell reads back as what ``PIL.Image.open`` makes of the PNG bytes (a ``PngImageFile``; 16-bit grey
  stays mode ``I;16``), a Path cell as a ``knime.types.builtin.FSLocationValue``. As in KNIME, turning
  such a column into one numpy array (``df.values``, ``df.iterrows()``, ``Series.apply``) converts every
  image into pixels and fails unless pandas can stack them; take cells with ``list(df[column])`` or
  ``df[column].iloc[i]``.

Writing a PNG cell encodes the PIL image with ``image.save(buffer, format="PNG")`` (errors such as
``OSError: cannot write mode F as PNG`` come from Pillow, as in KNIME). Date/time columns exist as types
only: converting their data raises NotImplementedError (KNIME supports them; the nodes do not use them).
"""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
from pandas.api.extensions import ExtensionArray, ExtensionDtype, register_extension_dtype
from pandas.api.extensions import take as _take
from pandas.api.indexers import check_array_indexer
from pandas.api.types import is_integer, is_list_like

from . import schema as ks

_PNG = '{"value_factory_class":"org.knime.core.data.image.png.PNGImageValueFactory"}'
_PATH = '{"value_factory_class":"org.knime.filehandling.core.data.location.FSLocationValueFactory"}'


# ------------------------------------------------------------------ KNIME types <-> Arrow storage types
def arrow_type(ktype: ks.KnimeType) -> pa.DataType:
    """The Arrow storage type of a KNIME type (struct fields are named "0", "1", ... as in KNIME)."""
    if isinstance(ktype, ks.LogicalType):
        return LogicalArrowType(arrow_type(ktype.storage_type), ktype.logical_type)
    if isinstance(ktype, ks.ListType):
        return pa.list_(arrow_type(ktype.inner_type))
    if isinstance(ktype, ks.StructType):
        return pa.struct([(str(i), arrow_type(t)) for i, t in enumerate(ktype.inner_types)])
    primitive = {
        ks.int32(): pa.int32(),
        ks.int64(): pa.int64(),
        ks.double(): pa.float64(),
        ks.bool_(): pa.bool_(),
        ks.string(): pa.string(),
        ks.blob(): pa.large_binary(),
        ks.null(): pa.null(),
    }
    return primitive[ks.PrimitiveType(ktype._type_id)]  # type: ignore[attr-defined]


def ktype_of(dtype: pa.DataType) -> ks.KnimeType:
    """The KNIME type of a (checked) Arrow column type."""
    if isinstance(dtype, LogicalArrowType):
        return ks.LogicalType(dtype.logical_type, ktype_of(dtype.storage_type))
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return ks.list_(ktype_of(dtype.value_type))
    if pa.types.is_struct(dtype):
        return ks.struct(*[ktype_of(f.type) for f in dtype])
    primitive = {
        pa.int32(): ks.int32(),
        pa.int64(): ks.int64(),
        pa.float64(): ks.double(),
        pa.bool_(): ks.bool_(),
        pa.string(): ks.string(),
        pa.large_binary(): ks.blob(),
        pa.null(): ks.null(),
    }
    return primitive[dtype]


# ------------------------------------------------------------------ value factories: cell <-> storage
def _encode_png(image: Any) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"0": None, "1": buffer.getvalue()}  # (file store key, PNG bytes)


def _decode_png(storage: dict) -> Any:
    from PIL import Image

    return Image.open(io.BytesIO(storage["1"]))


def _encode_path(value: Any) -> dict:
    return {"0": value.fs_category, "1": value.fs_specifier, "2": value.path}


def _decode_path(storage: dict) -> Any:
    from knime.types.builtin import FSLocationValue

    return FSLocationValue(storage["0"], storage["1"], storage["2"])


_CODECS = {_PNG: (_encode_png, _decode_png), _PATH: (_encode_path, _decode_path)}


def _codec(logical_type: str) -> tuple:
    if logical_type not in _CODECS:
        name = ks._BY_LOGICAL_TYPE[logical_type].data_type if logical_type in ks._BY_LOGICAL_TYPE else logical_type
        raise NotImplementedError(
            f"The offline knime.extension stand-in cannot convert cells of type {name} (only PNG Image and "
            "Path cells); KNIME can"
        )
    return _CODECS[logical_type]


def encode(logical_type: str, value: Any) -> Any:
    """The storage value of a cell (None for a missing cell)."""
    return None if _is_missing(value) else _codec(logical_type)[0](value)


def decode(logical_type: str, storage: Any) -> Any:
    return None if storage is None else _codec(logical_type)[1](storage)


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and value != value)


def bundle_for_values(column: pd.Series) -> ks._Bundle | None:
    """The registered value type of an object column (the exact type of its first non-missing cell)."""
    for value in column:
        if not _is_missing(value):
            name = ks._type_name(type(value))
            name = ks._PROXIES.get(name, name)
            return ks._BY_PYTHON_TYPE.get(name)
    return None


# ------------------------------------------------------------------ Arrow extension type
class LogicalArrowType(pa.ExtensionType):
    """Arrow type of a logical column: the storage type plus the Java value factory (``logical_type``)."""

    def __init__(self, storage_type: pa.DataType, logical_type: str) -> None:
        self.logical_type = logical_type
        super().__init__(storage_type, "knime.logical_type")

    def __arrow_ext_serialize__(self) -> bytes:
        return self.logical_type.encode()

    @classmethod
    def __arrow_ext_deserialize__(cls, storage_type: pa.DataType, serialized: bytes) -> LogicalArrowType:
        return cls(storage_type, serialized.decode())

    def to_pandas_dtype(self) -> LogicalDtype:
        return LogicalDtype(self.logical_type)

    def __str__(self) -> str:
        return f"extension<knime.logical_type<{self.storage_type}, {self.logical_type}>>"


def to_arrow(logical_type: str, storage_values: list) -> pa.ExtensionArray:
    ext = LogicalArrowType(arrow_type(ks._bundle_for_logical_type(logical_type).storage()), logical_type)
    return pa.ExtensionArray.from_storage(ext, pa.array(storage_values, type=ext.storage_type))


# ------------------------------------------------------------------ pandas extension dtype and array
def _object_array(values: Any) -> np.ndarray:
    out = np.empty(len(values), dtype=object)
    for i, v in enumerate(values):
        out[i] = v
    return out


@register_extension_dtype
class LogicalDtype(ExtensionDtype):
    """pandas dtype of a logical column (``ktype.to_pandas()``)."""

    type = bytes
    na_value = None
    _metadata = ("logical_type",)
    _PATTERN = re.compile(r"knime\.pandas_type<.+, (\{.*\})>")

    def __init__(self, logical_type: str) -> None:
        ks._bundle_for_logical_type(logical_type)
        self.logical_type = logical_type

    @property
    def name(self) -> str:  # type: ignore[override]
        storage = arrow_type(ks._BY_LOGICAL_TYPE[self.logical_type].storage())
        return f"knime.pandas_type<{str(storage).replace(' ', '')}, {self.logical_type}>"

    @classmethod
    def construct_array_type(cls) -> type[LogicalArray]:
        return LogicalArray

    @classmethod
    def construct_from_string(cls, string: str) -> LogicalDtype:
        if not isinstance(string, str):
            raise TypeError(f"'construct_from_string' expects a string, got {type(string)}")
        match = cls._PATTERN.fullmatch(string)
        if match is None or match.group(1) not in ks._BY_LOGICAL_TYPE:
            raise TypeError(f"Cannot construct a '{cls.__name__}' from '{string}'")
        return cls(match.group(1))

    def __from_arrow__(self, array: pa.Array | pa.ChunkedArray) -> LogicalArray:
        chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
        values = [v for c in chunks for v in c.storage.to_pylist()]
        return LogicalArray(_object_array(values), self)

    def __str__(self) -> str:
        return self.name


class LogicalArray(ExtensionArray):
    """Cells of a logical column: storage values, decoded on access."""

    def __init__(self, values: np.ndarray, dtype: LogicalDtype) -> None:
        self._values = values
        self._dtype = dtype

    @classmethod
    def _from_sequence(cls, scalars: Any, *, dtype: Any = None, copy: bool = False) -> LogicalArray:
        if isinstance(dtype, str):
            dtype = pd.api.types.pandas_dtype(dtype)
        if isinstance(scalars, LogicalArray):
            return scalars.astype(dtype or scalars.dtype, copy=True)  # type: ignore[return-value]
        if not isinstance(dtype, LogicalDtype):
            raise TypeError("A column of KNIME logical cells needs its dtype (ktype.to_pandas())")
        return cls(_object_array([encode(dtype.logical_type, v) for v in scalars]), dtype)

    @classmethod
    def _from_factorized(cls, values: Any, original: Any) -> LogicalArray:
        raise NotImplementedError("KNIME logical columns cannot be created from factorized values")

    @property
    def dtype(self) -> LogicalDtype:
        return self._dtype

    def __len__(self) -> int:
        return len(self._values)

    def __getitem__(self, item: Any) -> Any:
        if is_integer(item):
            return decode(self._dtype.logical_type, self._values[item])
        item = check_array_indexer(self, item)
        return LogicalArray(self._values[item], self._dtype)

    def __setitem__(self, key: Any, value: Any) -> None:
        key = check_array_indexer(self, key)
        if is_list_like(value) and not is_integer(key):
            self._values[key] = _object_array([encode(self._dtype.logical_type, v) for v in value])
        else:
            self._values[key] = encode(self._dtype.logical_type, value)

    def __eq__(self, other: Any) -> Any:  # type: ignore[override]
        if isinstance(other, LogicalArray) and len(other) == len(self):
            return np.array([a == b for a, b in zip(self._values, other._values)], dtype=bool)
        return np.zeros(len(self), dtype=bool)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # as KNIME: numpy sees the decoded cells (images become pixel arrays)
        return np.array([self[i] for i in range(len(self))], dtype=object if dtype is None else dtype)

    def __arrow_array__(self, type: Any = None) -> pa.ExtensionArray:
        return to_arrow(self._dtype.logical_type, list(self._values))

    @property
    def nbytes(self) -> int:
        return int(sum(len(v.get("1") or b"") if isinstance(v, dict) else 0 for v in self._values))

    def isna(self) -> np.ndarray:
        return np.array([v is None for v in self._values], dtype=bool)

    def take(self, indices: Any, *, allow_fill: bool = False, fill_value: Any = None) -> LogicalArray:
        fill = encode(self._dtype.logical_type, fill_value) if allow_fill else None
        return LogicalArray(_take(self._values, indices, allow_fill=allow_fill, fill_value=fill), self._dtype)

    def copy(self) -> LogicalArray:
        return LogicalArray(self._values.copy(), self._dtype)

    @classmethod
    def _concat_same_type(cls, to_concat: Any) -> LogicalArray:
        to_concat = list(to_concat)
        return cls(np.concatenate([a._values for a in to_concat]), to_concat[0].dtype)

    def astype(self, dtype: Any, copy: bool = True) -> Any:
        dtype = pd.api.types.pandas_dtype(dtype)
        if isinstance(dtype, LogicalDtype):
            if dtype != self._dtype:
                raise TypeError(f"Cannot cast a {self._dtype} column to {dtype}")
            return self.copy() if copy else self
        return super().astype(dtype, copy=copy)
