"""Stand-in of ``knime.extension.version``: the ``Version`` namedtuple used for ``since_version``."""

from __future__ import annotations

from collections import namedtuple


class Version(namedtuple("Version", ["major", "minor", "patch"])):
    """A comparable ``major.minor.patch`` version."""

    def __repr__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}"

    def __str__(self) -> str:
        return self.__repr__()

    @classmethod
    def parse_version(cls, version_string: str | Version | None) -> Version:
        """Parse "0.1.2"; None gives 0.0.0; a malformed string raises ValueError."""
        if version_string is None:
            return Version(0, 0, 0)
        if type(version_string) is Version:
            return version_string
        try:
            major, minor, patch = (int(part) for part in str(version_string).split("."))
            if min(major, minor, patch) < 0:
                raise ValueError
            return Version(major, minor, patch)
        except ValueError:
            raise ValueError(
                f"Incorrect version format: '{version_string}'. Must be of the form 'major.minor.patch', "
                "with non-negative integers for major, minor and patch."
            ) from None
