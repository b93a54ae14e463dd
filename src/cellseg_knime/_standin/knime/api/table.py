"""Stand-in of ``knime.api.table``: ``Table`` and ``BatchOutputTable`` backed by pandas.

Mirrors ``org.knime.python3/src/main/python/knime/api/table.py`` (KNIME 5.x) with the RowID
semantics of KNIME's Arrow backend: the pandas index is the RowID (``"Row0"``, ``"Row1"``, ...).
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from . import schema as ks

_ROW_ID = "<RowID>"
_ROW_ID_MODES = ("auto", "keep", "generate")


class _Tabular(ks._Columnar):
    """Common interface of Table and _TabularView."""

    @property
    @abstractmethod
    def num_rows(self) -> int: ...

    @property
    def shape(self) -> tuple[int, int]:
        """(num_columns, num_rows) -- note the order, as in KNIME."""
        return (self.num_columns, self.num_rows)

    def __getitem__(self, slicing: Any) -> _TabularView:  # type: ignore[override]
        """``table[column_slice]`` or ``table[column_slice, row_slice]`` (lazy view; ``.get()`` materializes)."""
        if isinstance(slicing, int) and slicing >= self.num_columns:
            raise IndexError(
                f"Index {slicing} is too large for {self.__class__.__name__} with {self.num_columns} columns"
            )
        if isinstance(slicing, tuple):
            column_sliced = _TabularView(self, ks._ColumnSlicingOperation(slicing[0]))
            return _TabularView(column_sliced, _RowSlicingOperation(slicing[1]))
        return _TabularView(self, ks._ColumnSlicingOperation(slicing))

    def to_pandas(self, sentinel: str | int | None = None) -> Any:
        return self.get().to_pandas(sentinel)  # type: ignore[attr-defined]

    def to_pyarrow(self, sentinel: str | int | None = None) -> Any:
        return self.get().to_pyarrow(sentinel)  # type: ignore[attr-defined]

    @abstractmethod
    def _select_rows(self, selection: Any) -> Any: ...

    @property
    @abstractmethod
    def schema(self) -> ks.Schema: ...


class _TabularView(_Tabular, ks._ColumnarView):
    def __init__(self, delegate: _Tabular, operation: ks._ColumnarOperation) -> None:
        ks._ColumnarView.__init__(self, delegate, operation)

    __getitem__ = _Tabular.__getitem__

    @property
    def num_rows(self) -> int:
        return self.get().num_rows

    @property
    def schema(self) -> ks.Schema:
        return self.get().schema

    def _select_rows(self, selection: Any) -> Any:
        raise NotImplementedError("Cannot execute row selection on a view, do that on real data instead!")

    def __str__(self) -> str:
        return f"TableView<delegate={self._delegate}, op={self._operation}>"


class _RowSlicingOperation(ks._ColumnarOperation):
    def __init__(self, row_slice: Any) -> None:
        self._row_slice = row_slice

    def apply(self, input: Any) -> Any:
        return input._select_rows(self._row_slice) if isinstance(input, _Tabular) else input

    def __str__(self) -> str:
        return f"RowSlicingOp({self._row_slice})"


class Table(_Tabular):
    """A KNIME table. Create it with ``Table.from_pandas`` or ``Table.from_pyarrow``."""

    def __init__(self) -> None:
        raise RuntimeError("Do not use this constructor directly, use the from_ methods instead")

    @staticmethod
    def from_pyarrow(data: Any, sentinel: str | int | None = None, row_ids: str = "auto") -> Table:
        """Create a table from a pyarrow.Table. ``row_ids``: "keep" (first column, string, is the RowID),
        "generate" (``Row{i}``), "auto" (first column if named "<RowID>", else generate)."""
        _check_mode(row_ids)
        df = data.to_pandas()
        first = df.columns[0] if len(df.columns) else None
        if row_ids == "keep" or (row_ids == "auto" and first == _ROW_ID):
            ids = df[first]
            if row_ids == "auto" and ids.dtype.kind in "iu":
                ids = ids.map(lambda n: f"Row{n}")
            elif not all(isinstance(v, str) for v in ids):
                raise TypeError("The RowID column must be of type string")
            df = df.drop(columns=[first]).set_axis(list(ids), axis=0)
            return _DataFrameTable(df, sentinel)
        return _DataFrameTable(_with_row_ids(df, "generate"), sentinel)

    @staticmethod
    def from_pandas(data: Any, sentinel: str | int | None = None, row_ids: str = "auto") -> Table:
        """Create a table from a pandas.DataFrame; its index becomes the RowID. ``row_ids``:
        "keep" (index as string), "generate" (``Row{i}`` by position), "auto" (integer index n -> ``Row{n}``,
        otherwise keep)."""
        _check_mode(row_ids)
        return _DataFrameTable(_with_row_ids(data, row_ids), sentinel)

    def to_batches(self) -> Iterator[Table]:
        return self.batches()

    def batches(self) -> Iterator[Table]:
        """Iterate over row batches. In KNIME only guaranteed for the unmodified tables passed to execute()."""
        raise RuntimeError(
            "Retrieving batches is only allowed for unmodified tables, as they are passed to execute()"
        )


class BatchOutputTable:
    """An output table assembled from batches with equal columns; a return value of ``execute``."""

    def __init__(self) -> None:
        raise RuntimeError(
            "Do not use this constructor directly, use the create or from_batches methods instead"
        )

    @staticmethod
    def create(row_ids: str = "keep") -> BatchOutputTable:
        """Empty BatchOutputTable. ``row_ids``: "keep" (DataFrame index as string RowID) or "generate"."""
        return _StandinBatchOutputTable(row_ids)

    @staticmethod
    def from_batches(generator: Any, row_ids: str = "generate") -> BatchOutputTable:
        out = BatchOutputTable.create(row_ids=row_ids)
        for b in generator:
            out.append(b)
        return out

    @abstractmethod
    def append(self, batch: Any) -> None:
        raise RuntimeError("Not implemented")

    @property
    @abstractmethod
    def num_batches(self) -> int:
        raise RuntimeError("Not implemented")


# ------------------------------------------------------------------ pandas-backed implementation
def _check_mode(row_ids: str) -> None:
    if row_ids not in _ROW_ID_MODES:
        raise ValueError(f"row_ids must be one of {_ROW_ID_MODES}, got {row_ids!r}")


def _with_row_ids(df: Any, row_ids: str) -> Any:
    import pandas as pd

    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"Expected a pandas.DataFrame, got {type(df)}")
    index = df.index
    if row_ids == "generate":
        ids = [f"Row{i}" for i in range(len(df))]
    elif row_ids == "auto" and index.dtype.kind in "iu":
        ids = [f"Row{n}" for n in index]
    else:
        ids = [str(v) for v in index]
    out = df.copy()
    out.index = pd.Index(ids, dtype=object)
    return out


def _sentinel_value(sentinel: str | int, dtype: Any) -> int:
    import numpy as np

    if sentinel in ("min", "max"):
        info = np.iinfo(np.int32 if str(dtype).lower() == "int32" else np.int64)
        return int(info.min if sentinel == "min" else info.max)
    return int(sentinel)


class _DataFrameTable(Table):
    """Table stored as a pandas.DataFrame whose index holds the RowIDs (strings)."""

    _batch_size: int | None = (
        None  # rows per batch in batches(); None = one batch (like knime.extension.testing)
    )

    def __init__(self, df: Any, sentinel: str | int | None = None) -> None:  # noqa: D107 - no super().__init__ on purpose
        if sentinel is not None:
            df = df.copy()
            for name in df.columns:
                if df[name].dtype.kind in "iu" or str(df[name].dtype) in ("Int32", "Int64"):
                    value = _sentinel_value(sentinel, df[name].dtype)
                    kind = "Int32" if str(df[name].dtype).lower() == "int32" else "Int64"
                    df[name] = df[name].astype(kind).mask(df[name] == value)
        self._df = df

    @property
    def num_rows(self) -> int:
        return len(self._df)

    @property
    def num_columns(self) -> int:
        return len(self._df.columns)

    @property
    def column_names(self) -> list[str]:
        return [str(c) for c in self._df.columns]

    @property
    def schema(self) -> ks.Schema:
        return _schema_from_df(self._df)

    def to_pandas(self, sentinel: str | int | None = None) -> Any:
        df = self._df.copy()
        if sentinel is not None:
            for name in df.columns:
                if str(df[name].dtype) in ("Int32", "Int64"):
                    value = _sentinel_value(sentinel, df[name].dtype)
                    df[name] = df[name].fillna(value).astype(str(df[name].dtype).lower())
        return df

    def to_pyarrow(self, sentinel: str | int | None = None) -> Any:
        import pyarrow as pa

        df = self.to_pandas(sentinel)
        data = {_ROW_ID: list(df.index)}
        for name in df.columns:
            data[str(name)] = [_arrow_value(v) for v in df[name]] if df[name].dtype == object else df[name]
        return pa.table(data)

    def batches(self) -> Iterator[Table]:
        size = self._batch_size or max(len(self._df), 1)
        for start in range(0, max(len(self._df), 1), size):
            yield _DataFrameTable(self._df.iloc[start : start + size])

    @property
    def num_batches(self) -> int:
        size = self._batch_size or max(len(self._df), 1)
        return max(1, -(-len(self._df) // size))

    def _select_columns(self, selection: Any) -> Table:
        names = self.column_names
        if isinstance(selection, int | str):
            selection = [selection]
        if isinstance(selection, slice):
            cols = names[selection]
        else:
            cols = []
            for c in selection:
                if isinstance(c, int):
                    cols.append(names[c])
                elif c in names:
                    cols.append(c)
                else:
                    raise IndexError(f"Invalid column selection, '{c}' is not available")
        return _DataFrameTable(self._df[cols])

    def _select_rows(self, selection: Any) -> Table:
        if not isinstance(selection, slice):
            raise TypeError("Rows can only be selected with a slice")
        return _DataFrameTable(self._df.iloc[selection])

    def _append(self, other: Any) -> Table:
        import pandas as pd

        if not isinstance(other, _DataFrameTable):
            raise TypeError(f"Can only append tables to a table, not {type(other)}")
        if list(other._df.index) != list(self._df.index):
            raise ValueError("Can only append tables with the same RowIDs")
        return _DataFrameTable(pd.concat([self._df, other._df], axis=1))

    def __str__(self) -> str:
        return f"Table<{self.num_rows} rows, {self.column_names}>"


def _arrow_value(value: Any) -> Any:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, Image.Image):
        import io

        buf = io.BytesIO()
        value.save(buf, format="PNG")
        return buf.getvalue()
    return value


class _StandinBatchOutputTable(BatchOutputTable):
    def __init__(self, row_ids: str = "keep") -> None:  # noqa: D107 - no super().__init__ on purpose
        if row_ids not in ("keep", "generate"):
            raise ValueError(f"row_ids must be 'keep' or 'generate', got {row_ids!r}")
        self._row_ids = row_ids
        self._batches: list[_DataFrameTable] = []
        self._seen_ids: set[str] = set()

    def append(self, batch: Any) -> None:
        import pandas as pd

        if isinstance(batch, pd.DataFrame):
            table = Table.from_pandas(batch, row_ids="keep")
        elif isinstance(batch, _Tabular):
            table = batch.get() if isinstance(batch, _TabularView) else batch
        else:  # pyarrow Table / RecordBatch: the first column holds the RowID in "keep" mode
            import pyarrow as pa

            batch = pa.Table.from_batches([batch]) if isinstance(batch, pa.RecordBatch) else batch
            table = Table.from_pyarrow(batch, row_ids="keep" if self._row_ids == "keep" else "generate")
        assert isinstance(table, _DataFrameTable)
        df = table._df
        if self._row_ids == "generate":
            offset = sum(b.num_rows for b in self._batches)
            df = df.set_axis([f"Row{offset + i}" for i in range(len(df))], axis=0)
        if self._batches:
            first = self._batches[0]
            if first.column_names != [str(c) for c in df.columns]:
                raise ValueError(
                    f"Batch columns {list(df.columns)} differ from the first batch {first.column_names}"
                )
        duplicates = self._seen_ids.intersection(df.index)
        if duplicates:
            raise ValueError(f"Duplicate RowIDs across batches (KNIME would fail): {sorted(duplicates)[:5]}")
        self._seen_ids.update(df.index)
        self._batches.append(_DataFrameTable(df))

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    # the following mirror knime.extension.testing._TestingBatchOutputTable (not part of the Arrow backend API)
    def batches(self) -> Iterator[Table]:
        return iter(self._batches)

    @property
    def num_rows(self) -> int:
        return sum(b.num_rows for b in self._batches)

    @property
    def num_columns(self) -> int:
        return len(self.column_names)

    @property
    def column_names(self) -> list[str]:
        return self._batches[0].column_names if self._batches else []

    @property
    def schema(self) -> ks.Schema:
        return self._batches[0].schema if self._batches else ks.Schema.from_columns([])

    def to_pandas(self, sentinel: str | int | None = None) -> Any:
        import pandas as pd

        return pd.concat([b.to_pandas(sentinel) for b in self._batches])


# ------------------------------------------------------------------ pandas dtype -> KNIME type
def _schema_from_df(df: Any) -> ks.Schema:
    return ks.Schema.from_columns([ks.Column(_ktype_of_series(df[c]), str(c)) for c in df.columns])


def _ktype_of_series(col: Any) -> ks.KnimeType:
    dtype = col.dtype
    name = str(dtype).lower()
    if dtype.kind == "b" or name == "boolean":
        return ks.bool_()
    if name in ("int8", "int16", "int32", "uint8", "uint16"):
        return ks.int32()
    if dtype.kind in "iu" or name.startswith(("int", "uint")):
        return ks.int64()
    if dtype.kind == "f" or name.startswith("float"):
        return ks.double()
    if dtype.kind == "M":
        return ks.datetime(timezone=getattr(dtype, "tz", None) is not None)
    if dtype.kind == "m":
        return ks.logical(__import__("datetime").timedelta)
    values = col.dropna()
    if len(values) == 0:
        return ks.null() if dtype.kind == "O" else ks.string()
    return _ktype_of_value(values.iloc[0])


def _ktype_of_value(value: Any) -> ks.KnimeType:
    import numpy as np

    if isinstance(value, bool | np.bool_):
        return ks.bool_()
    if isinstance(value, int | np.integer):
        return ks.int64()
    if isinstance(value, float | np.floating):
        return ks.double()
    if isinstance(value, str):
        return ks.string()
    if isinstance(value, bytes | bytearray):
        return ks.blob()
    if isinstance(value, list | tuple | np.ndarray):
        inner = next((v for v in value if v is not None), None)
        return ks.list_(ks.null() if inner is None else _ktype_of_value(inner))
    try:
        from PIL import Image

        if isinstance(value, Image.Image):
            return ks.logical(Image.Image)
    except ImportError:  # pragma: no cover
        pass
    for base in type(value).__mro__:
        try:
            return ks.logical(base)
        except TypeError:
            continue
    raise TypeError(f"Cannot map values of type {type(value)} to a KNIME type")
