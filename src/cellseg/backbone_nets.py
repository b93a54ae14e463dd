"""The networks of the extra backbones: a residual U-Net (``resunet``) and a ResNet50-encoder U-Net
(``resnet50``), both :class:`stardist.models.StarDist2D` subclasses that only override ``_build``.

Registered by name in :mod:`cellseg.backbones` (which holds their options and checks).
"""

from __future__ import annotations

from typing import Any

from stardist.models import StarDist2D

from cellseg.backbones import IMAGENET_FILE, check_resnet50, find_imagenet_weights
from cellseg.errors import InputError, ModelLoadError

__all__ = ["ResNet50StarDist2D", "ResUNetStarDist2D", "residual_block"]

# ResNet50 layer whose output has the given stride (input pixels per feature pixel).
_RESNET_STAGES = {2: "conv1_relu", 4: "conv2_block3_out", 8: "conv3_block4_out", 16: "conv4_block6_out",
                  32: "conv5_block3_out"}
_ENCODER_PREFIXES = ("input", "grey_to_rgb", "imagenet_scale", "conv1_", "pool1_", "conv2_", "conv3_",
                     "conv4_", "conv5_")
_HEADS = ("prob", "dist", "prob_class")


def _conv_bn_relu(x: Any, filters: int, name: str, relu: bool = True) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x) if relu else x


def residual_block(x: Any, filters: int, name: str) -> Any:
    """He et al. (2016) basic block: conv-BN-ReLU, conv-BN, plus identity or 1x1-projection shortcut, ReLU."""
    from keras import layers

    shortcut = x
    if x.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_proj")(x)
        shortcut = layers.BatchNormalization(name=f"{name}_proj_bn")(shortcut)
    y = _conv_bn_relu(x, filters, f"{name}_a")
    y = _conv_bn_relu(y, filters, f"{name}_b", relu=False)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _heads(sd: StarDist2D, x: Any, inp: Any) -> Any:
    """stardist's output part: optional 'features' conv, then the 'prob' and 'dist' 1x1 heads."""
    import keras
    from keras import layers

    c = sd.config
    if c.net_conv_after_unet > 0:
        x = layers.Conv2D(c.net_conv_after_unet, 3, padding="same", activation="relu", name="features")(x)
    prob = layers.Conv2D(1, 1, padding="same", activation="sigmoid", name="prob")(x)
    dist = layers.Conv2D(c.n_rays, 1, padding="same", activation="linear", name="dist")(x)
    if c.n_classes is not None:
        raise InputError("multi-class models are only supported with backbone 'unet'")
    return keras.Model([inp], [prob, dist])


class _BackboneMixin:
    """Shared hooks used by :class:`cellseg.models.CellsegModel`."""

    keras_model: Any

    def encoder_layers(self) -> list[Any]:
        """Layers of the contracting path (frozen by ``freeze_encoder``)."""
        return [layer for layer in self.keras_model.layers if layer.name.startswith(_ENCODER_PREFIXES)]

    def head_layers(self) -> list[Any]:
        """The output heads (re-initialised by ``reinit_heads``)."""
        return [layer for layer in self.keras_model.layers if layer.name in _HEADS]

    def apply_backbone_options(self, options: dict[str, Any]) -> None:
        """Apply ``ModelConfig.backbone_options`` (checked by the config) to a freshly built model."""


class ResUNetStarDist2D(_BackboneMixin, StarDist2D):
    """StarDist2D whose U-Net levels are residual blocks (backbone ``resunet``).

    Stem conv, max-pooling to ``grid``, then ``unet_n_depth`` residual blocks with ``unet_n_filter_base *
    2**level`` filters separated by 2x2 max-pooling, a residual bottleneck, and a decoder of upsampling,
    skip concatenation and residual blocks.
    """

    def _build(self):
        import keras
        from keras import layers

        c = self.config
        f0, depth = int(c.unet_n_filter_base), int(c.unet_n_depth)
        inp = keras.Input(c.net_input_shape, name="input")
        x = _conv_bn_relu(inp, f0, "enc_stem")
        if tuple(c.grid) != (1, 1):
            x = layers.MaxPooling2D(tuple(c.grid), name="enc_grid_pool")(x)
        skips = []
        for d in range(depth):
            x = residual_block(x, f0 * 2**d, f"enc{d}")
            skips.append(x)
            x = layers.MaxPooling2D(2, name=f"enc{d}_pool")(x)
        x = residual_block(x, f0 * 2**depth, "enc_middle")
        for d in reversed(range(depth)):
            x = layers.UpSampling2D(2, name=f"dec{d}_up")(x)
            x = layers.Concatenate(name=f"dec{d}_concat")([x, skips[d]])
            x = residual_block(x, f0 * 2**d, f"dec{d}")
        return _heads(self, x, inp)

    def encoder_layers(self) -> list[Any]:
        return [layer for layer in self.keras_model.layers if layer.name.startswith(("input", "enc"))]


class ResNet50StarDist2D(_BackboneMixin, StarDist2D):
    """StarDist2D with a U-Net decoder on a Keras ResNet50 encoder (backbone ``resnet50``).

    Grey images are replicated to 3 channels inside the network and scaled to ImageNet's 0-255 range.
    The encoder is ResNet50 cut at stride ``grid * 2**unet_n_depth`` (at most 32: the whole network with
    grid 2 and depth 4); the decoder upsamples by 2 per level, concatenates the ResNet stage of that
    stride and applies two conv-BN-ReLU with ``unet_n_filter_base * 2**level`` filters.
    Option ``{"imagenet": True}`` loads ImageNet weights from :data:`IMAGENET_FILE`.
    """


    def _build(self):
        import keras
        from keras import layers

        c = self.config
        g, depth, f0 = int(max(c.grid)), int(c.unet_n_depth), int(c.unet_n_filter_base)
        check_resnet50(c)
        inp = keras.Input(c.net_input_shape, name="input")
        channels = int(c.n_channel_in)
        if channels == 1:
            rgb = layers.Concatenate(name="grey_to_rgb")([inp, inp, inp])
        elif channels == 3:
            rgb = inp
        else:
            rgb = layers.Conv2D(3, 1, name="grey_to_rgb")(inp)
        # normalised images are ~0..1; ResNet50's ImageNet weights expect mean-subtracted 0..255 values
        rgb = layers.Rescaling(255.0, offset=-120.0, name="imagenet_scale")(rgb)
        base = keras.applications.ResNet50(include_top=False, weights=None, input_tensor=rgb)
        self._resnet = base
        stage = {s: (rgb if s == 1 else base.get_layer(name).output) for s, name in {1: "", **_RESNET_STAGES}.items()}
        x = stage[g * 2**depth]
        for d in reversed(range(depth)):
            x = layers.UpSampling2D(2, name=f"dec{d}_up")(x)
            x = layers.Concatenate(name=f"dec{d}_concat")([x, stage[g * 2**d]])
            x = _conv_bn_relu(x, f0 * 2**d, f"dec{d}_a")
            x = _conv_bn_relu(x, f0 * 2**d, f"dec{d}_b")
        return _heads(self, x, inp)

    def apply_backbone_options(self, options: dict[str, Any]) -> None:
        super().apply_backbone_options(options)
        if options.get("imagenet"):
            path = find_imagenet_weights()
            try:
                self._resnet.load_weights(str(path))
            except Exception as err:  # h5py / keras raise many kinds on a wrong file
                raise ModelLoadError(f"could not load ImageNet weights from {path}: {err}. Expected "
                                     f"keras-applications' {IMAGENET_FILE}") from err
