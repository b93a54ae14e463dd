"""Benchmark (issue 4): tiled prediction of large images and batched prediction of many small ones.

Side by side with one model, each method in its own subprocess (so peak RSS, ``VmHWM``, is per method):

* simulated 2048² and 8192² images: ``cellseg.streaming.predict_large`` (TIFF in, tiled label TIFF out)
  vs stardist ``predict_instances`` untiled (2048² only by default: at 8192² the full-resolution U-Net
  activations need tens of GB), ``predict_instances(n_tiles=...)`` and ``predict_instances_big``;
  wall time, peak RSS, object count, and object F1 at IoU 0.5 of each method against untiled stardist;
* many small images (``--n-small`` 256² crops of ``../shared/data/dsb2018``, simulated when absent):
  images/s of ``cellseg.prediction.predict_many`` (batched) vs a stardist ``predict_instances`` loop,
  and whether the labels are identical.

Usage: ``python benchmarks/large_image.py [--model M] [--sizes 2048 8192] [--json out.json]``. Without
``--model`` the shipped pretrained model is used if there is one, else a default-architecture model is
trained for about a minute on simulated data (cached under ``--work``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    """Peak resident memory of this process (``VmHWM``) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def get_model(work: Path, model: str | None) -> str:
    """A model path: the given one, the shipped pretrained model, or a small model trained here once."""
    if model:
        return model
    from cellseg.bundle import PRETRAINED_DIR

    shipped = sorted(PRETRAINED_DIR.glob("*.zip")) if PRETRAINED_DIR.is_dir() else []
    if shipped:
        return str(shipped[0])
    path = work / "bench_model"
    if not (path / "config.json").is_file():
        from cellseg.config import ModelConfig, TrainConfig
        from cellseg.simulate import simulate_dataset
        from cellseg.training import train

        images, labels = simulate_dataset(16, size=256, seed=1)
        result = train(images, labels, ModelConfig(), TrainConfig(epochs=3, steps_per_epoch=15))
        result.model.save(path)
    return str(path)


def make_image(work: Path, size: int) -> Path:
    """A simulated ``size``² uint16 image as an uncompressed TIFF: 4x4 different 512² simulations (about 100
    nuclei each; the simulator's cost grows with objects x pixels), repeated to fill the image."""
    import tifffile

    from cellseg.simulate import simulate_dataset

    path = work / f"sim_{size}.tif"
    if not path.is_file():
        parts = simulate_dataset(16, size=512, seed=7, n_objects=(90, 110))[0]
        base = np.block([[parts[4 * r + c] for c in range(4)] for r in range(4)])
        reps = -(-size // base.shape[0])
        tifffile.imwrite(path, np.tile(base, (reps, reps))[:size, :size])
    return path


# -- workers (run in subprocesses) ----------------------------------------------------------------

def worker(method: str, model_path: str, image: str, out: str, tile: int) -> dict:
    import contextlib
    import io

    import tifffile

    from cellseg import images as cimages
    from cellseg.models import load_model

    model = load_model(model_path)
    sd = model.stardist
    thr = model.thresholds
    t0 = time.perf_counter()
    if method == "ours_tiled":
        from cellseg.streaming import predict_large

        _, objects = predict_large(model, image, out, tile_size=tile)
        n = len(objects)
    else:
        img = tifffile.imread(image)
        x = cimages.normalize(img)
        kw = dict(prob_thresh=thr["prob"], nms_thresh=thr["nms"], show_tile_progress=False)
        with contextlib.redirect_stdout(io.StringIO()):
            if method == "sd_untiled":
                labels, _ = sd.predict_instances(x, **kw)
            elif method == "sd_ntiles":
                n_t = max(1, img.shape[0] // tile)
                labels, _ = sd.predict_instances(x, n_tiles=(n_t, n_t), **kw)
            elif method == "sd_big":
                labels, _ = sd.predict_instances_big(x, axes="YX", block_size=tile, min_overlap=64, context=64,
                                                     show_progress=False, **kw)
            else:
                raise SystemExit(f"unknown method {method}")
        n = int(len(np.unique(labels)) - 1)
        tifffile.imwrite(out, labels.astype(np.uint32), compression="zlib")
    seconds = time.perf_counter() - t0
    return {"method": method, "seconds": seconds, "peak_rss_mb": peak_rss_mb(), "n_objects": n}


def run_worker(method: str, model: str, image: Path, work: Path, tile: int, timeout: float) -> dict:
    out = work / f"labels_{image.stem}_{method}.tif"
    cmd = [sys.executable, __file__, "--worker", method, "--model", model, "--image", str(image),
           "--out", str(out), "--tile", str(tile)]
    # one OpenMP thread for stardist's NMS in every method: on this shared 2-core machine its OpenMP threads
    # spin-wait against the other jobs and slow NMS by up to 100x (measured)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"method": method, "skipped": f"took longer than {timeout:.0f} s"}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"method": method, "skipped": f"failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"}
    result = json.loads(lines[-1])
    result["labels"] = str(out)
    return result


def f1_vs(reference: str, other: str) -> float:
    import tifffile

    from cellseg.metrics import score_image

    a, b = tifffile.imread(reference), tifffile.imread(other)
    return float(score_image(a.astype(np.int64), b.astype(np.int64), thresholds=[0.5])["f1"].iloc[0])


# -- many small images ----------------------------------------------------------------------------

def small_images(n: int) -> tuple[str, list[np.ndarray]]:
    from cellseg.data import dsb2018_fluorescence

    data = dsb2018_fluorescence("all", min_size=256)
    if data is not None and len(data[1]) >= n:
        return "dsb2018 fluorescence (256² crops)", [im[:256, :256] for im in data[1][:n]]
    from cellseg.simulate import simulate_dataset

    return "simulated 256²", simulate_dataset(n, size=256, seed=3)[0]


def bench_small(model_path: str, n: int) -> dict:
    import contextlib
    import io

    from cellseg import images as cimages
    from cellseg.models import load_model
    from cellseg.prediction import predict_many

    model = load_model(model_path)
    source, images = small_images(n)
    thr = model.thresholds
    kw = dict(prob_thresh=thr["prob"], nms_thresh=thr["nms"], show_tile_progress=False)
    warm = cimages.normalize(images[0])
    with contextlib.redirect_stdout(io.StringIO()):
        model.stardist.predict_instances(warm, **kw)
    list(predict_many(model, images[:2]))
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ref = [model.stardist.predict_instances(cimages.normalize(im), **kw)[0] for im in images]
    t_sd = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = [labels for labels, _ in predict_many(model, images, batch_size=8)]
    t_ours = time.perf_counter() - t0
    identical = all(np.array_equal(a, b) for a, b in zip(ref, ours))
    return {"source": source, "n_images": len(images), "stardist_loop_images_per_s": len(images) / t_sd,
            "ours_batched_images_per_s": len(images) / t_ours, "speedup": t_sd / t_ours,
            "labels_identical": identical}


# -- main -----------------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model")
    p.add_argument("--sizes", type=int, nargs="*", default=[2048, 8192])
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--n-small", type=int, default=100)
    p.add_argument("--untiled-max", type=int, default=4096, help="largest side for untiled stardist")
    p.add_argument("--timeout", type=float, default=900)
    p.add_argument("--work", default="/tmp/cellseg-bench")
    p.add_argument("--json", default="benchmarks/large_image.json")
    p.add_argument("--worker")
    p.add_argument("--image")
    p.add_argument("--out")
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.model, args.image, args.out, args.tile)))
        return
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    model = get_model(work, args.model)
    report: dict = {"machine": f"{os.cpu_count()} CPU cores", "model": model, "tile": args.tile, "large": []}
    for size in args.sizes:
        image = make_image(work, size)
        rows = []
        for method in ("sd_untiled", "ours_tiled", "sd_ntiles", "sd_big"):
            if method == "sd_untiled" and size > args.untiled_max:
                rows.append({"method": method, "skipped": f"{size}² untiled needs the full-resolution network "
                             "activations at once (tens of GB) and would take many minutes on this machine"})
                continue
            r = run_worker(method, model, image, work, args.tile, args.timeout)
            print(size, r, flush=True)
            rows.append(r)
        ref = next((r for r in rows if r["method"] == "sd_untiled" and "seconds" in r), None)
        ours = next((r for r in rows if r["method"] == "ours_tiled" and "seconds" in r), None)
        for r in rows:
            if "seconds" in r and ref is not None:
                r["time_vs_untiled"] = r["seconds"] / ref["seconds"]
                r["f1_vs_untiled"] = f1_vs(ref["labels"], r["labels"])
            if "seconds" in r and ours is not None:
                r["time_vs_ours"] = r["seconds"] / ours["seconds"]
        report["large"].append({"size": size, "results": rows})
    if args.n_small:
        report["small"] = bench_small(model, args.n_small)
        print(report["small"], flush=True)
    rss = {e["size"]: r["peak_rss_mb"] for e in report["large"] for r in e["results"]
           if r["method"] == "ours_tiled" and "peak_rss_mb" in r}
    if len(rss) >= 2:
        report["ours_peak_rss_ratio_largest_vs_smallest"] = rss[max(rss)] / rss[min(rss)]
    Path(args.json).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
