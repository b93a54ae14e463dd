"""The ``cellseg`` command line: simulate, train, retrain, predict, evaluate, demo and more.

Each subcommand is a thin translation of arguments to backend calls. Errors caused by the user's input
print one line (``cellseg: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from cellseg.cliutil import (
    SEED,
    ArgumentParser,
    ProgressBar,
    _pair,
    _quiet_tensorflow,
    float_arg,
    int_arg,
    run_command,
)
from cellseg.errors import CellsegError

# Modules that add their own subcommands with ``register_cli(subparsers)``.
CLI_EXTENSIONS = ("cellseg.demo", "cellseg.transfer")

# Subcommands that live on the KNIME side: known here by name only, their module is imported when one of them
# runs (it parses the arguments and prints the help), so the backend never imports KNIME code.
DELEGATED_COMMANDS = {
    "run-workflow": ("cellseg_knime.workflows.cli", "run a KNIME workflow of this extension headlessly"),
    "make-workflows": ("cellseg_knime.workflows.cli", "generate the example KNIME workflows from their definitions"),
}


# -- commands -------------------------------------------------------------------------------------

def cmd_simulate(args: argparse.Namespace) -> int:
    """Simulate straight into --out, one image in memory at a time; arguments, output location (nothing is
    overwritten) and memory are checked before the first image is made, and the set arrives all at once."""
    from cellseg.simulate_folders import simulate_to_folder

    with ProgressBar("simulating", disable=args.quiet) as bar:
        img_dir, mask_dir = simulate_to_folder(args.out, args.n, size=args.size, preset=args.preset,
                                                        seed=args.seed, prefix=args.prefix, progress=bar)
    print(f"wrote {args.n} images to {img_dir} and their masks to {mask_dir}")
    return 0


PREDICTION_DESC = "a prediction (label TIFFs and objects.csv)"


def is_prediction_folder(folder: Path) -> bool:
    """Does `folder` hold only what ``cellseg predict`` writes (objects.csv and label TIFFs)?"""
    entries = list(folder.iterdir())
    return any(e.name == "objects.csv" for e in entries) and all(
        e.is_file() and not e.is_symlink() and not e.name.startswith(".")
        and (e.name == "objects.csv" or e.suffix.lower() in (".tif", ".tiff"))
        for e in entries)


class _LargeImages:
    """The streaming path of ``cellseg predict``: which images to stream, and each streamed with a tile bar."""

    def __init__(self, model: Any, *, tiled: str, tiled_above: int, tile_size: int, prob_thresh: float | None,
                 nms_thresh: float | None, quiet: bool, scale: float | None = None, invert: str = "auto") -> None:
        self.model = model
        self.tiled, self.tiled_above, self.tile_size = tiled, tiled_above, tile_size
        self.prob_thresh, self.nms_thresh, self.quiet = prob_thresh, nms_thresh, quiet
        self.scale, self.invert = scale, invert

    def wants(self, path: str | os.PathLike) -> bool:
        """Stream this image? ``--tiled always``, or ``auto`` and more pixels than ``--tiled-above``."""
        from cellseg.tile_source import image_size

        if self.tiled != "auto":
            return self.tiled == "always"
        h, w = image_size(Path(path))
        return h * w > self.tiled_above

    def run(self, path: str | os.PathLike, out_tif: str | os.PathLike):
        """Stream ``path`` into the label TIFF ``out_tif`` with a progress bar over tiles; the objects table."""
        from tqdm import tqdm

        from cellseg.streaming import predict_large
        from cellseg.tiling import TilingWarning

        bar = tqdm(total=1000, desc=f"tiles of {Path(path).name}", disable=self.quiet, leave=False, file=sys.stderr)

        def progress(fraction: float, message: str) -> None:
            bar.update(max(0, int(round(fraction * 1000)) - bar.n))
            bar.set_postfix_str(message, refresh=False)

        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", TilingWarning)
                _, objects = predict_large(self.model, path, out_tif, tile_size=self.tile_size,
                                           prob_thresh=self.prob_thresh, nms_thresh=self.nms_thresh,
                                           progress=progress, scale=self.scale, invert=self.invert)
        finally:
            bar.close()
        for w in caught:
            if issubclass(w.category, TilingWarning):
                print(f"cellseg: warning: {w.message}", file=sys.stderr)
        return objects


def cmd_predict(args: argparse.Namespace) -> int:
    """Segment a folder of images: all or nothing.

    The outputs are checked first; the label TIFFs and objects.csv are written into a temporary folder
    next to ``--out`` that becomes ``--out`` in one rename when every image is done (with ``--overwrite``,
    swapped for an earlier prediction there), so a failure or interruption leaves ``--out`` as it was.
    """
    import pandas as pd

    from cellseg import files as cfiles
    from cellseg import folders as cfolders
    from cellseg import images as cimages
    from cellseg.models import load_model
    from cellseg.prediction import predict_many

    inputs = {"images folder": args.images, "model": args.model if os.path.lexists(args.model) else None}
    out = cfiles.check_output_folder(args.out, "output folder", inputs=inputs, overwrite=args.overwrite,
                                  earlier_output=is_prediction_folder, earlier_desc=PREDICTION_DESC)
    paths = cfolders.list_images(args.images)
    cfolders.by_stem(paths, args.images)  # a.tif and a.png would both write labels a.tif
    model = load_model(args.model)
    large = _large_image_predictor(args, model)
    tables = []
    t0 = time.perf_counter()
    with ProgressBar("predicting", disable=args.quiet) as bar, \
            cfiles.atomic_folder(out, "output folder", replace=args.overwrite) as tmp:
        small = []
        for p in paths:
            if large is not None and large.wants(p):
                tables.append(large.run(p, tmp / f"{p.stem}.tif").assign(image=p.stem))
            else:
                small.append(p)

        def images():
            for p in small:
                yield cimages.read_image(p)

        from cellseg.masks import compact_labels

        results = predict_many(model, images(), names=[p.stem for p in small], total=len(small),
                               prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh,
                               n_tiles=args.n_tiles, progress=bar, scale=args.scale, invert=args.invert)
        for p, (labels, objects) in zip(small, results):
            cimages.write_image(tmp / f"{p.stem}.tif", compact_labels(labels))
            tables.append(objects.assign(image=p.stem))
        objects = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
        if len(objects):
            objects = objects[["image", *[c for c in objects.columns if c != "image"]]]
        objects.to_csv(tmp / "objects.csv", index=False)
    print(f"segmented {len(paths)} images in {time.perf_counter() - t0:.1f} s: {len(objects)} objects; "
          f"labels and objects.csv in {out}")
    return 0


def _large_image_predictor(args: argparse.Namespace, model: Any) -> _LargeImages | None:
    """The streaming large-image path of ``cellseg predict`` (``None`` with ``--tiled never``)."""
    if args.tiled == "never":
        return None
    return _LargeImages(model, tiled=args.tiled, tiled_above=args.tiled_above, tile_size=args.tile_size,
                        prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh, quiet=args.quiet,
                        scale=args.scale, invert=args.invert)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from cellseg import files as cfiles
    from cellseg import folders as cfolders
    from cellseg import masks as cmasks
    from cellseg import metrics

    inputs = {"predictions folder": args.pred, "masks folder": args.masks}
    for what, path in (("--json file", args.json), ("--csv file", args.csv)):
        if path is not None:  # "" is an error, not "no report"
            cfiles.check_output_file(path, what, inputs=inputs)
    cfiles.check_distinct_outputs({"--json file": args.json, "--csv file": args.csv})
    pred_paths = cfolders.by_stem(cfolders.list_images(args.pred), args.pred)
    mask_paths = cfolders.by_stem(cfolders.list_images(args.masks), args.masks)
    names = list(mask_paths)
    missing = [n for n in names if n not in pred_paths]
    if missing:
        raise CellsegError(f"no prediction in {args.pred} for mask(s) {missing[:5]}")
    gts = [cmasks.check_mask(cmasks.read_mask(mask_paths[n]), str(mask_paths[n]), label_components=args.label_components)
           for n in names]
    cmasks.check_annotations(gts, str(args.masks), "to score against")
    # predictions are not annotations: an object cut by a later, overlapping one is no warning
    preds = [cmasks.check_mask(cmasks.read_mask(pred_paths[n]), str(pred_paths[n]), annotation=False) for n in names]
    per_image, summary = metrics.score_dataset(gts, preds, names=names)
    cols = ["iou_threshold", "tp", "fp", "fn", "precision", "recall", "f1", "accuracy", "panoptic_quality"]
    print(summary[cols].to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    print(f"mean AP over IoU 0.5-0.95: {metrics.mean_ap(summary):.3f}  ({len(names)} images)")
    if args.json:
        payload = {"summary": summary.to_dict(orient="records"), "per_image": per_image.to_dict(orient="records"),
                   "mean_ap": metrics.mean_ap(summary)}
        cfiles.write_bytes_atomic(args.json, json.dumps(payload, indent=2).encode())
    if args.csv:
        cfiles.write_bytes_atomic(args.csv, per_image.to_csv(index=False).encode())
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from cellseg.models import load_model

    print(json.dumps(load_model(args.model).summary(), indent=2))
    return 0


# -- parser ---------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from cellseg import cli_train

    parser = ArgumentParser(prog="cellseg", description=__doc__.splitlines()[0])
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="simulate fluorescence nuclei images with instance masks")
    p.add_argument("--out", required=True,
                   help="output folder (gets images/ and masks/; existing files there are never overwritten)")
    p.add_argument("--n", type=int_arg(1), default=32, help="number of images (default 32)")
    p.add_argument("--size", type=int_arg(16), default=256, help="image side in pixels (default 256)")
    p.add_argument("--preset", default="low_noise", help="low_noise, high_noise, granulocyte_*, mixed")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--prefix", default="sim",
                   help="file name prefix: a plain name, files are <prefix>_0000.tif (default sim)")
    p.set_defaults(func=cmd_simulate)

    cli_train.register_cli(sub)
    from cellseg.adapt import InputConfig
    from cellseg.settings import add_arguments

    p = sub.add_parser("predict", help="segment images: label TIFFs + objects.csv")
    p.add_argument("--model", required=True, help="model folder, .zip or pretrained name")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--out", required=True,
                   help="output folder: new or empty, outside --images (written all at once at the end)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier prediction in --out (a folder holding only label TIFFs and objects.csv)")
    p.add_argument("--prob-thresh", type=float_arg(0, 1), default=None, help="default: the model's")
    p.add_argument("--nms-thresh", type=float_arg(0, 1), default=None, help="default: the model's")
    p.add_argument("--n-tiles", type=_pair, default=None, help="tiles per axis for the network, e.g. 2,2")
    add_arguments(p, InputConfig, ("scale", "invert"))
    p.add_argument("--tiled", choices=("auto", "always", "never"), default="auto",
                   help="stream large images tile by tile (auto: above --tiled-above pixels)")
    p.add_argument("--tiled-above", type=int_arg(0), default=4096 * 4096, help="pixel count for auto tiling")
    p.add_argument("--tile-size", type=int_arg(1), default=1024,
                   help="largest tile core side for streaming; the network sees at most this + 2 x overlap "
                   "(default 1024)")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="score predicted label images against ground-truth masks")
    p.add_argument("--pred", required=True, help="folder of predicted label images")
    p.add_argument("--masks", required=True, help="folder of ground-truth masks (same names)")
    p.add_argument("--json", help="write summary and per-image metrics to this JSON file")
    p.add_argument("--csv", help="write per-image metrics to this CSV file")
    p.add_argument("--label-components", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="print a model's summary (architecture, thresholds, provenance)")
    p.add_argument("model")
    p.set_defaults(func=cmd_info)

    for name in CLI_EXTENSIONS:
        try:
            module = importlib.import_module(name)
        except ImportError as err:
            if err.name != name:
                raise
            continue
        register: Callable[[Any], None] | None = getattr(module, "register_cli", None)
        if register is not None:
            register(sub)
    for name, (module, help_text) in DELEGATED_COMMANDS.items():
        # no options of its own (no prefix character can start an argument): every argument goes on as is
        p = sub.add_parser(name, help=help_text, add_help=False, prefix_chars="\0")
        p.add_argument("args", nargs=argparse.REMAINDER)
        p.set_defaults(func=functools.partial(_delegate, module, name))
    return parser


def _delegate(module: str, command: str, args: argparse.Namespace) -> int:
    """Run a subcommand of another module: ``module.run([-q] command args..., prog="cellseg")``."""
    run = importlib.import_module(module).run
    return int(run([*(["-q"] if args.quiet else []), command, *args.args], prog="cellseg") or 0)


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    args = build_parser().parse_args(argv)
    return run_command("cellseg", args.func, args)
