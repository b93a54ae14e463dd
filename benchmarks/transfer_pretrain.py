"""Pretrain one small model for the transfer-learning experiments and save it as a zip.

Usage: ``.venv/bin/python benchmarks/transfer_pretrain.py KIND OUT.zip [--steps 400]`` with KIND one of
dsb2018, simmix, highnoise (see :func:`cellseg.transfer.pretrain_data`). Uses the default tl-eval model.
"""

from __future__ import annotations

import argparse
import time

from cellseg.config import TrainConfig
from cellseg.training import train
from cellseg.transfer import TLConfig, pretrain_data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--n-images", type=int, default=64)
    args = ap.parse_args()
    cfg = TLConfig()
    data = pretrain_data(args.kind, args.n_images, cfg.image_size)
    if data is None:
        raise SystemExit(f"no data for {args.kind}")
    epochs = 10
    tc = TrainConfig(epochs=epochs, steps_per_epoch=max(1, args.steps // epochs), seed=0, batch_size=cfg.batch_size,
                     validation_fraction=0.15)
    t = time.perf_counter()
    res = train(data[0], data[1], cfg.model_config(), tc, model_name=f"pre-{args.kind}",
                data_description=f"{len(data[0])} {args.kind} images (cellseg.transfer.pretrain_data)")
    res.model.save(args.out)
    print(f"pre-{args.kind}: {res.steps} steps in {time.perf_counter() - t:.0f} s; thresholds {res.model.thresholds}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
