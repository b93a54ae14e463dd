"""Example KNIME workflows: the generator, the headless runner (toy nodes and the real ones) and named errors."""

from __future__ import annotations

import dataclasses
import io
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cellseg_knime.compat import ensure_knime_extension

ensure_knime_extension()

import knime.extension as knext  # noqa: E402

from cellseg_knime import workflows as wf  # noqa: E402
from cellseg_knime.workflows import Entry, NodeDef, WorkflowDef, WorkflowError, c  # noqa: E402
from cellseg_knime.workflows import cli as wf_cli  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = ("retrain_stardist", "train_simulated", "segment_large_image", "transfer_learning_eval")

# =================================================================================================
# A toy extension: a source, a model learner (custom port), a predictor (batches, PNG image cells), a sink
# =================================================================================================


from toy_port import ToyObject as ToyModel  # noqa: E402
from toy_port import ToySpec as ToyModelSpec  # noqa: E402
from toy_port import toy_port  # noqa: E402


@knext.parameter_group(label="Noise")
class NoiseSettings:
    sigma = knext.DoubleParameter("Sigma", "Noise level.", 0.5, min_value=0.0)
    enabled = knext.BoolParameter("Enabled", "Add noise.", False)


@knext.node("Toy Source", knext.NodeType.SOURCE, "icon.png", "/community/wftoy", id="wf_toy_source")
@knext.output_table("Numbers", "Numbers.")
class ToySource:
    n_rows = knext.IntParameter("Rows", "Number of rows.", 3, min_value=1, max_value=1000)
    prefix = knext.StringParameter("Prefix", "Row name prefix.", "r")
    noise = NoiseSettings()

    def configure(self, ctx: Any) -> Any:
        return knext.Schema.from_columns([knext.Column(knext.string(), "name"), knext.Column(knext.double(), "x")])

    def execute(self, ctx: Any) -> Any:
        df = pd.DataFrame({"name": [f"{self.prefix}{i}" for i in range(self.n_rows)],
                           "x": [float(i) + (self.noise.sigma if self.noise.enabled else 0.0)
                                 for i in range(self.n_rows)]})
        ctx.set_progress(1.0, "made rows")
        return knext.Table.from_pandas(df)


@knext.node("Toy Learner", knext.NodeType.LEARNER, "icon.png", "/community/wftoy", id="wf_toy_learner")
@knext.input_table("Numbers", "Numbers.")
@knext.output_port("Model", "A factor.", toy_port)
class ToyLearner:
    factor = knext.DoubleParameter("Factor", "Multiply by.", 2.0)

    def configure(self, ctx: Any, schema: Any) -> Any:
        return ToyModelSpec(self.factor)

    def execute(self, ctx: Any, table: Any) -> Any:
        ctx.flow_variables["toy_rows"] = table.num_rows
        ctx.flow_variables["toy_data_area"] = ctx.get_workflow_data_area_dir()
        Path(ctx.get_workflow_temp_dir(), "learner.tmp").write_text("scratch")  # the workflow's temp folder
        return ToyModel(ToyModelSpec(self.factor))


def toy_image(i: int) -> Image.Image:
    """A 16-bit grey image (values above 255: a PNG cell must keep all 16 bits)."""
    return Image.fromarray(np.arange(20, dtype=np.uint16).reshape(4, 5) * 1000 + i)


@knext.node("Toy Apply", knext.NodeType.PREDICTOR, "icon.png", "/community/wftoy", id="wf_toy_apply")
@knext.input_port("Model", "A factor.", toy_port)
@knext.input_table("Numbers", "Numbers.")
@knext.output_table("Scaled", "Scaled numbers with a PNG image cell.")
class ToyApply:
    def configure(self, ctx: Any, spec: Any, schema: Any) -> Any:
        assert isinstance(spec, ToyModelSpec)
        return schema.append(knext.Column(knext.double(), "y")).append(
            knext.Column(knext.logical(Image.Image), "image"))

    def execute(self, ctx: Any, model: Any, table: Any) -> Any:
        out = knext.BatchOutputTable.create(row_ids="keep")
        for batch in table.batches():
            df = batch.to_pandas()
            df["y"] = df["x"] * model.spec.value
            df["image"] = [toy_image(int(n[1:])) for n in df["name"]]
            out.append(df)
        return out


@knext.node("Toy Writer", knext.NodeType.SINK, "icon.png", "/community/wftoy", id="wf_toy_writer")
@knext.input_table("Table", "To write.")
class ToyWriter:
    path = knext.StringParameter("Path", "CSV file (relative: in the output folder).", "written/table.csv")

    def configure(self, ctx: Any, schema: Any) -> None:
        if not self.path:
            raise knext.InvalidParametersError("no path")

    def execute(self, ctx: Any, table: Any) -> None:
        Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        table.to_pandas().drop(columns=["image"]).to_csv(self.path)


TOY = wf.Extension("org.example.wftoy", "0.2.0", None,
                   frozenset({"wf_toy_source", "wf_toy_learner", "wf_toy_apply", "wf_toy_writer"}))

TOY_DEF = WorkflowDef(
    folder="toy", title="Toy", description="A toy workflow.",
    nodes=[NodeDef(1, "wf_toy_source", {"n_rows": 4, "noise.sigma": 1}, annotation="numbers"),
           NodeDef(2, "wf_toy_learner"), NodeDef(3, "wf_toy_apply"), NodeDef(4, "wf_toy_writer")],
    connections=[c(1, 0, 2, 0), c(2, 0, 3, 0), c(1, 0, 3, 1), c(3, 0, 4, 0)],
    notes="toy notes\nsecond line",
)


@pytest.fixture
def toy_wf(tmp_path: Path) -> Path:
    return wf.write_workflow(TOY_DEF, tmp_path, TOY)


def _set_entry(settings: Path, key: str, new_line: str | None) -> None:
    lines = settings.read_text().splitlines()
    idx = next(i for i, line in enumerate(lines) if f'key="{key}"' in line)
    if new_line is None:
        del lines[idx]
    else:
        lines[idx] = new_line
    settings.write_text("\n".join(lines) + "\n")


# -- generator -------------------------------------------------------------------------------------


def test_toy_files_are_knime_xmlconfig(toy_wf: Path) -> None:
    flow = wf.read_config(toy_wf / "workflow.knime")
    assert flow["version"] == Entry("xstring", wf.KNIME_VERSION)
    assert flow["annotations"]["annotation_0"]["text"].value == "toy notes\nsecond line"
    assert "%%00010" in (toy_wf / "workflow.knime").read_text()  # KNIME's escape of a newline
    conns = {(x["sourceID"].python(), x["sourcePort"].python(), x["destID"].python(), x["destPort"].python())
             for x in flow["connections"].values()}
    assert conns == {(1, 1, 2, 1), (2, 1, 3, 1), (1, 1, 3, 2), (3, 1, 4, 1)}  # data ports count from 1
    settings = wf.read_config(toy_wf / "Toy Source (#1)" / "settings.xml")
    assert settings["factory"].value == wf.PYTHON_NODE_FACTORY
    assert settings["factory_settings"]["extension_id"].value == "org.example.wftoy"
    assert settings["factory_settings"]["node_id"].value == "wf_toy_source"
    model = settings["model"]
    assert model["json-type_Internals"] == Entry("xstring", "OBJECT")
    assert model["extension_version_Internals"] == Entry("xstring", "0.2.0")
    assert model["n_rows"] == Entry("xint", "4") and model["prefix"] == Entry("xstring", "r")
    assert model["noise"] == {"json-type_Internals": Entry("xstring", "OBJECT"), "sigma": Entry("xdouble", "1.0"),
                              "enabled": Entry("xboolean", "false")}
    assert settings["nodeAnnotation"]["text"].value == "numbers"


def test_generator_rejects_bad_definitions(tmp_path: Path) -> None:
    bad = [
        (WorkflowDef("b1", "t", "d", [NodeDef(1, "nope")], []), "unknown node id 'nope'"),
        (WorkflowDef("b2", "t", "d", [NodeDef(1, "wf_toy_source", {"n_rowz": 2})], []), "no parameter 'n_rowz'"),
        (WorkflowDef("b3", "t", "d", [NodeDef(1, "wf_toy_source", {"n_rows": "x"})], []), "not a valid int"),
        (WorkflowDef("b4", "t", "d", [NodeDef(1, "wf_toy_source", {"n_rows": 0})], []), "'n_rows' = 0 is invalid"),
        (WorkflowDef("b5", "t", "d", [NodeDef(1, "wf_toy_source"), NodeDef(2, "wf_toy_apply")],
                     [c(1, 0, 2, 0), c(1, 0, 2, 1)]), "does not fit input 0"),
        (WorkflowDef("b6", "t", "d", [NodeDef(1, "wf_toy_learner")], []), "needs exactly one connection"),
    ]
    for defn, message in bad:
        with pytest.raises(WorkflowError, match=message):
            wf.write_workflow(defn, tmp_path, TOY)


def test_xmlconfig_roundtrip(tmp_path: Path) -> None:
    cfg = {"a": Entry("xstring", "50%% & <x>\t\"q\""), "b": Entry("xstring", None), "g": {"i": Entry("xint", "3")},
           "e": {}}
    wf.write_config(tmp_path / "c.xml", "c.xml", cfg)
    assert wf.read_config(tmp_path / "c.xml") == cfg
    (tmp_path / "bad.xml").write_text("<config key='x'/>")
    with pytest.raises(WorkflowError, match="not a KNIME XMLConfig"):
        wf.read_config(tmp_path / "bad.xml")


# -- runner on the toy workflow --------------------------------------------------------------------


def test_toy_run_outputs_overrides_and_progress(toy_wf: Path, tmp_path: Path) -> None:
    lines: list[str] = []
    out = tmp_path / "out"
    result = wf.run_workflow(toy_wf, extension=TOY, out=out, overrides=["numbers.noise.enabled=true", "#2.factor=3",
                                                     "Toy Writer.path=w/t.csv"], log=lines.append)
    scaled = result.tables[(3, 0)]
    assert list(scaled["y"]) == [3.0, 6.0, 9.0, 12.0]  # (i + sigma) * 3
    assert (out / "w" / "t.csv").is_file()  # the sink's relative path lands in the output folder
    csv = pd.read_csv(out / "3_toy_apply" / "port1_scaled.csv")
    assert list(csv.columns) == ["RowID", "name", "x", "y", "image"]
    # a PNG image cell: a PNG file in the node's folder, the CSV holding its relative path; bit-exact
    assert list(csv["image"]) == [f"port1_scaled_files/image/Row{k}.png" for k in range(4)]
    for k in range(4):
        with Image.open(out / "3_toy_apply" / csv["image"][k]) as png:
            assert np.array_equal(np.asarray(png), np.asarray(toy_image(k)))
    assert isinstance(scaled["image"].iloc[0], Image.Image)  # result.tables keeps the cells themselves
    assert (out / "2_toy_learner" / "port1_model.bin").read_bytes() == b"3.0"
    assert any("[3/4] Toy Apply (#3): done in" in line for line in lines)
    assert any("[1/4] Toy Source (#1): 100%  made rows" in line for line in lines)
    flow = {"toy_rows": 4, "toy_data_area": str(out / "data")}  # the data area as in KNIME: <workflow>/data
    assert result.runs[2].flow_variables == flow
    assert result.runs[3].flow_variables == flow  # flow variables travel downstream
    assert (out / "run.json").is_file()

    pq = wf.run_workflow(toy_wf, extension=TOY, out=tmp_path / "pq", fmt="parquet", quiet=True, log=lines.append)
    table = pd.read_parquet(tmp_path / "pq" / "3_toy_apply" / "port1_scaled.parquet")
    with Image.open(io.BytesIO(table["image"][1])) as png:  # Parquet: the PNG bytes
        assert np.array_equal(np.asarray(png), np.asarray(toy_image(1)))
    assert len(pq.order) == 4

    knwf = wf.write_knwf(toy_wf, tmp_path / "toy.knwf")
    assert zipfile.ZipFile(knwf).namelist()[0].startswith("toy/")
    assert wf.run_workflow(knwf, extension=TOY, out=tmp_path / "k", quiet=True, log=lines.append).tables[(1, 0)].shape == (4, 2)


def _break_unknown_id(w: Path) -> None:
    _set_entry(w / "Toy Learner (#2)" / "settings.xml", "node_id",
               '        <entry key="node_id" type="xstring" value="no_such_node"/>')


def _break_factory(w: Path) -> None:
    _set_entry(w / "Toy Learner (#2)" / "settings.xml", "factory",
               '    <entry key="factory" type="xstring" value="org.knime.base.node.Foo"/>')


def _break_missing(w: Path) -> None:
    _set_entry(w / "Toy Learner (#2)" / "settings.xml", "factor", None)


def _break_mistyped(w: Path) -> None:
    _set_entry(w / "Toy Source (#1)" / "settings.xml", "n_rows",
               '        <entry key="n_rows" type="xstring" value="4"/>')


def _break_range(w: Path) -> None:
    _set_entry(w / "Toy Source (#1)" / "settings.xml", "n_rows", '        <entry key="n_rows" type="xint" value="0"/>')


def _add_connection(w: Path, src: int, dst: int, dport: int) -> None:
    text = (w / "workflow.knime").read_text()
    extra = (f'        <config key="connection_9">\n            <entry key="sourceID" type="xint" value="{src}"/>\n'
             f'            <entry key="destID" type="xint" value="{dst}"/>\n'
             '            <entry key="sourcePort" type="xint" value="1"/>\n'
             f'            <entry key="destPort" type="xint" value="{dport}"/>\n        </config>\n')
    marker = '    <config key="connections">\n'
    (w / "workflow.knime").write_text(text.replace(marker, marker + extra))


def _break_cycle(w: Path) -> None:
    text = (w / "workflow.knime").read_text()
    # the learner (#2) takes its input from the apply node (#3) instead of the source: #2 -> #3 -> #2
    old = ('<entry key="sourceID" type="xint" value="1"/>\n            <entry key="destID" type="xint" value="2"/>')
    new = ('<entry key="sourceID" type="xint" value="3"/>\n            <entry key="destID" type="xint" value="2"/>')
    assert old in text
    (w / "workflow.knime").write_text(text.replace(old, new))


def _break_unconnected(w: Path) -> None:
    import re

    text = (w / "workflow.knime").read_text()
    block = r'        <config key="connection_\d+">\n(?:(?!        </config>).*\n)*?.*"destID" type="xint" value="4".*\n' \
        r'(?:.*\n)*?        </config>\n'
    new, n = re.subn(block, "", text, count=1)
    assert n == 1
    (w / "workflow.knime").write_text(new)


@pytest.mark.parametrize("breaker, message", [
    (_break_unknown_id, r"node 'Toy Learner' \(#2\): unknown node id 'no_such_node'"),
    (_break_factory, r"node 'Toy Learner' \(#2\): unknown node factory 'org.knime.base.node.Foo'"),
    (_break_missing, r"node 'Toy Learner' \(#2\): parameter 'factor' is missing"),
    (_break_mistyped, r"node 'Toy Source' \(#1\): parameter 'n_rows' is stored as xstring but the node declares xint"),
    (_break_range, r"node 'Toy Source' \(#1\): parameter 'n_rows' = 0 is invalid"),
    (lambda w: _add_connection(w, 3, 99, 1), r"dangling connection connection_9: node 'Toy Apply' \(#3\) is "
                                             r"connected to node #99"),
    (_break_cycle, r"cycle through node\(s\) 'Toy Learner' \(#2\), 'Toy Apply' \(#3\)"),
    (_break_unconnected, r"node 'Toy Writer' \(#4\): input port 1 \('Table'\) is not connected"),
    (lambda w: shutil.rmtree(w / "Toy Apply (#3)"), r"node #3 \(Toy Apply \(#3\)/settings.xml\): file not found"),
])
def test_malformed_workflows_name_the_node(toy_wf: Path, tmp_path: Path, breaker: Any, message: str) -> None:
    breaker(toy_wf)
    with pytest.raises(WorkflowError, match=message):
        wf.run_workflow(toy_wf, extension=TOY, out=tmp_path / "out", quiet=True, log=lambda line: None)


@pytest.mark.parametrize("override, message", [
    ("Toy Source.n_rowz=3", r"node 'Toy Source' \(#1\): no parameter 'n_rowz'"),
    ("Toy Source.noise=3", r"'noise' is a parameter group; set one of noise.sigma, noise.enabled"),
    ("#1.noise.sigma=abc", r"node 'Toy Source' \(#1\): parameter 'noise.sigma': 'abc' is not a valid double"),
    ("#1.n_rows=-1", r"parameter 'n_rows' = -1 is invalid"),
    ("Nobody.x=1", r"no node of that name"),
    ("#7.x=1", r"no node #7"),
])
def test_bad_overrides_name_the_node(toy_wf: Path, tmp_path: Path, override: str, message: str) -> None:
    with pytest.raises(WorkflowError, match=message):
        wf.run_workflow(toy_wf, extension=TOY, out=tmp_path / "out", overrides=[override], quiet=True, log=lambda line: None)


def test_node_errors_during_execution_name_the_node(toy_wf: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    with pytest.raises(WorkflowError, match=r"node 'Toy Writer' \(#4\): configure failed: no path"):
        wf.run_workflow(toy_wf, extension=TOY, out=tmp_path / "o", overrides=["Toy Writer.path="], quiet=True, log=lambda x: None)
    # execute fails after the learner wrote into the workflow's temp folder (the path runs through a file)
    knwf = wf.write_knwf(toy_wf, tmp_path / "toy.knwf")
    (tmp_path / "o2").mkdir()
    (tmp_path / "o2" / "run.txt").write_text("a file")
    with pytest.raises(WorkflowError, match=r"node 'Toy Writer' \(#4\): execute failed: FileExistsError"):
        wf.run_workflow(knwf, extension=TOY, out=tmp_path / "o2", overrides=["Toy Writer.path=run.txt/t.csv"],
                        quiet=True, log=lambda x: None)
    assert list(temp.iterdir()) == []  # no temporary folders left behind (workflow temp, unpacked .knwf)


def test_write_table_cells(tmp_path: Path) -> None:
    """Cells KNIME gives Python nodes: PNG image cells -> PNG files, Path cells -> their path, lists -> JSON."""
    try:
        from knime.types.builtin import FSLocationValue
    except ImportError:  # an API without Path cells: a value of the same shape

        class FSLocationValue:  # type: ignore[no-redef]
            def __init__(self, fs_category: str, fs_specifier: str | None, path: str) -> None:
                self.fs_category, self.fs_specifier, self.path = fs_category, fs_specifier, path

    df = pd.DataFrame({"image": [toy_image(0), None, toy_image(2)],
                       "file": [FSLocationValue("LOCAL", None, "/data/a.tif"), None, "/data/c.tif"],
                       "tags": [["a", "b"], None, []], "n": [1, 2, 3]},
                      index=pd.Index(["r 1", "r_1", "r2"]))  # two RowIDs with the same file name
    files = wf.write_table(df, tmp_path / "port1_t", "csv")
    csv = pd.read_csv(tmp_path / "port1_t.csv", keep_default_na=False)
    assert list(csv["RowID"]) == ["r 1", "r_1", "r2"]
    assert list(csv["image"]) == ["port1_t_files/image/r_1.png", "", "port1_t_files/image/r2.png"]
    assert list(csv["file"]) == ["/data/a.tif", "", "/data/c.tif"]
    assert list(csv["tags"]) == ['["a", "b"]', "", "[]"]
    assert files == [tmp_path / "port1_t.csv", tmp_path / "port1_t_files/image/r_1.png",
                     tmp_path / "port1_t_files/image/r2.png"]
    with Image.open(tmp_path / "port1_t_files/image/r2.png") as png:
        assert np.array_equal(np.asarray(png), np.asarray(toy_image(2)))
    wf.write_table(df, tmp_path / "port1_t", "parquet")
    table = pd.read_parquet(tmp_path / "port1_t.parquet")
    assert list(table["file"]) == ["/data/a.tif", None, "/data/c.tif"] and table["image"][1] is None


def test_cli_exit_status_and_listing(toy_wf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    from cellseg.cli import main

    monkeypatch.setattr(wf_cli, "load_extension", lambda root=None: TOY)
    assert main(["run-workflow", str(toy_wf), "--list"]) == 0
    assert "noise.sigma = 1.0  (double)" in capsys.readouterr().out
    assert main(["-q", "run-workflow", str(toy_wf), "--out", str(tmp_path / "o"), "--set", "#1.prefix=z"]) == 0
    assert main(["run-workflow", "--out", str(tmp_path / "o1"), "--format", "parquet", "--", str(toy_wf)]) == 0
    assert (tmp_path / "o1" / "3_toy_apply" / "port1_scaled.parquet").is_file()
    with pytest.raises(SystemExit) as exit_info:  # `cellseg run-workflow --help`: the KNIME side's help
        main(["run-workflow", "--help"])
    assert exit_info.value.code == 0 and "usage: cellseg run-workflow [-h]" in capsys.readouterr().out
    _break_mistyped(toy_wf)
    assert main(["-q", "run-workflow", str(toy_wf), "--out", str(tmp_path / "o2")]) == 2
    assert "cellseg: error: node 'Toy Source' (#1): parameter 'n_rows'" in capsys.readouterr().err
    # the same through the `cellseg-knime` entry point
    assert wf_cli.main(["-q", "run-workflow", str(toy_wf), "--out", str(tmp_path / "o3")]) == 2
    assert "cellseg-knime: error: node 'Toy Source' (#1): parameter 'n_rows'" in capsys.readouterr().err


# =================================================================================================
# The example workflows with the real nodes
# =================================================================================================


@pytest.fixture(scope="module")
def ext() -> wf.Extension:
    return wf.load_extension()


def _version(text: str) -> Any:
    import knime.extension.parameter as kp

    return kp.Version.parse_version(text)


def _saved_version(name: str) -> str:
    """The extension version the committed example ``name`` was generated with (one for all its nodes)."""
    folder = REPO / "workflows" / name
    versions = {wf.read_config(p)["model"]["extension_version_Internals"].value for p in folder.glob("*/settings.xml")}
    assert len(versions) == 1, f"{name}: nodes saved with versions {versions}"
    return versions.pop()


def test_example_files_match_the_node_definitions(ext: wf.Extension) -> None:
    """Every node of every example: this extension's factory and ids, every parameter with its type (the
    parameters added after the version an example was saved with may be missing: they get their defaults)."""
    for name in EXAMPLES:
        folder = REPO / "workflows" / name
        flow = wf.read_config(folder / "workflow.knime")
        nodes = {}
        for item in flow["nodes"].values():
            settings = wf.read_config(folder / item["node_settings_file"].value)
            assert settings["factory"].value == wf.PYTHON_NODE_FACTORY
            assert settings["factory_settings"]["extension_id"].value == ext.extension_id == "org.cellseg.cellseg"
            reg = ext.node(settings["factory_settings"]["node_id"].value)
            assert reg is not None and settings["name"].value == reg.name
            schema = wf.parameter_schema(reg.node_factory())
            saved = _version(settings["model"]["extension_version_Internals"].value)
            assert saved <= _version(ext.version)
            _assert_model_matches(settings["model"], schema, f"{name}/{item['node_settings_file'].value}", saved)
            nodes[item["id"].python()] = reg
        for x in flow["connections"].values():
            src, dst = nodes[x["sourceID"].python()], nodes[x["destID"].python()]
            assert 1 <= x["sourcePort"].python() <= len(src.output_ports)
            assert 1 <= x["destPort"].python() <= len(dst.input_ports)
        with zipfile.ZipFile(REPO / "workflows" / f"{name}.knwf") as zf:
            assert f"{name}/workflow.knime" in zf.namelist()


def _assert_model_matches(model: dict, schema: dict, where: str, saved: Any) -> None:
    assert model["json-type_Internals"] == Entry("xstring", "OBJECT"), where
    for key, info in schema.items():
        if key not in model and info.since is not None and info.since > saved:
            continue  # added after the version the file was saved with
        assert key in model, f"{where}: missing {key}"
        if info.children is not None:
            _assert_model_matches(model[key], info.children, f"{where}:{key}", saved)
        elif info.xtype == wf.STRING_ARRAY:
            assert isinstance(model[key], dict), f"{where}: {key}"  # a string-array config
        else:
            assert isinstance(model[key], Entry) and model[key].type == info.xtype, f"{where}: {key}"


def test_examples_are_up_to_date(ext: wf.Extension, tmp_path: Path) -> None:
    """Regenerating from workflows/definitions.py gives the committed files byte for byte.

    Examples saved with an older extension version (kept to show that old workflows load) are compared
    with a generation at that version: the same files, and the same settings once the parameters added
    since are left out, which must have their defaults (a definition setting one needs a regeneration).
    """
    for name in EXAMPLES:
        saved = _saved_version(name)
        dest = tmp_path / saved
        if not (dest / name).is_dir():
            wf.make_workflows(dest, extension=dataclasses.replace(ext, version=saved), only=[name])
        fresh = sorted(p.relative_to(dest) for p in (dest / name).rglob("*") if p.is_file())
        committed = sorted(p.relative_to(REPO / "workflows") for p in (REPO / "workflows" / name).rglob("*")
                           if p.is_file())
        assert fresh == committed, f"{name}: run `cellseg make-workflows`"
        for rel in fresh:
            new, old = dest / rel, REPO / "workflows" / rel
            if saved != ext.version and rel.name == "settings.xml":
                assert _without_newer(wf.read_config(new), ext, _version(saved), str(rel)) == wf.read_config(old), \
                    f"{rel} differs: run `cellseg make-workflows`"
            else:
                assert new.read_bytes() == old.read_bytes(), f"{rel} differs: run `cellseg make-workflows`"
        knwf = wf.write_knwf(REPO / "workflows" / name, tmp_path / f"{name}.knwf")  # the archive of the folder
        assert knwf.read_bytes() == (REPO / "workflows" / f"{name}.knwf").read_bytes()


def _without_newer(settings: dict, ext: wf.Extension, saved: Any, where: str) -> dict:
    """A node's generated settings without the parameters added after ``saved``, checking they are defaults."""
    import knime.extension.parameter as kp

    from cellseg_knime.workflows.settings import values_to_model

    node = ext.node(settings["factory_settings"]["node_id"].value).node_factory()
    schema = wf.parameter_schema(node)
    defaults = values_to_model(kp.extract_parameters(node)["model"], schema, ext.version)

    def strip(model: dict, default: dict, schema: dict, path: str) -> dict:
        out = dict(model)
        for key, info in schema.items():
            if info.since is not None and info.since > saved:
                assert model[key] == default[key], f"{where}: {path}{key} is set; regenerate the example"
                del out[key]
            elif info.children is not None:
                out[key] = strip(model[key], default[key], info.children, f"{path}{key}.")
        return out

    return {**settings, "model": strip(settings["model"], defaults, schema, "")}


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Small simulated images with masks (train / test) and one 'large' image."""
    from cellseg.images import write_image
    from cellseg.simulate import simulate_dataset
    from cellseg.simulate_folders import write_dataset

    root = tmp_path_factory.mktemp("wfdata")
    images, labels = simulate_dataset(6, size=128, preset="low_noise", seed=3)
    write_dataset(root / "train", images[:4], labels[:4])
    write_dataset(root / "test", images[4:], labels[4:])
    big, _ = simulate_dataset(1, size=320, preset="low_noise", seed=4)
    write_image(root / "large" / "big.tif", big[0])
    return {"root": root}


TINY_TRAINING = ["training.epochs=1", "training.steps_per_epoch=2", "training.patch_size=64",
                 "training.batch_size=2", "advanced.optimize_thresholds=false"]


def _run(name: str, out: Path, overrides: list[str]) -> wf.RunResult:
    lines: list[str] = []
    result = wf.run_workflow(REPO / "workflows" / name, out, overrides=overrides, quiet=False, log=lines.append)
    assert any("done in" in line for line in lines)  # progress on the console
    assert (out / "run.json").is_file()
    return result


def _check_scores(result: wf.RunResult, scorer_id: int, predictions: tuple[str, ...] = ("labels",)) -> pd.DataFrame:
    per_image, summary = result.tables[(scorer_id, 0)], result.tables[(scorer_id, 1)]
    for table in (per_image, summary):
        for col in ("precision", "recall", "f1", "accuracy", "panoptic_quality"):
            assert table[col].between(0, 1).all(), col
    assert list(summary["prediction"].unique()) == list(predictions)
    for _, rows in summary.groupby("prediction"):
        assert list(rows["iou_threshold"])[0] == 0.5 and len(rows) == 10
    folder = result.node_dir(scorer_id)
    assert (folder / "port2_summary.csv").is_file() and (folder / "port1_scores_per_image.csv").is_file()
    return summary


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, ext: wf.Extension) -> tuple[wf.RunResult, Path]:
    """'Train StarDist on simulated nuclei' with a tiny network; its written model feeds the other examples."""
    out = tmp_path_factory.mktemp("train_simulated")
    learner = [f"StarDist Learner.{o}" for o in TINY_TRAINING] + [
        "StarDist Learner.architecture.unet_n_depth=2", "StarDist Learner.architecture.unet_n_filter_base=8",
        "StarDist Learner.architecture.n_rays=8"]
    result = _run("train_simulated", out, learner + [
        "training images.n_images=4", "training images.image_size=128", "test images.n_images=2",
        "test images.image_size=128", "test images.preview=false"])
    return result, out / "models" / "simulated.zip"


def test_train_simulated(trained: tuple[wf.RunResult, Path]) -> None:
    result, model = trained
    assert model.is_file() and zipfile.is_zipfile(model)
    _check_scores(result, 5, ("labels (#1)",))
    assert len(result.tables[(3, 1)]) == 1  # training history: one epoch
    assert result.node_dir(3).name == "3_stardist_learner_train_from_scratch"
    assert (result.node_dir(3) / "view.html").is_file()
    assert (result.node_dir(3) / "port1_stardist_model.zip").is_file()
    seg = pd.read_csv(result.node_dir(4) / "port1_segmented_images.csv")
    assert (result.node_dir(4) / seg["labels (#1)"][0]).is_file()  # label images as files


def _model_reader(model: Path, name: str = "StarDist Model Reader") -> list[str]:
    return [f"{name}.source=FILE", f"{name}.path={model}"]


def _image_readers(d: Path, train: str) -> list[str]:
    """Overrides pointing the Image Reader named ``train`` and the one named 'test images' at the test data."""
    return [f"{train}.path={d / 'train/images'}", f"{train}.mask_folder={d / 'train/masks'}",
            f"test images.path={d / 'test/images'}", f"test images.mask_folder={d / 'test/masks'}"]


def test_retrain_headline(trained: tuple[wf.RunResult, Path], data: dict[str, Path], tmp_path: Path) -> None:
    _, model = trained
    d = data["root"]
    result = _run("retrain_stardist", tmp_path / "out", _model_reader(model) + _image_readers(d, "training images") + [
        *[f"StarDist Retrainer.{o}" for o in TINY_TRAINING]])
    (scorer,) = result.node_ids("StarDist Scorer")
    summary = _check_scores(result, scorer, ("before", "after"))  # one table: rows before and after retraining
    assert len(summary) == 20
    assert (tmp_path / "out" / "models" / "retrained.zip").is_file()


def test_segment_large_image(trained: tuple[wf.RunResult, Path], data: dict[str, Path], tmp_path: Path) -> None:
    from cellseg.images import read_image

    _, model = trained
    big = data["root"] / "large"
    result = _run("segment_large_image", tmp_path / "out", _model_reader(model) + [
        f"#2.path={big}", f"#6.path={big}", "Image Tiler.tile_size=128", "Image Tiler.overlap=16",
        "streaming.large_image.tile_size=128", "streaming.image_output.folder=labels"])
    tiles = result.tables[(3, 0)]
    assert len(tiles) == 9 and set(tiles["n_tiles"]) == {9}
    merged = result.tables[(5, 0)]
    assert len(merged) == 1 and list(merged[["image_height", "image_width"]].iloc[0]) == [320, 320]
    written = tmp_path / "out" / "labels" / "big_labels.tif"  # the streaming Predictor's label TIFF
    assert written.is_file() and read_image(written).shape == (320, 320)
    assert Path(result.tables[(7, 0)]["labels"].iloc[0].path) == written.resolve()  # a Path cell
    merged_labels = result.tables[(5, 0)]["labels"].iloc[0]  # a 16-bit PNG image cell
    assert merged_labels.mode == "I;16" and merged_labels.size == (320, 320)


def test_transfer_learning_eval(trained: tuple[wf.RunResult, Path], data: dict[str, Path], tmp_path: Path) -> None:
    _, model = trained
    d = data["root"]
    result = _run("transfer_learning_eval", tmp_path / "out", _model_reader(model) + _image_readers(
        d, "n training images") + [*[f"StarDist Retrainer.{o}" for o in TINY_TRAINING], *[f"StarDist Learner.{o}" for o in TINY_TRAINING],
        "StarDist Learner.architecture.unet_n_depth=2", "StarDist Learner.architecture.unet_n_filter_base=8"])
    (scorer,) = result.node_ids("StarDist Scorer")
    _check_scores(result, scorer, ("pretrained", "retrained", "scratch"))
