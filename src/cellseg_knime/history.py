"""The learner nodes' outputs besides the model: the training-history table, the loss curves and a line
saying how the training ended."""

from __future__ import annotations

from typing import Any

import knime.extension as knext
import numpy as np
import pandas as pd

#: Columns of the training-history table, in order, with their pandas dtypes.
HISTORY_COLUMNS: list[tuple[str, str]] = [
    ("epoch", "int64"),
    ("step", "int64"),
    ("seconds", "float64"),
    ("loss", "float64"),
    ("prob_loss", "float64"),
    ("dist_loss", "float64"),
    ("val_loss", "float64"),
    ("val_prob_loss", "float64"),
    ("val_dist_loss", "float64"),
    ("learning_rate", "float64"),
]


def history_columns() -> list[Any]:
    return [knext.Column(knext.int64() if t == "int64" else knext.double(), n) for n, t in HISTORY_COLUMNS]


def history_schema() -> knext.Schema:
    return knext.Schema.from_columns(history_columns())


def history_frame(history: pd.DataFrame) -> pd.DataFrame:
    """The backend's history in the fixed column layout (missing values NaN); RowIDs ``Epoch <n>``."""
    df = (pd.DataFrame({n: pd.Series([], dtype=t) for n, t in HISTORY_COLUMNS})
          if history is None or len(history) == 0 else history.copy())
    for name, dtype in HISTORY_COLUMNS:
        if name not in df:
            df[name] = np.nan if dtype == "float64" else 0
        df[name] = df[name].astype(dtype)
    df = df[[n for n, _ in HISTORY_COLUMNS]]
    df.index = pd.Index([f"Epoch {int(e)}" for e in df["epoch"]], dtype=object)
    return df


def loss_figure(history: pd.DataFrame, title: str) -> Any:
    """A matplotlib figure of the training and validation losses per step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    if len(history):
        x = history["step"]
        for col, style in (("loss", "-"), ("val_loss", "--"), ("prob_loss", ":"), ("dist_loss", ":")):
            if col in history and history[col].notna().any():
                ax.plot(x, history[col], style, marker="o", markersize=3, label=col)
        ax.set_yscale("log")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no epochs completed", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return fig


def outcome(result: Any) -> str:
    """One line on how a training run ended: steps, time, why it stopped, validation AP@0.5, channels."""
    text = f"trained {result.steps} steps in {result.seconds:.1f} s: {result.stop_reason}"
    if result.validation_ap50 is not None and "AP@0.5" not in result.stop_reason:
        text += f"; validation AP@0.5 {result.validation_ap50:.3f}"
    if result.channels_note:
        text += f"; {result.channels_note}"
    return text
