"""KNIME tables for the nodes: column choice, batches of a fixed size, typed empty outputs, progress.

KNIME's Arrow sink accepts output batches of one size (only the last may be smaller), so the nodes write
through :class:`BatchWriter`, which buffers rows and flushes them in batches of :data:`BATCH_ROWS`; an
output without rows still carries the columns and types that ``configure`` announced. Image cells are
:mod:`cellseg_knime.cells`. Errors about a setting raise ``knext.InvalidParametersError``.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import knime.extension as knext
import pandas as pd

from cellseg.errors import CancelledError
from cellseg_knime import cells
from cellseg_knime.cells import workflow_dir

#: Rows per output batch written by the nodes.
BATCH_ROWS = 64


def is_int_column(column: Any) -> bool:
    return column.ktype in (knext.int32(), knext.int64())


def column_names(schema: Any) -> list[str]:
    return [c.name for c in schema]


def pick_column(schema: Any, name: str | None, what: str, accept: Callable[[Any], bool] = cells.is_image_column,
                preferred: tuple[str, ...] = (), kinds: str = cells.KINDS,
                exclude: tuple[str | None, ...] = ()) -> str:
    """The selected column ``name``, checked; if None, the first column named in ``preferred`` or else the first
    accepted column. Raises InvalidParametersError naming the column and the kinds it may be."""
    columns = {c.name: c for c in schema}
    if name:
        if name not in columns:
            raise knext.InvalidParametersError(f"{what}: column '{name}' is not in the input table")
        if not accept(columns[name]):
            raise knext.InvalidParametersError(
                f"{what}: column '{name}' has type {columns[name].ktype}; expected a {kinds} column"
            )
        return name
    candidates = [c.name for c in schema if accept(c) and c.name not in exclude]
    for p in preferred:
        if p in candidates:
            return p
    if not candidates:
        raise knext.InvalidParametersError(f"{what}: the input table has no {kinds} column")
    return candidates[0]


def unique_name(existing: list[str], base: str) -> str:
    """``base``, or ``base (#1)``, ``base (#2)``... if taken (KNIME's convention)."""
    if base not in existing:
        return base
    i = 1
    while f"{base} (#{i})" in existing:
        i += 1
    return f"{base} (#{i})"


def _pandas_dtype(ktype: Any) -> Any:
    if ktype == knext.int64():
        return "int64"
    if ktype == knext.int32():
        return "int32"
    if ktype == knext.double():
        return "float64"
    if ktype == knext.bool_():
        return "bool"
    if ktype == knext.string():
        return "string"
    return ktype.to_pandas()  # KNIME's logical types (PNG image, Path)


def frame(rows: list[dict[str, Any]], ids: list[str], columns: list[Any]) -> pd.DataFrame:
    """A DataFrame of ``rows`` with exactly ``columns`` (``knext.Column``); RowIDs ``ids``.

    Columns are typed as configured also where they hold no value (an empty table, or a batch whose cells
    are all missing): KNIME would read such an object column as void.
    """
    if not rows:
        return pd.DataFrame({c.name: pd.Series([], dtype=_pandas_dtype(c.ktype)) for c in columns},
                            index=pd.Index([], dtype="string"))
    df = pd.DataFrame(rows, index=pd.Index(ids, dtype=object), columns=[c.name for c in columns])
    for c in columns:
        values = df[c.name]
        if c.ktype in (knext.int64(), knext.int32()):
            dtype = _pandas_dtype(c.ktype)
            df[c.name] = values.astype(dtype.capitalize() if values.isna().any() else dtype)
        elif c.ktype == knext.double():
            df[c.name] = values.astype("float64")
        elif values.map(cells.missing).all():
            df[c.name] = pd.Series([None] * len(df), index=df.index, dtype=_pandas_dtype(c.ktype))
    return df


class BatchWriter:
    """An output table written in batches of exactly ``batch_rows`` rows (the last one may be smaller).

    ``add`` takes rows in any amounts; ``table()`` flushes the rest and returns the ``BatchOutputTable``.
    RowIDs must be unique over the table (KNIME checks them).
    """

    def __init__(self, columns: list[Any], batch_rows: int = BATCH_ROWS) -> None:
        self.columns = list(columns)
        self.names = [c.name for c in self.columns]
        self.batch_rows = batch_rows
        self.out = knext.BatchOutputTable.create(row_ids="keep")
        self._rows: list[dict[str, Any]] = []
        self._ids: list[str] = []
        self.written = 0

    def add(self, row_id: str, row: dict[str, Any]) -> None:
        extra = set(row) - set(self.names)
        if extra:
            raise KeyError(f"columns {sorted(extra)} are not in the output table")
        self._rows.append(row)
        self._ids.append(str(row_id))
        if len(self._rows) >= self.batch_rows:
            self._flush()

    def add_frame(self, df: pd.DataFrame) -> None:
        for rid, values in zip(df.index, df[self.names].to_dict("records")):
            self.add(str(rid), values)

    def _flush(self) -> None:
        if self._rows:
            self.out.append(frame(self._rows, self._ids, self.columns))
            self.written += len(self._rows)
            self._rows, self._ids = [], []

    def table(self) -> Any:
        if self._rows or self.written == 0:
            self.out.append(frame(self._rows, self._ids, self.columns))
            self.written += len(self._rows)
            self._rows, self._ids = [], []
        return self.out


# -- tables -------------------------------------------------------------------------------------


def iter_rows(table: Any, columns: list[str]) -> Iterator[tuple[int, pd.DataFrame]]:
    """``(rows so far, batch DataFrame)`` for each batch of ``table`` (only ``columns``; index = RowIDs)."""
    done = 0
    for batch in table.batches():
        df = batch.to_pandas()
        if columns:
            df = df[columns]
        yield done, df
        done += len(df)


def num_rows(table: Any) -> int:
    try:
        return int(table.num_rows)
    except Exception:  # noqa: BLE001 - not every table implementation knows its size
        return 0


def require_rows(table: Any, what: str = "input table") -> int:
    n = num_rows(table)
    if n == 0:
        raise ValueError(f"The {what} is empty")
    return n


@contextlib.contextmanager
def warnings_to(ctx: Any) -> Iterator[list[str]]:
    """Show the backend's data warnings (e.g. a label made of separate pieces) as the node's warning.

    Yields a list: notes the node appends to it come first in the warning (one warning per node in KNIME).
    """
    from cellseg.images import InputWarning

    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", InputWarning)
        yield notes
    messages = list(dict.fromkeys([*notes, *(str(w.message) for w in caught if issubclass(w.category, InputWarning))]))
    if messages:
        more = f" (and {len(messages) - 1} more warning(s))" if len(messages) > 1 else ""
        ctx.set_warning(messages[0] + more)


def check_canceled(ctx: Any, done: str = "") -> None:
    """Raise a clean RuntimeError if the user canceled (KNIME then marks the node canceled)."""
    if ctx.is_canceled():
        raise RuntimeError("Execution canceled" + (f" ({done})" if done else ""))


def canceled_error(err: CancelledError) -> RuntimeError:
    return RuntimeError(f"Execution canceled: {err}")


def progress_fn(ctx: Any, start: float = 0.0, end: float = 1.0) -> Callable[[float, str], None]:
    """A backend ``progress(fraction, message)`` mapped to ``[start, end]`` of the node's progress."""

    def progress(fraction: float, message: str) -> None:
        f = min(1.0, max(0.0, float(fraction)))
        ctx.set_progress(start + (end - start) * f, message)

    return progress


def check_path(value: str, what: str, must_exist: bool = True, ctx: Any = None) -> Path:
    """A non-empty path setting (``~`` expanded); InvalidParametersError otherwise.

    A relative path is taken relative to the workflow's folder when ``ctx`` (an execution context) knows
    it, so that example workflows find the data they carry in their folder; in configure, where KNIME does
    not tell the workflow folder, a relative path is not checked.
    """
    if not value or not value.strip():
        raise knext.InvalidParametersError(f"{what}: no path given")
    path = Path(value.strip()).expanduser()
    if not path.is_absolute():
        base = workflow_dir(ctx)
        if base is not None:
            path = base / path
        elif ctx is not None and not hasattr(ctx, "get_workflow_data_area_dir"):
            return path  # configure: the folder is only known at execution
    if must_exist and not path.exists():
        raise knext.InvalidParametersError(f"{what}: '{path}' does not exist")
    return path
