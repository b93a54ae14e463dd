"""Safe output files: atomic writes of files and folders, checks of output locations, memory.

A file or folder is written under a temporary name next to its target and renamed into place, so that a
reader never sees half a result and a failure leaves the old one as it was. Output locations are checked
before any work is done. Problems raise :class:`cellseg.errors.InputError` with a one-line message.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from cellseg.errors import InputError

__all__ = [
    "Recogniser",
    "atomic_folder",
    "atomic_path",
    "available_memory",
    "check_distinct_outputs",
    "check_output_file",
    "check_output_folder",
    "check_outside_inputs",
    "check_writable_location",
    "format_bytes",
    "set_default_mode",
    "write_bytes_atomic",
]

#: Type of an "is this an earlier output of mine?" test for :func:`check_output_folder`.
Recogniser = Callable[[Path], bool]


@functools.cache
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_default_mode(path: str | os.PathLike) -> None:
    """Give a file or folder made by :mod:`tempfile` (private: 0600/0700) the permissions a plain
    ``open``/``mkdir`` would have given it under the process umask, before it is renamed into place."""
    base = 0o777 if Path(path).is_dir() else 0o666
    os.chmod(path, base & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, what: str = "file") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, on any error remove it.

    Readers never see a half-written file: whatever writes to the yielded path either completes and
    replaces `path` in one :func:`os.replace`, or leaves nothing behind (also on cancellation).
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise InputError(f"{path}: cannot write to folder {path.parent} ({exc.strerror or exc})") from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise InputError(f"{path}: cannot write {what} ({exc.strerror or exc})") from exc
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder + :func:`os.replace`)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    return Path(path)



# ----------------------------------------------------------------------------------------------
# output locations: checked before any work is done, written atomically
# ----------------------------------------------------------------------------------------------
def _resolve(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve(strict=False)


def _nearest_existing(path: Path) -> Path:
    p = Path(os.path.abspath(path))
    while not os.path.lexists(p) and p != p.parent:
        p = p.parent
    return p


def check_writable_location(path: str | os.PathLike, what: str = "output") -> Path:
    """Raise :class:`InputError` unless `path` (a file or folder still to be written) can be created.

    Its nearest existing ancestor must be a folder in which this process can create a file (checked by
    creating and removing a hidden probe file, which also catches read-only file systems). Missing
    folders on the way are not created here. Returns `path` as a :class:`~pathlib.Path`.
    """
    if not str(path).strip():  # before Path(), which makes "" the current folder "."
        raise InputError(f"{what}: the path is empty")
    path = Path(path)
    base = _nearest_existing(Path(os.path.abspath(path)).parent)
    if not base.is_dir():
        raise InputError(f"cannot write {what} {path}: {base} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".cellseg-probe-", dir=base)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise InputError(f"cannot write {what} {path}: folder {base} is not writable "
                             f"({exc.strerror or exc})") from exc
        raise InputError(f"cannot write {what} {path}: cannot create files in {base} ({exc.strerror or exc})") from exc
    os.close(fd)
    os.unlink(probe)
    return path


def available_memory() -> int | None:
    """Bytes of memory this process can still allocate without swapping, as far as the system tells:
    ``MemAvailable`` of ``/proc/meminfo`` (else free pages from :func:`os.sysconf`), lowered to what a
    cgroup memory limit leaves. None when unknown."""
    avail = None
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
    if avail is None:
        with contextlib.suppress(OSError, ValueError, AttributeError):
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(limit_file).read_text().strip())  # "max" (no limit) raises ValueError
            if limit < 1 << 60:
                left = max(limit - int(Path(usage_file).read_text().strip()), 0)
                avail = left if avail is None else min(avail, left)
            break
    return avail


def format_bytes(n: float) -> str:
    """``n`` bytes in human units (``1.5 GiB``)."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _overlap(out: str | os.PathLike, inputs: dict[str, str | os.PathLike | None]) -> tuple[str, str, Path] | None:
    """(relation, input description, input path) of the first input that `out` is, contains or lies in."""
    o = _resolve(out)
    for desc, inp in inputs.items():
        if inp is None or not os.path.lexists(inp):
            continue
        i = _resolve(inp)
        if o == i:
            return "is", desc, Path(inp)
        if i in o.parents:
            return "lies inside", desc, Path(inp)
        if o in i.parents:
            return "contains", desc, Path(inp)
    return None


def check_outside_inputs(path: str | os.PathLike, what: str,
                         inputs: dict[str, str | os.PathLike | None]) -> Path:
    """Raise :class:`InputError` (naming both) if the output `path` is, contains or lies inside one of
    `inputs` (description -> path, e.g. ``{"images folder": "raw"}``); return `path` as a Path."""
    if not str(path).strip():  # before Path(), which makes "" the current folder "."
        raise InputError(f"{what}: the path is empty")
    path = Path(path)
    hit = _overlap(path, inputs)
    if hit is not None:
        relation, desc, inp = hit
        raise InputError(f"{what} {path} {relation} the {desc} {inp}; choose a location outside the inputs "
                         "(their files could be overwritten)")
    return path


def check_output_folder(path: str | os.PathLike, what: str = "output folder", *,
                        inputs: dict[str, str | os.PathLike | None] | None = None, overwrite: bool = False,
                        earlier_output: Recogniser | None = None,
                        earlier_desc: str = "an earlier result") -> Path:
    """Check, before any work, that a command may write its result folder at `path`.

    Refused (:class:`InputError`, one line): a folder that is, contains or lies inside one of `inputs`
    (description -> path, e.g. ``{"images folder": "raw"}``); an existing file; a non-empty folder,
    unless ``earlier_output(path)`` recognises it as an earlier result of the same command *and*
    `overwrite` is set; a location whose parent cannot be written (the result is assembled in a
    temporary sibling folder, see :func:`atomic_folder`). A missing or empty folder is accepted.
    """
    path = check_outside_inputs(path, what, inputs or {})
    if os.path.lexists(path):
        if not path.is_dir():
            raise InputError(f"{what} {path} exists and is not a folder; choose a new folder")
        try:
            used = any(path.iterdir())
        except OSError as exc:
            raise InputError(f"{what} {path} cannot be read ({exc.strerror or exc})") from exc
        if used:
            if earlier_output is None or not earlier_output(path):
                raise InputError(f"{what} {path} is not empty and does not hold only {earlier_desc}; refusing to "
                                 "write into it: choose a new or empty folder")
            if not overwrite:
                raise InputError(f"{what} {path} already holds {earlier_desc}; pass --overwrite to replace it")
    return check_writable_location(path, what)


def check_output_file(path: str | os.PathLike, what: str = "output file", *,
                      inputs: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Check, before any work, that a report file (CSV, JSON) can be written at `path`.

    Refused: a folder; the path of an input file, or of an existing file inside an input folder (it would
    be overwritten); a location that cannot be written. An existing unrelated file is replaced (reports are
    written atomically, see :func:`atomic_path`).
    """
    if not str(path).strip():  # before Path(), which makes "" the current folder "."
        raise InputError(f"{what}: the path is empty")
    path = Path(path)
    if os.path.isdir(path):
        raise InputError(f"{what} {path} is a folder; give a file name")
    if os.path.lexists(path):
        hit = _overlap(path, inputs or {})
        if hit is not None:
            _, desc, inp = hit
            raise InputError(f"{what} {path} would overwrite a file of the {desc} {inp}; choose another path")
        if not os.path.isfile(path):
            raise InputError(f"{what} {path} exists and is not a regular file")
    return check_writable_location(path, what)


def check_distinct_outputs(outputs: dict[str, str | os.PathLike | None]) -> None:
    """Raise :class:`InputError` if two outputs (description -> path) are the same or one lies in the other."""
    given = [(desc, p) for desc, p in outputs.items() if p is not None]
    for k, (desc_a, a) in enumerate(given):
        for desc_b, b in given[k + 1:]:
            ra, rb = _resolve(a), _resolve(b)
            if ra == rb:
                raise InputError(f"the {desc_a} and the {desc_b} are the same path {a}; give each its own")
            if ra in rb.parents or rb in ra.parents:
                inner, outer = ((desc_b, b), (desc_a, a)) if ra in rb.parents else ((desc_a, a), (desc_b, b))
                raise InputError(f"the {inner[0]} {inner[1]} lies inside the {outer[0]} {outer[1]}; "
                                 "give each its own place")


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    fn = _renameat2()
    if fn is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _is_empty_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and not any(path.iterdir())


def _commit_folder(tmp: Path, path: Path, what: str, replace: bool) -> None:
    if not os.path.lexists(path) or _is_empty_dir(path):
        try:
            os.rename(tmp, path)  # atomic; replaces an empty folder, fails on a non-empty one
        except OSError as exc:
            if exc.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
                raise InputError(f"{what} {path} was created by someone else while this ran (another run writing "
                                 "to the same place?); left it as it was") from exc
            raise
        return
    if not replace:
        raise InputError(f"{what} {path} exists; left it as it was")
    if path.is_symlink() or not path.is_dir():
        raise InputError(f"{what} {path} exists and is not a folder; left it as it was")
    if _exchange(tmp, path):  # the new folder is at `path`, the old one at `tmp` (removed by the caller)
        return
    # no atomic exchange here: move the old folder aside, the new one in, and the old one back on failure
    old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
    try:
        os.rename(path, old)  # replaces the empty placeholder `old`
    except BaseException:
        with contextlib.suppress(OSError):
            old.rmdir()
        raise
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike, what: str = "folder", replace: bool = False) -> Iterator[Path]:
    """Yield an empty temporary folder next to `path`; when the block succeeds it becomes `path` at once.

    `path` must not exist or be an empty folder; with `replace` it may be a folder, which is swapped for
    the new one and then deleted (callers decide first whether that folder may be replaced, e.g. with
    :func:`check_output_folder` or :func:`cellseg.bundle.check_model_target`). On Linux the swap is one
    ``renameat2(RENAME_EXCHANGE)``, so that at no moment is there nothing at `path`; elsewhere two
    renames, undone on failure. On any error or interruption the temporary folder (and any parent
    folders made for it) is removed and `path` is left as it was.
    """
    path = Path(path)
    parent = path.parent
    made = []
    p = Path(os.path.abspath(parent))
    while not os.path.lexists(p) and p != p.parent:
        made.append(p)
        p = p.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc

    def clean() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:  # deepest first; only folders made here and still empty
            with contextlib.suppress(OSError):
                d.rmdir()

    try:
        yield tmp
    except BaseException:
        clean()
        raise
    try:
        set_default_mode(tmp)
        _commit_folder(tmp, path, what, replace)
    except BaseException as exc:
        clean()
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {what} {path}: {exc.strerror or exc}") from exc
        raise
    shutil.rmtree(tmp, ignore_errors=True)  # after an exchange: the old folder
