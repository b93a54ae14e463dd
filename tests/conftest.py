"""Shared pytest setup: make ``import knime.extension`` work (real package or the offline stand-in)."""

from cellseg_knime.compat import ensure_knime_extension

ensure_knime_extension()


# -- shared tiny model ----------------------------------------------------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def easy_data():
    """Eight easy simulated 128x128 images with labels, and four more for testing."""
    from cellseg import simulate

    images, masks = simulate.simulate_dataset(12, size=128, preset="low_noise", seed=0)
    return (images[:8], masks[:8]), (images[8:], masks[8:])


@pytest.fixture(scope="session")
def tiny_config():
    from cellseg.config import ModelConfig

    return ModelConfig(n_rays=16, grid=(1, 1), unet_n_depth=2, unet_n_filter_base=8, patch_size=(64, 64),
                       batch_size=4)


@pytest.fixture(scope="session")
def untrained_tiny_model():
    """An untrained, very small model (8 rays, depth 1, 4 filters): for tests of where and how models are
    written and read, which need no training."""
    from cellseg.config import ModelConfig
    from cellseg.models import CellsegModel

    return CellsegModel.create(ModelConfig(n_rays=8, grid=(1, 1), unet_n_depth=1, unet_n_filter_base=4,
                                           patch_size=(32, 32), batch_size=2), seed=0, name="tiny")


@pytest.fixture(scope="module")
def tiny_copy(untrained_tiny_model):
    """A private copy (per test module) of the untrained tiny model, for tests that change or save it."""
    return untrained_tiny_model.copy()


@pytest.fixture()
def data(tmp_path):
    """``tmp_path/data`` with images/ and masks/ (two simulated 64x64 pairs) and a user's own file beside
    them (``README.txt``, which no command may touch)."""
    import numpy as np

    from cellseg.images import write_image
    from cellseg.simulate import simulate_image

    root = tmp_path / "data"
    for k in range(2):
        img, lab = simulate_image(64, seed=k)
        write_image(root / "images" / f"im{k}.tif", img)
        write_image(root / "masks" / f"im{k}.tif", lab.astype(np.uint16))
    (root / "README.txt").write_text("my dataset, do not touch")
    return root


@pytest.fixture(scope="session")
def tiny_trained(easy_data, tiny_config):
    """A tiny model trained for 160 steps on easy simulated data (the TrainResult), trained once per run."""
    from cellseg.config import TrainConfig
    from cellseg.training import train

    (images, masks), _ = easy_data
    return train(images, masks, tiny_config, TrainConfig(epochs=2, steps_per_epoch=80, learning_rate=1e-3, seed=0),
                 model_name="tiny")


@pytest.fixture(scope="session")
def tiny_model_bytes(tiny_trained) -> bytes:
    """Zip bytes of the tiny trained model; load a private copy with ``cellseg.models.load_model``."""
    return tiny_trained.model.to_bytes()


# -- fixtures of the KNIME node tests (tests/test_knime_*.py) ------------------------------------


class RecordingExecutionContext:
    """Factory of execution contexts that record progress and cancel on request (portable pattern:
    subclass knime.extension.testing.TestingExecutionContext, override is_canceled/set_progress)."""

    @staticmethod
    def make(cancel_after: int | None = None, temp_dir: str | None = None):
        import knime.extension as knext
        import knime.extension.testing as ktest

        class Ctx(ktest.TestingExecutionContext):
            def __init__(self) -> None:
                super().__init__()
                self.progress: list[tuple[float, str | None]] = []
                self.cancel_after = cancel_after
                self.cancel_polls = 0

            def set_progress(self, progress: float, message: str | None = None) -> None:
                knext.ExecutionContext.set_progress(self, progress, message)  # validates like KNIME
                self.progress.append((progress, message))

            def is_canceled(self) -> bool:
                self.cancel_polls += 1
                return self.cancel_after is not None and len(self.progress) >= self.cancel_after

            def get_workflow_temp_dir(self) -> str:
                return temp_dir or super().get_workflow_temp_dir()

        return Ctx()


@pytest.fixture(scope="session")
def knime_ctx() -> type:
    """``knime_ctx.make(cancel_after=None)`` -> a recording TestingExecutionContext."""
    return RecordingExecutionContext


@pytest.fixture(scope="session")
def tiny_dataset() -> tuple[list, list]:
    """Three simulated 64x64 images with labels."""
    from cellseg.simulate import simulate_dataset

    return simulate_dataset(3, size=64, seed=0)


@pytest.fixture(scope="session")
def tiny_learner(tiny_dataset):
    """The StarDist Learner node trained ONCE on the tiny data (tiny model, 2 steps):
    ``(node, ctx, (model_port_object, history_table, view), configured (spec, schema))``."""
    import knime.extension.testing as ktest

    from knime_cells import image_df, table_of, tiny_learner_node

    images, labels = tiny_dataset
    table = table_of(image_df(images, labels).drop(columns="name"))
    node = tiny_learner_node(epochs=2, steps_per_epoch=1)
    configured = node.configure(ktest.TestingConfigurationContext(), table.schema)
    ctx = RecordingExecutionContext.make()
    outputs = node.execute(ctx, table)
    return node, ctx, outputs, configured


@pytest.fixture(scope="session")
def knime_model_bytes(tiny_learner) -> bytes:
    """Bundle bytes of the tiny model trained by the Learner node."""
    return tiny_learner[2][0].serialize()
