"""Learner nodes: StarDist Learner (train from scratch) and StarDist Retrainer (transfer learning)."""

from __future__ import annotations

from typing import Any

import knime.extension as knext
import numpy as np

from cellseg.adapt import CONVERTIBLE
from cellseg.config import RETRAIN_DEFAULTS, STRATEGY_DEFAULTS, ModelConfig, TrainConfig, check_patch_size
from cellseg.errors import CancelledError, InputError
from cellseg_knime import cells, node
from cellseg_knime import tables as kt
from cellseg_knime.history import history_columns, history_frame, history_schema, loss_figure, outcome
from cellseg_knime.params import SINCE_0_3, config_from, param
from cellseg_knime.ports import StarDistModelPortObject, StarDistModelSpec, model_port_type, summary_from_meta

# -- parameters shared by both nodes -----------------------------------------------------------
# Labels, help, defaults and bounds come from cellseg.config (declared once, shared with the CLI).


class Backbone(knext.EnumParameterOptions):
    UNET = ("U-Net", "StarDist's U-Net (the standard).")
    RESUNET = ("Residual U-Net", "U-Net whose blocks are residual blocks (He et al. 2016).")
    RESNET50 = ("ResNet50 U-Net", "A U-Net decoder on a ResNet50 encoder (grey images replicated to RGB).")


@knext.parameter_group(label="Architecture")
class ArchitectureSettings:
    """The network: backbone, number of rays, output grid, input channels and U-Net size."""

    backbone = knext.EnumParameter("Backbone", "Network architecture.", Backbone.UNET.name, Backbone)
    imagenet = knext.BoolParameter(
        "ImageNet weights", "Start the ResNet50 encoder from ImageNet weights (a local Keras weights file, "
        "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5 in ~/.keras/models).", False,
    ).rule(knext.OneOf(backbone, [Backbone.RESNET50.name]), knext.Effect.SHOW)
    n_rays = param(ModelConfig, "n_rays")
    grid = param(ModelConfig, "grid")
    n_channel_in = param(ModelConfig, "n_channel_in")
    unet_n_depth = param(ModelConfig, "unet_n_depth")
    unet_n_filter_base = param(ModelConfig, "unet_n_filter_base")


@knext.parameter_group(label="Training")
class TrainingSettings:
    """Training length (epochs, time budget, early stopping), batch and patch size, learning rate, validation
    split and seed."""

    epochs = param(TrainConfig, "epochs")
    steps_per_epoch = param(TrainConfig, "steps_per_epoch")
    minutes = param(TrainConfig, "minutes", since_version=SINCE_0_3)
    patience = param(TrainConfig, "patience", zero="never", since_version=SINCE_0_3)
    batch_size = param(ModelConfig, "batch_size")
    patch_size = param(ModelConfig, "patch_size")
    learning_rate = param(ModelConfig, "learning_rate")
    validation_fraction = param(TrainConfig, "validation_fraction")
    seed = param(TrainConfig, "seed")


@knext.parameter_group(label="Augmentation")
class AugmentationSettings:
    """Random changes of the training patches."""

    augment = param(TrainConfig, "augment")


@knext.parameter_group(label="Advanced", is_advanced=True)
class AdvancedSettings:
    """Thresholds, learning-rate schedule, mask handling and the model name."""

    optimize_thresholds = param(TrainConfig, "optimize_thresholds")
    reduce_lr = param(TrainConfig, "reduce_lr")
    label_components = knext.BoolParameter(
        "Label connected components", "Accept binary masks and label their connected components.", False)
    model_name = knext.StringParameter("Model name", "Name recorded in the model's provenance.", "cellseg")


@knext.parameter_group(label="Input adaptation", since_version=SINCE_0_3)
class InputSettings:
    """How the images are resized for the network."""

    scale = param(TrainConfig, "scale", zero="1, no resizing", since_version=SINCE_0_3,
                  help="Resize the images by this factor for training; the model stores it and prediction "
                       "resizes by it too (0 = 1, no resizing).")


#: Node parameters that are not TrainConfig fields (they go to the training call itself).
_NOT_CONFIG = ("label_components", "model_name")


def _train_config(node: Any, **values: Any) -> TrainConfig:
    """The node's TrainConfig: every training, input, augmentation and advanced parameter, in one call (0
    for an optional setting, e.g. patience or the Retrainer's batch size, is passed as None)."""
    return config_from(TrainConfig, node.training, node.input_adaptation, node.augmentation, node.advanced,
                       skip=_NOT_CONFIG, **values)


def _columns(node: Any, schema: knext.Schema) -> tuple[str, str]:
    image = kt.pick_column(schema, node.image_column, "Image column", preferred=("image",))
    labels = kt.pick_column(schema, node.label_column, "Label column", preferred=("labels", "mask"),
                            exclude=(image,))
    if image == labels:
        raise knext.InvalidParametersError(f"Image and label column are the same column '{image}'")
    node.image_column, node.label_column = image, labels
    return image, labels


def read_training_table(ctx: Any, table: Any, image_col: str, label_col: str, end: float = 0.1,
                        label_components: bool = False) -> tuple[list[np.ndarray], list[np.ndarray], list[str]]:
    """Images, label images and row names of a training table (errors name the row)."""
    total = kt.require_rows(table, "training table")
    images, masks, names = [], [], []
    for done, df in kt.iter_rows(table, [image_col, label_col]):
        for i, (rid, img_cell, lbl_cell) in enumerate(zip(df.index, df[image_col], df[label_col])):
            kt.check_canceled(ctx, "while reading the training images")
            img = cells.read_image(img_cell, str(rid), image_col, ctx)
            lbl = cells.read_labels(lbl_cell, str(rid), label_col, img.shape, ctx, binary_ok=label_components)
            images.append(img)
            masks.append(lbl)
            names.append(f"Row '{rid}'")
            ctx.set_progress(end * (done + i + 1) / total, f"read training image {done + i + 1} of {total}")
    if not images:
        raise ValueError("The training table is empty")
    return images, masks, names


def _finish(ctx: Any, result: Any, title: str, notes: list[str] | None = None,
            ) -> tuple[StarDistModelPortObject, knext.Table, Any]:
    """The node's outputs; the outcome as the last progress message, and as a warning (``notes``, shown by
    :func:`~cellseg_knime.tables.warnings_to`) when retraining kept the starting weights."""
    if result.cancelled:
        raise RuntimeError(f"Execution canceled after {result.steps} training step(s)")
    history = history_frame(result.history)
    ctx.set_progress(1.0, outcome(result))
    if notes is not None and result.kept_start:
        notes.append(f"Retraining did not improve the model: {result.stop_reason}")
    view = knext.view_matplotlib(loss_figure(history, title))
    out = kt.BatchWriter(history_columns())
    out.add_frame(history)
    return StarDistModelPortObject.from_model(result.model), out.table(), view


_IMAGE_PORT_DOC = ("Table with an image column and an instance label column (0 = background, one integer per "
                   "object) of the same size; each a PNG image cell, a Path cell or a string file path.")


# -- StarDist Learner ----------------------------------------------------------------------------


@node("StarDist Learner", knext.NodeType.LEARNER, "learner")
@knext.input_table("Training data", _IMAGE_PORT_DOC)
@knext.output_port("StarDist model", "The trained model (with optimised thresholds and provenance).",
                   model_port_type)
@knext.output_table("Training history", "One row per epoch: step, time and training/validation losses.")
@knext.output_view("Loss curves", "Training and validation loss over the training steps.")
class StarDistLearner:
    """Trains a StarDist model from scratch on annotated images.

    StarDist detects star-convex objects such as cell nuclei: for every pixel it predicts the probability
    of being inside an object and the distances to the object's border along a number of rays, then keeps
    the best non-overlapping polygons. Give a table with images and their instance label images (e.g. from
    the Nuclei Simulator or the Image Reader with a mask folder). Images are percentile-normalised, random
    patches are augmented, and after training the probability and overlap thresholds are optimised on the
    validation images. Training ends at the first of: all epochs done, the time budget spent, no improvement
    of the validation loss for *Patience* epochs; the weights of the best epoch are kept. Training reports
    progress per step and can be canceled; with few annotated images retraining a pretrained model (StarDist
    Retrainer) usually works much better.
    """

    image_column = knext.ColumnParameter("Image column", "Column with the images.", port_index=0,
                                         column_filter=cells.is_image_column)
    label_column = knext.ColumnParameter("Label column", "Column with the instance label images.", port_index=0,
                                         column_filter=cells.is_image_column)
    architecture = ArchitectureSettings()
    training = TrainingSettings()
    input_adaptation = InputSettings()
    augmentation = AugmentationSettings()
    advanced = AdvancedSettings()

    def _model_config(self) -> ModelConfig:
        a, t = self.architecture, self.training
        options = {"imagenet": True} if a.backbone == Backbone.RESNET50.name and a.imagenet else {}
        return config_from(ModelConfig, a, skip=("imagenet",), backbone=a.backbone.lower(),
                           backbone_options=options, patch_size=t.patch_size, batch_size=t.batch_size,
                           learning_rate=t.learning_rate)

    def configure(self, config_context: knext.ConfigurationContext, table_schema: knext.Schema) -> Any:
        _columns(self, table_schema)
        mc = self._model_config()
        _train_config(self)
        spec = StarDistModelSpec(summary_from_meta(mc, None, {"name": self.advanced.model_name, "steps_trained": 0}))
        return spec, history_schema()

    def execute(self, exec_context: knext.ExecutionContext, table: knext.Table) -> Any:
        from cellseg.training import train

        kt.require_rows(table, "training table")
        image_col, label_col = _columns(self, table.schema)
        mc = self._model_config()
        tc = _train_config(self)
        images, masks, names = read_training_table(exec_context, table, image_col, label_col,
                                                   label_components=self.advanced.label_components)
        exec_context.set_progress(0.1, f"building the {mc.backbone} model")
        with kt.warnings_to(exec_context):
            try:
                result = train(images, masks, mc, tc, names=names, progress=kt.progress_fn(exec_context, 0.1, 0.98),
                               should_cancel=exec_context.is_canceled, model_name=self.advanced.model_name,
                               data_description=f"KNIME table, {len(images)} images",
                               label_components=self.advanced.label_components)
            except CancelledError as err:
                raise kt.canceled_error(err) from err
        return _finish(exec_context, result, f"StarDist Learner: {mc.backbone}, {len(images)} images")


# -- StarDist Retrainer --------------------------------------------------------------------------


class Strategy(knext.EnumParameterOptions):
    FINE_TUNE = ("Fine-tune all layers", "Train all weights from the pretrained ones (default).")
    FREEZE_ENCODER = ("Freeze encoder", "Keep the encoder fixed; train only decoder and output heads.")
    FREEZE_THEN_UNFREEZE = ("Freeze encoder first", "Keep the encoder fixed for the first K epochs, then "
                            "train all layers.")
    SLOW_ENCODER = ("Slower encoder", "Train all layers, the encoder with a lower learning rate.")


class MixData(knext.EnumParameterOptions):
    NONE = ("None", "Train on the input table only.")
    SIMULATED = ("Simulated nuclei", "Mix in simulated nuclei images (all presets) to keep the model general.")


@knext.parameter_group(label="Retraining strategy")
class StrategySettings:
    """How the pretrained weights are adapted."""

    strategy = knext.EnumParameter("Strategy", "Which layers are trained, and how fast.",
                                   Strategy.FINE_TUNE.name, Strategy)
    freeze_epochs = param(TrainConfig, "freeze_encoder_epochs", min_value=1,
                          default=STRATEGY_DEFAULTS["freeze_encoder_epochs"]).rule(
        knext.OneOf(strategy, [Strategy.FREEZE_THEN_UNFREEZE.name]), knext.Effect.SHOW)
    encoder_lr_factor = param(TrainConfig, "encoder_lr_factor", default=STRATEGY_DEFAULTS["encoder_lr_factor"]).rule(
        knext.OneOf(strategy, [Strategy.SLOW_ENCODER.name]), knext.Effect.SHOW)
    reinit_heads = param(TrainConfig, "reinit_heads")
    mix_data = knext.EnumParameter("Mix in data", "Optionally mix pretraining-like data into the patches.",
                                   MixData.NONE.name, MixData, is_advanced=True)
    mix_fraction = param(TrainConfig, "mix_fraction", advanced=True).rule(
        knext.OneOf(mix_data, [MixData.SIMULATED.name]), knext.Effect.SHOW)


@knext.parameter_group(label="Training")
class RetrainingSettings:
    """Training length (epochs, time budget, early stopping), batch and patch size (0 = the model's own),
    learning rate, validation split, seed."""

    epochs = param(TrainConfig, "epochs", default=RETRAIN_DEFAULTS["epochs"])
    steps_per_epoch = param(TrainConfig, "steps_per_epoch", default=RETRAIN_DEFAULTS["steps_per_epoch"])
    minutes = param(TrainConfig, "minutes", default=RETRAIN_DEFAULTS["minutes"], since_version=SINCE_0_3)
    patience = param(TrainConfig, "patience", default=RETRAIN_DEFAULTS["patience"], zero="never",
                     since_version=SINCE_0_3)
    batch_size = param(TrainConfig, "batch_size", default=ModelConfig().batch_size, zero="the model's own",
                       help="Patches per step (0 = the model's own).")
    patch_size = param(TrainConfig, "patch_size", default=ModelConfig().patch_size, zero="the model's own",
                       help="Side of the square training patches (0 = the model's own); a multiple of the "
                            "model's grid x 2^depth, at most the image size.")
    learning_rate = param(TrainConfig, "learning_rate", default=RETRAIN_DEFAULTS["learning_rate"])
    validation_fraction = param(TrainConfig, "validation_fraction")
    seed = param(TrainConfig, "seed")


@knext.parameter_group(label="Input adaptation", since_version=SINCE_0_3)
class RetrainInputSettings:
    """How the images are brought to the model: resizing, intensity inversion and channels."""

    scale = param(TrainConfig, "scale", zero="estimated from the masks", since_version=SINCE_0_3,
                  help="Resize the images by this factor for training; the model stores it and prediction "
                       "resizes by it too (0 = estimated from the masks: the objects get the size the model "
                       "was trained on).")
    invert = param(TrainConfig, "invert", since_version=SINCE_0_3)
    channels = param(TrainConfig, "channels", since_version=SINCE_0_3)


@node("StarDist Retrainer", knext.NodeType.LEARNER, "retrainer")
@knext.input_port("StarDist model", "The (pretrained) model to start from; it is not changed.", model_port_type)
@knext.input_table("Training data", _IMAGE_PORT_DOC)
@knext.output_port("StarDist model", "The retrained model; its provenance records what it came from.",
                   model_port_type)
@knext.output_table("Training history", "One row per epoch: step, time and training/validation losses.")
@knext.output_view("Loss curves", "Training and validation loss over the training steps.")
class StarDistRetrainer:
    """Retrains a StarDist model on a few annotated images of your own (transfer learning).

    Start from a pretrained model (StarDist Model Reader) and a handful of annotated images: the model keeps
    what it learned on its large training set and adapts to your microscope, staining and cell type within
    minutes on a CPU. Strategies: fine-tune all layers (default), freeze the encoder (always, or for the first
    epochs), train the encoder more slowly, re-initialise the output heads, and optionally mix simulated
    nuclei into the training patches. Training ends when the time budget is spent or the validation loss has
    stopped improving, keeping the best weights; thresholds are re-optimised on the validation images, and
    unless the result beats the starting model on them by 0.05 AP@0.5, the starting weights are kept (a
    warning says so).

    The images are brought to the model: resized so that the objects get the size the model was trained on
    (estimated from the masks, or a given *Scale*, which the retrained model keeps for prediction), inverted
    when their background (dark or bright) is not the model's, and grey images for an RGB model or RGB images
    for a grey model are converted, or the model's first layer is adapted to them (*Channel adaptation*).
    """

    image_column = knext.ColumnParameter("Image column", "Column with the images.", port_index=1,
                                         column_filter=cells.is_image_column)
    label_column = knext.ColumnParameter("Label column", "Column with the instance label images.", port_index=1,
                                         column_filter=cells.is_image_column)
    strategy = StrategySettings()
    training = RetrainingSettings()
    input_adaptation = RetrainInputSettings()
    augmentation = AugmentationSettings()
    advanced = AdvancedSettings()

    def _extra(self) -> dict[str, Any]:
        s = self.strategy
        extra: dict[str, Any] = {"reinit_heads": s.reinit_heads, "mix_fraction": s.mix_fraction}
        if s.strategy == Strategy.FREEZE_ENCODER.name:
            extra["freeze_encoder"] = True
        elif s.strategy == Strategy.FREEZE_THEN_UNFREEZE.name:
            extra["freeze_encoder_epochs"] = s.freeze_epochs
        elif s.strategy == Strategy.SLOW_ENCODER.name:
            extra["encoder_lr_factor"] = s.encoder_lr_factor
        return extra

    def _check(self, spec: StarDistModelSpec) -> None:
        if self.training.patch_size:
            try:
                check_patch_size(self.training.patch_size, spec.divisor)
            except InputError as err:
                raise knext.InvalidParametersError(str(err)) from err

    def configure(self, config_context: knext.ConfigurationContext, model_spec: StarDistModelSpec,
                  table_schema: knext.Schema) -> Any:
        if model_spec is None:
            raise knext.InvalidParametersError("Connect a StarDist model")
        _columns(self, table_schema)
        self._check(model_spec)
        _train_config(self, **self._extra())
        summary = dict(model_spec.summary)
        summary["steps_trained"] = int(summary.get("steps_trained", 0)) + (
            self.training.epochs * self.training.steps_per_epoch)
        return StarDistModelSpec(summary), history_schema()

    def execute(self, exec_context: knext.ExecutionContext, model: StarDistModelPortObject,
                table: knext.Table) -> Any:
        from cellseg.training import retrain

        kt.require_rows(table, "training table")
        image_col, label_col = _columns(self, table.schema)
        self._check(model.spec)
        tc = _train_config(self, **self._extra())
        images, masks, names = read_training_table(exec_context, table, image_col, label_col, end=0.08,
                                                   label_components=self.advanced.label_components)
        n = model.spec.n_channel_in
        for name, img in zip(names, images):
            c = cells.channels_of(img)
            if c != n and (c, n) not in CONVERTIBLE:  # grey and RGB: see 'Channel adaptation'
                raise ValueError(f"{name}: image has {c} channel(s) but the model expects {n}; only grey (1) and "
                                 "RGB (3) images are converted into each other")
        exec_context.set_progress(0.08, "loading the model")
        base = model.model
        kwargs: dict[str, Any] = {}
        if self.strategy.mix_data == MixData.SIMULATED.name:
            kwargs["mix_data"] = _simulated_mix(base, images)
        exec_context.set_progress(0.1, "retraining")
        with kt.warnings_to(exec_context) as notes:
            try:
                result = retrain(base, images, masks, tc, names=names, progress=kt.progress_fn(exec_context, 0.1, 0.98),
                                 should_cancel=exec_context.is_canceled,
                                 data_description=f"KNIME table, {len(images)} images",
                                 label_components=self.advanced.label_components, **kwargs)
            except CancelledError as err:
                raise kt.canceled_error(err) from err
            if self.advanced.model_name and self.advanced.model_name != "cellseg":
                result.model.provenance["name"] = self.advanced.model_name
            return _finish(exec_context, result, f"StarDist Retrainer: {len(images)} images", notes)


def _simulated_mix(model: Any, images: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Simulated grey images (one per preset, twice) at least as large as the training patches."""
    from cellseg.simulate import simulate_dataset

    if model.config.n_channel_in != 1:
        raise knext.InvalidParametersError("Mixing in simulated nuclei needs a 1-channel (grey) model")
    size = max(256, *(max(img.shape[:2]) for img in images))
    return simulate_dataset(8, size=min(size, 512), preset="mixed", seed=12345)
