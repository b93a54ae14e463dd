"""Benchmark (issue 2, deliverable 11): this package vs raw stardist on the same config and data.

Train step time (``cellseg.training.train`` vs ``StarDist2D(Config2D).train``, same ``Config2D``, same
normalised images and masks, no augmentation on either side, no threshold optimisation) and predict time
(``cellseg.prediction.predict`` and ``predict_batch`` vs a stardist ``predict_instances`` loop), with the
ratios, written to a JSON file and a markdown table. Target: within 5 %.

Usage: ``python benchmarks/overhead.py [--epochs 2 --steps 20 --n-predict 30 --json ... --md ...]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--filters", type=int, default=16)
    p.add_argument("--n-train", type=int, default=16)
    p.add_argument("--n-predict", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--json", default="benchmarks/overhead.json")
    p.add_argument("--md", default="benchmarks/overhead.md")
    args = p.parse_args()

    from stardist.models import StarDist2D

    from cellseg import images as cimages
    from cellseg.config import ModelConfig, TrainConfig
    from cellseg.models import set_seed
    from cellseg.prediction import predict, predict_batch
    from cellseg.simulate import simulate_dataset
    from cellseg.training import prepare_data, split_validation, train

    mc = ModelConfig(n_rays=32, unet_n_depth=3, unet_n_filter_base=args.filters, patch_size=(128, 128),
                     batch_size=4)
    images, masks = simulate_dataset(args.n_train, size=256, seed=1)
    tc = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps, augment=False, optimize_thresholds=False,
                     reduce_lr=False, seed=0)
    X, Y = prepare_data(images, masks, mc, mc.patch_size)
    trn, val = split_validation(len(X), tc.validation_fraction, tc.seed)
    steps = args.epochs * args.steps

    def ours_train() -> object:
        return train(images, masks, mc, tc).model

    def raw_train() -> object:
        set_seed(0)
        with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()):
            sd = StarDist2D(mc.to_stardist(train_reduce_lr=None), name="raw", basedir=tmp)
            sd.train([X[i] for i in trn], [Y[i] for i in trn], validation_data=([X[i] for i in val],
                     [Y[i] for i in val]), epochs=args.epochs, steps_per_epoch=args.steps)
        return sd

    timings: dict[str, list[float]] = {"ours_train": [], "raw_train": []}
    model = None
    for _ in range(args.repeats):  # alternate, so that background load hits both alike
        t0 = time.perf_counter()
        model = ours_train()
        timings["ours_train"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        raw_train()
        timings["raw_train"].append(time.perf_counter() - t0)

    test = simulate_dataset(args.n_predict, size=256, seed=2)[0]
    thr = model.thresholds
    kw = dict(prob_thresh=thr["prob"], nms_thresh=thr["nms"], show_tile_progress=False)
    predict(model, test[0])
    with contextlib.redirect_stdout(io.StringIO()):
        model.stardist.predict_instances(cimages.normalize(test[0]), **kw)
    pt: dict[str, list[float]] = {"ours_predict": [], "ours_predict_batch": [], "raw_predict": []}
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        ours = [predict(model, im)[0] for im in test]
        pt["ours_predict"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        batch = [lab for lab, _ in predict_batch(model, test)]
        pt["ours_predict_batch"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()):
            raw = [model.stardist.predict_instances(cimages.normalize(im), **kw)[0] for im in test]
        pt["raw_predict"].append(time.perf_counter() - t0)
    same = all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(raw, ours, batch))

    best = {k: min(v) for k, v in {**timings, **pt}.items()}
    report = {
        "machine": f"{os.cpu_count()} CPU cores (shared with other jobs)",
        "config": {**mc.to_dict(), "epochs": args.epochs, "steps_per_epoch": args.steps, "augment": False,
                   "n_train_images": args.n_train, "n_predict_images": args.n_predict, "image_size": 256},
        "train_seconds": timings, "predict_seconds": pt, "best_seconds": best,
        "train_step_ms": {"ours": 1000 * best["ours_train"] / steps, "raw": 1000 * best["raw_train"] / steps},
        "train_time_ratio": best["ours_train"] / best["raw_train"],
        "predict_time_ratio": best["ours_predict"] / best["raw_predict"],
        "predict_batch_time_ratio": best["ours_predict_batch"] / best["raw_predict"],
        "labels_identical": same,
    }
    Path(args.json).write_text(json.dumps(report, indent=2))
    md = [
        "| measure | cellseg | raw stardist | ratio (cellseg / stardist) |",
        "|---|---|---|---|",
        f"| train, {steps} steps (wall, best of {args.repeats}) | {best['ours_train']:.1f} s | "
        f"{best['raw_train']:.1f} s | {report['train_time_ratio']:.3f} |",
        f"| train step | {report['train_step_ms']['ours']:.0f} ms | {report['train_step_ms']['raw']:.0f} ms | "
        f"{report['train_time_ratio']:.3f} |",
        f"| predict {args.n_predict} × 256² (`predict` loop) | {best['ours_predict']:.2f} s | "
        f"{best['raw_predict']:.2f} s | {report['predict_time_ratio']:.3f} |",
        f"| predict {args.n_predict} × 256² (`predict_batch`) | {best['ours_predict_batch']:.2f} s | "
        f"{best['raw_predict']:.2f} s | {report['predict_batch_time_ratio']:.3f} |",
        f"| labels identical | {same} | | |",
    ]
    Path(args.md).write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
