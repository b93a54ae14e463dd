"""End-to-end demo: pretrain on simulated nuclei, retrain on a few real images, score before and after.

``cellseg demo [--out DIR]`` runs in under ten minutes on a 2-core CPU:

1. simulate fluorescence nuclei (a mix of simulator presets) and train a small StarDist model on them;
2. retrain that model on 4 real annotated images (DSB2018 fluorescence from ``../shared/data`` when
   present, else crops of the annotated sample image inside the stardist wheel);
3. for comparison, train the same architecture from scratch on the same 4 images with the same steps;
4. predict held-back real images with each model and score them against the ground truth;
5. write label TIFFs, an overlay PNG and a metrics table (CSV and markdown) to the output folder.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg import metrics, simulate
from cellseg.bundle import check_model_target
from cellseg.config import ModelConfig, TrainConfig
from cellseg.data import real_annotated
from cellseg.images import write_image
from cellseg.prediction import predict
from cellseg.render import overlay
from cellseg.simulate_folders import write_dataset
from cellseg.training import retrain, train


def demo_model_config() -> ModelConfig:
    """A small U-Net StarDist that trains in minutes on a laptop CPU."""
    return ModelConfig(n_rays=32, grid=(2, 2), unet_n_depth=3, unet_n_filter_base=16, patch_size=(128, 128),
                       batch_size=4)


def run_demo(out: str | Path = "cellseg-demo", *, n_sim: int = 48, pretrain_steps: int = 600,
             retrain_steps: int = 150, n_train: int = 4, n_test: int = 16, seed: int = 0,
             log=print, progress_factory=None) -> dict[str, Any]:
    """Run the demo and return a dict with the metrics table and the output paths."""
    out = Path(out)
    model_paths = (out / "models" / "pretrained-simulated", out / "models" / "retrained")
    for path in model_paths:  # before any work: a re-run replaces the demo's own models, nothing else
        check_model_target(path, overwrite=True)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    bar = progress_factory or (lambda desc: _NullBar())

    # 1. Pretrain on simulated data -------------------------------------------------------------
    log(f"[1/5] simulating {n_sim} images (mixed presets) and pretraining a small model "
        f"for {pretrain_steps} steps")
    sim_images, sim_masks = simulate.simulate_dataset(n_sim, size=256, preset="mixed", seed=seed)
    write_dataset(out / "data" / "simulated", sim_images[:8], sim_masks[:8], overwrite=True)  # its own
    epochs = 6
    tc = TrainConfig(epochs=epochs, steps_per_epoch=max(1, pretrain_steps // epochs), seed=seed)
    with bar("pretraining") as b:
        pre = train(sim_images, sim_masks, demo_model_config(), tc, progress=b, model_name="demo-simulated",
                    data_description=f"{n_sim} simulated images, preset mixed, seed {seed}")
    pretrained = pre.model
    pretrained.save(model_paths[0], overwrite=True)
    log(f"      pretrained in {pre.seconds:.0f} s, thresholds {pretrained.thresholds}")

    # 2. Retrain on a few real images -------------------------------------------------------------
    real = real_annotated(n_train=n_train, n_test=n_test, seed=seed)
    tr_names, tr_images, tr_masks = real["train"]
    te_names, te_images, te_masks = real["test"]
    log(f"[2/5] retraining on {len(tr_names)} real annotated images from {real['source']} "
        f"for {retrain_steps} steps")
    epochs = 5
    rc = TrainConfig(epochs=epochs, steps_per_epoch=max(1, retrain_steps // epochs), seed=seed)
    with bar("retraining") as b:
        re = retrain(pretrained, tr_images, tr_masks, rc, names=tr_names, progress=b,
                     data_description=f"{len(tr_names)} images from {real['source']}")
    re.model.provenance["name"] = "demo-retrained"
    re.model.save(model_paths[1], overwrite=True)
    log(f"      retrained in {re.seconds:.0f} s")

    # 3. Baseline: from scratch on the same few images --------------------------------------------
    log(f"[3/5] baseline: training from scratch on the same {len(tr_names)} images, same steps")
    with bar("from scratch") as b:
        scratch = train(tr_images, tr_masks, demo_model_config(), rc, names=tr_names, progress=b,
                        model_name="demo-scratch", data_description=f"{len(tr_names)} images from {real['source']}")

    # 4. Predict and score held-back images -------------------------------------------------------
    log(f"[4/5] segmenting {len(te_names)} held-back real images and scoring them")
    models = {"pretrained on simulated (before retraining)": pretrained,
              f"retrained on {len(tr_names)} real images (after)": re.model,
              f"from scratch on {len(tr_names)} real images": scratch.model}
    rows, preds = [], {}
    for key, model in models.items():
        labels = [predict(model, im, name=n)[0] for n, im in zip(te_names, te_images)]
        preds[key] = labels
        _, summary = metrics.score_dataset(te_masks, labels, names=te_names)
        rows.append(_row(key, summary))
    table = pd.DataFrame(rows)

    # 5. Write outputs -----------------------------------------------------------------------------
    log("[5/5] writing label TIFFs, overlay and metrics")
    after_key = list(models)[1]
    before_key = list(models)[0]
    for key, sub in ((before_key, "before"), (after_key, "after")):
        for n, lab in zip(te_names, preds[key]):
            write_image(out / "labels" / sub / f"{n}.tif", lab.astype(np.uint16))
    for n, img, gt in zip(te_names, te_images, te_masks):
        write_image(out / "data" / "test" / "images" / f"{n}.tif", img)
        write_image(out / "data" / "test" / "masks" / f"{n}.tif", gt.astype(np.uint16))
    overlay_path = _write_overlay(out / "overlay.png", te_images, te_masks, preds[before_key], preds[after_key])
    table.to_csv(out / "metrics.csv", index=False)
    md = _markdown(table, real["source"], len(tr_names), len(te_names), pre, re)
    (out / "metrics.md").write_text(md)
    seconds = time.perf_counter() - t_start
    log("")
    log(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    log("")
    log(f"demo finished in {seconds / 60:.1f} min; results in {out.resolve()}")
    log(f"  metrics: {out / 'metrics.md'}   overlay: {overlay_path}   labels: {out / 'labels'}")
    return {"table": table, "out": out, "seconds": seconds, "source": real["source"]}


def _row(key: str, summary: pd.DataFrame) -> dict[str, Any]:
    s = summary.set_index("iou_threshold")
    return {"model": key, "AP@0.5": metrics.ap_at(summary, 0.5), "F1@0.5": float(s.loc[0.5, "f1"]),
            "precision@0.5": float(s.loc[0.5, "precision"]), "recall@0.5": float(s.loc[0.5, "recall"]),
            "PQ@0.5": float(s.loc[0.5, "panoptic_quality"]), "mean AP 0.5-0.95": metrics.mean_ap(summary)}


def _write_overlay(path: Path, images, gts, before, after) -> Path:
    """One test image: ground truth | before retraining | after retraining, as outlines."""
    i = int(np.argmax([g.max() for g in gts]))  # the most crowded test image
    panels = [overlay(images[i], lab, max_size=384) for lab in (gts[i], before[i], after[i])]
    h = max(p.shape[0] for p in panels)
    sep = np.full((h, 4, 3), 255, np.uint8)
    row = []
    for p in panels:
        pad = np.zeros((h, p.shape[1], 3), np.uint8)
        pad[: p.shape[0]] = p
        row += [pad, sep]
    write_image(path, np.concatenate(row[:-1], axis=1))
    return path


def _markdown(table: pd.DataFrame, source: str, n_train: int, n_test: int, pre, re) -> str:
    lines = [
        "# cellseg demo results",
        "",
        f"Real data: {source}; retrained on {n_train} images, scored on {n_test} held-back images.",
        f"Pretraining: {pre.steps} steps in {pre.seconds:.0f} s; retraining: {re.steps} steps in {re.seconds:.0f} s.",
        "",
        "| " + " | ".join(table.columns) + " |",
        "|" + "---|" * len(table.columns),
    ]
    for _, r in table.iterrows():
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values) + " |")
    lines += ["", "Overlay (`overlay.png`): ground truth | before retraining | after retraining.", ""]
    return "\n".join(lines)


class _NullBar:
    def __call__(self, fraction: float, message: str = "") -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _cmd_demo(args: argparse.Namespace) -> int:
    from cellseg.cliutil import ProgressBar

    def factory(desc: str):
        return ProgressBar(desc, disable=args.quiet)

    run_demo(args.out, n_sim=args.n_sim, pretrain_steps=args.pretrain_steps, retrain_steps=args.retrain_steps,
             n_train=args.n_train, n_test=args.n_test, seed=args.seed, progress_factory=factory)
    return 0


def register_cli(sub: Any) -> None:
    from cellseg.cliutil import SEED, int_arg

    p = sub.add_parser("demo", help="end-to-end demo: pretrain on simulated data, retrain on 4 real images")
    p.add_argument("--out", default="cellseg-demo", help="output folder (default ./cellseg-demo)")
    p.add_argument("--n-sim", type=int_arg(1), default=48, help="simulated images for pretraining (default 48)")
    p.add_argument("--pretrain-steps", type=int_arg(1), default=600, help="pretraining steps (default 600)")
    p.add_argument("--retrain-steps", type=int_arg(1), default=150, help="retraining steps (default 150)")
    p.add_argument("--n-train", type=int_arg(1), default=4, help="real images to retrain on (default 4)")
    p.add_argument("--n-test", type=int_arg(1), default=16, help="held-back real images to score (default 16)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.set_defaults(func=_cmd_demo)
