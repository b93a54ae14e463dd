"""Settings are declared once (cellseg.config): the CLI and the nodes take defaults and bounds from there."""

from __future__ import annotations

import dataclasses

import pytest

from cellseg.cli import build_parser
from cellseg.cli_train import MODEL_FLAGS, RETRAIN_FLAGS, TRAIN_FLAGS
from cellseg.config import RETRAIN_DEFAULTS, ModelConfig, TrainConfig
from cellseg.errors import InputError
from cellseg.settings import describe, settings_of


@pytest.mark.parametrize("cls", [ModelConfig, TrainConfig])
def test_every_field_is_a_declared_setting(cls):
    names = [f.name for f in dataclasses.fields(cls)]
    table = settings_of(cls)
    assert list(table) == names
    assert all(meta.help and not meta.help.endswith(".") for meta, _ in table.values())


def _parse(*argv: str):
    return build_parser().parse_args(list(argv))


def test_cli_defaults_are_the_declared_ones():
    args = _parse("train", "--images", "i", "--masks", "m", "--out", "o")
    for name in MODEL_FLAGS:
        assert getattr(args, name) == describe(ModelConfig, name)[1], name
    for name in TRAIN_FLAGS:
        assert getattr(args, name) == describe(TrainConfig, name)[1], name
    args = _parse("retrain", "--model", "x", "--images", "i", "--masks", "m", "--out", "o")
    expected = TrainConfig.retraining()
    for name in TRAIN_FLAGS + RETRAIN_FLAGS:
        assert getattr(args, name) == getattr(expected, name), name
    assert (args.epochs, args.steps_per_epoch) == (RETRAIN_DEFAULTS["epochs"], RETRAIN_DEFAULTS["steps_per_epoch"])


def test_a_changed_default_reaches_cli_and_nodes(monkeypatch):
    """Changing the declaration is the one line that changes a default everywhere."""
    from cellseg_knime.params import param

    meta, _ = describe(TrainConfig, "epochs")
    field = TrainConfig.__dataclass_fields__["epochs"]
    monkeypatch.setattr(field, "default", 7)
    assert describe(TrainConfig, "epochs")[1] == 7
    args = _parse("train", "--images", "i", "--masks", "m", "--out", "o")
    assert args.epochs == 7
    assert param(TrainConfig, "epochs")._default_value == 7


def test_cli_flags_check_like_the_config(capsys):
    with pytest.raises(SystemExit) as err:
        _parse("train", "--images", "i", "--masks", "m", "--out", "o", "--grid", "3")
    assert err.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "--grid" in line and "1, 2, 4 or 8" in line and "\n" not in line
    with pytest.raises(SystemExit):
        _parse("train", "--images", "i", "--masks", "m", "--out", "o", "--learning-rate", "1")
    assert "(0, 1)" in capsys.readouterr().err


def test_node_parameters_come_from_the_config():
    from cellseg_knime.learners import StarDistLearner, StarDistRetrainer

    learner, retrainer = StarDistLearner(), StarDistRetrainer()
    assert learner.training.epochs == TrainConfig().epochs
    assert learner.training.patch_size == ModelConfig().patch_size[0]
    assert learner.architecture.n_rays == ModelConfig().n_rays
    assert learner.augmentation.augment is TrainConfig().augment
    assert (retrainer.training.epochs, retrainer.training.steps_per_epoch) == (
        RETRAIN_DEFAULTS["epochs"], RETRAIN_DEFAULTS["steps_per_epoch"])
    assert retrainer.training.learning_rate == RETRAIN_DEFAULTS["learning_rate"]
    # the node's configs are the backend's, with nothing dropped on the way
    from cellseg_knime.learners import _train_config

    tc = _train_config(retrainer)
    assert tc == TrainConfig.retraining(batch_size=4, patch_size=128)
    learner.training.validation_fraction = 0.3
    learner.advanced.reduce_lr = False
    tc = _train_config(learner)
    assert tc.validation_fraction == 0.3 and tc.reduce_lr is False
    assert (tc.minutes, tc.patience, tc.scale, tc.invert) == (TrainConfig().minutes, TrainConfig().patience,
                                                              None, "auto")
    # optional settings: 0 in the node is None in the config (no early stopping, automatic scale, ...)
    retrainer.training.patience = 0
    retrainer.training.batch_size = 0
    retrainer.input_adaptation.scale = 0.0
    retrainer.input_adaptation.invert = "yes"
    retrainer.input_adaptation.channels = "adapt"
    tc = _train_config(retrainer)
    assert (tc.patience, tc.batch_size, tc.scale, tc.invert, tc.channels) == (None, None, None, "yes", "adapt")
    retrainer.input_adaptation.scale = 0.5
    assert _train_config(retrainer).scale == 0.5


def test_optional_and_choice_parameters_check_like_the_config():
    from cellseg.adapt import InputConfig
    from cellseg_knime.learners import StarDistRetrainer
    from cellseg_knime.predictor import StarDistPredictor

    retrainer, predictor = StarDistRetrainer(), StarDistPredictor()
    assert (retrainer.training.minutes, retrainer.training.patience) == (
        RETRAIN_DEFAULTS["minutes"], RETRAIN_DEFAULTS["patience"])
    assert (predictor.input_adaptation.scale, predictor.input_adaptation.invert) == (0, InputConfig().invert)
    with pytest.raises(ValueError, match=r"Time budget \(minutes\)=0.0 must be in \(0, 10080\]"):
        retrainer.training.minutes = 0.0  # no "0 = none" for the budget: the declared bounds
    with pytest.raises(ValueError, match=r"Scale=0.01 must be in \[0.05, 20"):
        retrainer.input_adaptation.scale = 0.01  # 0 is automatic, other values the declared bounds
    with pytest.raises(ValueError, match="Channel adaptation='both' must be auto, convert or adapt"):
        retrainer.input_adaptation.channels = "both"
    with pytest.raises(ValueError, match="Invert intensities='maybe' must be auto, yes or no"):
        predictor.input_adaptation.invert = "maybe"
    predictor.input_adaptation.scale = 1.5
    assert predictor._input() == InputConfig(scale=1.5)


def test_settings_saved_by_0_2_0_load_with_the_new_parameters_defaulted():
    """Parameters added in 0.3.0 carry since_version: a node saved by 0.2.0 (without them) still loads."""
    import knime.extension.parameter as kp

    from cellseg_knime.learners import StarDistLearner, StarDistRetrainer
    from cellseg_knime.predictor import StarDistPredictor

    added = ((StarDistLearner, {"training": ("minutes", "patience"), "input_adaptation": ()}),
             (StarDistRetrainer, {"training": ("minutes", "patience"), "input_adaptation": ()}),
             (StarDistPredictor, {"input_adaptation": ()}))
    for cls, groups in added:
        fresh = cls()
        saved = kp.extract_parameters(fresh)
        for group, names in groups.items():
            descriptor = kp._get_parameters(fresh)[group]
            if not names:  # a new group
                assert str(descriptor._since_version) == "0.3.0"
                del saved["model"][group]
            for name in names:
                assert str(kp._get_parameters(descriptor)[name]._since_version) == "0.3.0"
                del saved["model"][group][name]
        node = cls()
        kp.validate_parameters(node, saved, "0.2.0")
        kp.inject_parameters(node, saved, "0.2.0")
        assert kp.extract_parameters(node) == kp.extract_parameters(fresh), cls.__name__
        with pytest.raises(ValueError, match="Parameter missing"):
            kp.validate_parameters(cls(), saved, "0.3.0")  # saved by 0.3.0, they must be there


def test_config_from_refuses_a_parameter_it_would_drop():
    import knime.extension as knext

    from cellseg_knime.params import config_from, param

    @knext.parameter_group(label="G")
    class Group:
        epochs = param(TrainConfig, "epochs")
        colour = knext.StringParameter("Colour", "Not a training setting.", "red")

    @knext.node("N", knext.NodeType.OTHER, "i.png", "/community")
    class Node:
        group = Group()

        def configure(self, ctx):
            return None

        def execute(self, ctx):
            return None

    node = Node()
    with pytest.raises(TypeError, match="colour"):
        config_from(TrainConfig, node.group)
    assert config_from(TrainConfig, node.group, skip=("colour",)).epochs == TrainConfig().epochs
    with pytest.raises(ValueError, match="Epochs=1000000000 must be between 1 and 100000"):
        node.group.epochs = 10**9  # the dialog's check is the config's


def test_configs_reject_unknown_and_bad_values():
    with pytest.raises(InputError, match="unknown parameter"):
        TrainConfig(epoch=3)
    with pytest.raises(InputError, match="steps_per_epoch"):
        TrainConfig(steps_per_epoch="10")
    with pytest.raises(InputError, match="patch_size"):
        ModelConfig(patch_size=100)
    assert TrainConfig.of({"epochs": 2}).epochs == 2
