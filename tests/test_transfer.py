"""A tiny ``cellseg tl-eval --quick`` run end to end writes the CSVs, the markdown table and a PNG plot."""

from __future__ import annotations

import numpy as np
import pandas as pd

from cellseg.cli import main
from cellseg.transfer import summarize, welch_p


def test_tl_eval_quick_end_to_end(tmp_path):
    out = tmp_path / "tl"
    assert main(["-q", "tl-eval", "--quick", "--out", str(out)]) == 0
    runs = pd.read_csv(out / "runs.csv")
    assert {"target", "n", "seed", "init", "step", "ap50", "map", "final"} <= set(runs.columns)
    assert set(runs["init"]) == {"scratch", "pre-highnoise"}
    assert set(runs.loc[~runs["final"], "step"]) == {2}  # evaluated after the first of 2 epochs, by a callback
    summary = pd.read_csv(out / "summary.csv")
    assert "ap50_p" in summary.columns and len(summary) == 3  # 2 inits at n=2, plus the pretrained as is
    md = (out / "results.md").read_text()
    assert "| n | init |" in md and "Welch" in md
    png = (out / "ap_vs_n_low_noise.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_statistics():
    rows = []
    for seed, (a, b) in enumerate([(0.2, 0.6), (0.3, 0.7), (0.25, 0.65)]):
        for init, ap in (("scratch", a), ("pre", b)):
            rows += [{"target": "t", "n": 2, "seed": seed, "init": init, "step": 5, "train_seconds": 1.0,
                      "ap50": ap / 2, "map": ap / 4, "final": False},
                     {"target": "t", "n": 2, "seed": seed, "init": init, "step": 10, "train_seconds": 2.0,
                      "ap50": ap, "map": ap / 2, "final": True}]
    s = summarize(pd.DataFrame(rows), target_ap=0.5).set_index("init")
    assert np.isclose(s.loc["pre", "ap50_diff"], 0.4) and s.loc["pre", "ap50_p"] < 0.01
    assert s.loc["pre", "steps_to_target"] == 10 and s.loc["pre", "reached"] == "3/3"
    assert s.loc["scratch", "reached"] == "0/3"
    assert np.isnan(welch_p([1.0], [2.0, 3.0]))
