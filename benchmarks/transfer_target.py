"""Issue 5's retraining target: the shipped model retrained on 4 images of a new domain.

New domain: the grey brightfield images of DSB2018 (``../shared/data/dsb2018/brightfield``, the 1024x1024
ones, R=G=B, so channel 0): dark nuclei on a bright background, unlike the fluorescence data the model
was pretrained on. In one run, side by side, on the same held-back test images:

- the shipped model as is;
- the shipped model retrained on 4 images for at most ``--minutes`` (default 10) / ``--steps`` steps;
- the same architecture trained from scratch on the same 4 images with the same steps and seed.

Writes ``benchmarks/transfer_target.json`` and ``.md``. Usage::

    .venv/bin/python benchmarks/transfer_target.py --steps 300 --minutes 10
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
from cellseg.config import TrainConfig
from cellseg.data import shared_data_dir
from cellseg.models import load_model
from cellseg.prediction import predict
from cellseg.training import retrain, train

HERE = Path(__file__).parent


def brightfield_grey() -> tuple[list[str], list[np.ndarray], list[np.ndarray]]:
    """The grey (R=G=B) 1024x1024 brightfield images of DSB2018 as single-channel images, sorted by name."""
    base = shared_data_dir()
    root = None if base is None else base / "dsb2018" / "brightfield"
    if root is None or not (root / "manifest.csv").is_file():
        raise SystemExit("needs ../shared/data/dsb2018/brightfield")
    table = pd.read_csv(root / "manifest.csv").sort_values("file")
    names, images, masks = [], [], []
    for f in table[(table["height"] == 1024) & (table["width"] == 1024)]["file"]:
        img = cimages.read_image(root / "images" / f)
        img = img[..., 0] if img.ndim == 3 else img
        names.append(Path(f).stem)
        images.append(img)
        masks.append(cmasks.check_mask(cimages.read_image(root / "masks" / f), f))
    return names, images, masks


def score(model, images, masks) -> dict[str, float]:
    preds = [predict(model, im)[0] for im in images]
    _, summary = metrics.score_dataset(masks, preds)
    s = summary.set_index("iou_threshold")
    return {"AP@0.5": metrics.ap_at(summary, 0.5), "F1@0.5": float(s.loc[0.5, "f1"]),
            "mean AP 0.5-0.95": metrics.mean_ap(summary)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="dsb2018_simmix")
    ap.add_argument("--n-train", type=int, default=4)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=10.0, help="cap on each training's wall time")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    names, images, masks = brightfield_grey()
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(names))
    tr, te = sorted(order[: args.n_train]), sorted(order[args.n_train:])
    X, Y = [images[i] for i in tr], [masks[i] for i in tr]
    Xt, Yt = [images[i] for i in te], [masks[i] for i in te]
    print(f"new domain: DSB2018 grey brightfield, {len(tr)} train / {len(te)} test images (1024x1024)", flush=True)

    pretrained = load_model(args.model)
    epochs = 10
    tc = TrainConfig(epochs=epochs, steps_per_epoch=max(1, args.steps // epochs), seed=args.seed)
    rows = []
    t0 = time.perf_counter()
    rows.append({"model": f"{args.model} as is", "steps": 0, "train_seconds": 0.0,
                 **score(pretrained, Xt, Yt)})
    print(rows[-1], flush=True)

    deadline = time.time() + args.minutes * 60
    re = retrain(pretrained, X, Y, tc, names=[names[i] for i in tr], should_cancel=lambda: time.time() > deadline)
    rows.append({"model": f"{args.model} retrained on {len(tr)} images", "steps": re.steps,
                 "train_seconds": round(re.seconds, 1), **score(re.model, Xt, Yt)})
    print(rows[-1], flush=True)

    deadline = time.time() + args.minutes * 60
    tc_scratch = TrainConfig(epochs=epochs, steps_per_epoch=max(1, re.steps // epochs), seed=args.seed)
    sc = train(X, Y, pretrained.config, tc_scratch, names=[names[i] for i in tr],
               should_cancel=lambda: time.time() > deadline)
    rows.append({"model": f"from scratch on {len(tr)} images (same architecture and steps)", "steps": sc.steps,
                 "train_seconds": round(sc.seconds, 1), **score(sc.model, Xt, Yt)})
    print(rows[-1], flush=True)

    table = pd.DataFrame(rows)
    gain_as_is = rows[1]["AP@0.5"] - rows[0]["AP@0.5"]
    gain_scratch = rows[1]["AP@0.5"] - rows[2]["AP@0.5"]
    result = {"data": "DSB2018 brightfield, grey 1024x1024 images (R=G=B, channel 0)",
              "train": [names[i] for i in tr], "test": [names[i] for i in te], "seed": args.seed,
              "machine": f"{platform.machine()} CPU, 2 cores", "rows": rows,
              "gain_vs_as_is": gain_as_is, "gain_vs_scratch": gain_scratch,
              "targets_met": {"vs_as_is>=0.15": gain_as_is >= 0.15, "vs_scratch>=0.25": gain_scratch >= 0.25},
              "total_seconds": round(time.perf_counter() - t0, 1)}
    (HERE / "transfer_target.json").write_text(json.dumps(result, indent=2))
    md = ["# Retraining the shipped model on 4 images of a new domain", "",
          f"Data: {result['data']}; {len(tr)} training and {len(te)} test images, seed {args.seed}; "
          f"{result['machine']}; run `benchmarks/transfer_target.py --steps {args.steps} --minutes {args.minutes:g}`.",
          "", "| model | steps | training s | AP@0.5 | F1@0.5 | mean AP 0.5-0.95 |", "|---|---|---|---|---|---|"]
    md += [f"| {r['model']} | {r['steps']} | {r['train_seconds']} | {r['AP@0.5']:.3f} | {r['F1@0.5']:.3f} | "
           f"{r['mean AP 0.5-0.95']:.3f} |" for r in rows]
    md += ["", f"Retrained vs as is: {gain_as_is:+.3f} AP@0.5 (target >= +0.15); retrained vs from scratch: "
           f"{gain_scratch:+.3f} (target >= +0.25).", ""]
    (HERE / "transfer_target.md").write_text("\n".join(md))
    print(table.to_string(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
