"""The ``cellseg`` command line: simulate, train, retrain, predict, evaluate, demo and more.

Each subcommand is a thin translation of arguments to backend calls. Errors caused by the user's input
print one line (``cellseg: error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import importlib.abc
import importlib.machinery
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from cellseg.errors import CancelledError, CellsegError

# Modules that add their own subcommands with ``register_cli(subparsers)``.
CLI_EXTENSIONS = ("cellseg.demo", "cellseg.transfer")

# Subcommands that live on the KNIME side: known here by name only, their module is imported when one of them
# runs (it parses the arguments and prints the help), so the backend never imports KNIME code.
DELEGATED_COMMANDS = {
    "run-workflow": ("cellseg_knime.workflows.cli", "run a KNIME workflow of this extension headlessly"),
    "make-workflows": ("cellseg_knime.workflows.cli", "generate the example KNIME workflows from their definitions"),
}


#: Start-up lines TensorFlow's C++ code writes to stderr when it is imported: absl's notice and info/warning
#: records such as "I0000 00:00:... port.cc:153] oneDNN custom operations are on" (not errors).
_TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                       r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` with file descriptor 2 sent to a temporary file, then writes back every line
    but TensorFlow's start-up notices (:data:`_TF_NOISE`), which ``TF_CPP_MIN_LOG_LEVEL`` no longer
    silences and which would break the one-line errors and warnings of the command line."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return real.create_module(spec)

            def exec_module(self, module: Any) -> None:
                with _filtered_stderr_fd():
                    real.exec_module(module)

        spec.loader = Loader()
        return spec


@contextlib.contextmanager
def _filtered_stderr_fd() -> Iterator[None]:
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not _TF_NOISE.match(line)]
            if kept:
                os.write(2, "".join(kept).encode())


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up messages (oneDNN, absl) would add lines to the one-line errors
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


@contextlib.contextmanager
def show_input_warnings(prog: str = "cellseg") -> Iterator[None]:
    """Print :class:`cellseg.images.InputWarning` s as ``<prog>: warning: <message>`` on stderr, each finding once
    (the same mask checked twice, by path and by name, is reported once); other warnings stay silent."""
    from cellseg.images import InputWarning

    seen: set = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not issubclass(category, InputWarning):
            return
        key = getattr(message, "key", str(message))
        if key not in seen:
            seen.add(key)
            print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=InputWarning)
        warnings.showwarning = show
        yield


class ProgressBar:
    """A tqdm progress bar fed with ``(fraction, message)`` callbacks."""

    def __init__(self, desc: str, total: int = 1000, disable: bool = False) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, disable=disable, leave=True, file=sys.stderr,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self._total = total

    def __call__(self, fraction: float, message: str = "") -> None:
        n = int(round(fraction * self._total))
        self._bar.update(max(0, n - self._bar.n))
        if message:
            self._bar.set_postfix_str(message, refresh=False)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- argument helpers -----------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the one-line errors of the error contract: ``cellseg: error: <message> (see 'cellseg
    train --help')`` and exit status 2, instead of the usage block. Subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {message} (see '{self.prog} --help')\n")


def _bounds_text(lo: float | None, hi: float | None, lo_open: bool, hi_open: bool) -> str:
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    return f"{'<' if hi_open else '<='} {hi}"


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for integers in ``[lo, hi]``: anything else is refused naming the flag."""
    bounds = "" if lo is None and hi is None else " " + (
        f"from {lo} to {hi}" if lo is not None and hi is not None else _bounds_text(lo, hi, False, False))

    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer{bounds}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected an integer{bounds}, got {value}")
        return value

    parse.__name__ = "integer"
    return parse


def float_arg(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for finite numbers in a range (``lo_open``/``hi_open`` exclude the bound)."""
    bounds = "" if lo is None and hi is None else " " + _bounds_text(lo, hi, lo_open, hi_open)

    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{bounds}, got {text!r}") from None
        bad = (not math.isfinite(value) or (lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if bad:
            raise argparse.ArgumentTypeError(f"expected a number{bounds}, got {text.strip()}")
        return value

    parse.__name__ = "number"
    return parse


def int_list_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], list[int]]:
    """An argparse ``type`` for a comma-separated list of integers in ``[lo, hi]`` (at least one)."""
    one = int_arg(lo, hi)

    def parse(text: str) -> list[int]:
        values = [one(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
        return values

    parse.__name__ = "list of integers"
    return parse


def pair_arg(lo: int = 1, allowed: Sequence[int] | None = None) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type`` for ``N`` or ``N,M`` (also ``NxM``): integers >= ``lo`` (or in ``allowed``)."""
    what = f"one of {', '.join(map(str, allowed))}" if allowed else f"integers >= {lo}"

    def parse(text: str) -> tuple[int, int]:
        try:
            parts = [int(p) for p in text.replace("x", ",").split(",") if p.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected N or N,M with {what}, got {text!r}") from None
        if len(parts) == 1:
            parts = parts * 2
        if len(parts) != 2 or any(p < lo for p in parts) or (allowed and any(p not in allowed for p in parts)):
            raise argparse.ArgumentTypeError(f"expected N or N,M with {what}, got {text!r}")
        return parts[0], parts[1]

    parse.__name__ = "pair"
    return parse


#: Seeds everywhere: what NumPy and TensorFlow accept.
SEED = int_arg(0, 2**32 - 1)
_pair = pair_arg(1)


#: The settings each command exposes as flags; their defaults, bounds and help come from cellseg.config.
MODEL_FLAGS = ("backbone", "n_rays", "grid", "unet_n_depth", "unet_n_filter_base")
TRAIN_FLAGS = ("epochs", "steps_per_epoch", "learning_rate", "batch_size", "patch_size", "augment",
               "validation_fraction", "seed", "optimize_thresholds")
RETRAIN_FLAGS = ("freeze_encoder", "freeze_encoder_epochs", "encoder_lr_factor", "reinit_heads", "mix_fraction")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from cellseg.config import ModelConfig
    from cellseg.settings import add_arguments

    add_arguments(p.add_argument_group("architecture"), ModelConfig, MODEL_FLAGS)


def _add_train_args(p: argparse.ArgumentParser, retraining: bool = False) -> None:
    from cellseg.config import RETRAIN_DEFAULTS, TrainConfig
    from cellseg.settings import add_arguments

    g = p.add_argument_group("training")
    add_arguments(g, TrainConfig, TRAIN_FLAGS + (RETRAIN_FLAGS if retraining else ()),
                  RETRAIN_DEFAULTS if retraining else None)
    g.add_argument("--label-components", action="store_true",
                   help="treat binary masks as foreground and label their connected components")
    if retraining:
        g.add_argument("--mix-images", help="folder of pretraining-domain images to mix in")
        g.add_argument("--mix-masks", help="their masks (same file names)")


def _train_config(args: argparse.Namespace):
    from cellseg.config import TrainConfig
    from cellseg.settings import from_arguments

    retraining = hasattr(args, "freeze_encoder")
    return from_arguments(TrainConfig, args, TRAIN_FLAGS + (RETRAIN_FLAGS if retraining else ()))


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


def _load_training_data(args: argparse.Namespace):
    from cellseg import folders as cfolders

    names, images, masks = cfolders.load_pairs(args.images, args.masks, label_components=args.label_components)
    return names, images, masks


def _report_training(result, out: Path) -> None:
    h = result.history
    last = h.iloc[-1].to_dict() if len(h) else {}
    status = "cancelled, kept the best weights so far" if result.cancelled else "done"
    print(f"trained {result.steps} steps in {result.seconds:.1f} s ({status}); "
          f"final loss {last.get('loss', float('nan')):.4f}, val_loss {last.get('val_loss', float('nan')):.4f}; "
          f"thresholds {result.model.thresholds}")
    print(f"model saved to {out}")


def _check_training_outputs(args: argparse.Namespace) -> None:
    """Check the model (--out, --overwrite) and --history locations before any data is read or trained on."""
    from cellseg import files as cfiles
    from cellseg.models import check_model_target

    inputs = {"images folder": args.images, "masks folder": args.masks,
              "--mix-images folder": getattr(args, "mix_images", None),
              "--mix-masks folder": getattr(args, "mix_masks", None)}
    cfiles.check_outside_inputs(args.out, "model output", inputs)
    check_model_target(args.out, args.overwrite)
    if args.history is not None:  # "" is an error, not "no history"
        cfiles.check_output_file(args.history, "history file", inputs=inputs)
        cfiles.check_distinct_outputs({"model output": args.out, "history file": args.history})


def cmd_train(args: argparse.Namespace) -> int:
    from cellseg.models import ModelConfig
    from cellseg.training import train

    _check_training_outputs(args)
    names, images, masks = _load_training_data(args)
    channels = 1 if images[0].ndim == 2 else images[0].shape[-1]
    tc = _train_config(args)
    shape = {k: v for k in ("patch_size", "batch_size") if (v := getattr(tc, k)) is not None}
    mc = ModelConfig(**{k: getattr(args, k) for k in MODEL_FLAGS}, n_channel_in=channels, **shape)
    with ProgressBar("training", disable=args.quiet) as bar:
        result = train(images, masks, mc, tc, names=names, progress=bar, model_name=Path(args.out).name,
                       data_description=f"{len(names)} images from {args.images}",
                       label_components=args.label_components)
    return _save_trained(result, args)


def cmd_retrain(args: argparse.Namespace) -> int:
    from cellseg import folders as cfolders
    from cellseg.models import load_model
    from cellseg.training import retrain

    _check_training_outputs(args)
    model = load_model(args.model)
    names, images, masks = _load_training_data(args)
    mix_data = None
    if args.mix_images or args.mix_masks:
        if not (args.mix_images and args.mix_masks):
            raise CellsegError("--mix-images and --mix-masks go together (images to mix in and their masks)")
        _, mix_images, mix_masks = cfolders.load_pairs(args.mix_images, args.mix_masks,
                                                  label_components=args.label_components)
        mix_data = (mix_images, mix_masks)
    tc = _train_config(args)
    with ProgressBar("retraining", disable=args.quiet) as bar:
        result = retrain(model, images, masks, tc, names=names, progress=bar, mix_data=mix_data,
                         data_description=f"{len(names)} images from {args.images}",
                         label_components=args.label_components)
    result.model.provenance["name"] = Path(args.out).name
    return _save_trained(result, args)


def _save_trained(result, args: argparse.Namespace) -> int:
    """Save a trained model (and its history) where the user asked, then report."""
    from cellseg import files as cfiles

    result.model.save(args.out, overwrite=args.overwrite)
    if args.history is not None:
        cfiles.write_bytes_atomic(args.history, result.history.to_csv(index=False).encode())
    _report_training(result, Path(args.out))
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
                 nms_thresh: float | None, quiet: bool) -> None:
        self.model = model
        self.tiled, self.tiled_above, self.tile_size = tiled, tiled_above, tile_size
        self.prob_thresh, self.nms_thresh, self.quiet = prob_thresh, nms_thresh, quiet

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
                                           progress=progress)
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
                               n_tiles=args.n_tiles, progress=bar)
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
                        prob_thresh=args.prob_thresh, nms_thresh=args.nms_thresh, quiet=args.quiet)


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

    p = sub.add_parser("train", help="train a StarDist model from scratch")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--masks", required=True, help="folder of instance masks (same file names)")
    p.add_argument("--out", required=True, help="model folder to write (or .zip); must be new unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model at --out (only a model folder/zip is ever replaced)")
    p.add_argument("--history", help="write the training history to this CSV")
    _add_model_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrain", help="retrain (fine-tune) a model on a few annotated images")
    p.add_argument("--model", required=True, help="model folder, .zip or pretrained name")
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    p.add_argument("--out", required=True, help="model folder to write (or .zip); must be new unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model at --out (only a model folder/zip is ever replaced)")
    p.add_argument("--history", help="write the training history to this CSV")
    _add_train_args(p, retraining=True)
    p.set_defaults(func=cmd_retrain)

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


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that temporary files are cleaned up as on Ctrl-C."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_tensorflow()
    parser = build_parser()
    args = parser.parse_args(argv)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        with show_input_warnings():
            return int(args.func(args) or 0)
    except CancelledError as err:
        print(f"cellseg: cancelled: {err}", file=sys.stderr)
        return 130
    except Terminated:
        print("cellseg: terminated; outputs left as they were", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("cellseg: interrupted", file=sys.stderr)
        return 130
    except CellsegError as err:
        print(f"cellseg: error: {err}", file=sys.stderr)
        return 2
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
