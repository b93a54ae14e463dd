"""Stand-in of ``knime.extension.nodes``: node/category registration, ports, port types and contexts.

Mirrors ``org.knime.python3.nodes/src/main/python/knime/extension/nodes.py`` (KNIME 5.x).
Registries (same private names as the real module): ``_nodes`` (node id -> ``_Node``) and
``_categories`` (list of ``_Category``). The node id is ``id`` if given to ``@knext.node`` else the
decorated class's ``__name__``; KNIME itself combines it as ``f"{extension_id}_!_{node_id}"`` with
``extension_id = f"{group_id}.{name}"`` from knime.yml. Custom port types register with ``_backend``
(as in KNIME, where it is the node backend of the loaded extension): an object class, spec class or id
registered twice raises ValueError.

Stand-in only: ``execute`` of a node instance is wrapped like KNIME's runtime treats it: input tables
arrive with batches, output tables get Java's checks (see ``_execute_as_in_knime``).
"""

from __future__ import annotations

import os.path
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import knime.api.table as kt
import knime.extension.parameter as kp
from knime.api.schema import PortObjectSpec, _ColumnarView

# ------------------------------------------------------------------ port objects and port types


class PortObject(ABC):
    """Base class of custom port objects; they have a spec and (de)serialize from/to bytes."""

    def __init__(self, spec: PortObjectSpec) -> None:
        self._spec = spec

    @property
    def spec(self) -> PortObjectSpec:
        return self._spec

    @abstractmethod
    def serialize(self) -> bytes:
        pass

    @classmethod
    @abstractmethod
    def deserialize(cls, spec: PortObjectSpec, storage: bytes) -> PortObject:
        pass


class ConnectionPortObject(PortObject):
    """Port object handing a non-serializable Python object to downstream nodes (same process)."""

    def serialize(self) -> bytes:
        raise NotImplementedError("A connection port object cannot be serialized")

    @classmethod
    def deserialize(cls, spec: PortObjectSpec, storage: bytes) -> PortObject:
        raise NotImplementedError("A connection port object cannot be deserialized")

    @abstractmethod
    def to_connection_data(self) -> Any:
        pass

    @classmethod
    @abstractmethod
    def from_connection_data(cls, spec: PortObjectSpec, data: Any) -> ConnectionPortObject:
        pass


@dataclass
class PortType:
    id: str
    name: str
    object_class: type
    spec_class: type

    def is_super_type_of(self, port_type: PortType) -> bool:
        return issubclass(port_type.spec_class, self.spec_class) and issubclass(
            port_type.object_class, self.object_class
        )


# special port types are plain strings in KNIME
PortType.BINARY = "PortType.BINARY"  # type: ignore[attr-defined]
PortType.CONNECTION = "PortType.CONNECTION"  # type: ignore[attr-defined]
PortType.TABLE = "PortType.TABLE"  # type: ignore[attr-defined]
PortType.IMAGE = "PortType.IMAGE"  # type: ignore[attr-defined]
PortType.CREDENTIAL = "PortType.CREDENTIAL"  # type: ignore[attr-defined]


class ImageFormat(Enum):
    PNG = "png"
    SVG = "svg"


class _StandinNodeBackend:
    """Where ``port_type`` registers: in KNIME the node backend of the loaded extension
    (``_node_backend_launcher._PortTypeRegistry``); here the stand-in's, with the same rules.

    The default port type id is ``f"{extension_id}.{module}.{qualname}"``, ``extension_id`` being
    ``group_id.name`` of knime.yml: a runner that knows it sets ``_extension_id``; while it is None the
    default id is ``f"{module}.{qualname}"``.
    """

    def __init__(self) -> None:
        self._extension_id: str | None = None
        self._port_types_by_object_class: dict[type, PortType] = {}
        self._port_types_by_spec_class: dict[type, PortType] = {}
        self._port_types_by_id: dict[str, PortType] = {}

    def register_port_type(
        self, name: str, object_class: type, spec_class: type, id: str | None = None
    ) -> PortType:
        if object_class in self._port_types_by_object_class:
            raise ValueError(
                f"There is already a port type with the provided object class '{object_class}' registered."
            )
        if spec_class in self._port_types_by_spec_class:
            raise ValueError(
                f"There is already a port type with the provided spec class '{spec_class}' registered."
            )
        if id is None:
            id = f"{object_class.__module__}.{object_class.__qualname__}"
            if self._extension_id is not None:
                id = f"{self._extension_id}.{id}"
        if id in self._port_types_by_id:
            raise ValueError(f"There is already a port type with the provided id '{id}' registered.")
        port_type = PortType(id, name, object_class, spec_class)
        self._port_types_by_object_class[object_class] = port_type
        self._port_types_by_spec_class[spec_class] = port_type
        self._port_types_by_id[id] = port_type
        return port_type

    def get_port_type_for_spec_type(self, spec_type: type) -> PortType:
        if spec_type in self._port_types_by_spec_class:
            return self._port_types_by_spec_class[spec_type]
        raise KeyError(f"The PortObjectSpec type {str(spec_type)} is not registered.")

    def get_port_type_for_id(self, id: str) -> PortType:
        if id in self._port_types_by_id:
            return self._port_types_by_id[id]
        raise KeyError(f"No PortType for id '{id}' registered.")

    def has_port_type_for_id(self, id: str) -> bool:
        return id in self._port_types_by_id


_backend = _StandinNodeBackend()


def port_type(
    name: str, object_class: type[PortObject], spec_class: type[PortObjectSpec], id: str | None = None
) -> PortType:
    """Register a custom port type (see ``_StandinNodeBackend`` for the default id)."""
    return _backend.register_port_type(name, object_class, spec_class, id)


def get_port_type_for_spec_type(spec_type: type[PortObjectSpec]) -> PortType:
    return _backend.get_port_type_for_spec_type(spec_type)


def get_port_type_for_id(id: str) -> PortType:
    return _backend.get_port_type_for_id(id)


def has_port_type_for_id(id: str) -> bool:
    return _backend.has_port_type_for_id(id)


@dataclass
class Port:
    type: Any  # PortType or one of the PortType.TABLE/BINARY/... strings
    name: str
    description: str
    id: str | None = None

    def __post_init__(self) -> None:
        if self.type in (PortType.BINARY, PortType.CONNECTION) and self.id is None:  # type: ignore[attr-defined]
            raise TypeError(f"{type(self)}s of type BINARY or CONNECTION must have a unique 'id' set")


@dataclass
class ViewDeclaration:
    name: str
    description: str
    static_resources: str | None = None


@dataclass(frozen=True)
class Credential:
    username: str
    password: str
    credential_name: str


# ------------------------------------------------------------------ contexts


class _BaseContext:
    """Contexts delegate to a Java-side object (``java_ctx``); headless runners pass a Python duck type."""

    def __init__(self, java_ctx: Any, flow_variables: dict[str, Any]) -> None:
        self._flow_variables = flow_variables
        self._java_ctx = java_ctx

    @property
    def flow_variables(self) -> dict[str, Any]:
        """Editable dict of flow variables (bool, int, float, str and lists of those)."""
        return self._flow_variables

    def get_credential_names(self) -> list[str]:
        return list(self._java_ctx.get_credential_names())

    def get_credentials(self, identifier: str) -> Credential:
        try:
            credentials = list(self._java_ctx.get_credentials(identifier))
        except Exception as e:
            raise KeyError(f"Error retrieving credentials for identifier: {identifier}") from e
        return Credential(credentials[0], credentials[1], credentials[2])


class DialogCreationContext(_BaseContext):
    def __init__(
        self, java_ctx: Any, flow_variables: dict[str, Any], specs_to_python_converter: Callable
    ) -> None:
        super().__init__(java_ctx, flow_variables)
        self._python_specs = specs_to_python_converter(self._java_ctx.get_input_specs())

    def get_input_specs(self) -> list[PortObjectSpec]:
        return self._python_specs

    def get_flow_variables(self) -> dict[str, Any]:
        return self._flow_variables


class ConfigurationContext(_BaseContext):
    """Passed to ``configure``."""

    def set_warning(self, message: str) -> None:
        self._java_ctx.set_warning(str(message))


class ExecutionContext(ConfigurationContext):
    """Passed to ``execute``."""

    def set_progress(self, progress: float, message: str | None = None) -> None:
        """Progress in [0, 1] (TypeError for non-numbers, ValueError outside [0, 1]) and an optional message."""
        if isinstance(progress, int):
            progress = float(progress)
        if not isinstance(progress, float):
            raise TypeError(f"progress must be of type float. Got {type(progress)}.")
        if progress < -0.0001 or progress > 1.0001:
            raise ValueError("progress must be between 0.0 and 1.0.")
        progress = min(1.0, max(0.0, progress))
        if message is None:
            self._java_ctx.set_progress(progress)
        else:
            if not isinstance(message, str):
                raise TypeError("message must be a str or None.")
            self._java_ctx.set_progress(progress, message)

    def is_canceled(self) -> bool:
        """True if execution was canceled; nodes should then stop (raising a RuntimeError is encouraged)."""
        return self._java_ctx.is_canceled()

    def get_workflow_temp_dir(self) -> str:
        return self._java_ctx.get_workflow_temp_dir()

    def get_workflow_data_area_dir(self) -> str:
        return os.path.join(self._java_ctx.get_workflow_dir(), "data")

    def get_knime_home_dir(self) -> str:
        return self._java_ctx.get_knime_home_dir()


# ------------------------------------------------------------------ nodes and categories


class PythonNode(ABC):
    """Base class of Python nodes; ports are declared with the port decorators, in order."""

    input_ports: list[Port] | None = None
    output_ports: list[Port] | None = None
    output_view: ViewDeclaration | None = None

    @abstractmethod
    def configure(self, config_context: ConfigurationContext, *inputs: Any) -> Any:
        """Return the output spec(s) (Schema/Column/PortObjectSpec), one per output port, in order."""

    @abstractmethod
    def execute(self, exec_context: ExecutionContext, *inputs: Any) -> Any:
        """Return the output object(s) (Table/BatchOutputTable/PortObject/bytes), plus a view last if declared."""


class _Category:
    def __init__(
        self,
        path: str,
        level_id: str,
        name: str,
        description: str,
        icon: str,
        after: str = "",
        locked: bool = True,
    ) -> None:
        self._path = path
        self._level_id = level_id
        self._name = name
        self._description = description
        self._icon = icon
        self._after = after
        self._locked = locked

    def to_dict(self) -> dict:
        return {
            "path": self._path,
            "level_id": self._level_id,
            "name": self._name,
            "description": self._description,
            "icon": self._icon,
            "after": self._after,
            "locked": self._locked,
        }


_categories: list[_Category] = []


def category(
    path: str, level_id: str, name: str, description: str, icon: str, after: str = "", locked: bool = True
) -> str:
    """Register a node category; returns its full path (``path + "/" + level_id``) to use in ``@node``."""
    _categories.append(_Category(path, level_id, name, description, icon, after, locked))
    return path + level_id if path.endswith("/") else f"{path}/{level_id}"


class NodeType(Enum):
    SOURCE = "Source"
    SINK = "Sink"
    LEARNER = "Learner"
    PREDICTOR = "Predictor"
    MANIPULATOR = "Manipulator"
    VISUALIZER = "Visualizer"
    OTHER = "Other"


class _Node:
    """A registered node. ``node_factory()`` creates an instance with ports/view injected."""

    def __init__(
        self,
        node_factory: Callable,
        id: str,
        name: str,
        is_deprecated: bool,
        node_type: str,
        icon_path: str,
        category: str,
        after: str | None,
    ) -> None:
        self.id = id
        self.name = name
        self.is_deprecated = is_deprecated
        self.node_type = node_type
        self.icon_path = icon_path
        self.category = category
        self.after = after
        self.input_ports: list[Port] = _get_attr_from_instance_or_factory(node_factory, "input_ports") or []
        self.output_ports: list[Port] = _get_attr_from_instance_or_factory(node_factory, "output_ports") or []
        self.views: list[ViewDeclaration | None] = [
            _get_attr_from_instance_or_factory(node_factory, "output_view")
        ]

        def port_injector(*args: Any, **kwargs: Any) -> Any:
            node = node_factory(*args, **kwargs)
            self.assert_no_composed_parameters(node)
            node.input_ports = self.input_ports
            node.output_ports = self.output_ports
            node.output_view = self.views[0]
            node.execute = _execute_as_in_knime(_unwrap_results(node.execute))
            node.configure = _unwrap_results(node.configure)
            return node

        self.node_factory = port_injector

    def assert_no_composed_parameters(self, node_instance: Any) -> None:
        if any(isinstance(v, kp._BaseParameter) for v in node_instance.__dict__.values()):
            raise AttributeError(
                "Only parameter group composition is allowed at the node-level. Individual parameters need to be moved "
                "out of the node's `__init__` method and be either defined at the class-level or encapsulated in a parameter group."
            )

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "node_type": self.node_type,
            "is_deprecated": self.is_deprecated,
            "icon_path": self.icon_path,
            "category": self.category,
            "after": self.after,
            "input_port_types": [str(p.type) for p in self.input_ports],
            "output_port_types": [str(p.type) for p in self.output_ports],
            "input_ports": [{"name": p.name, "description": p.description} for p in self.input_ports],
            "output_ports": [{"name": p.name, "description": p.description} for p in self.output_ports],
            "views": [asdict(v) for v in self.views if v is not None],
        }


_nodes: dict[str, _Node] = {}


def node(
    name: str,
    node_type: NodeType,
    icon_path: str,
    category: str,
    after: str | None = None,
    id: str | None = None,
    is_deprecated: bool = False,
) -> Callable:
    """Register a PythonNode class (or factory). NOTE: returns a *factory function*, not the class.

    The class is instantiated once (no arguments) at decoration time to collect its ports.
    """

    def register(node_factory: Callable) -> Callable:
        node_id = id if id is not None else node_factory.__name__
        nt = node_type.value if isinstance(node_type, NodeType) else "Unknown"
        n = _Node(node_factory, node_id, name, is_deprecated, nt, icon_path, category, after)
        _nodes[node_id] = n
        return n.node_factory

    return register


class InvalidParametersError(Exception):
    """Raise when the configured parameter values are invalid."""

    def __init__(self, message: str) -> None:
        super().__init__(message)


def _unwrap_results(func: Callable) -> Callable:
    """Materialize lazy column views returned by configure/execute; tuples become lists."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        results = func(*args, **kwargs)
        if isinstance(results, list | tuple):
            return [r.get() if isinstance(r, _ColumnarView) else r for r in results]
        if isinstance(results, _ColumnarView):
            return results.get()
        return results

    return wrapper


def _execute_as_in_knime(func: Callable) -> Callable:
    """Stand-in only: what KNIME's node backend and Java do around ``execute`` for tables.

    Input tables become tables as KNIME passes them (with ``batches()``/``num_batches``; a
    BatchOutputTable arrives with the batches that were appended, see ``knime.api.table._as_input``);
    output tables get Java's checks (readable, unique RowIDs; ``knime.api.table._check_output``).
    """

    def wrapper(exec_context: Any, *inputs: Any) -> Any:
        results = func(exec_context, *[kt._as_input(i) for i in inputs])
        for r in results if isinstance(results, list | tuple) else [results]:
            kt._check_output(r)
        return results

    return wrapper


def _add_port(node_factory: Any, port_slot: str, port: Port) -> Any:
    if getattr(node_factory, port_slot, None) is None:
        setattr(node_factory, port_slot, [])
        setattr(node_factory, "__knime_added_" + port_slot, True)
    elif not hasattr(node_factory, "__knime_added_" + port_slot):
        raise ValueError(
            f"Cannot use '{port_slot}' decorator on object which has an attribute '{port_slot}' already"
        )
    getattr(node_factory, port_slot).insert(0, port)  # decorators apply bottom-up: keep top-to-bottom order
    return node_factory


def _get_attr_from_instance_or_factory(node_factory: Callable, attr: str) -> Any:
    instance = node_factory()
    if getattr(instance, attr, None) is not None:
        return getattr(instance, attr)
    return getattr(node_factory, attr, None)


def input_binary(name: str, description: str, id: str) -> Callable:
    return lambda f: _add_port(f, "input_ports", Port(PortType.BINARY, name, description, id))  # type: ignore[attr-defined]


def input_table(name: str, description: str) -> Callable:
    return lambda f: _add_port(f, "input_ports", Port(PortType.TABLE, name, description))  # type: ignore[attr-defined]


def input_port(name: str, description: str, port_type: PortType) -> Callable:
    return lambda f: _add_port(f, "input_ports", Port(port_type, name, description))


def output_binary(name: str, description: str, id: str) -> Callable:
    return lambda f: _add_port(f, "output_ports", Port(PortType.BINARY, name, description, id))  # type: ignore[attr-defined]


def output_table(name: str, description: str) -> Callable:
    return lambda f: _add_port(f, "output_ports", Port(PortType.TABLE, name, description))  # type: ignore[attr-defined]


def output_port(name: str, description: str, port_type: PortType) -> Callable:
    return lambda f: _add_port(f, "output_ports", Port(port_type, name, description))


def output_image(name: str, description: str) -> Callable:
    return lambda f: _add_port(f, "output_ports", Port(PortType.IMAGE, name, description))  # type: ignore[attr-defined]


def output_view(name: str, description: str, static_resources: str | None = None) -> Callable:
    def add_view(node_factory: Any) -> Any:
        node_factory.output_view = ViewDeclaration(name, description, static_resources)
        return node_factory

    return add_view


# re-exports as in the real module
IntParameter = kp.IntParameter
DoubleParameter = kp.DoubleParameter
BoolParameter = kp.BoolParameter
StringParameter = kp.StringParameter
MultilineStringParameter = kp.MultilineStringParameter
parameter_group = kp.parameter_group
ColumnParameter = kp.ColumnParameter
MultiColumnParameter = kp.MultiColumnParameter
Table = kt.Table
BatchOutputTable = kt.BatchOutputTable
