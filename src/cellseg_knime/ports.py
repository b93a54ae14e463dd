"""The StarDist model port: a JSON-able spec (readable without TensorFlow) and the model bundle bytes.

The spec is :meth:`cellseg.bundle.BundleMeta.summary` (backbone, rays, grid, input channels, patch size,
thresholds, steps trained, provenance), read from a bundle's JSON files by :mod:`cellseg.bundle` without
building the network, which the Model Reader uses in ``configure``. The port object serializes to
:meth:`cellseg.models.CellsegModel.to_bytes` and loads the network only when asked.
"""

from __future__ import annotations

import json
import os
from typing import Any

import knime.extension as knext

from cellseg.bundle import DEFAULT_THRESHOLDS, BundleMeta, pretrained_meta
from cellseg.config import ModelConfig, divisor
from cellseg.errors import InputError

#: A spec without a field (an older or foreign summary) reads the declared default (cellseg.config).
_DEFAULT = ModelConfig()

class StarDistModelSpec(knext.PortObjectSpec):
    """Spec of the model port: the model summary (a JSON-able dict)."""

    def __init__(self, summary: dict[str, Any]) -> None:
        self._summary = json.loads(json.dumps(summary))  # a JSON-able copy

    @property
    def summary(self) -> dict[str, Any]:
        return self._summary

    @property
    def n_channel_in(self) -> int:
        return int(self._summary.get("n_channel_in", _DEFAULT.n_channel_in))

    @property
    def backbone(self) -> str:
        return str(self._summary.get("backbone", _DEFAULT.backbone))

    @property
    def n_rays(self) -> int:
        return int(self._summary.get("n_rays", _DEFAULT.n_rays))

    @property
    def divisor(self) -> int:
        """Image sides the network accepts are multiples of this (grid x 2**depth)."""
        if "divisor" in self._summary:
            return int(self._summary["divisor"])
        return divisor(self._summary.get("grid", _DEFAULT.grid), self._summary.get("unet_n_depth", _DEFAULT.unet_n_depth))

    @property
    def thresholds(self) -> dict[str, float]:
        return dict(self._summary.get("thresholds", DEFAULT_THRESHOLDS))

    def serialize(self) -> dict:
        return {"summary": self._summary}

    @classmethod
    def deserialize(cls, data: dict, java_callback: Any = None) -> StarDistModelSpec:
        return cls(data.get("summary", data))

    def __repr__(self) -> str:
        return f"StarDistModelSpec(backbone={self.backbone!r}, n_rays={self.n_rays}, channels={self.n_channel_in})"


class StarDistModelPortObject(knext.PortObject):
    """A StarDist model: bundle zip bytes, loaded into a :class:`CellsegModel` on first use."""

    def __init__(self, spec: StarDistModelSpec, data: bytes | None = None, model: Any = None) -> None:
        super().__init__(spec)
        if data is None and model is None:
            raise ValueError("a model port object needs bundle bytes or a model")
        self._data = data
        self._model = model

    @classmethod
    def from_model(cls, model: Any) -> StarDistModelPortObject:
        """Wrap a :class:`cellseg.models.CellsegModel` (its spec is its summary)."""
        return cls(StarDistModelSpec(model.summary()), model=model)

    @property
    def data(self) -> bytes:
        """The bundle as zip bytes."""
        if self._data is None:
            self._data = self._model.to_bytes()
        return self._data

    @property
    def model(self) -> Any:
        """The :class:`cellseg.models.CellsegModel` (loaded from the bytes on first access; imports TensorFlow)."""
        if self._model is None:
            from cellseg.models import load_model

            self._model = load_model(self._data)  # type: ignore[arg-type]
        return self._model

    def serialize(self) -> bytes:
        return self.data

    @classmethod
    def deserialize(cls, spec: StarDistModelSpec, storage: bytes) -> StarDistModelPortObject:
        return cls(spec, data=bytes(storage))


model_port_type = knext.port_type(
    "StarDist Model", StarDistModelPortObject, StarDistModelSpec, id="org.cellseg.stardist.model"
)


# -- summaries without TensorFlow (cellseg.bundle) ------------------------------------------------


def summary_from_meta(model_config: dict[str, Any] | ModelConfig, thresholds: dict[str, float] | None,
                      provenance: dict[str, Any] | None) -> dict[str, Any]:
    """The summary of a model still to be made (the Learner's spec); InvalidParametersError for a bad config."""
    try:
        config = ModelConfig.of(model_config)
    except InputError as err:
        raise knext.InvalidParametersError(str(err)) from err
    return BundleMeta(config, dict(thresholds or DEFAULT_THRESHOLDS), dict(provenance or {})).summary()


def summary_from_bundle(source: str | os.PathLike | bytes) -> dict[str, Any]:
    """Model summary of a bundle folder, zip file or zip bytes, read from its JSON files (no TensorFlow);
    :class:`~cellseg.errors.ModelLoadError` as :func:`cellseg.models.load_model` would raise it."""
    return BundleMeta.read(source).summary()


def summary_for_pretrained(name: str) -> dict[str, Any]:
    """Summary of a pretrained model by name (stardist's are not downloaded)."""
    return pretrained_meta(name).summary()


def check_channels(spec: StarDistModelSpec, channels: int | None, what: str) -> None:
    """Raise InvalidParametersError if ``channels`` (when known) does not fit the model: neither its own
    count nor one converted into it (grey and RGB, :data:`cellseg.adapt.CONVERTIBLE`)."""
    from cellseg.adapt import CONVERTIBLE

    n = spec.n_channel_in
    if channels is not None and channels != n and (channels, n) not in CONVERTIBLE:
        raise knext.InvalidParametersError(
            f"{what} has {channels} channel(s) but the model expects {n}; only grey (1) and RGB (3) images are "
            "converted into each other"
        )
