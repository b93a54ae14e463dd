"""Test helpers shared by the command-line and data-safety tests."""

from __future__ import annotations

from pathlib import Path

#: The smallest network the CLI trains (8 rays, depth 1, 4 filters).
TINY_ARCH = ["--n-rays", "8", "--depth", "1", "--filters", "4"]


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under `root` (hidden ones too) -> its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def one_line_error(capsys) -> str:
    """The one stderr line of a failed CLI call (asserted to be exactly one ``cellseg: error:`` line)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("cellseg: error:"), err
    return err[0]
