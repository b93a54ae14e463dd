"""Behaviour of the offline ``knime.extension`` stand-in (mirrors KNIME 5.x semantics)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellseg_knime import compat

compat.ensure_knime_extension()

import knime.extension as knext  # noqa: E402
import knime.extension.nodes as knodes  # noqa: E402
import knime.extension.parameter as kparam  # noqa: E402
import knime.extension.testing as ktest  # noqa: E402

pytestmark = pytest.mark.skipif(
    not compat.using_standin(), reason="tests the stand-in, real KNIME API present"
)


# ------------------------------------------------------------------ a toy extension
toy_category = knext.category(
    path="/community", level_id="toy", name="Toy", description="Toy nodes", icon="icons/toy.png"
)


class Mode(knext.EnumParameterOptions):
    FAST = ("Fast", "Quick and dirty.")
    SLOW = ("Slow", "Careful.")


@knext.parameter_group(label="Training", is_advanced=True)
class TrainingSettings:
    """Training hyper-parameters."""

    epochs = knext.IntParameter("Epochs", "Number of epochs.", 10, min_value=1, max_value=1000)
    learning_rate = knext.DoubleParameter("Learning rate", "Step size.", 3e-4, min_value=0.0)
    augment = knext.BoolParameter("Augment", "Use augmentation.", True, since_version="0.2.0")

    def validate(self, values: dict) -> None:
        if values["epochs"] > 500 and values["learning_rate"] > 0.1:
            raise ValueError("too aggressive")


class ModelSpec(knext.PortObjectSpec):
    def __init__(self, n_rays: int) -> None:
        self.n_rays = n_rays

    def serialize(self) -> dict:
        return {"n_rays": self.n_rays}

    @classmethod
    def deserialize(cls, data: dict) -> ModelSpec:
        return cls(data["n_rays"])


class ModelObject(knext.PortObject):
    def __init__(self, spec: ModelSpec, weights: bytes) -> None:
        super().__init__(spec)
        self.weights = weights

    def serialize(self) -> bytes:
        return self.weights

    @classmethod
    def deserialize(cls, spec: ModelSpec, storage: bytes) -> ModelObject:
        return cls(spec, storage)


model_port_type = knext.port_type("Toy model", ModelObject, ModelSpec, id="org.example.toy.Model")


@knext.node("Toy Node", knext.NodeType.LEARNER, "icons/toy.png", toy_category, id="org.example.toy.ToyNode")
@knext.input_table("Images", "Input images.")
@knext.output_table("Result", "Per-image result.")
@knext.output_port("Model", "The trained model.", model_port_type)
@knext.output_view("Preview", "A preview.")
class ToyNode(knext.PythonNode):
    column = knext.ColumnParameter("Column", "Value column.", port_index=0)
    mode = knext.EnumParameter("Mode", "Speed.", Mode.FAST.name, Mode)
    show_details = knext.BoolParameter("Details", "Show details.", False)
    threshold = knext.DoubleParameter("Threshold", "Cut-off.", 0.5, min_value=0.0, max_value=1.0).rule(
        knext.OneOf(show_details, [True]), knext.Effect.SHOW
    )
    name = knext.StringParameter("Name", "A name.", "model", enum=None)
    n_rays = knext.IntParameter("Rays", "Number of rays.", 32, min_value=3, is_advanced=True)
    training = TrainingSettings()

    @n_rays.validator
    def _check_rays(value: int) -> None:  # noqa: N805 - validator functions take only the value
        if value % 2:
            raise ValueError("n_rays must be even")

    def configure(self, config_context, schema):
        if self.column is None:
            raise knext.InvalidParametersError("Select a column")
        config_context.set_warning("configured")
        out = schema.append(knext.Column(knext.double(), "score"))
        return out, ModelSpec(self.n_rays), None

    def execute(self, exec_context, table):
        out = knext.BatchOutputTable.create(row_ids="keep")
        n = table.num_batches
        for i, batch in enumerate(table.batches()):
            if exec_context.is_canceled():
                raise RuntimeError("Execution canceled")
            df = batch.to_pandas()
            df["score"] = df[self.column] * self.training.learning_rate
            out.append(df)
            exec_context.set_progress((i + 1) / n, f"batch {i + 1}/{n}")
        return out, ModelObject(ModelSpec(self.n_rays), b"weights"), knext.view_html("<p>hi</p>")


def _input_table(n: int = 6) -> knext.Table:
    return knext.Table.from_pandas(
        pd.DataFrame({"value": np.arange(n, dtype=np.float64), "label": list("abcdef")[:n]})
    )


# ------------------------------------------------------------------ registration
def test_registry_category_and_node_id():
    assert toy_category == "/community/toy"
    assert any(c.to_dict()["level_id"] == "toy" for c in knodes._categories)
    entry = knodes._nodes["org.example.toy.ToyNode"]
    assert entry.name == "Toy Node" and entry.node_type == "Learner" and entry.category == "/community/toy"
    assert [p.type for p in entry.input_ports] == [knext.PortType.TABLE]
    assert [p.name for p in entry.output_ports] == ["Result", "Model"]
    assert entry.output_ports[1].type is model_port_type and model_port_type.id == "org.example.toy.Model"
    assert entry.views[0] == knext.ViewDeclaration("Preview", "A preview.")
    # without id=..., the id is the decorated class's __name__; the decorator returns a factory function
    assert not isinstance(ToyNode, type)
    node = entry.node_factory()
    assert node.input_ports == entry.input_ports and node.output_view.name == "Preview"


def test_default_id_is_class_name():
    @knext.node("Other", knext.NodeType.OTHER, "i.png", "/community/toy")
    @knext.output_table("Out", "out")
    class OtherNode(knext.PythonNode):
        def configure(self, ctx):
            return knext.Schema.from_columns([knext.Column(knext.string(), "x")])

        def execute(self, ctx):
            return knext.Table.from_pandas(pd.DataFrame({"x": ["a"]}))

    assert "OtherNode" in knodes._nodes
    assert knext.category("/community/", "x", "X", "d", "i.png") == "/community/x"


# ------------------------------------------------------------------ parameters
def test_parameter_defaults_set_and_validation():
    node = ToyNode()
    assert node.n_rays == 32 and node.mode == "FAST" and node.column is None and node.training.epochs == 10
    node.n_rays = 64
    node.training.epochs = 5
    assert node.n_rays == 64 and node.training.epochs == 5
    assert ToyNode().training.epochs == 10  # values are per instance
    with pytest.raises(ValueError):
        node.n_rays = 33  # custom validator (replaces the default range/type check)
    with pytest.raises(ValueError):
        node.threshold = 1.5
    with pytest.raises(TypeError):
        node.show_details = "yes"
    with pytest.raises(ValueError):
        node.mode = "MEDIUM"
    with pytest.raises(ValueError):
        node.training.epochs = 0
    with pytest.raises(RuntimeError):
        node.training = None


def test_extract_inject_validate_nested_dict():
    node = ToyNode()
    params = kparam.extract_parameters(node)
    assert params["model"]["training"] == {"epochs": 10, "learning_rate": 3e-4, "augment": True}
    assert params["model"]["n_rays"] == 32 and params["model"]["column"] is None

    settings = {
        "model": {
            **params["model"],
            "column": "value",
            "n_rays": 16,
            "training": {"epochs": 3, "learning_rate": 0.01},
        }
    }
    kparam.inject_parameters(node, settings, parameters_version="0.1.0")  # augment is newer -> default
    assert (
        node.column == "value"
        and node.n_rays == 16
        and node.training.epochs == 3
        and node.training.augment is True
    )
    kparam.inject_parameters(node, {"model": {"column": ""}})
    assert node.column is None  # "" means no column, as in KNIME

    kparam.validate_parameters(node, settings, "0.1.0")
    with pytest.raises(ValueError, match="missing"):
        kparam.validate_parameters(node, {"model": {"n_rays": 16}}, "0.1.0")
    bad = {"model": {**settings["model"], "training": {"epochs": 600, "learning_rate": 0.5, "augment": True}}}
    with pytest.raises(ValueError, match="aggressive"):
        kparam.validate_parameters(node, bad, "0.2.0")  # group validate() runs
    with pytest.raises(ValueError):
        kparam.inject_parameters(node, {"model": {"n_rays": 3}})
    kparam.inject_parameters(node, {"model": {"n_rays": 3}}, exclude_validations=True)
    assert node.n_rays == 3
    node.n_rays = 2  # a custom validator replaces the default min_value/max_value check (as in KNIME 5.x)
    assert node.n_rays == 2


def test_parameter_metadata_rules_and_specs():
    cls = type(ToyNode())  # ToyNode itself is the factory function returned by @knext.node
    threshold = cls.__dict__["threshold"]
    assert threshold._rule.effect is knext.Effect.SHOW
    assert threshold._rule.condition.subjects == [cls.__dict__["show_details"]]
    assert threshold._rule.condition.to_dict() == {"oneOf": [{"const": True}]}
    assert cls.__dict__["n_rays"]._is_advanced and cls.__dict__["training"]._is_advanced
    assert TrainingSettings.augment._since_version == knext.Version(0, 2, 0)
    assert knext.Version.parse_version("1.2.3") > knext.Version.parse_version("1.2.0")
    with pytest.raises(ValueError):
        knext.Version.parse_version("1.2")
    node = ToyNode()
    kparam.validate_specs(node, [_input_table().schema])
    with pytest.raises(ValueError):
        kparam.validate_specs(node, [])
    with pytest.raises(AttributeError):  # real KNIME 5.x bug: EnumParameter needs an explicit default_value
        knext.EnumParameter("M", "d", enum=Mode)


def test_group_validator_decorator_and_multiline(tmp_path: Path):
    @knext.parameter_group(label="G")
    class G:
        a = knext.IntParameter("A", "a", 1)
        text = knext.MultilineStringParameter("T", "t", "x\ny", number_of_lines=4)

    class Holder:
        g = G()

        @g.validator
        def _check(values):  # noqa: N805
            if values["a"] < 0:
                raise ValueError("negative")

    holder = Holder()
    assert holder.g.text == "x\ny"
    with pytest.raises(ValueError, match="negative"):
        kparam.validate_parameters(holder, {"model": {"g": {"a": -1, "text": ""}}})
    path_param = kparam.LocalPathParameter("P", "p")
    with pytest.raises(ValueError):
        path_param._validate(str(tmp_path / "missing"))
    path_param._validate(str(tmp_path))


# ------------------------------------------------------------------ configure / execute
def test_configure_and_execute_with_testing_contexts():
    node = knodes._nodes["org.example.toy.ToyNode"].node_factory()
    table = _input_table()
    cctx = ktest.TestingConfigurationContext()
    with pytest.raises(knext.InvalidParametersError):
        node.configure(cctx, table.schema)
    node.column = "value"
    out_schema, model_spec, view_spec = node.configure(
        cctx, table.schema
    )  # views are unwrapped, tuple -> list
    assert out_schema.column_names == ["value", "label", "score"]
    assert [c.ktype for c in out_schema] == [knext.double(), knext.string(), knext.double()]
    assert model_spec.serialize() == {"n_rays": 32} and view_spec is None
    assert cctx._warnings == ["configured"]

    table._batch_size = 4  # stand-in knob: two batches
    ectx = ktest.TestingExecutionContext()
    ectx.flow_variables["run"] = 1
    out, model, view = node.execute(ectx, table)
    assert out.num_batches == 2 and out.num_rows == 6
    df = out.to_pandas()
    assert list(df.index) == [f"Row{i}" for i in range(6)]
    assert np.allclose(df["score"], np.arange(6) * 3e-4)
    assert ectx._progress == [(0.5, "batch 1/2"), (1.0, "batch 2/2")]
    assert (
        model.spec.n_rays == 32
        and ModelObject.deserialize(model.spec, model.serialize()).weights == b"weights"
    )
    assert "<p>hi</p>" in view.html


def test_cancellation_and_progress_validation():
    node = knodes._nodes["org.example.toy.ToyNode"].node_factory()
    node.column = "value"
    ectx = ktest.TestingExecutionContext()
    ectx._canceled = True
    with pytest.raises(RuntimeError, match="canceled"):
        node.execute(ectx, _input_table())

    class CancelAfterFirst(
        ktest.TestingExecutionContext
    ):  # portable pattern (works with the real module too)
        def is_canceled(self) -> bool:
            return len(self._progress) >= 1

    table = _input_table()
    table._batch_size = 2
    with pytest.raises(RuntimeError):
        node.execute(CancelAfterFirst(), table)
    with pytest.raises(ValueError):
        ectx.set_progress(1.5)
    with pytest.raises(TypeError):
        ectx.set_progress("half")
    with pytest.raises(RuntimeError):
        ectx.get_workflow_temp_dir()


# ------------------------------------------------------------------ tables and schema
def test_table_row_ids_schema_and_slicing():
    img = Image.new("L", (4, 4))
    df = pd.DataFrame(
        {
            "i": np.array([1, 2], dtype=np.int64),
            "i32": np.array([1, 2], dtype=np.int32),
            "f": [0.5, 1.5],
            "b": [True, False],
            "s": ["x", "y"],
            "blob": [b"\x00", b"\x01"],
            "img": [img, img],
            "lst": [[1.0, 2.0], [3.0]],
        },
        index=[5, 7],
    )
    table = knext.Table.from_pandas(df)
    assert list(table.to_pandas().index) == ["Row5", "Row7"]
    assert list(knext.Table.from_pandas(df, row_ids="generate").to_pandas().index) == ["Row0", "Row1"]
    assert list(knext.Table.from_pandas(df, row_ids="keep").to_pandas().index) == ["5", "7"]
    types = {c.name: c.ktype for c in table.schema}
    assert types["i"] == knext.int64() and types["i32"] == knext.int32() and types["f"] == knext.double()
    assert types["b"] == knext.bool_() and types["s"] == knext.string() and types["blob"] == knext.blob()
    assert types["img"] == knext.logical(Image.Image) and "PNGImageValueFactory" in types["img"].logical_type
    assert types["lst"] == knext.list_(knext.double())
    assert table.num_rows == 2 and table.column_names[0] == "i" and table.shape == (8, 2)

    sliced = table[["s", "i"], 1:]
    assert sliced.to_pandas().to_dict() == {"s": {"Row7": "y"}, "i": {"Row7": 2}}
    arrow = table[["i", "s", "img"]].to_pyarrow()
    assert arrow.column_names == ["<RowID>", "i", "s", "img"]
    assert Image.open(io.BytesIO(arrow.column("img")[0].as_py())).size == (4, 4)
    back = knext.Table.from_pyarrow(arrow)
    assert list(back.to_pandas().index) == ["Row5", "Row7"]
    with pytest.raises(
        TypeError
    ):  # abstract (and its __init__ raises RuntimeError): use from_pandas/from_pyarrow
        knext.Table()


def test_schema_operations_and_types():
    schema = knext.Schema.from_columns([knext.Column(knext.int32(), "a"), knext.Column(knext.string(), "b")])
    assert schema.column_names == ["a", "b"] and [c.name for c in schema] == ["a", "b"]
    assert schema["b"].get() == knext.Column(knext.string(), "b")
    appended = schema.append(knext.Column(knext.blob(), "c")).get()
    assert appended.column_names == ["a", "b", "c"]
    assert schema.remove("a").get().column_names == ["b"]
    assert schema.insert(knext.Column(knext.bool_(), "z"), at=0).get().column_names == ["z", "a", "b"]
    assert knext.int64() is knext.int64() and knext.list_(knext.string()) == knext.list_(knext.string())
    assert knext.struct(knext.int32(), knext.blob()) != knext.struct(knext.int32())
    assert isinstance(knext.Column(Image.Image, "png").ktype, knext.LogicalType)
    with pytest.raises(TypeError):
        knext.logical(complex)
    with pytest.raises(ValueError):
        knext.Column(knext.string(), " ")


def test_batch_output_table_modes():
    batches = [pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"x": [3]})]
    gen = knext.BatchOutputTable.from_batches(iter(batches))
    assert gen.num_batches == 2 and list(gen.to_pandas().index) == ["Row0", "Row1", "Row2"]
    keep = knext.BatchOutputTable.create()
    keep.append(batches[0])
    with pytest.raises(ValueError, match="Duplicate RowIDs"):
        keep.append(pd.DataFrame({"x": [9]}))  # index 0 again -> RowID "0" twice
    with pytest.raises(ValueError):
        keep.append(pd.DataFrame({"y": [1]}, index=["r9"]))
    keep.append(knext.Table.from_pandas(pd.DataFrame({"x": [4]}, index=["r4"])))
    assert list(keep.to_pandas().index) == ["0", "1", "r4"]
    with pytest.raises(RuntimeError):
        knext.BatchOutputTable()


# ------------------------------------------------------------------ views, compat
def test_views():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    png_view = knext.view_matplotlib(fig)
    assert png_view.render().startswith(b"\x89PNG") and "data:image/png;base64," in png_view.html
    assert knext.view(png_view.render()).render() == png_view.render()
    html_view = knext.view_html("<!DOCTYPE html><p/>", render_fn=lambda: "<svg/>")
    assert html_view.render() == "<svg/>"
    with pytest.raises(ValueError):
        knext.view(object())


def test_compat_is_idempotent():
    assert compat.ensure_knime_extension() is False and compat.ensure_knime_extension() is False
    assert compat.using_standin()
    assert sys.path.count(str(compat.STANDIN_DIR)) == 1
    assert Path(knext.__file__).is_relative_to(compat.STANDIN_DIR)
