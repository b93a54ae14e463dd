"""The headless workflow runner: runs a workflow of this extension's nodes without KNIME.

:func:`run_workflow` (``cellseg run-workflow``) reads the files, instantiates this extension's nodes,
injects their parameters (plus ``--set`` overrides), runs ``configure`` on all nodes and then ``execute``
in topological order, and writes every output table (CSV or Parquet), image, view and port object into the
output folder. Every error names the node. The output folder plays the workflow's folder: the workflow's
data area is copied to ``<out>/data`` and relative paths resolve in ``<out>``.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from .common import WorkflowError, slug
from .extension import Extension, _knext, describe_error, load_extension
from .reader import Workflow, WorkflowNode, load_workflow, resolve_inputs
from .results import NodeRun, RunResult, node_dir_name, store_output, summary, write_manifest, write_view
from .settings import ParamInfo, flatten_schema, inject, model_to_values, parameter_schema, set_value


class _JavaContext:
    """What KNIME's Java side provides to the execution/configuration contexts, for a headless run."""

    def __init__(self, runner: _Runner, node: WorkflowNode) -> None:
        self._runner = runner
        self._node = node

    def set_progress(self, progress: float, message: str | None = None) -> None:
        self._runner.progress(self._node, progress, message)

    def set_warning(self, message: str) -> None:
        self._runner.warn(f"node {self._node.label}: {message}")

    def is_canceled(self) -> bool:
        return False

    def get_workflow_temp_dir(self) -> str:
        return str(self._runner.temp_dir)

    def get_workflow_dir(self) -> str:
        # The run's copy of the workflow: its data area is copied into --out, where relative paths resolve.
        return str(self._runner.out)

    def get_workflow_data_area_dir(self) -> str:
        """The workflow's data area, ``<workflow folder>/data``, as in KNIME (here ``<out>/data``)."""
        return os.path.join(self.get_workflow_dir(), "data")

    def get_knime_home_dir(self) -> str:
        home = self._runner.temp_dir / "knime-home"
        home.mkdir(exist_ok=True)
        return str(home)

    def get_credential_names(self) -> list[str]:
        return []

    def get_credentials(self, identifier: str) -> Any:
        raise KeyError(identifier)

    def get_input_specs(self) -> list[Any]:
        return []


class _Runner:
    """A run's state the contexts report to: console (progress bar or lines), warnings, folders."""

    def __init__(self, workflow: Workflow, extension: Extension, out: Path, temp_dir: Path, fmt: str, quiet: bool,
                 log: Callable[[str], None]) -> None:
        self.workflow = workflow
        self.extension = extension
        self.out = out
        self.fmt = fmt
        self.quiet = quiet
        self.log = log
        self.temp_dir = temp_dir  # the workflow's temporary folder, removed after the run
        self._bar: Any = None
        self._current: NodeRun | None = None
        self._desc = ""
        self._next_print = 0.1

    # -- console ---------------------------------------------------------------------------------
    def warn(self, message: str) -> None:
        if self._current is not None:
            self._current.warnings.append(message)
        self._write(f"WARNING {message}")

    def _write(self, line: str) -> None:
        if self._bar is not None:
            self._bar.write(line, file=sys.stderr)
        else:
            self.log(line)

    def progress(self, node: WorkflowNode, fraction: float, message: str | None) -> None:
        fraction = min(1.0, max(0.0, fraction))
        if self._bar is not None:
            n = int(round(fraction * 1000))
            self._bar.update(max(0, n - self._bar.n))
            if message:
                self._bar.set_postfix_str(message[:60], refresh=False)
        elif not self.quiet and self._desc and fraction >= self._next_print:
            # not a terminal: a line at every 10 %
            self.log(f"{self._desc}: {fraction:4.0%}" + (f"  {message}" if message else ""))
            self._next_print = math.floor(fraction * 10 + 1e-9) / 10 + 0.1

    @contextlib.contextmanager
    def node_bar(self, desc: str) -> Iterator[None]:
        self._desc, self._next_print = desc, 0.1
        if self.quiet or not sys.stderr.isatty():
            try:
                yield
            finally:
                self._desc = ""
            return
        from tqdm import tqdm

        self._bar = tqdm(total=1000, desc=desc, leave=False, file=sys.stderr, dynamic_ncols=True,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} {postfix}")
        try:
            yield
        finally:
            self._bar.close()
            self._bar = None
            self._desc = ""


def _contexts(runner: _Runner, node: WorkflowNode, flow_variables: dict[str, Any]) -> tuple[Any, Any]:
    knext = _knext()
    java = _JavaContext(runner, node)
    return knext.ConfigurationContext(java, flow_variables), knext.ExecutionContext(java, flow_variables)


def _upstream_flow_variables(node_id: int, workflow: Workflow, flow: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Flow variables reaching a node: those of its predecessors (later input ports win)."""
    merged: dict[str, Any] = {}
    for x in sorted(workflow.connections, key=lambda x: x.dest_port):
        if x.dest == node_id:
            merged.update(flow.get(x.source, {}))
    return merged


def _as_list(result: Any, n: int) -> list[Any]:
    if n == 1 and not isinstance(result, list | tuple):
        return [result]
    if result is None and n == 0:
        return []
    if not isinstance(result, list | tuple):
        return [result]
    return list(result)


def _roundtrip_spec(spec: Any, port: Any) -> Any:
    """Serialize/deserialize a custom port spec, as KNIME does between nodes."""
    if spec is None or isinstance(port.type, str):
        return spec
    return port.type.spec_class.deserialize(spec.serialize())


def _roundtrip_object(obj: Any, port: Any) -> tuple[Any, bytes | None]:
    """Serialize/deserialize a custom port object (connection port objects pass their data)."""
    if isinstance(port.type, str):
        return obj, None
    knext = _knext()
    spec = _roundtrip_spec(obj.spec, port)
    if isinstance(obj, knext.ConnectionPortObject):
        return port.type.object_class.from_connection_data(spec, obj.to_connection_data()), None
    data = obj.serialize()
    return port.type.object_class.deserialize(spec, data), data


def parse_override(text: str, workflow: Workflow) -> tuple[WorkflowNode, str, str]:
    """``"<node name or #id>.<param path>=<value>"`` -> (node, path, value text)."""
    if "=" not in text:
        raise WorkflowError(f"--set {text!r}: expected NODE.PARAMETER=VALUE")
    lhs, value = text.split("=", 1)
    lhs = lhs.strip()
    m = re.match(r"^#(\d+)\.(.+)$", lhs)
    if m:
        nid = int(m.group(1))
        if nid not in workflow.nodes:
            raise WorkflowError(f"--set {text!r}: the workflow has no node #{nid}")
        return workflow.nodes[nid], m.group(2), value
    matches: list[tuple[int, WorkflowNode]] = []
    for n in workflow.nodes.values():
        for name in {n.name, n.annotation} - {""}:
            if lhs.lower().startswith(name.lower() + "."):
                matches.append((len(name), n))
    if not matches:
        names = ", ".join(sorted({f"{n.name} (#{n.id})" for n in workflow.nodes.values()}))
        raise WorkflowError(f"--set {text!r}: no node of that name (nodes: {names})")
    best = max(length for length, _ in matches)
    chosen = {n.id: n for length, n in matches if length == best}
    if len(chosen) > 1:
        ids = ", ".join(f"#{i}" for i in sorted(chosen))
        raise WorkflowError(f"--set {text!r}: several nodes match ({ids}); use #ID.PARAMETER=VALUE")
    node = next(iter(chosen.values()))
    return node, lhs[best + 1:], value


@contextlib.contextmanager
def _cwd(path: Path | None) -> Iterator[None]:
    if path is None:
        yield
        return
    old = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


#: Most bytes a .knwf may unpack to (a zip bomb is refused before anything is extracted).
MAX_KNWF_BYTES = 4 << 30


def _extract_knwf(path: Path, folder: Path) -> Path:
    """Unpack a ``.knwf`` (a zip of the workflow folder) into `folder`; the folder of its workflow.knime."""
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            total = sum(i.file_size for i in infos)
            if total > MAX_KNWF_BYTES:
                raise WorkflowError(f"{path}: the archive would unpack to {total / 2**30:.1f} GiB, more than the "
                                    f"{MAX_KNWF_BYTES / 2**30:.0f} GiB a workflow may have; refusing to extract it")
            free = shutil.disk_usage(folder).free
            if total > free:
                raise WorkflowError(f"{path}: the archive would unpack to {total / 2**20:.0f} MiB, more than the "
                                    f"{free / 2**20:.0f} MiB free in {folder.parent}")
            zf.extractall(folder)
    except WorkflowError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError, NotImplementedError) as err:
        size = path.stat().st_size
        why = "it is empty" if size == 0 else f"{type(err).__name__}: {err}"
        raise WorkflowError(f"{path}: not a KNIME workflow archive (a .knwf is a zip of the workflow folder; "
                            f"{why})") from None
    except OSError as err:
        raise WorkflowError(f"{path}: cannot unpack the archive ({err.strerror or err})") from None
    found = sorted(folder.rglob("workflow.knime"), key=lambda p: len(p.parts))
    if not found:
        raise WorkflowError(f"{path}: no workflow.knime in the archive")
    return found[0].parent


def workflow_folder(path: str | os.PathLike, stack: contextlib.ExitStack) -> Path:
    """The folder of a workflow given as a folder, its ``workflow.knime`` or a ``.knwf`` archive (unpacked
    into a temporary folder that `stack` removes). WorkflowError naming `path` for anything else."""
    path = Path(path)
    if not os.path.lexists(path):
        raise WorkflowError(f"{path}: not found (expected a workflow folder or a .knwf archive)")
    if path.is_file() and path.suffix.lower() == ".knwf":
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cellseg-knwf-",
                                                                      ignore_cleanup_errors=True)))
        return _extract_knwf(path, folder)
    if path.is_file() and path.name == "workflow.knime":
        return path.parent
    if not path.is_dir():
        raise WorkflowError(f"{path}: not a KNIME workflow (expected a workflow folder or a .knwf archive)")
    if not (path / "workflow.knime").is_file():
        raise WorkflowError(f"{path}: not a KNIME workflow folder (no workflow.knime)")
    return path


def check_output_folder(out: str | os.PathLike) -> Path:
    """Before any work: the output folder is a folder (or can be made) and can be written."""
    from cellseg.files import check_writable_location

    out = Path(out)
    if os.path.lexists(out) and (not out.is_dir()):
        raise WorkflowError(f"output folder {out} exists and is not a folder; choose a new folder")
    check_writable_location(out / "manifest.json" if out.is_dir() else out, "output folder")
    return out


def run_workflow(path: str | os.PathLike, out: str | os.PathLike, overrides: Sequence[str] = (),
                 fmt: str = "csv", quiet: bool = False, extension: Extension | None = None,
                 log: Callable[[str], None] | None = None) -> RunResult:
    """Run a workflow folder (or ``.knwf``) headlessly; see the module docstring. Raises WorkflowError.

    Temporary folders (the unpacked ``.knwf``, the workflow's ``cellseg-workflow-*`` temp folder) are
    removed whether the run succeeds or fails, also after Ctrl-C or SIGTERM (``cellseg`` turns it into an
    exception)."""
    if fmt not in ("csv", "parquet"):
        raise WorkflowError(f"unknown table format {fmt!r} (csv or parquet)")
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    out = check_output_folder(out)
    extension = extension or load_extension()
    with contextlib.ExitStack() as stack:
        workflow = load_workflow(workflow_folder(path, stack), extension)
        # the workflow's temporary folder: removed after the run, whether it succeeds or fails
        temp_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="cellseg-workflow-",
                                                                        ignore_cleanup_errors=True)))
        return _run(workflow, extension, Path(out).resolve(), temp_dir, overrides, fmt, quiet, log)


def _run(workflow: Workflow, extension: Extension, out: Path, temp_dir: Path, overrides: Sequence[str], fmt: str,
         quiet: bool, log: Callable[[str], None]) -> RunResult:
    t_start = time.perf_counter()
    inputs, order = resolve_inputs(workflow, extension)
    runner = _Runner(workflow, extension, out, temp_dir, fmt, quiet, log)
    registered = {i: extension.node(n.node_id) for i, n in workflow.nodes.items()}

    # 1. instantiate and inject parameters (with overrides) ------------------------------------------
    instances: dict[int, Any] = {}
    schemas: dict[int, dict[str, ParamInfo]] = {}
    values: dict[int, dict[str, Any]] = {}
    for i in order:
        n = workflow.nodes[i]
        try:
            instance = registered[i].node_factory()
        except Exception as err:
            raise WorkflowError(f"node {n.label}: cannot create the node: {type(err).__name__}: {err}") from err
        schemas[i] = parameter_schema(instance)
        values[i] = model_to_values(n.model, schemas[i], f"node {n.label}", n.version, runner.warn)
        instances[i] = instance
    for text in overrides:
        n, param, value = parse_override(text, workflow)
        info = flatten_schema(schemas[n.id]).get(param)
        if info is not None and info.xtype == "xstring" and value and not Path(value).is_absolute() \
                and Path(value).exists():
            value = str(Path(value).resolve())  # a path relative to the current folder
        set_value(values[n.id], schemas[n.id], param, value, f"node {n.label}", from_text=True)
    for i in order:
        inject(instances[i], values[i], schemas[i], workflow.nodes[i].version, f"node {workflow.nodes[i].label}")

    out.mkdir(parents=True, exist_ok=True)
    data_area = workflow.folder / "data"
    if data_area.is_dir() and data_area.resolve() != (out / "data").resolve():
        shutil.copytree(data_area, out / "data", dirs_exist_ok=True)
    total = len(order)
    log(f"workflow {workflow.folder.name}: {total} node(s), output in {out}")

    # 2. configure all nodes in topological order ---------------------------------------------------
    specs: dict[tuple[int, int], Any] = {}
    cfg_flow: dict[int, dict[str, Any]] = {}
    for i in order:
        n, reg = workflow.nodes[i], registered[i]
        in_specs = [_roundtrip_spec(specs.get((x.source, x.source_port)), reg.input_ports[k])
                    for k, x in sorted(inputs[i].items())]
        cfg_ctx, _ = _contexts(runner, n, _upstream_flow_variables(i, workflow, cfg_flow))
        with _cwd(out):
            try:
                result = instances[i].configure(cfg_ctx, *in_specs)
            except Exception as err:
                raise WorkflowError(f"node {n.label}: configure failed: {describe_error(err)}") from err
        result_list = _as_list(result, len(reg.output_ports))
        if len(result_list) != len(reg.output_ports):
            raise WorkflowError(f"node {n.label}: configure returned {len(result_list)} spec(s) for "
                                f"{len(reg.output_ports)} output port(s)")
        for k, spec in enumerate(result_list):
            specs[(i, k)] = spec
        cfg_flow[i] = dict(cfg_ctx.flow_variables)

    # 3. execute in topological order ----------------------------------------------------------------
    outputs: dict[tuple[int, int], Any] = {}
    tables: dict[tuple[int, int], Any] = {}
    runs: dict[int, NodeRun] = {}
    flow: dict[int, dict[str, Any]] = {}
    for step, i in enumerate(order, 1):
        n, reg = workflow.nodes[i], registered[i]
        run = runs[i] = NodeRun(n)
        runner._current = run
        in_objs = []
        for k, x in sorted(inputs[i].items()):
            obj, _ = _roundtrip_object(outputs[(x.source, x.source_port)], reg.input_ports[k])
            in_objs.append(obj)
        _, exec_ctx = _contexts(runner, n, _upstream_flow_variables(i, workflow, flow))
        desc = f"[{step}/{total}] {n.name} (#{i})"
        t0 = time.perf_counter()
        with runner.node_bar(desc), _cwd(out):
            try:
                result = instances[i].execute(exec_ctx, *in_objs)
            except Exception as err:
                raise WorkflowError(f"node {n.label}: execute failed: {describe_error(err)}") from err
        run.seconds = time.perf_counter() - t0
        flow[i] = run.flow_variables = dict(exec_ctx.flow_variables)
        n_out = len(reg.output_ports) + (1 if getattr(reg, "views", [None])[0] is not None else 0)
        result_list = _as_list(result, n_out)
        if len(result_list) != n_out:
            raise WorkflowError(f"node {n.label}: execute returned {len(result_list)} object(s) for "
                                f"{n_out} output(s)")
        node_dir = out / node_dir_name(n)
        for k, port in enumerate(reg.output_ports):
            obj = result_list[k]
            base = node_dir / f"port{k + 1}_{slug(port.name)}"
            run.files.extend(store_output(n, k, port, obj, base, fmt, outputs, tables))
        if n_out > len(reg.output_ports):
            run.files.extend(write_view(result_list[-1], node_dir / "view"))
        runner._current = None
        done = ", ".join(summary(tables.get((i, k)), outputs.get((i, k))) for k in range(len(reg.output_ports)))
        log(f"{desc}: done in {run.seconds:.1f} s" + (f" -> {done}" if done else ""))

    seconds = time.perf_counter() - t_start
    result_obj = RunResult(workflow, out, order, outputs, tables, runs, seconds)
    write_manifest(result_obj)
    log(f"workflow {workflow.folder.name}: finished in {seconds:.1f} s; outputs in {out}")
    return result_obj
