"""Issue 14: retraining with all defaults on 4 images of four domains, side by side with other settings.

Data (all from ``../shared/data`` or simulated; nothing is downloaded):

- ``fluo``: DSB2018 fluorescence *test* split (81 images; the shipped model never saw them): 4 train, 77 test;
- ``bf_grey``: DSB2018 grey bright-field (the 16 1024x1024 images, stored as RGB with R=G=B): 4 train, 12 test;
- ``he_colour``: DSB2018 colour H&E-like images (107 of 256x320): 4 train, 40 test;
- ``sim_large``: simulated large whole-cell-like objects (radius 35-55 px, ~4x the diameter of the model's
  nuclei; elongated, irregular, mostly touching, noisy), 512x512: 4 train, 16 test.

Conditions (``--conditions``): ``asis`` (the shipped model with prediction's defaults: channel conversion,
automatic inversion), ``defaults`` (``TrainConfig.retraining()``: time budget, early stopping, estimated
scale, automatic channels and inversion), ``convert``/``adapt`` (defaults with ``channels`` set),
``long`` (defaults with a 10-minute budget and no early stopping), ``noscale`` (defaults with scale 1),
``noinvert`` (defaults with invert no), ``wholeval`` (defaults training on 3 images and validating on
the fourth, as before issue 14, instead of on held-back patches), ``scratch`` (a new model of the same architecture trained on the same images with
the defaults' time budget). Each seed draws other training images and seeds the training.

Every finished row is appended to ``benchmarks/retrain_defaults.jsonl`` (so an interrupted run keeps what
it did); ``--summary`` writes ``benchmarks/retrain_defaults.md`` from it. Usage::

    .venv/bin/python benchmarks/retrain_defaults.py --sets he_colour --conditions convert adapt --seeds 0 1 2
    .venv/bin/python benchmarks/retrain_defaults.py --summary
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg import images as cimages
from cellseg import masks as cmasks
from cellseg import metrics
from cellseg.config import ModelConfig, TrainConfig
from cellseg.data import shared_data_dir
from cellseg.models import load_model
from cellseg.prediction import predict
from cellseg.simulate import simulate_dataset
from cellseg.training import retrain, train

HERE = Path(__file__).parent
OUT = HERE / "retrain_defaults.jsonl"
SETS = ("fluo", "bf_grey", "he_colour", "sim_large")
CONDITIONS = ("asis", "defaults", "convert", "adapt", "long", "noscale", "noinvert", "wholeval", "scratch", "curve",
              "curve_adapt", "curve_lr3e-4", "lr3e-4", "lr3e-5")
N_TRAIN = 4
#: Simulator settings of the large whole-cell-like objects (about 4x the area of the model's nuclei).
SIM_LARGE = {"radius": (35.0, 55.0), "n_objects": (10, 20), "elongation": (1.0, 1.8), "irregularity": 0.12,
             "cluster_fraction": 0.7, "texture": 0.3}


def _dsb(subset: str) -> Path:
    base = shared_data_dir()
    root = None if base is None else base / "dsb2018" / subset
    if root is None or not (root / "manifest.csv").is_file():
        raise SystemExit(f"needs ../shared/data/dsb2018/{subset}")
    return root


def _read(root: Path, files: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images = [cimages.read_image(root / "images" / f) for f in files]
    masks = [cmasks.check_mask(cimages.read_image(root / "masks" / f), f) for f in files]
    return images, masks


def load_set(name: str, seed: int) -> tuple[str, list, list, list, list]:
    """(description, train images, train masks, test images, test masks) of one set for one seed."""
    rng = np.random.default_rng(seed)
    if name == "sim_large":
        X, Y = simulate_dataset(N_TRAIN + 16, 512, preset="high_noise", seed=100 + seed, **SIM_LARGE)
        return ("simulated large whole-cell-like objects (radius 35-55 px, elongated, irregular, touching), "
                "512x512", X[:N_TRAIN], Y[:N_TRAIN], X[N_TRAIN:], Y[N_TRAIN:])
    if name == "fluo":
        root = _dsb("fluorescence")
        split = pd.read_csv(root / "split.csv")
        files = sorted(split[split["split"] == "test"]["file"])
        desc = "DSB2018 fluorescence test split"
    else:
        root = _dsb("brightfield")
        table = pd.read_csv(root / "manifest.csv").sort_values("file")
        square = (table["height"] == 1024) & (table["width"] == 1024)
        files = sorted(table[square if name == "bf_grey" else ~square]["file"])
        desc = "DSB2018 grey bright-field 1024x1024 (R=G=B)" if name == "bf_grey" else "DSB2018 colour H&E-like 256x320"
    order = rng.permutation(len(files))
    train_files = [files[i] for i in sorted(order[:N_TRAIN])]
    test_files = [files[i] for i in sorted(order[N_TRAIN:N_TRAIN + (40 if name == "he_colour" else 10**6)])]
    X, Y = _read(root, train_files)
    Xt, Yt = _read(root, test_files)
    return desc, X, Y, Xt, Yt


def score(model, images, masks) -> dict[str, float]:
    preds = [predict(model, im)[0] for im in images]
    _, summary = metrics.score_dataset(masks, preds)
    return {"ap50": round(metrics.ap_at(summary, 0.5), 4), "map": round(metrics.mean_ap(summary), 4)}


def run(set_name: str, condition: str, seed: int, model_name: str) -> dict:
    desc, X, Y, Xt, Yt = load_set(set_name, seed)
    base = load_model(model_name)
    row: dict = {"set": set_name, "data": desc, "condition": condition, "seed": seed, "n_train": len(X),
                 "n_test": len(Xt), "machine": f"{platform.machine()} CPU, 2 cores"}
    if condition == "asis":
        return {**row, "steps": 0, "seconds": 0.0, **score(base, Xt, Yt)}
    defaults = TrainConfig.retraining(seed=seed)
    changes = {"defaults": {}, "convert": {"channels": "convert"}, "adapt": {"channels": "adapt"},
               "long": {"minutes": 10.0, "patience": None}, "noscale": {"scale": 1.0},
               "noinvert": {"invert": "no"}, "lr3e-4": {"learning_rate": 3e-4},
               "lr3e-5": {"learning_rate": 3e-5}}
    if condition.startswith("curve"):  # the test score every 4 epochs (100 steps) of 60 epochs without stopping
        extra = {"curve": {}, "curve_adapt": {"channels": "adapt"}, "curve_lr3e-4": {"learning_rate": 3e-4}}
        config = defaults.replace(epochs=60, minutes=None, patience=None, **extra[condition])
        return {**row, **_curve(base, X, Y, Xt, Yt, config)}
    if condition == "wholeval":  # before issue 14: one of the 4 images held back for validation
        result = retrain(base, X[1:], Y[1:], defaults, validation=([X[0]], [Y[0]]))
    elif condition == "scratch":
        config = ModelConfig(n_channel_in=1 if X[0].ndim == 2 else X[0].shape[-1])
        result = train(X, Y, config, TrainConfig(seed=seed, minutes=defaults.minutes, patience=defaults.patience))
    else:
        result = retrain(base, X, Y, defaults.replace(**changes[condition]))
    training = result.model.provenance["trainings"][-1]
    return {**row, "steps": result.steps, "seconds": round(result.seconds, 1), "stop_reason": result.stop_reason,
            "validation_ap50": result.validation_ap50, "start_validation_ap50": result.start_validation_ap50,
            "kept_start": result.kept_start, "input": training.get("input"),
            "validation": training.get("validation"), **score(result.model, Xt, Yt)}


def _curve(base, X, Y, Xt, Yt, config: TrainConfig) -> dict:
    from cellseg.callbacks import TrainingCallback
    from cellseg.training import TrainingData, fit

    points: list[dict] = []

    class Curve(TrainingCallback):
        def __init__(self) -> None:
            self.model, self.t0, self.eval_s = None, time.perf_counter(), 0.0

        def on_train_begin(self, model, total_steps: int) -> None:
            self.model = model

        def on_epoch_end(self, epoch: int, step: int, logs: dict) -> None:
            if epoch % 4:
                return
            t = time.perf_counter()
            points.append({"epoch": epoch, "step": step, "train_s": round(t - self.t0 - self.eval_s, 1),
                           "val_loss": round(float(logs.get("val_loss", float("nan"))), 4),
                           **score(self.model, Xt, Yt)})
            print(points[-1], flush=True)
            self.eval_s += time.perf_counter() - t

    model = base.copy()
    result = fit(model, TrainingData(X, Y), config, [Curve()])
    final = score(result.model, Xt, Yt)
    return {"steps": result.steps, "seconds": round(result.seconds, 1), "curve": points,
            "stop_reason": "curve", "validation_ap50": result.validation_ap50, **final}


def summary() -> str:
    rows = [json.loads(line) for line in OUT.read_text().splitlines() if line.strip()]
    df = pd.DataFrame(rows).drop_duplicates(["set", "condition", "seed"], keep="last")
    rows = df.to_dict("records")
    g = df.groupby(["set", "condition"])
    table = g.agg(seeds=("seed", "nunique"), ap50=("ap50", "mean"), ap50_sd=("ap50", "std"), map=("map", "mean"),
                  steps=("steps", "mean"), seconds=("seconds", "mean")).reset_index()
    lines = ["# Retraining with defaults on 4 images: side by side", "",
             "Run by `benchmarks/retrain_defaults.py` (see its docstring for the sets and conditions); "
             f"{rows[0]['machine']}. Means over seeds; AP@0.5 and mean AP 0.5-0.95 on each set's test images.", "",
             "| set | condition | seeds | AP@0.5 (sd) | mean AP | steps | training s |", "|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        sd = "" if pd.isna(r.ap50_sd) else f" ({r.ap50_sd:.3f})"
        lines.append(f"| {r.set} | {r.condition} | {r.seeds} | {r.ap50:.3f}{sd} | {r.map:.3f} | {r.steps:.0f} | "
                     f"{r.seconds:.0f} |")
    lines += ["", "Per run (stop reason, validation AP@0.5, input adaptation):", ""]
    for r in rows:
        lines.append(f"- {r['set']} / {r['condition']} / seed {r['seed']}: AP@0.5 {r['ap50']:.3f}, mean AP "
                     f"{r['map']:.3f}, {r['steps']} steps in {r['seconds']} s"
                     + (f"; {r.get('stop_reason')}; validation AP@0.5 {r.get('validation_ap50')}; {r.get('input')}; "
                        f"validation: {r.get('validation')}" if r["condition"] != "asis" else ""))
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", choices=SETS, default=list(SETS))
    ap.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=["asis", "defaults"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--model", default="dsb2018_simmix")
    ap.add_argument("--summary", action="store_true", help="only write retrain_defaults.md from the .jsonl")
    args = ap.parse_args()
    if not args.summary:
        for seed in args.seeds:
            for set_name in args.sets:
                for condition in args.conditions:
                    t0 = time.perf_counter()
                    row = run(set_name, condition, seed, args.model)
                    row["wall_seconds"] = round(time.perf_counter() - t0, 1)
                    with OUT.open("a") as f:
                        f.write(json.dumps(row) + "\n")
                    print(json.dumps(row), flush=True)
    (HERE / "retrain_defaults.md").write_text(summary())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
