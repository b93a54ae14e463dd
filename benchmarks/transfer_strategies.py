"""Compare retraining strategies on a few images of a new domain (to choose the retraining default).

A pretrained model (zip) is retrained on ``--n`` images of a target (tl-eval's targets) for ``--steps``
steps with each strategy and ``--seeds`` seeds; also reported: the model as is and the same architecture
trained from scratch with the same steps. Writes a CSV and prints a markdown table.

Usage: ``.venv/bin/python benchmarks/transfer_strategies.py PRETRAINED.zip --target high_noise --out DIR``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cellseg.config import TrainConfig
from cellseg.models import CellsegModel, load_model
from cellseg.training import TrainingData, fit
from cellseg.transfer import TLConfig, evaluate, pretrain_data, target_data, welch_p

STRATEGIES = {
    "fine-tune all": {},
    "freeze encoder 1st half": {"freeze_encoder_epochs": 2},
    "encoder lr x0.1": {"encoder_lr_factor": 0.1},
    "re-init heads": {"reinit_heads": True},
    "mix 25% pretraining data": {"mix": True},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pretrained")
    ap.add_argument("--pretrain-kind", default="dsb2018", help="data mixed in by the 'mix' strategy")
    ap.add_argument("--target", default="high_noise")
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--n-test", type=int, default=8)
    ap.add_argument("--out", default="strategies")
    args = ap.parse_args()
    cfg = TLConfig()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pre = load_model(args.pretrained)
    (pool_x, pool_y), test, desc = target_data(args.target, 50, args.n_test, cfg.image_size)
    mix = pretrain_data(args.pretrain_kind, 32, cfg.image_size)
    rows = [{"strategy": "as is (no retraining)", "seed": 0, **evaluate(pre, test), "seconds": 0.0}]
    for seed in [int(s) for s in args.seeds.split(",")]:
        pick = sorted(np.random.default_rng(seed).permutation(len(pool_x))[: args.n].tolist())
        xs, ys = [pool_x[i] for i in pick], [pool_y[i] for i in pick]
        for name, opts in {"from scratch": {}, **STRATEGIES}.items():
            opts = dict(opts)
            use_mix = opts.pop("mix", False)
            model = CellsegModel.create(cfg.model_config(), seed=seed) if name == "from scratch" else pre.copy()
            tc = TrainConfig(epochs=4, steps_per_epoch=args.steps // 4, seed=seed, batch_size=cfg.batch_size,
                             patch_size=tuple(cfg.model["patch_size"]), reduce_lr=False, **opts)
            t = time.perf_counter()
            res = fit(model, TrainingData(xs, ys, validation=(xs, ys), mix_data=mix if use_mix else None), tc)
            rows.append({"strategy": name, "seed": seed, **evaluate(res.model, test),
                         "seconds": time.perf_counter() - t})
            print(f"{name} seed {seed}: AP@0.5 {rows[-1]['ap50']:.3f} mAP {rows[-1]['map']:.3f} "
                  f"({rows[-1]['seconds']:.0f} s)", flush=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "strategies.csv", index=False)
    base = df[df["strategy"] == "fine-tune all"]
    lines = [f"Target {args.target} ({desc}); n={args.n}; {args.steps} steps; pretrained {args.pretrained}", "",
             "| strategy | seeds | AP@0.5 | mAP 0.5-0.95 | p vs fine-tune all (AP@0.5) | seconds |",
             "|---|---|---|---|---|---|"]
    for name, g in df.groupby("strategy", sort=False):
        p = welch_p(g["ap50"], base["ap50"]) if name != "fine-tune all" else float("nan")
        lines.append(f"| {name} | {len(g)} | {g['ap50'].mean():.3f} ± {g['ap50'].std(ddof=1) if len(g) > 1 else 0:.3f} "
                     f"| {g['map'].mean():.3f} | {'' if np.isnan(p) else f'{p:.3f}'} | {g['seconds'].mean():.0f} |")
    (out / "strategies.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
