"""The backbones a model can have, and what each accepts: a registry readable without TensorFlow.

``unet`` is stardist's own U-Net; ``resunet`` (residual U-Net) and ``resnet50`` (ResNet50-encoder U-Net) are
built by :mod:`cellseg.backbone_nets`, imported only when a model is built. stardist's ``Config2D`` accepts
``backbone='unet'`` only, so the stardist config stays a valid U-Net config and the real backbone name lives
in ``cellseg.json`` (``model_config.backbone``), from which :func:`model_class` picks the class.

``resnet50`` can start from ImageNet weights (``ModelConfig.backbone_options={"imagenet": True}``) read
from keras-applications' standard file :data:`IMAGENET_FILE`; it is never downloaded.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cellseg.errors import InputError, ModelLoadError

__all__ = ["BACKBONES", "IMAGENET_ENV", "IMAGENET_FILE", "Backbone", "backbone_names", "backbone_spec",
           "check_resnet50", "find_imagenet_weights", "model_class"]

#: keras-applications' ResNet50 ImageNet weights without the classification top.
IMAGENET_FILE = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
IMAGENET_URL = f"https://storage.googleapis.com/tensorflow/keras-applications/resnet/{IMAGENET_FILE}"
#: Environment variable naming the weights file (or a folder holding it).
IMAGENET_ENV = "CELLSEG_IMAGENET_WEIGHTS"



@dataclass(frozen=True)
class Backbone:
    """One backbone: the class that builds it (``module:Class``), its options and an extra config check."""

    builder: str
    options: tuple[str, ...] = ()
    check: Callable[[Any], None] | None = None


def check_resnet50(config: Any) -> None:
    """:class:`InputError` unless the ResNet50 encoder can be cut at ``grid * 2**unet_n_depth`` (a
    :class:`~cellseg.config.ModelConfig` or stardist ``Config2D``)."""
    grid, depth = tuple(int(g) for g in config.grid), int(config.unet_n_depth)
    if grid[0] != grid[1] or grid[0] * 2**depth > 32:
        raise InputError(f"backbone resnet50 needs a square grid and grid * 2**unet_n_depth <= 32, "
                         f"got grid {grid} and unet_n_depth {depth}")


#: Backbone name -> how to build and check it.
BACKBONES: dict[str, Backbone] = {
    "unet": Backbone("stardist.models:StarDist2D"),
    "resunet": Backbone("cellseg.backbone_nets:ResUNetStarDist2D"),
    "resnet50": Backbone("cellseg.backbone_nets:ResNet50StarDist2D", ("imagenet",), check_resnet50),
}


def backbone_names() -> list[str]:
    return sorted(BACKBONES)


def backbone_spec(name: str) -> Backbone:
    """The registry entry of ``name``; :class:`InputError` naming the known ones."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise InputError(f"backbone {name!r} is unknown; choose one of {backbone_names()}")
    return BACKBONES[name]


def model_class(name: str) -> Any:
    """The StarDist2D (sub)class that builds backbone ``name`` (imports TensorFlow)."""
    if not isinstance(name, str) or name not in BACKBONES:
        raise ModelLoadError(f"backbone {name!r} is unknown; known: {backbone_names()}")
    module, cls = BACKBONES[name].builder.split(":")
    return getattr(importlib.import_module(module), cls)


def find_imagenet_weights() -> Path:
    """The local ResNet50 ImageNet weights file, or :class:`ModelLoadError` saying where to put it."""
    looked: list[str] = []
    env = os.environ.get(IMAGENET_ENV)
    if env:
        p = Path(env).expanduser()
        cand = p / IMAGENET_FILE if p.is_dir() else p
        if cand.is_file():
            return cand
        looked.append(f"${IMAGENET_ENV}={env}")
    keras_dir = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"
    cand = keras_dir / IMAGENET_FILE
    if cand.is_file():
        return cand
    looked.append(str(cand))
    raise ModelLoadError(
        f"ImageNet weights for the resnet50 backbone not found (looked in: {', '.join(looked)}). "
        f"Put keras-applications' file {IMAGENET_FILE} (from {IMAGENET_URL}, 94 MB; cellseg never downloads "
        f"it) into {keras_dir}/, or set {IMAGENET_ENV} to the file's path; or use backbone_options "
        "{'imagenet': false} to start from random weights"
    )
