"""Stand-in of ``knime.api.schema``: KNIME column types, columns, schemas and port object specs.

Mirrors ``org.knime.python3/src/main/python/knime/api/schema.py`` (KNIME 5.x): singleton primitive
types, ``list_``/``struct``/``logical`` helpers, lazy ``_ColumnarView`` results for slicing/appending.
"""

from __future__ import annotations

import datetime as _dt
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from enum import Enum, unique
from typing import Any


class KnimeType:
    """Base class of all KNIME types."""

    def __init__(self) -> None:
        if type(self) is KnimeType:
            raise TypeError(f"{type(self)} is not supposed to be created directly")

    def __repr__(self) -> str:
        return str(self)


@unique
class PrimitiveTypeId(Enum):
    INT = "int32"
    LONG = "int64"
    STRING = "string"
    DOUBLE = "double"
    BOOL = "bool"
    BLOB = "blob"
    NULL = "null"


@unique
class DictEncodingKeyType(Enum):
    INT = "INT_KEY"
    LONG = "LONG_KEY"
    BYTE = "BYTE_KEY"


class _PrimitiveTypeSingletonsMetaclass(type):
    _instances_per_type: dict = {}

    def __call__(cls, dtype: PrimitiveTypeId, dict_encoding_key: DictEncodingKeyType | None = None):
        key = (dtype, dict_encoding_key)
        if key not in cls._instances_per_type:
            obj = cls.__new__(cls)
            obj.__init__(dtype, dict_encoding_key)
            cls._instances_per_type[key] = obj
        return cls._instances_per_type[key]


class PrimitiveType(KnimeType, metaclass=_PrimitiveTypeSingletonsMetaclass):
    """A primitive KNIME type; one singleton instance per (type id, dict encoding)."""

    def __init__(self, type_id: PrimitiveTypeId, key_type: DictEncodingKeyType | None = None) -> None:
        if not isinstance(type_id, PrimitiveTypeId):
            raise TypeError(
                f"{self.__class__.__name__} expected a {PrimitiveTypeId} instance but got {type_id}"
            )
        if key_type is not None and not isinstance(key_type, DictEncodingKeyType):
            raise TypeError(f"key_type must be a valid DictEncodingKeyType, got {key_type}")
        if key_type is not None and type_id not in (PrimitiveTypeId.STRING, PrimitiveTypeId.BLOB):
            raise TypeError(f"Dictionary only works for strings and binary blobs, not {type_id.value}")
        self._type_id = type_id
        self._key_type = key_type

    @property
    def dict_encoding_key_type(self) -> DictEncodingKeyType | None:
        return self._key_type

    @property
    def plain_type(self) -> PrimitiveType:
        return PrimitiveType(self._type_id)

    def __str__(self) -> str:
        if self._key_type is not None:
            return f"{self._type_id.value}[dict_encoding={self._key_type.value}]"
        return self._type_id.value


class ListType(KnimeType):
    def __init__(self, inner_type: KnimeType) -> None:
        if not isinstance(inner_type, KnimeType):
            raise TypeError(f"Cannot create list type with inner type {inner_type}, must be a KnimeType")
        self._inner_type = inner_type

    @property
    def inner_type(self) -> KnimeType:
        return self._inner_type

    def __eq__(self, other: object) -> bool:
        return other.__class__ == self.__class__ and self._inner_type == other._inner_type  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        return f"list<{self._inner_type}>"


class StructType(KnimeType):
    def __init__(self, inner_types: Iterable[KnimeType]) -> None:
        inner_types = tuple(inner_types)
        for t in inner_types:
            if not isinstance(t, KnimeType):
                raise TypeError(f"Cannot create struct type with inner type {t}, must be a KnimeType")
        self._inner_types = inner_types

    @property
    def inner_types(self) -> Iterable[KnimeType]:
        return self._inner_types

    def __eq__(self, other: object) -> bool:
        return other.__class__ == self.__class__ and tuple(self._inner_types) == tuple(other._inner_types)  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        return f"struct<{', '.join(str(t) for t in self._inner_types)}>"


class LogicalType(KnimeType):
    """A logical type: a KNIME Java value factory (JSON string) on top of a physical storage type."""

    def __init__(self, logical_type: str, storage_type: KnimeType, proxy_type_converter: Any = None) -> None:
        self._logical_type = logical_type
        self._storage_type = storage_type
        self._proxy_type_converter = proxy_type_converter

    @property
    def logical_type(self) -> str:
        return self._logical_type

    @property
    def storage_type(self) -> KnimeType:
        return self._storage_type

    @property
    def value_type(self) -> str:
        """Name of the Python type of the values (the registered default Python representation)."""
        for name, (factory, _storage, is_default) in _VALUE_TYPES.items():
            if is_default and _value_factory(factory) == self._logical_type:
                return name
        raise ValueError(f"No PythonValueFactory registered for {self._logical_type}")

    @property
    def proxy_type(self) -> Any:
        return None if self._proxy_type_converter is None else self._proxy_type_converter.compatible_type

    def __eq__(self, other: object) -> bool:
        return (
            other.__class__ == self.__class__
            and other.logical_type == self.logical_type  # type: ignore[attr-defined]
            and other.storage_type == self.storage_type  # type: ignore[attr-defined]
            and other.proxy_type == self.proxy_type  # type: ignore[attr-defined]
        )

    def __hash__(self) -> int:
        return hash(str(self))

    def __str__(self) -> str:
        try:
            return f"extension<{self.value_type}>"
        except ValueError:
            return f"extension<logical={self.logical_type}, storage={self.storage_type}>"

    @staticmethod
    def supported_value_types() -> str:
        names = "\n".join(f"    {n}" for n in _VALUE_TYPES)
        return f"Available value types:\n{names}\nplus int32(), int64(), double(), bool_(), string(), blob(), list_(), struct()"


# --------------------------------------------------------------------------- type helpers
def int32() -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.INT)


def int64() -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.LONG)


def double() -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.DOUBLE)


def bool_() -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.BOOL)


def null() -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.NULL)


def string(dict_encoding_key_type: DictEncodingKeyType | None = None) -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.STRING, dict_encoding_key_type)


def blob(dict_encoding_key_type: DictEncodingKeyType | None = None) -> PrimitiveType:
    return PrimitiveType(PrimitiveTypeId.BLOB, dict_encoding_key_type)


def list_(inner_type: KnimeType) -> ListType:
    return ListType(inner_type)


def struct(*inner_types: KnimeType) -> StructType:
    return StructType(inner_types)


def _value_factory(java_class: str) -> str:
    return '{"value_factory_class":"' + java_class + '"}'


_TIME = "org.knime.core.data.v2.time."
# Python value type name -> (Java value factory, storage type factory, is default Python representation),
# mirroring org.knime.python3.arrow.types/plugin.xml. PNG images are file-store backed (storage approximated).
_VALUE_TYPES: dict[str, tuple[str, Any, bool]] = {
    "datetime.datetime": (
        _TIME + "ZonedDateTimeValueFactory2",
        lambda: struct(int64(), int64(), int32(), string()),
        True,
    ),
    "datetime.date": (_TIME + "LocalDateValueFactory", int64, True),
    "datetime.time": (_TIME + "LocalTimeValueFactory", int64, True),
    "datetime.timedelta": (_TIME + "DurationValueFactory", lambda: struct(int64(), int32()), True),
    "PIL.Image.Image": (
        "org.knime.core.data.image.png.PNGImageValueFactory",
        lambda: struct(string(), blob()),
        True,
    ),
    "PIL.PngImagePlugin.PngImageFile": (
        "org.knime.core.data.image.png.PNGImageValueFactory",
        lambda: struct(string(), blob()),
        False,
    ),
}


def _type_name(value_type: type) -> str:
    return f"{value_type.__module__}.{value_type.__qualname__}"


def logical(value_type: type) -> LogicalType:
    """Create the KNIME logical type for a Python value type (e.g. ``PIL.Image.Image`` -> PNG image).

    Raises TypeError if no PythonValueFactory is registered for the type.
    """
    name = _type_name(value_type) if isinstance(value_type, type) else str(value_type)
    if name not in _VALUE_TYPES:
        raise TypeError(
            f"Could not find registered KNIME extension type for Python logical type {value_type}. "
            "Call knime.api.schema.LogicalType.supported_value_types() to get a list of supported types."
        )
    factory, storage, _ = _VALUE_TYPES[name]
    return LogicalType(_value_factory(factory), storage())


def datetime(
    date: bool | None = True, time: bool | None = True, timezone: bool | None = False
) -> LogicalType:
    """Logical KNIME date/time type (Local DateTime, Local Date, Local Time or Zoned DateTime)."""
    if not date and not time:
        raise ValueError("Either date or time must be True")
    if timezone and not time:
        raise ValueError("Timezone is only supported if time is True")
    if date and time and not timezone:
        return LogicalType(_value_factory(_TIME + "LocalDateTimeValueFactory"), struct(int64(), int64()))
    if date and time:
        return logical(_dt.datetime)
    return logical(_dt.date) if date else logical(_dt.time)


# --------------------------------------------------------------------------- port object specs
class PortObjectSpec(ABC):
    """Base protocol for port object specs: conversion from/to a JSON-serializable dict."""

    @abstractmethod
    def serialize(self) -> dict:
        pass

    @classmethod
    @abstractmethod
    def deserialize(cls, data: dict, java_callback: Any = None) -> PortObjectSpec:
        pass


class BinaryPortObjectSpec(PortObjectSpec):
    def __init__(self, id: str) -> None:
        self._id = id

    @property
    def id(self) -> str:
        return self._id

    def serialize(self) -> dict:
        return {"id": self._id}

    @classmethod
    def deserialize(cls, data: dict) -> BinaryPortObjectSpec:  # type: ignore[override]
        return cls(data["id"])


class ImagePortObjectSpec(PortObjectSpec):
    def __init__(self, format: str | Enum) -> None:
        self._format = format if isinstance(format, str) else format.value

    @property
    def format(self) -> str:
        return self._format

    def serialize(self) -> dict:
        return {"format": self._format}

    @classmethod
    def deserialize(cls, data: dict) -> ImagePortObjectSpec:  # type: ignore[override]
        return cls(data["format"])


# --------------------------------------------------------------------------- columns and schema
class Column:
    """A column of a schema: KNIME type, name and optional metadata."""

    ktype: KnimeType
    name: str
    metadata: dict | None

    def __init__(self, ktype: KnimeType | type, name: str, metadata: dict | None = None) -> None:
        if not isinstance(ktype, KnimeType):
            try:
                ktype = logical(ktype)  # type: ignore[arg-type]
            except TypeError as e:
                raise TypeError(
                    f"Could not create column with type {ktype}, please use a supported column type", e
                ) from e
        if not isinstance(name, str):
            raise TypeError(f"Column name must be of type string, but got {type(name)}")
        if name.strip() == "":
            raise ValueError("Column name may not be empty")
        self.ktype = ktype
        self.name = name
        self.metadata = metadata

    def __str__(self) -> str:
        meta = "" if self.metadata is None else f", {self.metadata}"
        return f"{self.__class__.__name__}<'{self.name}', {self.ktype}{meta}>"

    __repr__ = __str__

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Column)
            and self.ktype == other.ktype
            and self.name == other.name
            and self.metadata == other.metadata
        )

    __hash__ = None  # type: ignore[assignment]


class _Columnar(ABC):
    """Columnar data (Schema, Table): slicing/appending return lazy ``_ColumnarView`` objects."""

    @property
    @abstractmethod
    def num_columns(self) -> int: ...

    @property
    @abstractmethod
    def column_names(self) -> list: ...

    def insert(self, other: _Columnar | Column, at: int) -> _ColumnarView:
        n = self.num_columns
        indices = list(range(n))
        added = 1 if isinstance(other, Column) else other.num_columns
        indices[at:at] = [i + n for i in range(added)]
        return self.append(other)[indices]

    def remove(self, slicing: str | int | list[str]) -> _ColumnarView:
        names = list(self.column_names)
        if isinstance(slicing, list):
            missing = [s for s in slicing if s not in names]
            if missing:
                raise ValueError(
                    f"The following values ({' '.join(missing)}) did not match any in {type(self)}"
                )
            keep = [c for c in names if c not in slicing]
        elif isinstance(slicing, int):
            if not 0 <= slicing < len(names):
                raise IndexError(f"Index out of bounds. Choose an index between 0,{len(names)}.")
            keep = names[:slicing] + names[slicing + 1 :]
        elif isinstance(slicing, str):
            names.remove(slicing)
            keep = names
        else:
            raise TypeError(f"Could not match input type {type(slicing)}.")
        return _ColumnarView(self, _ColumnSlicingOperation(keep))

    def __getitem__(self, slicing: Any) -> _ColumnarView:
        if isinstance(slicing, int) and slicing >= self.num_columns:
            raise IndexError(
                f"Index {slicing} is too large for {self.__class__.__name__} with {self.num_columns} columns"
            )
        return _ColumnarView(self, _ColumnSlicingOperation(slicing))

    def append(self, other: Any) -> _ColumnarView:
        return _ColumnarView(self, _AppendOperation(other))

    @abstractmethod
    def _select_columns(self, selection: Any) -> Any: ...

    @abstractmethod
    def _append(self, other: Any) -> Any: ...


class _ColumnarView(_Columnar):
    """Lazy result of slicing/appending; ``get()`` materializes it. Attribute access is delegated."""

    def __init__(self, delegate: _Columnar, operation: _ColumnarOperation) -> None:
        self._delegate = delegate
        self._operation = operation
        self._cache: Any = None

    @property
    def delegate(self) -> _Columnar:
        return self._delegate

    @property
    def operation(self) -> _ColumnarOperation:
        return self._operation

    @property
    def num_columns(self) -> int:
        return self.get().num_columns

    @property
    def column_names(self) -> list:
        return self.get().column_names

    def get(self, cache: bool = True) -> Any:
        if self._cache is not None:
            return self._cache
        source = (
            self._delegate.get(cache=False) if isinstance(self._delegate, _ColumnarView) else self._delegate
        )
        out = self._operation.apply(source)
        if cache:
            self._cache = out
        return out

    def _select_columns(self, selection: Any) -> Any:
        raise NotImplementedError("Cannot execute column selection on a view, do that on real data instead!")

    def _append(self, other: Any) -> Any:
        raise NotImplementedError("Cannot execute 'append' on a view, do that on real data instead!")

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_delegate", "_operation", "_cache"):
            raise AttributeError(name)
        return getattr(self.get(), name)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.get())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _ColumnarView):
            other = other.get()
        return self.get() == other

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        return f"ColumnarView<delegate={self._delegate}, op={self._operation}>"


class _ColumnarOperation(ABC):
    @abstractmethod
    def apply(self, input: Any) -> Any: ...


class _ColumnSlicingOperation(_ColumnarOperation):
    def __init__(self, col_slice: Any) -> None:
        self._col_slice = col_slice

    def apply(self, input: Any) -> Any:
        return input._select_columns(self._col_slice)

    def __str__(self) -> str:
        return f"ColumnSlicingOp({self._col_slice})"


class _AppendOperation(_ColumnarOperation):
    def __init__(self, other: Any) -> None:
        self._other = other

    def apply(self, input: Any) -> Any:
        other = self._other.get() if isinstance(self._other, _ColumnarView) else self._other
        return input._append(other)

    def __str__(self) -> str:
        return f"AppendOp({self._other})"


class Schema(_Columnar, PortObjectSpec):
    """Column types, names and metadata of a table. Also the spec of table ports in ``configure``."""

    @classmethod
    def from_columns(cls, columns: Sequence[Column] | Column) -> Schema:
        if isinstance(columns, Column):
            columns = [columns]
        try:
            columns = list(columns)
        except TypeError as e:
            raise TypeError(f"Columns needs to be an iterable, but is {type(columns)}") from e
        for col in columns:
            if not isinstance(col, Column):
                raise TypeError(f"Can only instantiate a schema from columns, not {type(col)}")
        return cls([c.ktype for c in columns], [c.name for c in columns], [c.metadata for c in columns])

    @classmethod
    def from_types(cls, ktypes: list, names: list[str], metadata: list | None = None) -> Schema:
        return cls(ktypes, names, metadata)

    def __init__(
        self, ktypes: Sequence[Any], names: Sequence[str], metadata: Sequence[Any] | None = None
    ) -> None:
        if not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"Schema expected names to be a sequence of strings, but got {type(names)}")
        if len(ktypes) != len(names):
            raise ValueError(f"Number of types must match number of names, but {len(ktypes)} != {len(names)}")
        if metadata is None:
            metadata = [None] * len(ktypes)
        elif len(metadata) != len(ktypes):
            raise ValueError(
                f"Number of types must match number of metadata fields, but {len(ktypes)} != {len(metadata)}"
            )
        self._columns = [Column(t, n, m) for t, n, m in zip(ktypes, names, metadata, strict=True)]

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self._columns]

    @property
    def num_columns(self) -> int:
        return len(self._columns)

    def __iter__(self) -> Iterator[Column]:
        yield from self._columns

    def __len__(self) -> int:
        return len(self._columns)

    def _select_columns(self, index: Any) -> Column | Schema:
        if isinstance(index, int):
            if index < 0:
                index += len(self._columns)
            if not 0 <= index < len(self._columns):
                raise IndexError(f"Index {index} does not exist in schema with {self.num_columns} columns")
            return self._columns[index]
        if isinstance(index, str):
            for c in self._columns:
                if c.name == index:
                    return c
            raise IndexError(f"Schema has no column named '{index}'")
        if isinstance(index, slice):
            return self.__class__.from_columns(self._columns[index])
        if isinstance(index, list):
            picked = []
            for col in index:
                if isinstance(col, str):
                    if col not in self.column_names:
                        raise IndexError(f"Invalid column selection, '{col}' is not available in {self}")
                    picked.append(self.column_names.index(col))
                elif isinstance(col, int) and 0 <= col < self.num_columns:
                    picked.append(col)
                else:
                    raise IndexError(f"Invalid column index {col}")
            return self.__class__.from_columns([self._columns[i] for i in picked])
        raise TypeError(
            f"{self.__class__.__name__} can only be indexed by int, string, slice, list of int, "
            f"or list of string, not {type(index)}"
        )

    def _append(self, other: Any) -> Schema:
        cols = list(self._columns)
        if isinstance(other, Schema):
            cols.extend(other._columns)
        elif isinstance(other, Column):
            cols.append(other)
        elif isinstance(other, Sequence):
            cols.extend(self.__class__.from_columns(other))
        else:
            raise TypeError(
                f"Can only append columns, column lists or schemas to this schema, not {type(other)}"
            )
        return self.__class__.from_columns(cols)

    def __eq__(self, other: object) -> bool:
        return other.__class__ == self.__class__ and list(self._columns) == list(other._columns)  # type: ignore[attr-defined]

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        sep = ",\n\t"
        return f"{self.__class__.__name__}<\n\t{sep.join(str(c) for c in self._columns)}>"

    __repr__ = __str__

    def serialize(self) -> dict:
        names = self.column_names
        if len(names) != len(set(names)):
            raise RuntimeError(
                "Duplicate column names detected, please make sure all columns have unique names"
            )
        return {
            "columnNames": names,
            "types": [str(c.ktype) for c in self._columns],
            "columnMetaData": [c.metadata for c in self._columns],
        }

    @classmethod
    def deserialize(cls, table_schema: dict) -> Schema:  # type: ignore[override]
        raise NotImplementedError(
            "Deserializing KNIME table specs requires KNIME (not available in the stand-in)"
        )
