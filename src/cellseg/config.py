"""The settings of a model (:class:`ModelConfig`) and of its training (:class:`TrainConfig`), declared once.

Each field is a :func:`cellseg.settings.setting`: default, bounds, help and label live here and nowhere
else. The CLI flags (``cellseg train --help``) and the KNIME nodes' parameters are derived from these
declarations, and every value is checked when a config is made: a wrong type or value, or an unknown
parameter name, raises :class:`~cellseg.errors.InputError` naming it (csbdeep's configs do the same).
Importing this module does not import TensorFlow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from cellseg.adapt import CHANNEL_MODES, INVERT_CHOICES, INVERT_HELP, SCALE_BOUNDS
from cellseg.errors import InputError, require_bool, require_int, require_number, require_pair
from cellseg.settings import check_settings, setting, strict_init

#: The retraining budget (transfer learning on a few images): the CLI's ``retrain`` and the Retrainer
#: node start from these instead of :class:`TrainConfig`'s defaults for training from scratch.
RETRAIN_DEFAULTS: dict[str, Any] = {"epochs": 1000, "steps_per_epoch": 25, "learning_rate": 1e-4, "minutes": 3.0,
                                    "patience": 10}
#: Values a retraining strategy starts from when it is chosen (the field defaults mean "strategy off").
STRATEGY_DEFAULTS: dict[str, Any] = {"freeze_encoder_epochs": 2, "encoder_lr_factor": 0.1}


@strict_init
@dataclass
class ModelConfig:
    """Architecture and training-shape settings of a StarDist 2D model.

    ``backbone="resnet50+imagenet"`` is short for ``backbone="resnet50", backbone_options={"imagenet":
    True}``. ``patch_size`` must divide by :attr:`divisor` (``grid * 2**unet_n_depth``). See each field's
    declaration for its meaning and bounds (also ``cellseg train --help``).
    """

    backbone: str = setting("unet", "network architecture: unet (stardist's U-Net), resunet (residual "
                            "U-Net) or resnet50 (ResNet50 encoder; resnet50+imagenet starts it from ImageNet "
                            "weights in ~/.keras/models)", label="Backbone")
    n_rays: int = setting(32, "radial distances describing each star-convex object", label="Number of rays",
                          lo=3, hi=1024)
    grid: tuple[int, int] = setting((2, 2), "output subsampling per axis; 2 suits nuclei of ~10+ px",
                                    label="Grid", lo=1, choices=(1, 2, 4, 8))
    n_channel_in: int = setting(1, "channels of the input images (1 = grey fluorescence, 3 = RGB)",
                                label="Input channels", lo=1, hi=16, flag="")
    unet_n_depth: int = setting(3, "U-Net depth (number of down-sampling levels)", label="U-Net depth",
                                lo=1, hi=6, flag="--depth", advanced=True)
    unet_n_filter_base: int = setting(32, "filters of the first U-Net level", label="U-Net filters", lo=1,
                                      hi=4096, flag="--filters", advanced=True)
    patch_size: tuple[int, int] = setting((128, 128), "training patch size (Y, X); a multiple of grid x "
                                          "2^depth, at most the image size", label="Patch size", lo=1,
                                          hi=4096)
    batch_size: int = setting(4, "patches per training step", label="Batch size", lo=1, hi=256)
    learning_rate: float = setting(3e-4, "Adam learning rate", label="Learning rate", lo=0, hi=1,
                                   lo_open=True, hi_open=True)
    backbone_options: dict[str, Any] = setting({}, "options of the backbone, e.g. {'imagenet': True} for "
                                               "resnet50", flag="")

    def __post_init__(self) -> None:
        if isinstance(self.backbone, str) and "+" in self.backbone:  # "resnet50+imagenet"
            name, *flags = self.backbone.split("+")
            self.backbone = name
            options = self.backbone_options if isinstance(self.backbone_options, dict) else {}
            self.backbone_options = {**options, **{f: True for f in flags if f}}
        self.validate()

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid parameter (normalises grid and patch_size
        to tuples)."""
        check_settings(self)
        from cellseg.backbones import backbone_names, backbone_spec

        if self.backbone not in backbone_names():
            raise InputError(f"backbone={self.backbone!r} is unknown; choose one of {backbone_names()}")
        check_patch_size(self.patch_size, self.divisor)
        spec = backbone_spec(self.backbone)
        unknown = sorted(set(self.backbone_options) - set(spec.options))
        if unknown:
            raise InputError(f"backbone_options: backbone {self.backbone!r} has no option(s) {', '.join(unknown)}"
                             f"; its options: {', '.join(spec.options) if spec.options else 'none'}")
        for key, value in self.backbone_options.items():
            if key == "imagenet":
                require_bool(value, "backbone_options['imagenet']")
        if spec.check is not None:
            spec.check(self)

    @property
    def divisor(self) -> int:
        """Image sides the network accepts are multiples of this."""
        return divisor(self.grid, self.unet_n_depth)

    def to_stardist(self, **overrides: Any):
        """The equivalent :class:`stardist.models.Config2D`."""
        from stardist.models import Config2D

        kwargs: dict[str, Any] = dict(
            n_rays=self.n_rays,
            grid=self.grid,
            n_channel_in=self.n_channel_in,
            unet_n_depth=self.unet_n_depth,
            unet_n_filter_base=self.unet_n_filter_base,
            train_patch_size=self.patch_size,
            train_batch_size=self.batch_size,
            train_learning_rate=self.learning_rate,
            train_tensorboard=False,
            use_gpu=False,
        )
        kwargs.update(overrides)
        return Config2D(**kwargs)

    @classmethod
    def from_stardist(cls, config: Any, backbone: str = "unet", backbone_options: dict | None = None) -> ModelConfig:
        """Read the fields we use from a stardist ``Config2D`` (or its ``vars``, e.g. a ``config.json``).

        ``n_rays``, ``grid`` and ``n_channel_in`` are required; :class:`InputError` names a missing or
        invalid key (by its stardist name). Keys stardist leaves out take this class's defaults.
        """
        if isinstance(config, dict):
            c = config
        elif config is not None and hasattr(config, "__dict__"):
            c = vars(config)
        else:
            raise InputError(f"stardist config must be a Config2D or a dict, not {type(config).__name__}")
        missing = [k for k in ("n_rays", "grid", "n_channel_in") if k not in c]
        if missing:
            raise InputError(f"{', '.join(missing)} missing (not a StarDist 2D model's config)")
        n_dim = c.get("n_dim", 2)
        if n_dim != 2:
            raise InputError(f"n_dim={n_dim!r}: not a 2D StarDist model (cellseg segments 2D images)")
        d = cls.__dataclass_fields__  # the defaults, declared once above
        return cls(
            backbone=backbone,
            n_rays=require_int(c["n_rays"], "n_rays", 3),
            grid=require_pair(c["grid"], "grid"),
            n_channel_in=require_int(c["n_channel_in"], "n_channel_in", 1),
            unet_n_depth=require_int(c.get("unet_n_depth", d["unet_n_depth"].default), "unet_n_depth", 1, 6),
            unet_n_filter_base=require_int(c.get("unet_n_filter_base", d["unet_n_filter_base"].default),
                                           "unet_n_filter_base", 1),
            patch_size=require_pair(c.get("train_patch_size", d["patch_size"].default), "train_patch_size"),
            batch_size=require_int(c.get("train_batch_size", d["batch_size"].default), "train_batch_size", 1),
            learning_rate=require_number(c.get("train_learning_rate", d["learning_rate"].default),
                                         "train_learning_rate", 0, 1, lo_open=True, hi_open=True),
            backbone_options=dict(backbone_options or {}),
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["grid"] = list(self.grid)
        d["patch_size"] = list(self.patch_size)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """A config from :meth:`to_dict`'s output; :class:`InputError` for a non-dict or unknown keys."""
        if not isinstance(d, dict):
            raise InputError(f"model config must be a dict (JSON object), not {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise InputError(f"unknown model parameter(s): {sorted(map(str, unknown))}")
        return cls(**d)

    @classmethod
    def of(cls, config: ModelConfig | dict[str, Any] | None) -> ModelConfig:
        """``config`` as a validated ModelConfig (``None``: the default; a dict: :meth:`from_dict`)."""
        if config is None:
            return cls()
        if isinstance(config, dict):
            return cls.from_dict(config)
        if not isinstance(config, cls):
            raise InputError(f"model_config must be a ModelConfig (or a dict of its parameters), not "
                             f"{type(config).__name__}")
        config.validate()
        return config


def check_patch_size(patch_size: Any, div: int) -> tuple[int, int]:
    """``patch_size`` as a pair, or :class:`InputError` unless both sides are multiples of ``div`` (the
    network's divisor, ``grid * 2**unet_n_depth``): the one check of training patch sizes."""
    patch = require_pair(patch_size, "patch_size", lo=1)
    if any(p < div or p % div for p in patch):
        raise InputError(f"patch_size={patch} must be a multiple of {div} per axis (grid x 2**unet_n_depth)")
    return patch


def divisor(grid: Any, unet_n_depth: int) -> int:
    """Image sides a network with this grid and U-Net depth accepts are multiples of this."""
    g = (grid, grid) if isinstance(grid, int) else tuple(grid)
    return int(max(g)) * 2 ** int(unet_n_depth)


@strict_init
@dataclass
class TrainConfig:
    """How to train (the architecture is in :class:`ModelConfig`).

    Every value is checked when the config is made (and again by :meth:`validate`). Training ends at the
    first of: ``epochs * steps_per_epoch`` optimiser steps, ``minutes`` spent, no improvement of the
    validation loss for ``patience`` epochs; the best weights are kept. :meth:`retraining` starts from
    the retraining budget :data:`RETRAIN_DEFAULTS`. Validation data: see
    :func:`cellseg.trainingdata.prepare_training`. The same ``seed`` gives the same weights (unless the
    time budget ends the run).
    """

    epochs: int = setting(400, "most epochs (training usually ends earlier: time budget, early stopping)",
                          label="Epochs", lo=1, hi=100000)
    steps_per_epoch: int = setting(50, "optimiser steps per epoch", label="Steps per epoch", lo=1, hi=1000000)
    learning_rate: float | None = setting(None, "Adam learning rate (default: the model's own, 3e-4)", "float",
                                          label="Learning rate", lo=0, hi=1, lo_open=True, hi_open=True)
    batch_size: int | None = setting(None, "patches per step (default: the model's, 4)", "int",
                                     label="Batch size", lo=1, hi=256)
    patch_size: tuple[int, int] | None = setting(None, "training patch size, e.g. 128 (default: the model's, "
                                                 "128)", "pair", label="Patch size", lo=1, hi=4096)
    minutes: float | None = setting(20.0, "wall-clock budget of the training steps in minutes: training ends "
                                    "when it is spent, keeping the best weights (none: epochs x "
                                    "steps_per_epoch only)", "float", label="Time budget (minutes)",
                                    lo=0, hi=10080, lo_open=True, optional=True)
    patience: int | None = setting(10, "early stopping: end training when the validation loss has not "
                                   "improved for this many epochs (none: never)", "int", label="Patience (epochs)",
                                   lo=1, hi=100000, optional=True)
    augment: bool = setting(True, "random flips, 90 degree rotations, intensity scale/shift and noise on "
                            "training patches", label="Augment")
    validation_fraction: float = setting(0.15, "share of the images held back for validation and threshold "
                                         "optimisation; when that is fewer than 2 images, one patch of each "
                                         "image is held back instead (0: validate on the training images)", label="Validation fraction", lo=0, hi=0.9,
                                         flag="--val-fraction")
    scale: float | None = setting(None, "resize the images by this factor for training (and prediction, stored in "
                                  "the model); default: retraining estimates it from the masks (objects the "
                                  "size the model was trained on), training from scratch uses 1", "float",
                                  label="Scale", lo=SCALE_BOUNDS[0], hi=SCALE_BOUNDS[1])
    invert: str = setting("auto", INVERT_HELP, label="Invert intensities", choices=INVERT_CHOICES)
    channels: str = setting("auto", "when the images' channels are not the model's (grey vs RGB): convert the "
                            "images, or adapt the model's first layer to them; auto picks the measured better "
                            "one", label="Channel adaptation", choices=CHANNEL_MODES)
    seed: int = setting(0, "seeds weights, patch sampling and augmentation", label="Seed", lo=0, hi=2**32 - 1)
    optimize_thresholds: bool = setting(True, "optimise the probability and overlap thresholds on the "
                                        "validation images", label="Optimise thresholds")
    keep_start: bool = setting(True, "retraining: keep the starting weights unless the retrained ones beat them "
                               "on the validation data by 0.05 AP@0.5", label="Keep the start unless improved")
    freeze_encoder: bool = setting(False, "keep the encoder's weights fixed (train decoder and heads)",
                                   label="Freeze encoder")
    reduce_lr: bool = setting(True, "halve the learning rate when the validation loss stalls",
                              label="Reduce learning rate on plateau", flag="")
    freeze_encoder_epochs: int = setting(0, "keep the encoder fixed for the first K epochs, then train all "
                                         "layers (0: never)", label="Frozen epochs", lo=0, hi=100000)
    encoder_lr_factor: float = setting(1.0, "encoder learning rate = learning rate x this", lo=0, hi=1,
                                       label="Encoder learning-rate factor")
    reinit_heads: bool = setting(False, "re-initialise the output heads (prob and dist layers) first",
                                 label="Re-initialise output heads")
    mix_fraction: float = setting(0.25, "share of training patches drawn from the mixed-in pretraining data",
                                  label="Mix fraction", lo=0, hi=1, lo_open=True, hi_open=True)

    def __post_init__(self) -> None:
        check_settings(self)

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first invalid parameter."""
        check_settings(self)

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    @classmethod
    def retraining(cls, **overrides: Any) -> TrainConfig:
        """A config for retraining: :data:`RETRAIN_DEFAULTS` unless ``overrides`` says otherwise."""
        return cls(**{**RETRAIN_DEFAULTS, **overrides})

    @classmethod
    def of(cls, config: TrainConfig | dict[str, Any] | None) -> TrainConfig:
        """``config`` as a validated TrainConfig (``None``: the default; a dict: its parameters)."""
        if config is None:
            return cls()
        if isinstance(config, dict):
            return cls(**config)
        if not isinstance(config, cls):
            raise InputError(f"train_config must be a TrainConfig (or a dict of its parameters), not "
                             f"{type(config).__name__}")
        config.validate()
        return config

    def replace(self, **changes: Any) -> TrainConfig:
        return replace(self, **changes)
