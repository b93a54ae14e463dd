"""Terminal plumbing of the ``cellseg`` command line: TensorFlow's start-up noise kept off stderr, data
warnings shown as one line each, a progress bar, argparse with one-line errors and bounded argument types,
and SIGTERM turned into an exception so that temporary files are cleaned up."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.abc
import importlib.machinery
import logging
import os
import re
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from cellseg.settings import Setting, arg_type

#: Start-up lines TensorFlow's C++ code writes to stderr when it is imported: absl's notice and info/warning
#: records such as "I0000 00:00:... port.cc:153] oneDNN custom operations are on" (not errors).
_TF_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
                       r"|[IW]\d{4} [\d:.]+ +\d+ \S+:\d+\] )")


class _QuietTensorFlowImport(importlib.abc.MetaPathFinder):
    """Imports ``tensorflow`` with file descriptor 2 sent to a temporary file, then writes back every line
    but TensorFlow's start-up notices (:data:`_TF_NOISE`), which ``TF_CPP_MIN_LOG_LEVEL`` no longer
    silences and which would break the one-line errors and warnings of the command line."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        real = spec.loader

        class Loader(importlib.abc.Loader):
            def create_module(self, spec: Any) -> Any:
                return real.create_module(spec)

            def exec_module(self, module: Any) -> None:
                with _filtered_stderr_fd():
                    real.exec_module(module)

        spec.loader = Loader()
        return spec


@contextlib.contextmanager
def _filtered_stderr_fd() -> Iterator[None]:
    import tempfile

    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        finally:
            with contextlib.suppress(Exception):
                sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            kept = [line for line in tmp.read().decode(errors="replace").splitlines(keepends=True)
                    if not _TF_NOISE.match(line)]
            if kept:
                os.write(2, "".join(kept).encode())


def _quiet_tensorflow() -> None:
    # TensorFlow's C++ start-up messages (oneDNN, absl) would add lines to the one-line errors
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietTensorFlowImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowImport())
    warnings.filterwarnings("ignore")
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


@contextlib.contextmanager
def show_input_warnings(prog: str = "cellseg") -> Iterator[None]:
    """Print :class:`cellseg.images.InputWarning` s as ``<prog>: warning: <message>`` on stderr, each finding once
    (the same mask checked twice, by path and by name, is reported once); other warnings stay silent."""
    from cellseg.images import InputWarning

    seen: set = set()

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if not issubclass(category, InputWarning):
            return
        key = getattr(message, "key", str(message))
        if key not in seen:
            seen.add(key)
            print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)

    with warnings.catch_warnings():
        warnings.filterwarnings("always", category=InputWarning)
        warnings.showwarning = show
        yield


class ProgressBar:
    """A tqdm progress bar fed with ``(fraction, message)`` callbacks."""

    def __init__(self, desc: str, total: int = 1000, disable: bool = False) -> None:
        from tqdm import tqdm

        self._bar = tqdm(total=total, desc=desc, disable=disable, leave=True, file=sys.stderr,
                         bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining} {postfix}")
        self._total = total

    def __call__(self, fraction: float, message: str = "") -> None:
        n = int(round(fraction * self._total))
        self._bar.update(max(0, n - self._bar.n))
        if message:
            self._bar.set_postfix_str(message, refresh=False)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# -- argument helpers -----------------------------------------------------------------------------

class ArgumentParser(argparse.ArgumentParser):
    """argparse with the one-line errors of the error contract: ``cellseg: error: <message> (see 'cellseg
    train --help')`` and exit status 2, instead of the usage block. Subcommand parsers inherit it."""

    def error(self, message: str) -> NoReturn:
        root = self.prog.split()[0]
        self.exit(2, f"{root}: error: {message} (see '{self.prog} --help')\n")


def int_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for integers in ``[lo, hi]``: anything else is refused naming the flag."""
    return arg_type(Setting("int", "", lo=lo, hi=hi), "value")


def float_arg(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
              hi_open: bool = False) -> Callable[[str], float]:
    """An argparse ``type`` for finite numbers in a range (``lo_open``/``hi_open`` exclude the bound)."""
    return arg_type(Setting("float", "", lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open), "value")


def int_list_arg(lo: int | None = None, hi: int | None = None) -> Callable[[str], list[int]]:
    """An argparse ``type`` for a comma-separated list of integers in ``[lo, hi]`` (at least one)."""
    one = int_arg(lo, hi)

    def parse(text: str) -> list[int]:
        values = [one(v) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of integers, got {text!r}")
        return values

    parse.__name__ = "list of integers"
    return parse


def pair_arg(lo: int = 1, allowed: Sequence[int] | None = None) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type`` for ``N`` or ``N,M`` (also ``NxM``): integers >= ``lo`` (or in ``allowed``)."""
    return arg_type(Setting("pair", "", lo=lo, choices=tuple(allowed) if allowed else None), "value")


#: Seeds everywhere: what NumPy and TensorFlow accept.
SEED = int_arg(0, 2**32 - 1)
_pair = pair_arg(1)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that temporary files are cleaned up as on Ctrl-C."""


#: Set when SIGTERM arrived: a library that turns the raised :class:`Terminated` into an error of its own
#: (TensorFlow does while it builds a graph) still ends the command as terminated.
_terminating: list[int] = []


def _raise_terminated(signum: int, frame: Any) -> None:
    _terminating.append(signum)
    raise Terminated(f"signal {signum}")


def run_command(prog: str, func: Callable[[Any], int | None], args: Any,
                terminated: str = "outputs left as they were") -> int:
    """Run a parsed subcommand with the exit contract of every cellseg command: user errors print one line
    ``<prog>: error: ...`` and return 2, cancel/Ctrl-C 130, SIGTERM (raised as :class:`Terminated`, so that
    temporary files are cleaned up as on Ctrl-C) 143; data warnings are shown once each."""
    import signal
    import threading

    from cellseg.errors import CancelledError, CellsegError

    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main_thread else None
    try:
        with show_input_warnings(prog):
            return int(func(args) or 0)
    except CancelledError as err:
        print(f"{prog}: cancelled: {err}", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{prog}: terminated; {terminated}", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if _terminating:  # Terminated, re-raised by a library as an error of its own
            print(f"{prog}: terminated; {terminated}", file=sys.stderr)
            return 143
        if isinstance(err, CellsegError):
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
        raise
    finally:
        _terminating.clear()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
