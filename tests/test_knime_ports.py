"""The StarDist model port: spec without TensorFlow, serialization, lazy loading; extension registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import knime.extension as knext
import knime.extension.nodes as knodes
import knime.extension.parameter as kparam
import pytest

from cellseg.bundle import BundleMeta
from cellseg.config import ModelConfig
from cellseg.errors import ModelLoadError
from cellseg_knime.ports import (
    StarDistModelPortObject,
    StarDistModelSpec,
    model_port_type,
    summary_for_pretrained,
    summary_from_bundle,
    summary_from_meta,
)

ROOT = Path(__file__).resolve().parent.parent
NODE_IDS = {
    "nuclei_simulator": "Nuclei Simulator",
    "image_reader": "Image Reader",
    "model_reader": "StarDist Model Reader",
    "learner": "StarDist Learner",
    "retrainer": "StarDist Retrainer",
    "predictor": "StarDist Predictor",
    "scorer": "StarDist Scorer",
    "model_writer": "StarDist Model Writer",
    "image_tiler": "Image Tiler",
    "tile_merger": "Tile Merger",
}


def test_port_type_registered() -> None:
    assert model_port_type.id == "org.cellseg.stardist.model"
    assert model_port_type.name == "StarDist Model"
    assert model_port_type.object_class is StarDistModelPortObject
    assert model_port_type.spec_class is StarDistModelSpec


def test_spec_roundtrip_json() -> None:
    summary = {"backbone": "unet", "n_rays": 16, "grid": [2, 2], "n_channel_in": 1, "unet_n_depth": 2,
               "thresholds": {"prob": 0.4, "nms": 0.3}, "provenance": {"name": "x"}}
    spec = StarDistModelSpec(summary)
    data = json.loads(json.dumps(spec.serialize()))
    back = StarDistModelSpec.deserialize(data)
    assert back.summary == summary
    assert (back.n_channel_in, back.n_rays, back.backbone, back.divisor) == (1, 16, "unet", 8)
    assert back.thresholds == {"prob": 0.4, "nms": 0.3}


def test_summaries_wrap_the_bundle_module(tmp_path: Path) -> None:
    """Errors as the Reader's and Learner's configure show them; the summaries are cellseg.bundle's."""
    with pytest.raises(ModelLoadError, match="not a valid model zip"):
        summary_from_bundle(b"not a zip")
    with pytest.raises(ModelLoadError, match="no such folder or file"):
        summary_from_bundle(tmp_path / "missing")
    mc = {"n_rays": 16, "grid": [2, 2], "unet_n_depth": 2, "patch_size": [64, 64]}
    summary = summary_from_meta(mc, None, {"name": "new", "steps_trained": 0})
    assert summary == BundleMeta(ModelConfig(**mc), provenance={"name": "new", "steps_trained": 0}).summary()
    assert StarDistModelSpec(summary).divisor == 8
    with pytest.raises(knext.InvalidParametersError, match="patch_size"):
        summary_from_meta({**mc, "patch_size": [60, 60]}, None, None)


def test_port_object_serializes_and_loads_lazily(knime_model_bytes: bytes) -> None:
    spec = StarDistModelSpec(summary_from_bundle(knime_model_bytes))
    obj = StarDistModelPortObject.deserialize(spec, knime_model_bytes)
    assert obj._model is None  # nothing loaded yet
    assert obj.serialize() == knime_model_bytes
    model = obj.model
    assert model.config.n_rays == 16
    assert obj.model is model
    again = StarDistModelPortObject.from_model(model)
    assert again.serialize() == knime_model_bytes  # bytes are stable
    assert again.spec.summary == spec.summary


def test_pretrained_summaries_without_download() -> None:
    assert summary_for_pretrained("2D_versatile_fluo")["n_channel_in"] == 1
    assert summary_for_pretrained("2D_versatile_he")["n_channel_in"] == 3
    with pytest.raises(ModelLoadError):
        summary_for_pretrained("no_such_model")


def test_extension_registers_all_nodes() -> None:
    sys.path.insert(0, str(ROOT / "src"))
    import extension  # noqa: F401

    for node_id, name in NODE_IDS.items():
        assert node_id in knodes._nodes, node_id
        registered = knodes._nodes[node_id]
        assert registered.name == name
        assert registered.category == "/community/cellseg"
        assert (ROOT / registered.icon_path).is_file(), registered.icon_path
        node = registered.node_factory()
        assert type(node).__doc__ and len(type(node).__doc__) > 100
        for port in registered.input_ports + registered.output_ports:
            assert port.description
        params = kparam.extract_parameters(node)
        kparam.inject_parameters(node, params)  # round trip as a headless runner does
        assert kparam.extract_parameters(node) == params
    cats = [c.to_dict() for c in knodes._categories if c.to_dict()["level_id"] == "cellseg"]
    assert cats and (ROOT / cats[0]["icon"]).is_file()


def test_extension_files() -> None:
    yml = (ROOT / "knime.yml").read_text()
    for key in ("name:", "group_id:", "version:", "author:", "vendor:", "description:", "long_description:",
                "license_file: LICENSE", "extension_module: src/extension", "pixi_toml_path: pixi.toml"):
        assert key in yml
    assert "Apache License" in (ROOT / "LICENSE").read_text()
    pixi = (ROOT / "pixi.toml").read_text()
    for dep in ("knime-extension", "knime-python-base", "tensorflow", "stardist"):
        assert dep in pixi
    from PIL import Image

    for png in (ROOT / "icons").glob("*.png"):
        assert Image.open(png).size == (16, 16)


def test_configure_does_not_import_tensorflow(knime_model_bytes: bytes, tmp_path: Path) -> None:
    """configure of the model nodes reads specs from JSON only: no TensorFlow/stardist import."""
    (tmp_path / "m.zip").write_bytes(knime_model_bytes)
    code = f"""
import sys
sys.path.insert(0, {str(ROOT / 'src')!r})
import extension
import knime.extension as knext
import knime.extension.testing as ktest
from cellseg_knime.sources import ModelReader
from cellseg_knime.learners import StarDistLearner
from cellseg_knime.predictor import StarDistPredictor
cfg = ktest.TestingConfigurationContext()
reader = ModelReader()
reader.source = "FILE"
reader.path = {str(tmp_path / 'm.zip')!r}
spec = reader.configure(cfg)
from cellseg_knime.cells import png_type
schema = knext.Schema.from_columns([knext.Column(png_type(), "image"), knext.Column(png_type(), "labels")])
StarDistLearner().configure(cfg, schema)
StarDistPredictor().configure(cfg, spec, schema)
assert spec.n_rays == 16
bad = [m for m in ("tensorflow", "keras", "stardist") if m in sys.modules]
assert not bad, bad
print("ok")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "ok" in res.stdout


def test_invalid_parameters_error_is_knext() -> None:
    assert issubclass(knext.InvalidParametersError, Exception)


def test_environment_matches_knime_pins() -> None:
    """The suite runs on the pandas/pyarrow/Markdown versions KNIME's Python environment pins (5.6 line)."""
    import importlib.metadata as md

    pins = {"pandas": "2.3.", "pyarrow": "21.0.", "markdown": "3.8."}
    for name, prefix in pins.items():
        assert md.version(name).startswith(prefix), (name, md.version(name))
    pixi = (Path(__file__).resolve().parents[1] / "pixi.toml").read_text()
    for name, prefix in pins.items():
        assert f'{name} = "{prefix}*"' in pixi, name
