"""Stand-in of ``knime.extension.testing``: contexts for unit-testing nodes without KNIME.

Mirrors ``org.knime.python3.nodes/src/main/python/knime/extension/testing.py`` (KNIME 5.x): both
contexts take no constructor arguments and hold an editable ``flow_variables`` dict. As in the real
module, ``is_canceled()`` returns False and ``get_workflow_temp_dir()`` etc. raise RuntimeError;
override them in a subclass where a test needs something else (this works with the real module too).

Stand-in extras (private, absent from the real module): ``TestingExecutionContext._progress`` records
``(progress, message)`` of every ``set_progress`` call (validated like ``ExecutionContext.set_progress``),
``_warnings`` records ``set_warning`` messages and ``_canceled`` is what ``is_canceled()`` returns.
"""

from __future__ import annotations

from typing import Any

import knime.extension as knext

_NOT_AVAILABLE = "Not implemented for testing"


class _RecordingJavaContext:
    """What the Java side would do for the calls that ExecutionContext delegates."""

    def __init__(self, owner: _TestingBaseContext) -> None:
        self._owner = owner

    def set_progress(self, progress: float, message: str | None = None) -> None:
        self._owner._progress.append((progress, message))

    def set_warning(self, message: str) -> None:
        self._owner._warnings.append(message)

    def is_canceled(self) -> bool:
        return self._owner._canceled


class _TestingBaseContext:
    __test__ = False  # not a pytest test class

    def __init__(self) -> None:
        self._flow_variables: dict[str, Any] = {}
        self._progress: list[tuple[float, str | None]] = []
        self._warnings: list[str] = []
        self._canceled = False
        self._java_ctx = _RecordingJavaContext(self)

    @property
    def flow_variables(self) -> dict[str, Any]:
        return self._flow_variables

    def get_credential_names(self) -> list[str]:
        raise RuntimeError(_NOT_AVAILABLE)

    def get_credentials(self, identifier: str) -> Any:
        raise RuntimeError(_NOT_AVAILABLE)

    def set_warning(self, message: str) -> None:
        self._warnings.append(str(message))


class TestingConfigurationContext(_TestingBaseContext, knext.ConfigurationContext):
    pass


class TestingExecutionContext(_TestingBaseContext, knext.ExecutionContext):
    def set_progress(self, progress: float, message: str | None = None) -> None:
        knext.ExecutionContext.set_progress(self, progress, message)

    def is_canceled(self) -> bool:
        return self._canceled

    def get_workflow_temp_dir(self) -> str:
        raise RuntimeError(_NOT_AVAILABLE)

    def get_workflow_data_area_dir(self) -> str:
        raise RuntimeError(_NOT_AVAILABLE)

    def get_knime_home_dir(self) -> str:
        raise RuntimeError(_NOT_AVAILABLE)
