"""Stand-in of ``knime.api.table``: ``Table`` and ``BatchOutputTable`` on pyarrow, with KNIME's rules.

Mirrors ``org.knime.python3/src/main/python/knime/api/table.py`` and what KNIME's Arrow backend
(``knime._arrow._table``, ``_backend.ArrowDataSink``, ``_types``, ``_pandas``) and its Java side do
with the tables of a pure-Python node (own code, checked against knime-python's sources):

* **Types.** A table holds only what KNIME can store: ``int32``, ``int64``, ``double`` (float32 is widened),
  ``bool``, ``string``, void (``null``), lists of these, and registered logical types (PNG image, Path).
  Anything else -- Python ``bytes``/Arrow ``binary``, ``knext.blob()`` data, uint8/int16, structs,
  ``large_string`` -- raises KNIME's ``ValueError("Data type 'binary' in column 'image' is not supported
  in KNIME Python. Please use a different data type.")`` when the table is created (``from_pandas``,
  ``from_pyarrow``, ``BatchOutputTable.append``), as in KNIME.
* **Empty tables.** A pandas column's type comes from its dtype, or, for ``object`` columns, from the
  first non-missing cell. A column without cells (0 rows, or only missing cells) of dtype ``object``
  therefore becomes a void (``null``) column, as in KNIME. To give an empty output its configured types,
  build the DataFrame with typed columns: ``pd.Series([], dtype=d)`` with ``d`` = ``"int64"``,
  ``"int32"``, ``"float64"``, ``"bool"``, ``"string"`` for primitive types, and ``ktype.to_pandas()``
  for logical types (PNG image, Path); or use ``Table.from_pyarrow`` on an empty ``pyarrow`` table whose
  schema uses ``pa.int64()``, ``pa.float64()``, ``pa.string()``... and ``ktype.to_pyarrow()``. Both are
  KNIME API and both are supported here.
* **RowIDs** (``row_ids``): ``from_pandas``: "auto" (integer index ``n`` -> ``f"Row{n}"``, else as
  string), "keep" (index as string), "generate" (``f"Row{i}"``); ``from_pyarrow``: "auto" (first column
  named ``<RowID>``: string -> kept, integer -> ``f"Row{n}"``; else generated), "keep" (first column,
  must be string), "generate". RowIDs are strings; ``to_pandas()`` gives them as the index (named
  ``<RowID>``). Duplicate RowIDs are allowed in intermediate tables but not in a node's output table
  (Java's RowKeyChecker): ``ValueError('Encountered duplicate row ID "r1"')``.
* **Batches.** ``BatchOutputTable.append`` writes through KNIME's ``ArrowDataSink`` rule: every batch
  must have as many rows as the first one, only the last may be smaller. A larger batch raises at once;
  after a smaller (i.e. last) batch, any further batch raises. All batches must have the first batch's
  column names and types. A ``BatchOutputTable`` without any batch cannot be read by KNIME (returning it
  fails). ``batches()``/``num_batches`` exist only on the tables passed *into* ``execute``; a table made
  with ``from_pandas`` inside a node has none, as in KNIME.
* **Cells.** ``to_pandas()`` gives ``int64``/``int32``/``float64``/``bool`` columns, ``string`` (pandas
  ``StringDtype``) for strings, ``object`` for void and list columns (lists as numpy arrays), and
  :mod:`knime.api._values` extension columns for PNG image and Path cells (read back as
  ``PngImageFile`` / ``FSLocationValue``).

Stand-in extras (private; absent from KNIME): ``_batch_size`` on a table (rows per batch when it is
passed to ``execute``; like ``knime.extension.testing``, a table without it is one batch),
:func:`_as_input` (what a downstream node receives for an output table), :func:`_check_output` (Java's
checks on an output table) and, on ``BatchOutputTable``, ``batches()``, ``num_rows``,
``num_columns``, ``column_names``, ``schema`` and ``to_pandas()`` (as ``knime.extension.testing``'s
batch output table has them).
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Iterator
from typing import Any

from . import schema as ks

LOGGER = logging.getLogger(__name__)

_ROW_ID = "<RowID>"
_RESERVED = (
    "The column name '<RowID>' is reserved for internal purposes. Please rename the column to a different name."
)


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
        return self.get().to_pandas()  # type: ignore[attr-defined]

    def to_pyarrow(self, sentinel: str | int | None = None) -> Any:
        return self.get().to_pyarrow()  # type: ignore[attr-defined]

    @abstractmethod
    def _select_rows(self, selection: Any) -> Any: ...

    @property
    @abstractmethod
    def schema(self) -> ks.Schema: ...


class _TabularView(_Tabular, ks._ColumnarView):
    def __init__(self, delegate: _Tabular, operation: ks._ColumnarOperation) -> None:
        ks._ColumnarView.__init__(self, delegate, operation)

    __getitem__ = _Tabular.__getitem__

    def to_pandas(self, sentinel: str | int | None = None) -> Any:
        return self.get().to_pandas(sentinel)

    def to_pyarrow(self, sentinel: str | int | None = None) -> Any:
        return self.get().to_pyarrow(sentinel)

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
        """Create a table from a pyarrow.Table (all batches of equal size but the last, which may be smaller).

        ``row_ids``: "keep" (the first column, of type string, holds the RowIDs), "generate" (``f"Row{i}"``),
        "auto" (a first column named "<RowID>": string -> kept, integer ``n`` -> ``f"Row{n}"``; else generate).
        """
        return _from_pyarrow(data, sentinel, row_ids)

    @staticmethod
    def from_pandas(data: Any, sentinel: str | int | None = None, row_ids: str = "auto") -> Table:
        """Create a table from a pandas.DataFrame; its index becomes the RowID.

        ``row_ids``: "keep" (index as string), "generate" (``f"Row{i}"``), "auto" (integer index ``n`` ->
        ``f"Row{n}"``, else as "keep").
        """
        return _from_pandas(data, sentinel, row_ids)

    def to_batches(self) -> Iterator[Table]:
        """Alias for ``batches()``."""
        return self.batches()

    def batches(self) -> Iterator[Table]:
        """The batches of a table passed to ``execute`` (other tables have none)."""
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
        """Empty BatchOutputTable. ``row_ids``: "keep" (DataFrame index as string RowID; for Arrow data the
        first column, of type string) or "generate" (``f"Row{i}"`` over the whole table)."""
        return _ArrowBatchOutputTable(row_ids)

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


# ------------------------------------------------------------------ creating tables (KNIME's Arrow backend)
def _from_pandas(data: Any, sentinel: Any, row_ids: str, first_row_id: int = 0) -> _ArrowTable:
    import pandas as pd
    import pyarrow as pa

    from . import _values

    if not isinstance(data, pd.DataFrame):
        raise ValueError(f"Table.from_pandas expects a pandas.DataFrame, but got {type(data)}")
    if row_ids not in ("auto", "keep", "generate"):
        raise ValueError('row_ids must be one of ["auto", "keep", "generate"]')
    if data.shape == (0, 0):  # no columns, no index: KNIME's pandas conversion gives an empty Arrow table
        return _from_pyarrow(pa.table([]), sentinel, "generate" if row_ids == "auto" else row_ids, first_row_id)

    names = [str(c) for c in data.columns]
    arrays = []
    for position, name in enumerate(names):
        column = data.iloc[:, position]
        if column.dtype == object:  # a registered value type (by its first cell) becomes a logical column
            bundle = _values.bundle_for_values(column)
            if bundle is not None:
                column = pd.Series(
                    _values.LogicalArray._from_sequence(column, dtype=_values.LogicalDtype(bundle.logical_type))
                )
        try:
            arrays.append(pa.array(column, from_pandas=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            e.args += (f"Conversion failed for column {name} with type {column.dtype}",)
            raise
    if row_ids == "generate":
        return _from_pyarrow(pa.Table.from_arrays(arrays, names=names), sentinel, "generate", first_row_id)
    all_names = [_ROW_ID, *names]
    if len(set(all_names)) != len(all_names):
        raise ValueError(f"Duplicate column names found: {all_names}")
    index = data.index
    if len(data) == 0:
        ids: Any = []
    elif row_ids == "auto" and index.dtype.kind in "iu":
        ids = [f"Row{n}" for n in index]
    else:
        ids = list(index.to_series().astype(str))
    table = pa.Table.from_arrays([pa.array(ids, type=pa.string()), *arrays], names=all_names)
    return _from_pyarrow(table, sentinel, "keep", first_row_id)


def _from_pyarrow(data: Any, sentinel: Any, row_ids: str, first_row_id: int = 0) -> _ArrowTable:
    import pyarrow as pa

    if not isinstance(data, pa.Table | pa.RecordBatch):
        raise TypeError(f"Table.from_pyarrow expects a pyarrow.Table or pyarrow.RecordBatch, but got {type(data)}")
    _check_batch_sizes_constant(data)
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if row_ids == "auto":
        field = data.schema[0]
        if field.name == _ROW_ID and pa.types.is_string(field.type):
            pass
        elif field.name == _ROW_ID and pa.types.is_integer(field.type):
            ids = [f"Row{n}" for n in data.column(0).to_pylist()]
            data = pa.Table.from_arrays([pa.array(ids, pa.string()), *data.columns[1:]],
                                        names=[_ROW_ID, *data.column_names[1:]])
        else:
            if field.name == _ROW_ID:
                LOGGER.warning(
                    f'The first column is named "<RowID>" but has the type "{field.type}" which cannot be used as '
                    "RowID. Keeping the column and generating new RowIDs."
                )
            data = _add_generated_row_ids(data, first_row_id)
    elif row_ids == "generate":
        data = _add_generated_row_ids(data, first_row_id)
    elif row_ids != "keep":
        raise ValueError('row_ids must be one of ["auto", "generate", "keep"]')
    if sentinel is not None:
        data = _sentinel_to_missing(data, sentinel)
    names = data.column_names
    columns = [_check_column(column, name) for column, name in zip(data.columns, names)]
    if not columns or columns[0].type != pa.string():  # KNIME checks this after the column types
        raise TypeError("The first column must contain unique row identifiers of type 'string'")
    if _ROW_ID in names[1:]:
        raise RuntimeError(_RESERVED)  # KNIME fails on the first use of such a table (to_pandas, to_pyarrow)
    if len(set(names)) != len(names):
        raise ValueError(f"Duplicate column names found: {names}")
    return _ArrowTable(pa.Table.from_arrays(columns, names=names))


def _check_batch_sizes_constant(data: Any) -> None:
    import pyarrow as pa

    if isinstance(data, pa.Table) and len(data) > 0:
        sizes = [len(b) for b in data.to_batches()]
        for i, size in enumerate(sizes[:-1]):
            if size != sizes[0]:
                raise ValueError(
                    "all batches of the table must have the same size, "
                    f"but batch {i} has size {size} (expected: {sizes[0]})"
                )
        if sizes[0] < sizes[-1]:
            raise ValueError(
                f"last batch has size {sizes[-1]}, but must not be bigger than the other batches of size {sizes[0]}"
            )


def _add_generated_row_ids(data: Any, start: int) -> Any:
    import pyarrow as pa

    ids = pa.array([f"Row{i}" for i in range(start, start + len(data))], pa.string())
    return pa.Table.from_arrays([ids, *data.columns], names=[_ROW_ID, *data.column_names])


def _sentinel_value(dtype: Any, sentinel: str | int) -> int:
    import pyarrow as pa

    if sentinel in ("min", "max"):
        bits = 31 if pa.types.is_int32(dtype) else 63
        return -(2**bits) if sentinel == "min" else 2**bits - 1
    return int(sentinel)


def _sentinel_to_missing(data: Any, sentinel: str | int) -> Any:
    import pyarrow as pa
    import pyarrow.compute as pc

    columns = [
        pc.if_else(pc.equal(c, _sentinel_value(c.type, sentinel)), None, c) if pa.types.is_integer(c.type) else c
        for c in data.columns
    ]
    return pa.Table.from_arrays(columns, names=data.column_names)


_PRIMITIVE_LIST_VALUES = ("int32", "int64", "string", "bool", "float", "double")


def _check_column(column: Any, name: str) -> Any:
    """What KNIME can store (``knime._arrow._types.wrap_primitive_arrays``): the column, adapted, or an error."""
    import pyarrow as pa

    from . import _values

    dtype = column.type
    if isinstance(dtype, _values.LogicalArrowType):
        return column
    if pa.types.is_dictionary(dtype) and dtype.value_type in (pa.int32(), pa.int64(), pa.string(), pa.bool_(),
                                                              pa.float32(), pa.float64()):
        column = column.cast(dtype.value_type)
        dtype = column.type
    if dtype == pa.float32():
        return column.cast(pa.float64())
    if dtype in (pa.int32(), pa.int64(), pa.string(), pa.bool_(), pa.float64(), pa.null()):
        return column
    if (pa.types.is_list(dtype) or pa.types.is_large_list(dtype)) and (
        str(dtype.value_type) in _PRIMITIVE_LIST_VALUES or dtype.value_type == pa.null()
    ):
        return column.cast(pa.list_(pa.float64())) if dtype.value_type == pa.float32() else column
    if pa.types.is_temporal(dtype):
        raise NotImplementedError(
            f"Column '{name}': date and time data ({dtype}) cannot be converted by the offline knime.extension "
            "stand-in (KNIME can)"
        )
    raise ValueError(
        f"Data type '{dtype}' in column '{name}' is not supported in KNIME Python. Please use a different data type."
    )


# ------------------------------------------------------------------ tables
class _ArrowTable(Table):
    """A table: a pyarrow.Table whose first column ("<RowID>", string) holds the RowIDs."""

    #: stand-in only: rows per batch when this table is passed to execute (None: as it is batched now)
    _batch_size: int | None = None

    def __init__(self, data: Any) -> None:  # noqa: D107 - no super().__init__ on purpose
        self._data = data

    @property
    def num_rows(self) -> int:
        return self._data.num_rows

    @property
    def num_columns(self) -> int:
        return self._data.num_columns - 1

    @property
    def column_names(self) -> list[str]:
        return self._data.column_names[1:]

    @property
    def schema(self) -> ks.Schema:
        from . import _values

        return ks.Schema.from_columns(
            [ks.Column(_values.ktype_of(f.type), f.name) for f in list(self._data.schema)[1:]]
        )

    def to_pyarrow(self, sentinel: str | int | None = None) -> Any:
        """The data with the RowIDs as first column "<RowID>"; PNG/Path columns have ``ktype.to_pyarrow()``."""
        import pyarrow as pa
        import pyarrow.compute as pc

        data = self._data
        if sentinel is not None:
            columns = [
                pc.fill_null(c, _sentinel_value(c.type, sentinel))
                if pa.types.is_integer(c.type) and c.null_count else c
                for c in data.columns
            ]
            data = pa.Table.from_arrays(columns, names=data.column_names)
        return data

    def to_pandas(self, sentinel: str | int | None = None) -> Any:
        """A DataFrame indexed by the RowIDs (index named "<RowID>"); strings as pandas ``string`` dtype."""
        import pandas as pd
        import pyarrow as pa

        df = self.to_pyarrow(sentinel).to_pandas(types_mapper=lambda t: pd.StringDtype() if t == pa.string() else None)
        return df.set_index(df.columns[0])

    def _select_rows(self, selection: Any) -> _ArrowTable:
        if not isinstance(selection, slice):
            raise IndexError(f"Invalid row selection '{selection}' for '{self}', must be a slice object")
        start, stop, step = selection.indices(self.num_rows)
        if step == 1:
            return _ArrowTable(self._data.slice(start, max(0, stop - start)))
        return _ArrowTable(self._data.take(list(range(start, stop, step))))

    def _select_columns(self, selection: Any) -> _ArrowTable:
        names = self.column_names
        if isinstance(selection, int):
            while selection < 0:
                selection += len(names) + 1
            selection = [selection]
        elif isinstance(selection, str):
            selection = [selection]
        if isinstance(selection, slice):
            picked = list(range(*selection.indices(len(names))))
        elif isinstance(selection, list):
            picked = []
            for c in selection:
                if isinstance(c, str):
                    if c not in names:
                        raise IndexError(f"Invalid column selection, '{c}' is not available in {names}")
                    picked.append(names.index(c))
                elif isinstance(c, int):
                    if not 0 <= c < len(names):
                        raise IndexError(f"Column index {c} out of bounds")
                    picked.append(c)
                else:
                    raise IndexError(f"Invalid column index {c}")
        else:
            raise IndexError(f"Invalid column selection '{selection}' for '{self}'")
        return _ArrowTable(self._data.select([0, *[i + 1 for i in picked]]))

    def _append(self, other: Any) -> Any:
        raise NotImplementedError("append/insert for Arrow tables is not yet implemented")

    def __str__(self) -> str:
        return f"ArrowTable[shape=({self.num_columns}, {self.num_rows})]"


class _SourceTable(_ArrowTable):
    """A table as passed to ``execute``: it has batches (those its upstream node wrote)."""

    def __init__(self, batches: list) -> None:  # noqa: D107
        import pyarrow as pa

        self._batches = batches
        super().__init__(pa.concat_tables(batches) if len(batches) > 1 else batches[0])

    @property
    def num_batches(self) -> int:
        return len(self._batches)

    def batches(self) -> Iterator[Table]:
        for batch in self._batches:
            yield _ArrowTable(batch)

    def __str__(self) -> str:
        return f"ArrowSourceTable[cols={self.num_columns}, rows={self.num_rows}, batches={self.num_batches}]"


# ------------------------------------------------------------------ batch output tables (KNIME's ArrowDataSink)
class _ArrowBatchOutputTable(BatchOutputTable):
    def __init__(self, row_ids: str = "keep") -> None:  # noqa: D107 - no super().__init__ on purpose
        if row_ids not in ("keep", "generate"):
            raise ValueError('row_ids must be one of ["keep", "generate"]')
        self._row_ids = row_ids
        self._num_rows = 0
        self._num_batches = 0
        self._written: list = []  # the record batches the sink wrote, as pyarrow.Tables
        self._chunk_size: int | None = None
        self._received_last_batch = False
        self._seen_ids: set[str] = set()

    def append(self, batch: Any) -> None:
        """Append a batch (pandas.DataFrame, Table, pyarrow.Table or RecordBatch); RowIDs as in ``create``."""
        import pandas as pd
        import pyarrow as pa

        if isinstance(batch, ks._ColumnarView):
            batch = batch.get()
        if isinstance(batch, pa.Table | pa.RecordBatch):
            table = _from_pyarrow(batch, None, self._row_ids, self._num_rows)
        elif isinstance(batch, _ArrowTable):
            table = batch
            if self._row_ids == "generate":
                data = batch._data
                table = _from_pyarrow(data.drop_columns([data.column_names[0]]), None, "generate", self._num_rows)
        elif isinstance(batch, pd.DataFrame):
            table = _from_pandas(batch, None, self._row_ids, self._num_rows)
        else:
            raise TypeError(
                "Can only append batches of type knime.api.Table, pyarrow.Table, pyarrow.RecordBatch, "
                f"pandas.DataFrame but got {type(batch)}"
            )
        self._num_rows += table.num_rows
        self._num_batches += 1
        data = table._data
        if len(data) == 0:  # an empty table is written as one empty record batch
            self._write(data)
        else:
            for record_batch in data.to_batches():
                self._write(pa.Table.from_batches([record_batch]))

    def _write(self, data: Any) -> None:
        """``ArrowDataSink._write_batch``: batch size and schema checks; then the RowID check of Java
        (done here, batch by batch, so that the error points at the batch)."""
        if self._received_last_batch:
            raise ValueError(
                "Tried writing a batch after a batch with a different size than the first batch. Only the last "
                "batch of a table can have a different size than the first batch."
            )
        size = len(data)
        if self._written:
            if size > self._chunk_size:  # type: ignore[operator]
                raise ValueError(
                    "Tried writing a batch with a different size than the first batch. Only the last batch of a "
                    "table can have a different size than the first batch."
                )
            data = _match_first_batch(data, self._written[0])
        batch_ids: set[str] = set()
        for rid in data.column(0).to_pylist():
            if rid in batch_ids or rid in self._seen_ids:
                raise ValueError(f'Encountered duplicate row ID "{rid}"')
            batch_ids.add(rid)
        if not self._written:
            self._chunk_size = size
        elif size < self._chunk_size:  # type: ignore[operator]
            self._received_last_batch = True  # a smaller batch must be the last one
        self._seen_ids |= batch_ids
        self._written.append(data)

    @property
    def num_batches(self) -> int:
        return self._num_batches

    # stand-in extras, as knime.extension.testing's batch output table has them
    def batches(self) -> Iterator[Table]:
        """The written batches (each a Table)."""
        for data in self._written:
            yield _ArrowTable(data)

    @property
    def num_rows(self) -> int:
        return sum(len(d) for d in self._written)

    @property
    def num_columns(self) -> int:
        return len(self.column_names)

    @property
    def column_names(self) -> list[str]:
        return self._written[0].column_names[1:] if self._written else []

    @property
    def schema(self) -> ks.Schema:
        return _ArrowTable(self._written[0]).schema if self._written else ks.Schema.from_columns([])

    def to_pandas(self, sentinel: str | int | None = None) -> Any:
        import pandas as pd

        if not self._written:
            return pd.DataFrame()
        return _source_of_batches(self._written).to_pandas(sentinel)

    def __str__(self) -> str:
        return f"BatchOutputTable[batches={self.num_batches}, rows={self.num_rows}]"


def _physical(dtype: Any) -> Any:
    """The type the Arrow file stores: logical types as their storage, void as string (as KNIME does)."""
    import pyarrow as pa

    from . import _values

    if isinstance(dtype, _values.LogicalArrowType):
        return _physical(dtype.storage_type)
    if dtype == pa.null():
        return pa.string()
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype):
        return pa.list_(_physical(dtype.value_type))
    return dtype


def _match_first_batch(data: Any, first: Any) -> Any:
    """The Arrow writer's schema check: stored types equal to the first batch's. As in KNIME, a void column
    (all cells missing) may follow a string column (it reads back as missing strings); the reverse would
    lose the strings in KNIME and is refused here."""
    import pyarrow as pa

    if data.column_names != first.column_names or [_physical(t) for t in data.schema.types] != [
        _physical(t) for t in first.schema.types
    ]:
        raise pa.ArrowInvalid("Tried to write record batch with different schema")  # a ValueError
    columns = list(data.columns)
    for i, (mine, theirs) in enumerate(zip(data.schema.types, first.schema.types)):
        if mine == theirs:
            continue
        if mine == pa.null() and theirs == pa.string():
            columns[i] = columns[i].cast(pa.string())
        else:
            raise ValueError(
                f"Column '{data.column_names[i]}' is void (all cells missing) in the first batch but {mine} in this "
                "one: KNIME would read all its cells as missing. Give the column its type in the first batch."
            )
    return pa.Table.from_arrays(columns, names=data.column_names)


def _source_of_batches(batches: list) -> _SourceTable:
    return _SourceTable(list(batches))


# ------------------------------------------------------------------ around execute (stand-in only)
def _as_input(value: Any) -> Any:
    """What a downstream node's ``execute`` receives for a table: a table with batches.

    A ``BatchOutputTable`` keeps the batches that were appended; a Table is cut into batches of
    ``_batch_size`` rows if set, else keeps its own batching (one batch for ``from_pandas`` tables).
    Anything else is returned unchanged.
    """
    if isinstance(value, ks._ColumnarView):
        value = value.get()
    if isinstance(value, _SourceTable) or not isinstance(value, _ArrowTable | _ArrowBatchOutputTable):
        return value
    if isinstance(value, _ArrowBatchOutputTable):
        _check_output(value)
        return _source_of_batches(value._written)
    import pyarrow as pa

    data = value._data
    if value._batch_size:
        size = max(1, int(value._batch_size))
        batches = [data.slice(i, size) for i in range(0, len(data), size)]
    else:
        batches = [pa.Table.from_batches([b]) for b in data.to_batches() if len(b)]
    return _source_of_batches(batches or [data])


def _check_output(value: Any) -> None:
    """Java's checks on an output table of ``execute``: it can be read (a BatchOutputTable needs at least
    one batch) and its RowIDs are unique (RowKeyChecker)."""
    if isinstance(value, ks._ColumnarView):
        value = value.get()
    if isinstance(value, _ArrowBatchOutputTable):
        if not value._written:
            raise ValueError(
                "The BatchOutputTable has no batch: KNIME cannot read an output table without a schema. Append at "
                "least one batch (a DataFrame with typed columns and no rows gives an empty table)."
            )
        return  # RowIDs were checked batch by batch
    if isinstance(value, _ArrowTable):
        seen: set[str] = set()
        for rid in value._data.column(0).to_pylist():
            if rid in seen:
                raise ValueError(f'Encountered duplicate row ID "{rid}"')
            seen.add(rid)
