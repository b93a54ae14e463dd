"""Train the pretrained model shipped with cellseg (``src/cellseg/pretrained/<name>.zip``).

Recipe: a U-Net StarDist (32 rays, grid 2, depth 3, 32 base filters, 128x128 patches) trained on the train
split of ``../shared/data/dsb2018/fluorescence`` plus simulated nuclei (a mix of simulator presets), for a
fixed wall-clock budget on the CPU; thresholds optimised on held-back training images; then scored on the
DSB2018 fluorescence test split. Writes the model zip and ``<name>.md`` (recipe, time, scores) next to it.

Usage::

    .venv/bin/python scripts/train_pretrained.py --minutes 60
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from cellseg import metrics, simulate
from cellseg.bundle import PRETRAINED_DIR
from cellseg.config import ModelConfig, TrainConfig
from cellseg.data import dsb2018_fluorescence
from cellseg.prediction import predict
from cellseg.tiling import default_overlap, receptive_field
from cellseg.training import train


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="dsb2018_simmix")
    ap.add_argument("--minutes", type=float, default=60.0, help="wall-clock training budget")
    ap.add_argument("--n-sim", type=int, default=120, help="simulated images added to DSB train")
    ap.add_argument("--epochs", type=int, default=400)
    ap.add_argument("--steps-per-epoch", type=int, default=100)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--out", default=str(PRETRAINED_DIR))
    ap.add_argument("--init", help="continue training this model (folder, zip or name) instead of starting anew")
    ap.add_argument("--learning-rate", type=float, default=3e-4)
    args = ap.parse_args()

    train_set = dsb2018_fluorescence("train")
    test_set = dsb2018_fluorescence("test")
    if train_set is None or test_set is None:
        raise SystemExit("needs ../shared/data/dsb2018 (DSB2018 fluorescence with split.csv)")
    names, images, masks = train_set
    sim_images, sim_masks = simulate.simulate_dataset(args.n_sim, size=256, preset="mixed", seed=1)
    all_images = list(images) + list(sim_images)
    all_masks = list(masks) + list(sim_masks)
    all_names = list(names) + [f"sim_{i:04d}" for i in range(args.n_sim)]

    mc = ModelConfig(n_rays=32, grid=(2, 2), unet_n_depth=3, unet_n_filter_base=args.filters,
                     patch_size=(128, 128), batch_size=4, learning_rate=3e-4)
    tc = TrainConfig(epochs=args.epochs, steps_per_epoch=args.steps_per_epoch, validation_fraction=0.1, seed=0,
                     learning_rate=args.learning_rate)
    deadline = time.time() + args.minutes * 60
    last = [0.0]

    def progress(fraction: float, message: str) -> None:
        if time.time() - last[0] > 60:
            last[0] = time.time()
            print(f"{time.strftime('%H:%M:%S')} {fraction:6.1%} {message}", file=sys.stderr, flush=True)

    print(f"training on {len(names)} DSB2018 train images + {args.n_sim} simulated, budget {args.minutes} min",
          flush=True)
    description = (f"DSB2018 fluorescence train split ({len(names)} images) + "
                   f"{args.n_sim} simulated images (preset mixed, seed 1)")
    if args.init:
        from cellseg.models import load_model
        from cellseg.training import retrain

        init = load_model(args.init)
        mc = init.config
        result = retrain(init, all_images, all_masks, tc, names=all_names, progress=progress,
                         should_cancel=lambda: time.time() > deadline, data_description=description)
        result.model.provenance["name"] = args.name
    else:
        result = train(all_images, all_masks, mc, tc, names=all_names, progress=progress,
                       should_cancel=lambda: time.time() > deadline, model_name=args.name,
                       data_description=description)
    model = result.model
    if result.cancelled:  # stopped by the time budget: thresholds were not optimised yet
        from cellseg import images as cimages
        from cellseg.training import optimize_thresholds, split_validation

        _, val_idx = split_validation(len(all_images), tc.validation_fraction, tc.seed)
        val_idx = [i for i in val_idx if i < len(names)][:40]
        optimize_thresholds(model, [cimages.normalize(all_images[i]) for i in val_idx], [all_masks[i] for i in val_idx])
    print(f"trained {result.steps} steps in {result.seconds / 60:.1f} min ({model.steps_trained} in all); "
          f"thresholds {model.thresholds}", flush=True)

    t_names, t_images, t_masks = test_set
    t0 = time.perf_counter()
    preds = [predict(model, im, name=n)[0] for n, im in zip(t_names, t_images)]
    pred_seconds = time.perf_counter() - t0
    _, summary = metrics.score_dataset(t_masks, preds, names=t_names)
    ap50, map_ = metrics.ap_at(summary, 0.5), metrics.mean_ap(summary)
    f1 = float(summary.set_index("iou_threshold").loc[0.5, "f1"])
    print(f"DSB2018 fluorescence test split ({len(t_names)} images): AP@0.5 {ap50:.3f}, F1@0.5 {f1:.3f}, "
          f"mean AP 0.5-0.95 {map_:.3f}", flush=True)

    model.provenance["test_scores"] = {"data": f"DSB2018 fluorescence test split, {len(t_names)} images",
                                       "AP@0.5": ap50, "F1@0.5": f1, "mean_AP_0.5_0.95": map_}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rf = receptive_field(model)  # measured once, saved with the model (tiled prediction's default overlap)
    model.mark_changed()
    model.save(out / f"{args.name}.zip")
    size_mb = (out / f"{args.name}.zip").stat().st_size / 1e6
    table = summary[["iou_threshold", "precision", "recall", "f1", "accuracy", "panoptic_quality"]]
    md = [
        f"# Pretrained model `{args.name}`",
        "",
        "Load it by name: `cellseg predict --model dsb2018_simmix ...`, `load_model('dsb2018_simmix')`, or in the",
        "StarDist Model Reader node.",
        "",
        "## Recipe",
        f"- Architecture: {json.dumps(mc.to_dict())}",
        f"- Data: DSB2018 fluorescence train split ({len(names)} images; 10% held back for validation and "
        f"threshold optimisation) + {args.n_sim} simulated 256x256 images (`preset='mixed'`, seed 1).",
        "- Training (one line per run, from the bundle's provenance): Adam, batch 4, augmentation on, "
        f"ReduceLROnPlateau, each run stopped by a wall-clock budget on a {platform.machine()} CPU:",
        *[f"  - {t['kind']}: {t['steps']} steps in {t['seconds'] / 60:.1f} min, learning rate "
          f"{t['train_config']['learning_rate'] or 3e-4:g}" for t in model.provenance.get("trainings", [])],
        f"  - in all {model.steps_trained} steps.",
        f"- Thresholds: {model.thresholds}",
        f"- Receptive field (impulse response, as stardist measures it; kept in the bundle's `cellseg.json` "
        f"under `geometry`): {rf} px, so tiled prediction uses a {default_overlap(model)}-px overlap by default.",
        "- Script: `scripts/train_pretrained.py --minutes 55`, then `scripts/train_pretrained.py --init "
        f"dsb2018_simmix --minutes M --learning-rate LR` to continue; bundle size {size_mb:.1f} MB.",
        "",
        f"## Scores on the DSB2018 fluorescence test split ({len(t_names)} images)",
        f"AP@0.5 = **{ap50:.3f}**, F1@0.5 = {f1:.3f}, mean AP over IoU 0.5-0.95 = {map_:.3f}; "
        f"prediction took {pred_seconds:.0f} s for the split.",
        "",
        table.to_markdown(index=False, floatfmt=".3f") if _has_tabulate() else table.to_string(index=False),
        "",
    ]
    (out / f"{args.name}.md").write_text("\n".join(md))
    print(f"wrote {out / (args.name + '.zip')} ({size_mb:.1f} MB) and {args.name}.md", flush=True)
    return 0


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


if __name__ == "__main__":
    np.seterr(all="ignore")
    raise SystemExit(main())
