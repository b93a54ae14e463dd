"""Stand-in of ``knime.api.schema``: KNIME column types, columns, schemas and port object specs.

Mirrors ``org.knime.python3/src/main/python/knime/api/schema.py`` (KNIME 5.x): singleton primitive
types, ``list_``/``struct``/``logical`` helpers, lazy ``_ColumnarView`` results for slicing/appending.
Type names (``str(ktype)``) are KNIME's: ``Number (Integer)``, ``String``, ``List (Collection of: ...)``,
``PNG Image``, ``Path``...

Logical types exist only for the Python value types that KNIME's Java side registers at start-up
(``org.knime.python3.arrow.types/plugin.xml``); the stand-in registers the ones the nodes use:
``PIL.Image.Image`` (PNG image cell), ``knime.types.builtin.FSLocationValue`` (Path cell) and the
date/time types (type level only: the stand-in cannot convert date/time data). ``logical(cls)`` of
any other class raises TypeError, as in KNIME.
"""

from __future__ import annotations

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
    INT = "Number (Integer)"
    LONG = "Number (Long Integer)"
    STRING = "String"
    DOUBLE = "Number (Float)"
    BOOL = "Boolean"
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
        return f"List (Collection of: {self._inner_type})"


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
        return _bundle_for_logical_type(self._logical_type).python_type

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
        bundle = _BY_LOGICAL_TYPE.get(self._logical_type)
        if bundle is None:
            return f"extension<logical={self.logical_type}, storage={self.storage_type}>"
        if self.proxy_type is not None:
            return f"extension<proxy={self.proxy_type}, internal={bundle.python_type}>"
        return bundle.data_type

    def to_pyarrow(self) -> Any:
        """The pyarrow extension type of columns of this type (e.g. for an empty ``pyarrow`` table)."""
        from knime.api import _values

        _bundle_for_logical_type(self._logical_type)
        return _values.LogicalArrowType(_values.arrow_type(self._storage_type), self._logical_type)

    def to_pandas(self) -> Any:
        """The pandas dtype of columns of this type (e.g. ``pd.Series([], dtype=ktype.to_pandas())``)."""
        return self.to_pyarrow().to_pandas_dtype()

    @staticmethod
    def supported_value_types() -> str:
        names = "\n".join(f"    {n}" for n in _BY_PYTHON_TYPE)
        return (
            f"Available value types:\n{names}\n"
            "plus int32(), int64(), double(), bool_(), string(), blob(), list_(), struct()"
        )


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
    """Binary data. Only a schema type: KNIME Python refuses to write binary data in tables."""
    return PrimitiveType(PrimitiveTypeId.BLOB, dict_encoding_key_type)


def list_(inner_type: KnimeType) -> ListType:
    return ListType(inner_type)


def struct(*inner_types: KnimeType) -> StructType:
    return StructType(inner_types)


# --------------------------------------------------------------------------- registered value types
class _Bundle:
    """A Python value factory as KNIME's Java side registers it: Java value factory, KNIME type name,
    storage type and the Python type of the values (its default representation)."""

    def __init__(self, java_value_factory: str, data_type: str, storage: Any, python_type: str) -> None:
        self.logical_type = '{"value_factory_class":"' + java_value_factory + '"}'
        self.data_type = data_type
        self.storage = storage  # () -> KnimeType
        self.python_type = python_type


class _ProxyConverter:
    """A non-default Python representation of a registered type (e.g. ``PngImageFile`` for PNG images)."""

    def __init__(self, compatible_type_name: str) -> None:
        self._name = compatible_type_name

    @property
    def compatible_type(self) -> type:
        import importlib

        module, _, qualname = self._name.rpartition(".")
        return getattr(importlib.import_module(module), qualname)


_TIME = "org.knime.core.data.v2.time."
_BY_LOGICAL_TYPE: dict[str, _Bundle] = {}
_BY_PYTHON_TYPE: dict[str, _Bundle] = {}
_PROXIES: dict[str, str] = {}  # proxy Python type name -> Python type name of the default representation


def _register(java_value_factory: str, data_type: str, storage: Any, python_type: str,
              is_default: bool = True) -> None:
    """What ``knime.api.types.register_python_value_factory`` does when Java registers a value factory."""
    bundle = _Bundle(java_value_factory, data_type, storage, python_type)
    if is_default:
        _BY_LOGICAL_TYPE[bundle.logical_type] = bundle
        _BY_PYTHON_TYPE[python_type] = bundle
    else:
        _PROXIES[python_type] = _BY_LOGICAL_TYPE[bundle.logical_type].python_type


# the subset of org.knime.python3.arrow.types/plugin.xml that the nodes use, in Java's order (for a Python
# type registered twice the later registration wins, as in KNIME); storage types as Java's data specs
_FILE_STORE = lambda: struct(string(), blob())  # noqa: E731 - KNIME's file-store backed cells (PNG)
_register("org.knime.filehandling.core.data.location.FSLocationValueFactory", "Path",
          lambda: struct(string(), string(), string()), "knime.types.builtin.FSLocationValue")
_register(_TIME + "LocalDateTimeValueFactory", "Local Date Time", lambda: struct(int64(), int64()),
          "datetime.datetime")
_register(_TIME + "ZonedDateTimeValueFactory2", "Zoned Date Time",
          lambda: struct(int64(), int64(), int32(), string()), "datetime.datetime")
_register(_TIME + "DurationValueFactory", "Duration", lambda: struct(int64(), int32()), "datetime.timedelta")
_register(_TIME + "LocalTimeValueFactory", "Local Time", int64, "datetime.time")
_register(_TIME + "LocalDateValueFactory", "Local Date", int64, "datetime.date")
_register("org.knime.core.data.image.png.PNGImageValueFactory", "PNG Image", _FILE_STORE, "PIL.Image.Image")
_register("org.knime.core.data.image.png.PNGImageValueFactory", "PNG Image", _FILE_STORE,
          "PIL.PngImagePlugin.PngImageFile", is_default=False)


def _bundle_for_logical_type(logical_type: str) -> _Bundle:
    if logical_type not in _BY_LOGICAL_TYPE:
        raise ValueError(
            f"The logical type {logical_type} is not compatible with any registered Python value factory."
        )
    return _BY_LOGICAL_TYPE[logical_type]


def _type_name(value_type: type) -> str:
    return f"{value_type.__module__}.{value_type.__qualname__}"


def logical(value_type: type) -> LogicalType:
    """The KNIME logical type for a registered Python value type (e.g. ``PIL.Image.Image`` -> PNG image).

    Raises TypeError if no PythonValueFactory is registered for exactly this type (not for subclasses).
    """
    if not isinstance(value_type, type):
        raise TypeError(f" The Python type '{value_type}' is not a type.")
    name = _type_name(value_type)
    proxy = None
    if name in _PROXIES:
        proxy = _ProxyConverter(_PROXIES[name])
        name = _PROXIES[name]
    if name not in _BY_PYTHON_TYPE:
        raise TypeError(
            f"""
            Could not find registered KNIME extension type for Python logical type {value_type}. 
            Call knime.api.schema.LogicalType.supported_value_types() to get a list of supported types and use one of these.
            """,  # noqa: W291 - KNIME's message
            TypeError(f"The python type {value_type} is not compatible with any registered Python value factory."),
        )
    bundle = _BY_PYTHON_TYPE[name]
    return LogicalType(bundle.logical_type, bundle.storage(), proxy)


def datetime(
    date: bool | None = True, time: bool | None = True, timezone: bool | None = False
) -> LogicalType:
    """Logical KNIME date/time type (Local DateTime, Local Date, Local Time or Zoned DateTime)."""
    if not date and not time:
        raise ValueError("Either date or time must be True")
    if timezone and not time:
        raise ValueError("Timezone is only supported if time is True")
    if date and time:
        name = "ZonedDateTimeValueFactory2" if timezone else "LocalDateTimeValueFactory"
    else:
        name = "LocalDateValueFactory" if date else "LocalTimeValueFactory"
    bundle = _BY_LOGICAL_TYPE['{"value_factory_class":"' + _TIME + name + '"}']
    return LogicalType(bundle.logical_type, bundle.storage())


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
