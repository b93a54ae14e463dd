"""The ``cellseg train`` and ``cellseg retrain`` subcommands: flags derived from :mod:`cellseg.config`, the
outputs checked before any data is read, the model and its history written only when training ends."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cellseg.cliutil import ProgressBar
from cellseg.errors import CellsegError

#: The settings each command exposes as flags; their defaults, bounds and help come from cellseg.config.
MODEL_FLAGS = ("backbone", "n_rays", "grid", "unet_n_depth", "unet_n_filter_base")
TRAIN_FLAGS = ("epochs", "steps_per_epoch", "minutes", "patience", "learning_rate", "batch_size", "patch_size",
               "augment", "validation_fraction", "seed", "optimize_thresholds", "scale", "invert")
RETRAIN_FLAGS = ("channels", "keep_start", "freeze_encoder", "freeze_encoder_epochs", "encoder_lr_factor", "reinit_heads",
                 "mix_fraction")


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


def _load_training_data(args: argparse.Namespace):
    from cellseg import folders as cfolders

    names, images, masks = cfolders.load_pairs(args.images, args.masks, label_components=args.label_components)
    return names, images, masks


def _report_training(result, out: Path) -> None:
    h = result.history
    last = h.iloc[-1].to_dict() if len(h) else {}
    status = ("cancelled, kept the best weights so far" if result.cancelled
              else f"done: {result.stop_reason}, kept the best weights")
    if result.input_note or result.channels_note:
        print(f"input: {'; '.join(n for n in (result.input_note, result.channels_note) if n)}")
    val = "" if result.validation_ap50 is None else f"; validation AP@0.5 {result.validation_ap50:.3f}"
    print(f"trained {result.steps} steps in {result.seconds:.1f} s ({status}); "
          f"final loss {last.get('loss', float('nan')):.4f}, val_loss {last.get('val_loss', float('nan')):.4f}{val}; "
          f"thresholds {result.model.thresholds}")
    print(f"model saved to {out}")


def _check_training_outputs(args: argparse.Namespace) -> None:
    """Check the model (--out, --overwrite) and --history locations before any data is read or trained on."""
    from cellseg import files as cfiles
    from cellseg.bundle import check_model_target

    inputs = {"images folder": args.images, "masks folder": args.masks,
              "--mix-images folder": getattr(args, "mix_images", None),
              "--mix-masks folder": getattr(args, "mix_masks", None)}
    cfiles.check_outside_inputs(args.out, "model output", inputs)
    check_model_target(args.out, args.overwrite)
    if args.history is not None:  # "" is an error, not "no history"
        cfiles.check_output_file(args.history, "history file", inputs=inputs)
        cfiles.check_distinct_outputs({"model output": args.out, "history file": args.history})


def cmd_train(args: argparse.Namespace) -> int:
    from cellseg.config import ModelConfig
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


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="model folder to write (or .zip); must be new unless --overwrite")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the model at --out (only a model folder/zip is ever replaced)")
    p.add_argument("--history", help="write the training history to this CSV")


def register_cli(sub: Any) -> None:
    """Add ``train`` and ``retrain`` to the ``cellseg`` subcommands."""
    p = sub.add_parser("train", help="train a StarDist model from scratch")
    p.add_argument("--images", required=True, help="folder of images")
    p.add_argument("--masks", required=True, help="folder of instance masks (same file names)")
    _add_output_args(p)
    _add_model_args(p)
    _add_train_args(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("retrain", help="retrain (fine-tune) a model on a few annotated images")
    p.add_argument("--model", required=True, help="model folder, .zip or pretrained name")
    p.add_argument("--images", required=True)
    p.add_argument("--masks", required=True)
    _add_output_args(p)
    _add_train_args(p, retraining=True)
    p.set_defaults(func=cmd_retrain)
