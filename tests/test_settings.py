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
