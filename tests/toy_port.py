"""The one toy model port the KNIME tests share (the stand-in's tests and the workflow runner's tests)."""

from __future__ import annotations

from cellseg_knime.compat import ensure_knime_extension

ensure_knime_extension()

import knime.extension as knext  # noqa: E402


class ToySpec(knext.PortObjectSpec):
    """A spec with one number (a ray count, a factor)."""

    def __init__(self, value: float) -> None:
        self.value = value

    def serialize(self) -> dict:
        return {"value": self.value}

    @classmethod
    def deserialize(cls, data: dict) -> ToySpec:
        return cls(data["value"])


class ToyObject(knext.PortObject):
    """A port object whose payload is some bytes (by default its spec's number as text)."""

    def __init__(self, spec: ToySpec, payload: bytes | None = None) -> None:
        super().__init__(spec)
        self.payload = str(spec.value).encode() if payload is None else payload

    def serialize(self) -> bytes:
        return self.payload

    @classmethod
    def deserialize(cls, spec: ToySpec, storage: bytes) -> ToyObject:
        return cls(spec, storage)


toy_port = knext.port_type("Toy model", ToyObject, ToySpec, id="org.example.toy.Model")
