"""Transfer-learning experiments (``cellseg tl-eval``): does pretraining help with few annotated images?

For each target data set, training-set size ``n`` and seed, every initialisation (random = "scratch", or a
pretrained model) is trained on the same ``n`` target images for the same number of steps, evaluated on
held-out target images at a few checkpoints and at the end, and compared with scratch by a Welch t-test
over seeds. Pretrained models are given as sources (``--pretrained NAME=SOURCE``) or pretrained inside the
run (``--pretrain dsb2018,simmix,highnoise``). Writes ``runs.csv`` (one row per run and checkpoint),
``summary.csv``, ``results.md`` and ``ap_vs_n_<target>.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg import files as cfiles
from cellseg import images as cimages
from cellseg import metrics, simulate
from cellseg.callbacks import EvaluateAtSteps
from cellseg.config import ModelConfig, TrainConfig
from cellseg.errors import InputError
from cellseg.models import CellsegModel, load_model
from cellseg.training import TrainingData, fit, train

Dataset = tuple[list[np.ndarray], list[np.ndarray]]
PRETRAIN_KINDS = ("dsb2018", "simmix", "highnoise")
TARGETS = ("low_noise", "high_noise", "dsb2018")


@dataclass
class TLConfig:
    """Settings of a transfer-learning experiment (see ``cellseg tl-eval --help``)."""

    sizes: list[int] = field(default_factory=lambda: [2, 5, 10, 50])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    targets: list[str] = field(default_factory=lambda: ["high_noise", "dsb2018"])
    steps: int = 200
    checkpoints: int = 4
    pretrained: dict[str, str] = field(default_factory=dict)
    pretrain: list[str] = field(default_factory=list)
    pretrain_steps: int = 400
    n_pretrain_images: int = 64
    n_test: int = 12
    image_size: int = 128
    target_ap: float = 0.5
    optimize_thresholds: bool = True
    learning_rate: float = 3e-4
    batch_size: int = 4
    model: dict[str, Any] = field(default_factory=lambda: {
        "n_rays": 32, "grid": (2, 2), "unet_n_depth": 3, "unet_n_filter_base": 16, "patch_size": (64, 64)})

    @classmethod
    def quick(cls) -> TLConfig:
        """A tiny end-to-end run (tests, smoke checks): about a minute on a laptop CPU."""
        return cls(sizes=[2], seeds=[0, 1], targets=["low_noise"], steps=4, checkpoints=2, pretrain=["highnoise"],
                   pretrain_steps=4, n_pretrain_images=4, n_test=2, image_size=64, optimize_thresholds=False,
                   batch_size=2,
                   model={"n_rays": 8, "grid": (2, 2), "unet_n_depth": 1, "unet_n_filter_base": 4,
                          "patch_size": (32, 32)})

    def model_config(self) -> ModelConfig:
        return ModelConfig(**self.model, batch_size=self.batch_size, learning_rate=self.learning_rate)


# -- data -----------------------------------------------------------------------------------------

def target_data(name: str, n_train: int, n_test: int, size: int) -> tuple[Dataset, Dataset, str] | None:
    """Train pool (``n_train`` images) and test set of a target; None when its data is absent."""
    if name in ("low_noise", "high_noise"):
        tr = simulate.simulate_dataset(n_train, size=size, preset=name, seed=1000)
        te = simulate.simulate_dataset(n_test, size=size, preset=name, seed=2000)
        return tr, te, f"simulated {name}, {size}x{size}, train pool seed 1000, test seed 2000"
    if name == "dsb2018":
        from cellseg.data import dsb2018_fluorescence

        tr = dsb2018_fluorescence("train")
        te = dsb2018_fluorescence("test")
        if tr is None or te is None:
            return None
        tr, te = _small(tr, n_train, seed=1), _small(te, n_test, seed=2)
        return tr, te, ("DSB2018 fluorescence (shared data): train pool from the train split, test images "
                        "from the test split, images up to 360x360")
    raise InputError(f"target {name!r} is unknown; choose from {TARGETS}")


def _small(data: tuple[list[str], list[np.ndarray], list[np.ndarray]], n: int, seed: int) -> Dataset:
    """``n`` random images of at most 360x360 pixels (deterministic for ``seed``)."""
    _, images, masks = data
    idx = [i for i, im in enumerate(images) if max(im.shape[:2]) <= 360]
    pick = sorted(np.random.default_rng(seed).permutation(idx)[:n].tolist())
    return [images[i] for i in pick], [masks[i] for i in pick]


def pretrain_data(kind: str, n: int, size: int) -> Dataset | None:
    """Pretraining images: DSB2018 train split, a mix of simulator presets, or simulated high noise."""
    if kind == "dsb2018":
        from cellseg.data import dsb2018_fluorescence

        tr = dsb2018_fluorescence("train")
        return None if tr is None else _small(tr, n, seed=3)
    if kind == "simmix":
        return simulate.simulate_dataset(n, size=size, preset="mixed", seed=3000)
    if kind == "highnoise":
        return simulate.simulate_dataset(n, size=size, preset="high_noise", seed=3000)
    raise InputError(f"pretraining kind {kind!r} is unknown; choose from {PRETRAIN_KINDS}")


# -- evaluation -----------------------------------------------------------------------------------

def evaluate(model: CellsegModel, test: Dataset) -> dict[str, float]:
    """AP@0.5 and mean AP over IoU 0.5-0.95 on ``test`` with the model's thresholds."""
    import contextlib
    import io

    t = model.thresholds
    preds = []
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        for im in test[0]:
            lab, _ = model.stardist.predict_instances(cimages.normalize(im), prob_thresh=t["prob"], nms_thresh=t["nms"],
                                                      show_tile_progress=False)
            preds.append(lab)
    _, summary = metrics.score_dataset(test[1], preds)
    return {"ap50": metrics.ap_at(summary, 0.5), "map": metrics.mean_ap(summary)}


def _one_run(init: CellsegModel | None, mc: ModelConfig, images: list, masks: list, test: Dataset,
             cfg: TLConfig, seed: int) -> list[dict[str, Any]]:
    """Train one initialisation on (images, masks); rows for each checkpoint and the final model."""
    model = CellsegModel.create(mc, seed=seed, name="scratch") if init is None else init.copy()
    epochs = max(1, cfg.checkpoints)
    spe = max(1, cfg.steps // epochs)
    tc = TrainConfig(epochs=epochs, steps_per_epoch=spe, seed=seed, batch_size=cfg.batch_size,
                     patch_size=tuple(mc.patch_size), learning_rate=cfg.learning_rate, reduce_lr=False,
                     optimize_thresholds=cfg.optimize_thresholds)
    # evaluated after every epoch but the last (the final model is evaluated after thresholds are set)
    checkpoints = EvaluateAtSteps([spe * (k + 1) for k in range(epochs - 1)], lambda m: evaluate(m, test))
    n_val = min(len(images), 8)
    res = fit(model, TrainingData(images, masks, validation=(images[:n_val], masks[:n_val])), tc, [checkpoints])
    final = {"step": res.steps, "train_seconds": checkpoints.train_seconds(), **evaluate(model, test)}
    return [*({**r, "final": False} for r in checkpoints.results), {**final, "final": True}]


def run_experiment(cfg: TLConfig, out: str | Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the experiment and write CSV, markdown and plots to ``out``; returns the tables and notes."""
    out = Path(out)
    if os.path.lexists(out) and not out.is_dir():
        raise InputError(f"output folder {out} exists and is not a folder; choose a new folder")
    cfiles.check_writable_location(out / "runs.csv", "output folder")  # before any training
    mc = cfg.model_config()
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    notes: list[str] = []
    inits: dict[str, CellsegModel | None] = {"scratch": None}
    pre_info: dict[str, Any] = {}
    for name, source in cfg.pretrained.items():
        inits[name] = load_model(source)
        pre_info[name] = {"source": source, "steps_trained": inits[name].steps_trained}
        log(f"loaded pretrained {name!r} from {source} ({inits[name].steps_trained} steps trained)")
    for kind in cfg.pretrain:
        data = pretrain_data(kind, cfg.n_pretrain_images, cfg.image_size)
        if data is None:
            notes.append(f"pretraining on {kind} skipped: ../shared/data/dsb2018 not found")
            continue
        epochs = max(1, min(10, cfg.pretrain_steps // 20))
        tc = TrainConfig(epochs=epochs, steps_per_epoch=max(1, cfg.pretrain_steps // epochs), seed=0,
                         batch_size=cfg.batch_size, validation_fraction=0.15,
                         optimize_thresholds=cfg.optimize_thresholds)
        t = time.perf_counter()
        res = train(data[0], data[1], mc, tc, model_name=f"pre-{kind}")
        inits[f"pre-{kind}"] = res.model
        pre_info[f"pre-{kind}"] = {"source": f"pretrained in this run on {len(data[0])} {kind} images",
                                   "steps": res.steps, "seconds": round(time.perf_counter() - t, 1)}
        log(f"pretrained on {kind}: {res.steps} steps in {time.perf_counter() - t:.0f} s")

    rows: list[dict[str, Any]] = []
    tests: dict[str, Dataset] = {}
    for target in cfg.targets:
        got = target_data(target, max(cfg.sizes), cfg.n_test, cfg.image_size)
        if got is None:
            notes.append(f"target {target} skipped: ../shared/data/dsb2018 not found")
            log(notes[-1])
            continue
        (pool_x, pool_y), test, desc = got
        tests[target] = test
        notes.append(f"target {target}: {desc}; {len(test[0])} test images")
        for n in cfg.sizes:
            for seed in cfg.seeds:
                pick = sorted(np.random.default_rng(seed).permutation(len(pool_x))[:n].tolist())
                xs, ys = [pool_x[i] for i in pick], [pool_y[i] for i in pick]
                for name, init in inits.items():
                    t = time.perf_counter()
                    for r in _one_run(init, mc, xs, ys, test, cfg, seed):
                        rows.append({"target": target, "n": len(xs), "seed": seed, "init": name, **r})
                    pd.DataFrame(rows).to_csv(out / "runs.csv", index=False)  # partial results survive a kill
                    fin = rows[-1]
                    log(f"{target} n={len(xs)} seed={seed} {name}: AP@0.5 {fin['ap50']:.3f}, mAP {fin['map']:.3f} "
                        f"({time.perf_counter() - t:.0f} s)")
    for name, init in inits.items():  # the pretrained models without retraining, as a reference
        if init is None:
            continue
        for target, test in tests.items():
            rows.append({"target": target, "n": 0, "seed": 0, "init": name, "step": 0, "train_seconds": 0.0,
                         **evaluate(init, test), "final": True})
    runs = pd.DataFrame(rows)
    summary = summarize(runs, cfg.target_ap)
    seconds = time.perf_counter() - t_start
    runs.to_csv(out / "runs.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    plots = plot(summary, out)
    (out / "results.md").write_text(markdown(summary, cfg, notes, pre_info, seconds))
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2, default=list))
    log(f"done in {seconds / 60:.1f} min; results in {out}")
    return {"runs": runs, "summary": summary, "plots": plots, "notes": notes, "seconds": seconds}


# -- statistics and reports -----------------------------------------------------------------------

def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value (NaN with fewer than 2 values per group or no variance)."""
    from scipy.stats import ttest_ind

    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2 or len(b) < 2 or (np.std(a) == 0 and np.std(b) == 0):
        return float("nan")
    return float(ttest_ind(a, b, equal_var=False).pvalue)


def summarize(runs: pd.DataFrame, target_ap: float) -> pd.DataFrame:
    """One row per (target, n, init): mean/std of AP@0.5 and mAP, Welch p vs scratch, time to target AP."""
    if runs.empty:
        return pd.DataFrame()
    final = runs[runs["final"]]
    out = []
    for (target, n, init), g in final.groupby(["target", "n", "init"], sort=True):
        scratch = final[(final["target"] == target) & (final["n"] == n) & (final["init"] == "scratch")]
        row = {"target": target, "n": int(n), "init": init, "seeds": len(g),
               "ap50_mean": g["ap50"].mean(), "ap50_std": g["ap50"].std(ddof=1) if len(g) > 1 else float("nan"),
               "map_mean": g["map"].mean(), "map_std": g["map"].std(ddof=1) if len(g) > 1 else float("nan")}
        if init != "scratch" and n > 0 and len(scratch):
            row["ap50_diff"] = row["ap50_mean"] - scratch["ap50"].mean()
            row["ap50_p"] = welch_p(g["ap50"], scratch["ap50"])
            row["map_p"] = welch_p(g["map"], scratch["map"])
        # steps and seconds until a checkpoint reaches the target AP (median over seeds that do)
        ck = runs[(runs["target"] == target) & (runs["n"] == n) & (runs["init"] == init)]
        hits = [s.sort_values("step")[lambda d: d["ap50"] >= target_ap].head(1) for _, s in ck.groupby("seed")]
        hits = [h for h in hits if len(h)]
        row["reached"] = f"{len(hits)}/{ck['seed'].nunique()}"
        row["steps_to_target"] = float(np.median([h["step"].iloc[0] for h in hits])) if hits else float("nan")
        row["seconds_to_target"] = float(np.median([h["train_seconds"].iloc[0] for h in hits])) if hits else float("nan")
        out.append(row)
    return pd.DataFrame(out)


def _fmt(v: Any, spec: str = ".3f") -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else format(v, spec)
    return str(v)


def markdown(summary: pd.DataFrame, cfg: TLConfig, notes: list[str], pre_info: dict, seconds: float) -> str:
    """The results as markdown: settings, notes and one table per target."""
    lines = ["# Transfer-learning experiment (cellseg tl-eval)", "",
             f"Sizes {cfg.sizes}, seeds {cfg.seeds}, {cfg.steps} training steps per run (equal for every "
             f"initialisation), batch {cfg.batch_size}, learning rate {cfg.learning_rate}, model {cfg.model}; "
             f"target AP@0.5 for 'steps to target' = {cfg.target_ap}; run time {seconds / 60:.1f} min.", ""]
    lines += [f"- {k}: {v}" for k, v in pre_info.items()]
    lines += [f"- {n}" for n in notes]
    if summary.empty:
        return "\n".join([*lines, "", "No results."]) + "\n"
    cols = ["n", "init", "seeds", "AP@0.5", "mAP 0.5-0.95", "ΔAP@0.5 vs scratch", "p (AP@0.5)", "p (mAP)",
            "reached", "steps to target", "s to target"]
    for target, g in summary.groupby("target", sort=False):
        lines += ["", f"## Target: {target}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for _, r in g.sort_values(["n", "init"]).iterrows():
            cells = [str(r["n"]) if r["n"] > 0 else "0 (as is)", r["init"], str(r["seeds"]),
                     f"{r['ap50_mean']:.3f} ± {_fmt(r['ap50_std'])}".rstrip(" ±"),
                     f"{r['map_mean']:.3f} ± {_fmt(r['map_std'])}".rstrip(" ±"),
                     _fmt(r.get("ap50_diff", float("nan")), "+.3f"), _fmt(r.get("ap50_p", float("nan"))),
                     _fmt(r.get("map_p", float("nan"))), r["reached"], _fmt(r["steps_to_target"], ".0f"),
                     _fmt(r["seconds_to_target"], ".0f")]
            lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "± is the standard deviation over seeds; p is Welch's t-test against scratch at the same n "
              "(scipy.stats.ttest_ind, equal_var=False). 'reached' counts seeds whose AP@0.5 reached the target "
              "at some checkpoint; steps/seconds are the median over those seeds (seconds exclude evaluation)."]
    return "\n".join(lines) + "\n"


def plot(summary: pd.DataFrame, out: Path) -> list[Path]:
    """``ap_vs_n_<target>.png``: AP@0.5 and mAP against n, one line per initialisation (error bars: std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    if summary.empty:
        return paths
    for target, g in summary[summary["n"] > 0].groupby("target"):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, key, label in ((axes[0], "ap50", "AP@0.5"), (axes[1], "map", "mean AP 0.5-0.95")):
            for init, h in g.groupby("init"):
                h = h.sort_values("n")
                ax.errorbar(h["n"], h[f"{key}_mean"], yerr=h[f"{key}_std"].fillna(0), marker="o", capsize=3,
                            label=init)
            ax.set_xscale("log")
            ax.minorticks_off()
            ax.set_xticks(sorted(g["n"].unique()))
            ax.set_xticklabels([str(v) for v in sorted(g["n"].unique())])
            ax.set_xlabel("training images n")
            ax.set_ylabel(label)
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"target: {target}")
        fig.tight_layout()
        path = out / f"ap_vs_n_{target}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


# -- command line ---------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _named_source(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected NAME=SOURCE, got {text!r}")
    name, source = text.split("=", 1)
    return name.strip(), source.strip()


def cmd_tl_eval(args: argparse.Namespace) -> int:
    cfg = TLConfig.quick() if args.quick else TLConfig()
    for key in ("sizes", "seeds", "targets", "steps", "checkpoints", "pretrain", "pretrain_steps", "n_test",
                "image_size", "target_ap", "learning_rate", "n_pretrain_images"):
        v = getattr(args, key)
        if v is not None:
            setattr(cfg, key, v)
    if args.filters is not None:
        cfg.model["unet_n_filter_base"] = args.filters
    if args.depth is not None:
        cfg.model["unet_n_depth"] = args.depth
    if args.no_optimize_thresholds:
        cfg.optimize_thresholds = False
    cfg.pretrained.update(dict(args.pretrained or []))
    for t in cfg.targets:
        if t not in TARGETS:
            raise InputError(f"--targets: {t!r} is unknown; choose from {TARGETS}")
    for kind in cfg.pretrain:
        if kind not in PRETRAIN_KINDS:
            raise InputError(f"--pretrain: {kind!r} is unknown; choose from {PRETRAIN_KINDS}")
    run_experiment(cfg, args.out, log=(lambda m: None) if args.quiet else print)
    return 0


def register_cli(sub: Any) -> None:
    """Add ``cellseg tl-eval``."""
    from cellseg.cliutil import float_arg, int_arg, int_list_arg
    p = sub.add_parser("tl-eval", help="transfer-learning experiment: pretrained vs scratch over n and seeds")
    p.add_argument("--out", required=True, help="output folder (runs.csv, summary.csv, results.md, PNGs)")
    p.add_argument("--quick", action="store_true", help="tiny end-to-end run (smoke test)")
    p.add_argument("--sizes", type=int_list_arg(1), help="training-set sizes (default 2,5,10,50)")
    p.add_argument("--seeds", type=int_list_arg(0, 2**32 - 1), help="seeds (default 0,1,2)")
    p.add_argument("--targets", type=_words, help=f"targets from {','.join(TARGETS)} (default high_noise,dsb2018)")
    p.add_argument("--steps", type=int_arg(1), help="training steps per run, equal for all initialisations (default 200)")
    p.add_argument("--checkpoints", type=int_arg(1), help="evaluations per run incl. the final one (default 4)")
    p.add_argument("--pretrained", type=_named_source, action="append", metavar="NAME=SOURCE",
                   help="a pretrained initialisation (model folder, .zip or name); repeatable")
    p.add_argument("--pretrain", type=_words, help=f"pretrain in this run on some of {','.join(PRETRAIN_KINDS)}")
    p.add_argument("--pretrain-steps", type=int_arg(1), help="steps of each pretraining (default 400)")
    p.add_argument("--n-pretrain-images", type=int_arg(1), help="images per pretraining set (default 64)")
    p.add_argument("--n-test", type=int_arg(1), help="test images per target (default 12)")
    p.add_argument("--image-size", type=int_arg(16), help="simulated image side (default 128)")
    p.add_argument("--target-ap", type=float_arg(0, 1, lo_open=True), help="AP@0.5 for 'steps to target' (default 0.5)")
    p.add_argument("--learning-rate", type=float_arg(0, 1, lo_open=True, hi_open=True), help="Adam learning rate (default 3e-4)")
    p.add_argument("--filters", type=int_arg(1, 4096), help="base filters of the scratch/pretrain model (default 16)")
    p.add_argument("--depth", type=int_arg(1, 6), help="U-Net depth of the scratch/pretrain model (default 3)")
    p.add_argument("--no-optimize-thresholds", action="store_true", help="keep default thresholds (faster)")
    p.set_defaults(func=cmd_tl_eval)
