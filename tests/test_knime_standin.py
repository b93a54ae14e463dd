"""Behaviour of the offline ``knime.extension`` stand-in (mirrors KNIME 5.x semantics)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from cellseg_knime import compat

compat.ensure_knime_extension()

import knime.extension as knext  # noqa: E402
import knime.extension.nodes as knodes  # noqa: E402
import knime.extension.parameter as kparam  # noqa: E402
import knime.extension.testing as ktest  # noqa: E402
from knime.types.builtin import FSLocationValue  # noqa: E402

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


from toy_port import ToyObject as ModelObject  # noqa: E402
from toy_port import ToySpec as ModelSpec  # noqa: E402
from toy_port import toy_port as model_port_type  # noqa: E402


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
    assert threshold._rule.condition._subject is cls.__dict__["show_details"]
    assert threshold._rule.condition.to_dict(lambda p: "#/show_details", None) == {
        "scope": "#/show_details", "schema": {"oneOf": [{"const": True}]}}
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
    assert model_spec.serialize() == {"value": 32} and view_spec is None
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
        model.spec.value == 32
        and ModelObject.deserialize(model.spec, model.serialize()).payload == b"weights"
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
BINARY = "Data type '{}' in column '{}' is not supported in KNIME Python. Please use a different data type."
BIGGER = (
    "Tried writing a batch with a different size than the first batch. Only the last batch of a table can have "
    "a different size than the first batch."
)
AFTER_LAST = (
    "Tried writing a batch after a batch with a different size than the first batch. Only the last batch of a "
    "table can have a different size than the first batch."
)


def _types(table: object) -> dict:
    return {c.name: c.ktype for c in table.schema}


@knext.node("Probe", knext.NodeType.OTHER, "i.png", "/community/toy", id="org.example.toy.Probe")
class ProbeNode(knext.PythonNode):
    """Runs ``self.fn(*inputs)`` as its execute (the stand-in wraps it as KNIME's runtime would)."""

    fn = None

    def configure(self, ctx, *specs):
        return None

    def execute(self, ctx, *inputs):
        return self.fn(*inputs)


def _run_node(fn, *inputs):
    """``fn(*inputs)`` run as the execute of a node: input tables arrive as KNIME passes them, output tables
    get KNIME's checks."""
    node = ProbeNode()
    node.fn = fn
    return node.execute(ktest.TestingExecutionContext(), *inputs)


def _downstream(output: object) -> knext.Table:
    """The table a downstream node receives for ``output`` (a node passes it through)."""
    return _run_node(lambda t: t, output)


def test_table_row_ids_schema_and_slicing():
    img = Image.new("L", (4, 4))
    df = pd.DataFrame(
        {
            "i": np.array([1, 2], dtype=np.int64),
            "i32": np.array([1, 2], dtype=np.int32),
            "f": [0.5, 1.5],
            "b": [True, False],
            "s": ["x", "y"],
            "img": [img, img],
            "lst": [[1.0, 2.0], [3.0]],
        },
        index=[5, 7],
    )
    table = knext.Table.from_pandas(df)
    assert list(table.to_pandas().index) == ["Row5", "Row7"]
    types = _types(table)
    assert types["i"] == knext.int64() and types["i32"] == knext.int32() and types["f"] == knext.double()
    assert types["b"] == knext.bool_() and types["s"] == knext.string()
    assert types["img"] == knext.logical(Image.Image) and "PNGImageValueFactory" in types["img"].logical_type
    assert types["lst"] == knext.list_(knext.double())
    assert [str(t) for t in types.values()] == [
        "Number (Long Integer)", "Number (Integer)", "Number (Float)", "Boolean", "String", "PNG Image",
        "List (Collection of: Number (Float))",
    ]
    assert table.num_rows == 2 and table.column_names[0] == "i" and table.shape == (7, 2)
    out = table.to_pandas()
    assert out.index.name == "<RowID>" and str(out["s"].dtype) == "string" and out["i32"].dtype == np.int32

    sliced = table[["s", "i"], 1:]
    assert sliced.to_pandas().to_dict() == {"s": {"Row7": "y"}, "i": {"Row7": 2}}
    arrow = table[["i", "s", "img"]].to_pyarrow()
    assert arrow.column_names == ["<RowID>", "i", "s", "img"] and arrow.schema.field("img").type == types[
        "img"].to_pyarrow()
    back = knext.Table.from_pyarrow(arrow)
    assert list(back.to_pandas().index) == ["Row5", "Row7"] and _types(back)["img"] == knext.logical(Image.Image)
    with pytest.raises(NotImplementedError):  # as KNIME's Arrow tables
        table.append(table).get()
    with pytest.raises(TypeError):  # abstract (and its __init__ raises RuntimeError): use from_pandas/from_pyarrow
        knext.Table()


def test_schema_operations_and_types():
    schema = knext.Schema.from_columns([knext.Column(knext.int32(), "a"), knext.Column(knext.string(), "b")])
    assert schema.column_names == ["a", "b"] and [c.name for c in schema] == ["a", "b"]
    assert schema["b"].get() == knext.Column(knext.string(), "b")
    appended = schema.append(knext.Column(knext.blob(), "c")).get()  # blob: a schema type only
    assert appended.column_names == ["a", "b", "c"]
    assert schema.remove("a").get().column_names == ["b"]
    assert schema.insert(knext.Column(knext.bool_(), "z"), at=0).get().column_names == ["z", "a", "b"]
    assert knext.int64() is knext.int64() and knext.list_(knext.string()) == knext.list_(knext.string())
    assert knext.struct(knext.int32(), knext.blob()) != knext.struct(knext.int32())
    assert isinstance(knext.Column(Image.Image, "png").ktype, knext.LogicalType)
    with pytest.raises(ValueError):
        knext.Column(knext.string(), " ")


# -- rule 1: no binary data ----------------------------------------------------------------------
def test_binary_and_unsupported_columns_are_refused_with_knimes_message():
    with pytest.raises(ValueError, match=re.escape(BINARY.format("binary", "image"))):
        knext.Table.from_pandas(pd.DataFrame({"name": ["a"], "image": [b"\x89PNG"]}))
    with pytest.raises(ValueError, match=re.escape(BINARY.format("binary", "x"))):
        knext.Table.from_pyarrow(pa.table({"x": pa.array([b"a"], pa.binary())}))
    with pytest.raises(ValueError, match=re.escape(BINARY.format("large_binary", "x"))):  # knext.blob() data
        knext.Table.from_pyarrow(pa.table({"x": pa.array([b"a"], pa.large_binary())}))
    out = knext.BatchOutputTable.create()
    with pytest.raises(ValueError, match=re.escape(BINARY.format("binary", "image"))):
        out.append(pd.DataFrame({"image": [b"\x00"]}, index=["r0"]))
    with pytest.raises(ValueError, match=re.escape(BINARY.format("binary", "image"))):  # what a node returns
        _run_node(lambda: knext.Table.from_pandas(pd.DataFrame({"image": [b"\x00"]})))
    # other types KNIME cannot store fail the same way (KNIME has no 8/16-bit or unsigned integers)
    for dtype, arrow_name in (("uint8", "uint8"), ("int16", "int16"), ("uint16", "uint16"), ("uint32", "uint32")):
        with pytest.raises(ValueError, match=re.escape(BINARY.format(arrow_name, "n"))):
            knext.Table.from_pandas(pd.DataFrame({"n": np.array([1], dtype=dtype)}))
    with pytest.raises(ValueError, match=re.escape(BINARY.format("struct<a: int64>", "d"))):
        knext.Table.from_pandas(pd.DataFrame({"d": [{"a": 1}]}))
    # float32 is widened to double, as in KNIME
    assert _types(knext.Table.from_pandas(pd.DataFrame({"f": np.zeros(2, np.float32)})))["f"] == knext.double()


# -- rule 2: batch sizes -------------------------------------------------------------------------
def _frame(n: int, start: int = 0) -> pd.DataFrame:
    return pd.DataFrame({"x": np.arange(start, start + n)}, index=[f"r{i}" for i in range(start, start + n)])


def _append_all(sizes: list[int]) -> knext.BatchOutputTable:
    out = knext.BatchOutputTable.create()
    start = 0
    for n in sizes:
        out.append(_frame(n, start))
        start += n
    return out


def test_batch_sizes_follow_knimes_arrow_sink():
    for ok in ([2, 2, 1], [2, 2, 2], [2, 0], [2, 2, 0], [0], [3]):
        table = _downstream(_append_all(ok))
        assert table.num_rows == sum(ok) and [b.num_rows for b in table.batches()] == ok
    with pytest.raises(ValueError, match=re.escape(BIGGER)):
        _append_all([2, 3])
    with pytest.raises(ValueError, match=re.escape(BIGGER)):
        _append_all([0, 2])  # an empty first batch: every later batch is bigger
    for after_last in ([2, 1, 1], [2, 1, 2], [2, 0, 2]):
        with pytest.raises(ValueError, match=re.escape(AFTER_LAST)):
            _append_all(after_last)
    # a pyarrow table's record batches are written one by one
    out = knext.BatchOutputTable.create(row_ids="generate")
    out.append(pa.concat_tables([pa.table({"x": [1, 2]}), pa.table({"x": [3]})]))
    with pytest.raises(ValueError, match=re.escape(AFTER_LAST)):
        out.append(pa.table({"x": [4]}))
    # from_pyarrow: all batches equal but the last, which may be smaller
    chunked = pa.concat_tables([pa.table({"x": [1, 2]}), pa.table({"x": [3]})])
    assert [b.num_rows for b in _downstream(knext.Table.from_pyarrow(chunked)).batches()] == [2, 1]
    with pytest.raises(ValueError, match="last batch has size 2, but must not be bigger"):
        knext.Table.from_pyarrow(pa.concat_tables([pa.table({"x": [1]}), pa.table({"x": [1, 2]})]))
    with pytest.raises(ValueError, match="all batches of the table must have the same size"):
        knext.Table.from_pyarrow(pa.concat_tables([pa.table({"x": [1, 2]}), pa.table({"x": [1]}),
                                                   pa.table({"x": [1, 2]})]))


def test_batches_must_keep_the_first_batchs_columns():
    out = knext.BatchOutputTable.create()
    out.append(pd.DataFrame({"x": [1]}, index=["a"]))
    with pytest.raises(ValueError, match="different schema"):
        out.append(pd.DataFrame({"y": [1]}, index=["b"]))
    with pytest.raises(ValueError, match="different schema"):
        out.append(pd.DataFrame({"x": [1.5]}, index=["b"]))
    with pytest.raises(ValueError, match="different schema"):
        out.append(pd.DataFrame({"x": [None]}, index=["b"]))  # an untyped all-missing column is void
    strings = knext.BatchOutputTable.create()
    strings.append(pd.DataFrame({"s": ["a", "b"]}, index=["a", "b"]))
    strings.append(pd.DataFrame({"s": [None]}, index=["c"]))  # void after string: missing strings, as in KNIME
    assert _types(_downstream(strings)) == {"s": knext.string()}
    with pytest.raises(TypeError, match="Can only append batches"):
        strings.append([1])


# -- rule 3: PNG image and Path cells --------------------------------------------------------------
def test_png_and_path_types_are_registered_as_knime_registers_them():
    png = knext.logical(Image.Image)
    assert png.logical_type == '{"value_factory_class":"org.knime.core.data.image.png.PNGImageValueFactory"}'
    assert str(png) == "PNG Image" and png.value_type == "PIL.Image.Image"
    path = knext.logical(FSLocationValue)
    assert path.logical_type == (
        '{"value_factory_class":"org.knime.filehandling.core.data.location.FSLocationValueFactory"}'
    )
    assert str(path) == "Path" and path.storage_type == knext.struct(knext.string(), knext.string(), knext.string())
    loc = FSLocationValue("LOCAL", None, "/data/a.tif")
    assert (loc.fs_category, loc.fs_specifier, loc.path) == ("LOCAL", None, "/data/a.tif")
    assert loc.to_dict() == {"fs_category": "LOCAL", "fs_specifier": None, "path": "/data/a.tif"}
    assert repr(loc) == str(loc.to_dict())

    class MyImage(Image.Image):
        pass

    for unregistered in (complex, bytes, str, MyImage, Path):  # exact registered types only, as in KNIME
        with pytest.raises(TypeError, match="Could not find registered KNIME extension type"):
            knext.logical(unregistered)
    with pytest.raises(TypeError, match="is not a type"):
        knext.logical("PIL.Image.Image")
    from PIL.PngImagePlugin import PngImageFile

    # PngImageFile is a proxy (non-default) representation: its own type, but columns of it are PNG columns
    assert knext.logical(PngImageFile) != png and "proxy" in str(knext.logical(PngImageFile))


def test_png_cells_round_trip_bit_exact_and_path_cells_as_fslocation():
    grey16 = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000).astype(np.uint16)
    rgb = np.random.default_rng(0).integers(0, 255, (3, 4, 3), dtype=np.uint8)
    im16 = Image.fromarray(grey16)
    assert im16.mode == "I;16"
    locs = [FSLocationValue("LOCAL", None, "/data/a.tif"), None]

    def make():
        return knext.Table.from_pandas(pd.DataFrame({"image": [im16, Image.fromarray(rgb)], "path": locs, "n": [1, 2]}))

    table = _downstream(_run_node(make))
    types = _types(table)
    assert types == {"image": knext.logical(Image.Image), "path": knext.logical(FSLocationValue), "n": knext.int64()}
    df = table.to_pandas()
    first, second = list(df["image"])  # cells are read column by column
    assert first.mode == "I;16" and np.array_equal(np.asarray(first), grey16) and np.asarray(first).dtype == np.uint16
    assert second.mode == "RGB" and np.array_equal(np.asarray(second), rgb)
    assert type(first).__name__ == "PngImageFile"  # what PIL.Image.open of the PNG bytes returns
    assert isinstance(df["path"].iloc[0], FSLocationValue) and df["path"].iloc[0].to_dict() == locs[0].to_dict()
    assert df["path"].iloc[1] is None
    with pytest.raises(ValueError):  # as in KNIME: image cells cannot become one numpy array
        df.values  # noqa: B018
    # the types survive to_pandas -> from_pandas, row filters that leave no row, batches() and copies
    assert _types(knext.Table.from_pandas(df)) == types
    assert _types(knext.Table.from_pandas(df[df["n"] > 5])) == types
    assert _types(knext.Table.from_pandas(pd.concat([df, df.iloc[:0]]).set_axis(["a", "b"]))) == types
    assert [_types(b) for b in table.batches()] == [types]
    with pytest.raises(OSError, match="cannot write mode F as PNG"):  # Pillow's error, as in KNIME
        knext.Table.from_pandas(pd.DataFrame({"image": [Image.fromarray(np.zeros((2, 2), np.float32))]}))
    with pytest.raises(AttributeError):  # a Path cell needs an FSLocationValue
        knext.Table.from_pandas(pd.DataFrame({"p": ["/a"]}).astype({"p": knext.logical(FSLocationValue).to_pandas()}))


# -- rule 4: empty tables --------------------------------------------------------------------------
def test_empty_tables_need_typed_columns():
    untyped = knext.Table.from_pandas(pd.DataFrame(columns=["name", "image"]))  # object columns without cells
    assert _types(untyped) == {"name": knext.null(), "image": knext.null()}  # void columns, as in KNIME
    assert _types(knext.Table.from_pandas(pd.DataFrame({"image": [None, None]}))) == {"image": knext.null()}
    png, path = knext.logical(Image.Image), knext.logical(FSLocationValue)
    expected = {"name": knext.string(), "n": knext.int64(), "i": knext.int32(), "f": knext.double(),
                "b": knext.bool_(), "image": png, "path": path}
    typed = pd.DataFrame({
        "name": pd.Series([], dtype="string"), "n": pd.Series([], dtype="int64"),
        "i": pd.Series([], dtype="int32"), "f": pd.Series([], dtype="float64"), "b": pd.Series([], dtype="bool"),
        "image": pd.Series([], dtype=png.to_pandas()), "path": pd.Series([], dtype=path.to_pandas()),
    })
    assert _types(knext.Table.from_pandas(typed)) == expected
    arrow = pa.schema([("name", pa.string()), ("n", pa.int64()), ("i", pa.int32()), ("f", pa.float64()),
                       ("b", pa.bool_()), ("image", png.to_pyarrow()), ("path", path.to_pyarrow())])
    assert _types(knext.Table.from_pyarrow(arrow.empty_table())) == expected
    out = knext.BatchOutputTable.create()
    out.append(typed)
    received = _downstream(_run_node(lambda: out))
    assert received.num_rows == 0 and _types(received) == expected
    with pytest.raises(ValueError, match="has no batch"):  # KNIME cannot read an output without a batch
        _run_node(lambda: knext.BatchOutputTable.create())


# -- rule 5: RowIDs --------------------------------------------------------------------------------
def _ids(table: knext.Table) -> list:
    return table.to_pyarrow().column(0).to_pylist()


def test_row_ids_as_knime_makes_them():
    ints = pd.DataFrame({"x": [1, 2]}, index=[5, 7])
    assert _ids(knext.Table.from_pandas(ints)) == ["Row5", "Row7"]
    assert _ids(knext.Table.from_pandas(ints, row_ids="keep")) == ["5", "7"]
    assert _ids(knext.Table.from_pandas(ints, row_ids="generate")) == ["Row0", "Row1"]
    strings = pd.DataFrame({"x": [1, 2]}, index=["a", "b"])
    assert _ids(knext.Table.from_pandas(strings)) == ["a", "b"]
    assert _ids(knext.Table.from_pandas(pd.DataFrame({"x": [1]}, index=[0.5]))) == ["0.5"]
    with pytest.raises(ValueError, match="row_ids must be one of"):
        knext.Table.from_pandas(ints, row_ids="none")
    plain = pa.table({"x": [1, 2]})
    assert _ids(knext.Table.from_pyarrow(plain)) == ["Row0", "Row1"]
    assert _ids(knext.Table.from_pyarrow(plain, row_ids="generate")) == ["Row0", "Row1"]
    with pytest.raises(TypeError, match="The first column must contain unique row identifiers of type 'string'"):
        knext.Table.from_pyarrow(plain, row_ids="keep")
    numbered = knext.Table.from_pyarrow(pa.table({"<RowID>": [3, 4], "x": [1, 2]}))
    assert _ids(numbered) == ["Row3", "Row4"] and numbered.column_names == ["x"]
    named = knext.Table.from_pyarrow(pa.table({"id": ["a", "b"], "x": [1, 2]}), row_ids="keep")
    assert _ids(named) == ["a", "b"] and named.column_names == ["x"]
    with pytest.raises(ValueError, match="Duplicate column names"):
        knext.Table.from_pandas(pd.DataFrame({"<RowID>": ["a"], "x": [1]}))
    # RowIDs are strings; to_pandas() has them as index
    assert pa.types.is_string(knext.Table.from_pandas(ints).to_pyarrow().schema.field(0).type)
    assert list(knext.Table.from_pandas(ints).to_pandas().index) == ["Row5", "Row7"]


def test_duplicate_row_ids_fail_output_tables_only():
    dup = pd.DataFrame({"x": [1, 2]}, index=["a", "a"])
    assert _ids(knext.Table.from_pandas(dup)) == ["a", "a"]  # allowed in a table that a node only uses
    with pytest.raises(ValueError, match=re.escape('Encountered duplicate row ID "a"')):
        _run_node(lambda: knext.Table.from_pandas(dup))
    out = knext.BatchOutputTable.create(row_ids="keep")
    out.append(pd.DataFrame({"x": [1, 2]}, index=["a", "b"]))
    with pytest.raises(ValueError, match=re.escape('Encountered duplicate row ID "b"')):
        out.append(pd.DataFrame({"x": [3]}, index=["b"]))
    generated = knext.BatchOutputTable.from_batches(iter([_frame(2), _frame(2), _frame(1)]))  # row_ids="generate"
    assert _ids(_downstream(generated)) == [f"Row{i}" for i in range(5)]


def test_batches_only_on_tables_passed_to_execute():
    table = _input_table()
    with pytest.raises(RuntimeError, match="only allowed for unmodified tables"):
        list(table.batches())
    assert not hasattr(table, "num_batches")
    table._batch_size = 4  # stand-in knob: the batches it arrives in
    assert _run_node(lambda t: [b.num_rows for b in t.batches()], table) == [4, 2]
    assert _run_node(lambda t: t.num_batches, table) == 2


def test_batch_output_table_modes():
    gen = knext.BatchOutputTable.from_batches(iter([pd.DataFrame({"x": [1, 2]}), pd.DataFrame({"x": [3]})]))
    assert gen.num_batches == 2 and list(gen.to_pandas().index) == ["Row0", "Row1", "Row2"]
    keep = knext.BatchOutputTable.create()
    keep.append(pd.DataFrame({"x": [1]}, index=["r0"]))
    keep.append(knext.Table.from_pandas(pd.DataFrame({"x": [4]}, index=["r4"])))
    assert list(keep.to_pandas().index) == ["r0", "r4"] and keep.num_rows == 2
    with pytest.raises(ValueError, match=re.escape('row_ids must be one of ["keep", "generate"]')):
        knext.BatchOutputTable.create(row_ids="auto")
    with pytest.raises(RuntimeError):
        knext.BatchOutputTable()


# -- rule 6: port types ----------------------------------------------------------------------------
def test_port_types_register_like_knimes_backend():
    assert knodes.get_port_type_for_id("org.example.toy.Model") is model_port_type
    assert knodes.get_port_type_for_spec_type(ModelSpec) is model_port_type
    assert knodes.has_port_type_for_id("org.example.toy.Model") and not knodes.has_port_type_for_id("nope")
    with pytest.raises(ValueError, match="There is already a port type with the provided object class"):
        knext.port_type("Again", ModelObject, ModelSpec, id="org.example.toy.Other")

    class OtherSpec(ModelSpec):
        pass

    class OtherObject(ModelObject):
        pass

    with pytest.raises(ValueError, match="There is already a port type with the provided id"):
        knext.port_type("Clash", OtherObject, OtherSpec, id="org.example.toy.Model")
    with pytest.raises(KeyError):
        knodes.get_port_type_for_id("org.example.toy.Nope")
    default = knext.port_type("Default id", OtherObject, OtherSpec)
    assert default.id.endswith("test_port_types_register_like_knimes_backend.<locals>.OtherObject")



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
