"""Stand-in of ``knime.extension.parameter``: node parameters, parameter groups, rules and the
(de)serialization helpers KNIME uses to load/save node settings.

Mirrors ``org.knime.python3.nodes/src/main/python/knime/extension/parameter.py`` (KNIME 5.x).
Parameters are descriptors: values live per instance in ``obj.__parameters__`` (a nested dict; groups
are sub-dicts). Setting a value runs the validator (type/range checks raise TypeError/ValueError).
Dialog JSON-schema / UI-schema extraction is not part of the stand-in.
"""

from __future__ import annotations

import inspect
import logging
import numbers
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from enum import Enum
from typing import Any

from knime.api import schema as ks
from knime.extension.version import Version

LOGGER = logging.getLogger("Python backend")

# ------------------------------------------------------------------ module-level helpers


def _is_group(param: Any) -> bool:
    return getattr(param, "__kind__", None) == "parameter_group"


def _is_parameter_or_group(obj: Any) -> bool:
    return hasattr(obj, "__kind__")


def _create_param_dict_if_not_exists(obj: Any) -> None:
    if not hasattr(obj, "__parameters__"):
        obj.__parameters__ = {}


def _get_parameters(obj: Any) -> dict[str, Any]:
    """Top-level parameters/groups of ``obj`` (class-level over the MRO, then instance-level), in order."""
    class_params: dict[str, Any] = {}
    for cls in inspect.getmro(type(obj))[:-1]:
        for name, value in cls.__dict__.items():
            if _is_parameter_or_group(value) and name not in class_params:
                class_params[name] = value
    instance_params = {n: v for n, v in obj.__dict__.items() if _is_parameter_or_group(v)}
    return {**class_params, **instance_params}


def extract_parameters(obj: Any, for_dialog: bool = False) -> dict:
    """All parameter values of ``obj`` as a nested dict: ``{"model": {name: value, group: {...}}}``."""
    return {"model": _extract_parameters(obj, for_dialog)}


def _extract_parameters(obj: Any, for_dialog: bool) -> dict:
    return {name: p._extract_value(obj, name, for_dialog) for name, p in _get_parameters(obj).items()}


def inject_parameters(
    obj: Any, parameters: dict, parameters_version: str | None = None, exclude_validations: bool = False
) -> None:
    """Set parameter values from ``{"model": {...}}``; missing parameters newer than ``parameters_version``
    get their (version-dependent) default. Values are validated unless ``exclude_validations``."""
    _inject_parameters(
        obj, parameters["model"], Version.parse_version(parameters_version), exclude_validations
    )


def _inject_parameters(
    obj: Any, parameters: dict, version: Version, exclude_validations: bool = False
) -> None:
    for name, param_obj in _get_parameters(obj).items():
        if name in parameters:
            param_obj._inject(obj, parameters[name], name, version, exclude_validations)
        elif param_obj._since_version > version:
            param_obj._set_default_for_version(obj, name, version, exclude_validations)


def validate_parameters(obj: Any, parameters: dict, saved_version: str | None = None) -> None:
    """Validate ``{"model": {...}}`` against the parameters of ``obj``; raises ValueError/TypeError."""
    _validate_parameters(obj, parameters["model"], Version.parse_version(saved_version))


def _validate_parameters(obj: Any, parameters: dict, saved_version: Version) -> None:
    for name, param_obj in _get_parameters(obj).items():
        if param_obj._since_version <= saved_version:
            if name not in parameters:
                raise ValueError(f'Parameter missing for key "{name}".')
            param_obj._validate(parameters[name], saved_version)


def validate_specs(obj: Any, specs: list) -> None:
    """Check that the input specs fit the parameters (e.g. column parameters need a table at port_index)."""
    for param in _get_parameters(obj).values():
        param._validate_specs(specs)


def _default_validator(value: Any) -> None:
    pass


DefaultValueProvider = Callable[[Version], Any]

_extension_version: Version | None = None


def set_extension_version(version: str) -> None:
    global _extension_version
    _extension_version = Version.parse_version(version)


def _get_extension_version() -> Version:
    if _extension_version is None:
        raise RuntimeError("The extension version has not been set by the backend.")
    return _extension_version


# ------------------------------------------------------------------ rules


class Condition(ABC):
    @abstractmethod
    def to_dict(self, find_scope: Callable[[Any], Any], ctx: Any) -> dict:
        """JSON-serializable form of the condition (``find_scope``: parameter -> its scope in the dialog)."""


class OneOf(Condition):
    """True if the value of ``subject`` (a parameter) is one of ``values``."""

    def __init__(self, subject: Any, values: list[Any]) -> None:
        super().__init__()
        self._values = values
        self._subject = subject

    def to_dict(self, find_scope: Callable[[Any], Any], ctx: Any) -> dict:
        return {"scope": str(find_scope(self._subject)), "schema": {"oneOf": [{"const": v} for v in self._values]}}


class Effect(Enum):
    SHOW = "SHOW"
    HIDE = "HIDE"
    ENABLE = "ENABLE"
    DISABLE = "DISABLE"


@dataclass
class Rule:
    condition: Condition
    effect: Effect


# ------------------------------------------------------------------ parameters


class _BaseParameter(ABC):  # noqa: B024 - abstract in KNIME via dialog methods not mirrored here
    """Base parameter descriptor; ``obj`` is the parameterized object (node or group holder)."""

    __kind__ = "parameter"

    def __init__(
        self,
        label: str | None,
        description: str | None,
        default_value: Any,
        validator: Callable[[Any], None] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        self._label = label
        self._default_value = default_value
        self._validator = validator if validator is not None else _default_validator
        self.__doc__ = description if description is not None else ""
        self._since_version = Version.parse_version(since_version)
        self._is_advanced = is_advanced
        self._rule: Rule | None = None

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name
        if self._label is None:
            self._label = name

    def _get_value(self, obj: Any, name: str, for_dialog: bool | None = None) -> Any:
        if not hasattr(obj, "__kind__"):
            _create_param_dict_if_not_exists(obj)
        if name not in obj.__parameters__:
            obj.__parameters__[name] = self._get_default()
        return obj.__parameters__[name]

    def _to_dict(self, value: Any) -> Any:
        return value

    def _from_dict(self, value: Any) -> Any:
        return value

    def _extract_value(self, obj: Any, name: str, for_dialog: bool | None = None) -> Any:
        return self._to_dict(self._get_value(obj, name, for_dialog))

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self
        return self._get_value(obj, self._name)

    def _get_default(self, version: Version | None = None) -> Any:
        if callable(self._default_value):
            return self._default_value(_get_extension_version() if version is None else version)
        return self._default_value

    def _set_default_for_version(
        self, obj: Any, name: str, version: Version, exclude_validations: bool = False
    ) -> None:
        self._set_value(obj, self._get_default(version), name, exclude_validations)

    def _inject(
        self,
        obj: Any,
        value: Any,
        name: str,
        version: Version | None = None,
        exclude_validations: bool = False,
    ) -> None:
        self._set_value(obj, self._from_dict(value), name, exclude_validations)

    def _set_value(self, obj: Any, value: Any, name: str, exclude_validations: bool = False) -> None:
        if not hasattr(obj, "__kind__"):
            _create_param_dict_if_not_exists(obj)
        if not exclude_validations:
            self._validate(value)
        obj.__parameters__[name] = value

    def __set__(self, obj: Any, value: Any) -> None:
        self._set_value(obj, value, self._name)

    def __str__(self) -> str:
        return f"\n\t - name: {getattr(self, '_name', self._label)}\n\t - label: {self._label}\n\t"

    def _validate(self, value: Any, version: Version | None = None) -> None:
        self._validator(value)

    def _validate_specs(self, specs: list) -> None:  # noqa: B027
        pass

    def validator(self, func: Callable[[Any], None]) -> None:
        """Decorator replacing the validator (including the default type/range checks) of this parameter."""
        self._validator = func

    def rule(self, condition: Condition, effect: Effect) -> _BaseParameter:
        self._rule = Rule(condition, effect)
        return self


class _NumericParameter(_BaseParameter):
    def __init__(
        self,
        label: str | None,
        description: str | None,
        default_value: Any,
        validator: Callable[[Any], None] | None = None,
        min_value: Any = None,
        max_value: Any = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        self.min_value = min_value
        self.max_value = max_value
        super().__init__(
            label,
            description,
            default_value,
            validator or self._default_validator,
            since_version,
            is_advanced,
        )

    def _default_validator(self, value: Any) -> None:
        self.check_type(value)
        self.check_range(value)

    @abstractmethod
    def check_type(self, value: Any) -> None: ...

    def check_range(self, value: Any) -> None:
        if self.min_value is not None and value < self.min_value:
            raise ValueError(f"{value} is smaller than the minimal value {self.min_value}")
        if self.max_value is not None and value > self.max_value:
            raise ValueError(f"{value} is > the max value {self.max_value}")


class IntParameter(_NumericParameter):
    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        default_value: int | DefaultValueProvider = 0,
        validator: Callable[[int], None] | None = None,
        min_value: int | None = None,
        max_value: int | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(
            label, description, default_value, validator, min_value, max_value, since_version, is_advanced
        )

    def check_type(self, value: Any) -> None:
        if not isinstance(value, int):
            raise TypeError(f"{value} is of type {type(value)}, but should be of type int.")


class DoubleParameter(_NumericParameter):
    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        default_value: float | DefaultValueProvider = 0.0,
        validator: Callable[[float], None] | None = None,
        min_value: float | None = None,
        max_value: float | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(
            label, description, default_value, validator, min_value, max_value, since_version, is_advanced
        )

    def check_type(self, value: Any) -> None:
        if not isinstance(value, numbers.Number):
            raise TypeError(f"{value} is of type {type(value)}, but should be a number.")


class BoolParameter(_BaseParameter):
    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        default_value: bool | DefaultValueProvider = False,
        validator: Callable[[bool], None] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(
            label,
            description,
            default_value,
            validator or self._default_validator,
            since_version,
            is_advanced,
        )

    def _default_validator(self, value: Any) -> None:
        if not isinstance(value, bool):
            raise TypeError(f"{value} is not a boolean")


class _BaseMultiChoiceParameter(_BaseParameter):
    pass


class StringParameter(_BaseMultiChoiceParameter):
    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        default_value: str | DefaultValueProvider = "",
        enum: list[str] | None = None,
        validator: Callable[[str], None] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
        choices: Callable | None = None,
    ) -> None:
        if enum is not None and not isinstance(enum, list):
            raise TypeError("The enum parameter must be a list.")
        if enum and choices:
            raise ValueError("Cannot specify both enum and choices")
        self._enum = enum
        self._choices = choices
        super().__init__(
            label,
            description,
            default_value,
            validator or self._default_validator,
            since_version,
            is_advanced,
        )

    def _default_validator(self, value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{value} is of type {type(value)}, but should be of type string.")


class LocalPathParameter(StringParameter):
    """A local file path (string). The default validator requires non-empty values to exist on disk."""

    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        placeholder_text: str = "",
        validator: Callable[[str], None] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(
            label=label,
            description=description,
            validator=validator,
            since_version=since_version,
            is_advanced=is_advanced,
        )
        self.placeholder_text = placeholder_text

    def _default_validator(self, value: Any) -> None:
        if value and not isinstance(value, str):
            raise TypeError(f"{value} is of type {type(value)}, but should be of type string.")
        if value and not os.path.exists(value):
            raise ValueError(f"{value} is not a valid file path.")


class MultilineStringParameter(_BaseParameter):
    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        default_value: str | DefaultValueProvider = "",
        validator: Callable[[str], None] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
        number_of_lines: int | None = 3,
    ) -> None:
        if not isinstance(number_of_lines, int):
            raise TypeError(
                f"Number of lines is of type {type(number_of_lines)}, but should be of type integer."
            )
        if number_of_lines <= 0:
            raise ValueError("Number of lines should be of type positive integer.")
        self._number_of_lines = number_of_lines
        super().__init__(
            label,
            description,
            default_value,
            validator or self._default_validator,
            since_version,
            is_advanced,
        )

    def _default_validator(self, value: Any) -> None:
        if not isinstance(value, str):
            raise TypeError(f"{value} is of type {type(value)}, but should be of type string.")


class EnumParameterOptions(Enum):
    """Subclass with members ``NAME = (label, description)``; the member *name* is the stored value."""

    def __init__(self, label: str, description: str) -> None:
        self.label = label
        self.description = description

    @classmethod
    def _get_default_option(cls) -> type[EnumParameterOptions]:
        class DefaultEnumOption(EnumParameterOptions):
            DEFAULT_OPTION = (
                "Default",
                "This is the default option, since additional options have not been provided.",
            )

        return DefaultEnumOption

    @classmethod
    def get_all_options(cls) -> list[str]:
        return cls._member_names_


class EnumParameter(_BaseMultiChoiceParameter):
    """Single choice among the members of an ``EnumParameterOptions`` subclass; the value is the member name."""

    class Style(Enum):
        RADIO = "radio"
        VALUE_SWITCH = "valueSwitch"
        DROPDOWN = "string"

    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        default_value: str | DefaultValueProvider | None = None,
        enum: type[EnumParameterOptions] | None = None,
        validator: Callable[[str], None] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
        style: EnumParameter.Style | None = None,
    ) -> None:
        validator = self._default_validator if validator is None else self._add_default_validator(validator)
        if enum is None or len(enum.get_all_options()) == 0:
            self._enum = EnumParameterOptions._get_default_option()
            default_value = self._enum.DEFAULT_OPTION.name  # type: ignore[attr-defined]
        else:
            self._enum = enum
            if default_value is None:
                # Real KNIME 5.x does `get_all_options()[0].name` on a str here, i.e. raises AttributeError:
                # always pass default_value (e.g. MyOptions.X.name) explicitly.
                default_value = self._enum.get_all_options()[0].name  # type: ignore[attr-defined]
        self._style = style
        super().__init__(label, description, default_value, validator, since_version, is_advanced)

    def _default_validator(self, value: Any) -> None:
        options = self._enum.get_all_options()
        if value not in options:
            raise ValueError(
                f"The selection '{value}' for parameter '{self._label}' is not one of the available options: "
                + "'"
                + "', '".join(options)
                + "'."
            )

    def _add_default_validator(self, func: Callable[[Any], None]) -> Callable[[Any], None]:
        def combined_validator(value: Any) -> None:
            self._default_validator(value)
            func(value)

        return combined_validator

    def validator(self, func: Callable[[Any], None]) -> None:
        self._validator = self._add_default_validator(func)


class _BaseColumnParameter(_BaseParameter):
    def __init__(
        self,
        label: str | None,
        description: str | None,
        port_index: int,
        column_filter: Callable[[ks.Column], bool] | None = None,
        default_value: Any = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(
            label,
            description,
            default_value=default_value,
            since_version=since_version,
            is_advanced=is_advanced,
        )
        self._port_index = port_index
        self._column_filter = column_filter if column_filter is not None else (lambda c: True)

    def _validate_specs(self, specs: list) -> None:
        if len(specs) <= self._port_index:
            raise ValueError(
                f"There are too few input specs. The column selection '{self._name}' requires a table input at index {self._port_index}"
            )
        if not isinstance(specs[self._port_index], ks.Schema):
            raise TypeError(
                f"The port index ({self._port_index}) of the column selection '{self._name}' does not point to a table input."
            )


class ColumnParameter(_BaseColumnParameter):
    """Name of a single column of the input table at ``port_index`` (default None = nothing selected)."""

    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        port_index: int = 0,
        column_filter: Callable[[ks.Column], bool] | None = None,
        include_row_key: bool = False,
        include_none_column: bool = False,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(label, description, port_index, column_filter, None, since_version, is_advanced)
        self._include_row_key = include_row_key
        self._include_none_column = include_none_column

    def _inject(
        self,
        obj: Any,
        value: Any,
        name: str,
        version: Version | None = None,
        exclude_validations: bool = False,
    ) -> None:
        super()._inject(obj, None if value == "" else value, name, version, exclude_validations)


class MultiColumnParameter(_BaseColumnParameter):
    """List of column names of the input table at ``port_index`` (default None)."""

    def __init__(
        self,
        label: str | None = None,
        description: str | None = None,
        port_index: int | None = 0,
        column_filter: Callable[[ks.Column], bool] | None = None,
        since_version: str | Version | None = None,
        is_advanced: bool = False,
    ) -> None:
        super().__init__(label, description, port_index or 0, column_filter, None, since_version, is_advanced)

    def _get_value(self, obj: Any, name: str, for_dialog: bool | None = False) -> Any:
        value = super()._get_value(obj, name, for_dialog)
        return [] if for_dialog and value is None else value

    def _inject(
        self,
        obj: Any,
        value: Any,
        name: str,
        version: Version | None = None,
        exclude_validations: bool = False,
    ) -> None:
        if value is not None:
            value = [c for c in value if c != ""]
        super()._inject(obj, value, name, version, exclude_validations)


# ------------------------------------------------------------------ parameter groups


class GetSetBase:
    """Routes attribute get/set on group holders to parameter descriptors (also for composed parameters)."""

    def __getattribute__(self, name: str) -> Any:
        obj = super().__getattribute__(name)
        if isinstance(obj, _BaseParameter):  # instance-level (composed) parameter
            return obj._get_value(self, name)
        return obj

    def __setattr__(self, name: str, value: Any) -> None:
        if hasattr(self, name) and name in self.__dict__.get("__parameters__", {}):
            param = self.__dict__.get(name)
            if not isinstance(param, _BaseParameter):
                param = next(c.__dict__[name] for c in type(self).__mro__ if name in c.__dict__)
            param._set_value(self, value, name)
        else:
            super().__setattr__(name, value)


class LayoutDirection(Enum):
    VERTICAL = "VerticalLayout"
    HORIZONTAL = "HorizontalLayout"


def parameter_group(
    label: str,
    since_version: str | Version | None = None,
    is_advanced: bool = False,
    layout_direction: LayoutDirection = LayoutDirection.VERTICAL,
) -> Callable[[type], type]:
    """Class decorator for parameter groups. Instantiate the group as a class attribute of a node (or group).

    Group validators: a ``validate(self, values)`` method, or ``@group.validator`` / ``@group.validator(override=False)``
    in the parent class. ``since_version``/``is_advanced``/``validator`` may also be passed to the constructor.
    """

    def decorate_class(original_class: type) -> type:
        class ParameterGroupHolder(GetSetBase, original_class):  # type: ignore[misc, valid-type]
            __kind__ = "parameter_group"

            def __init__(self, *args: Any, **kwargs: Any) -> None:
                reserved = {"since_version", "is_advanced", "validator"}
                if reserved & set(inspect.signature(original_class.__init__).parameters):
                    raise SyntaxError(
                        "Please refrain from declaring reserved keyword arguments in the `__init__` method of your parameter group class."
                    )
                self._since_version = Version.parse_version(kwargs.pop("since_version", since_version))
                self._is_advanced = kwargs.pop("is_advanced", is_advanced)
                self._validator = kwargs.pop("validator", None)
                self._rule = None
                self._override_internal_validator = False
                self._label = label
                self._layout_direction = layout_direction.value
                self.__parameters__ = {}
                self.__doc__ = original_class.__doc__
                super().__init__(*args, **kwargs)

            def __set_name__(self, owner: type, name: str) -> None:
                self._name = name

            def _is_descriptor(self) -> bool:
                return "_name" in self.__dict__

            def __get__(self, obj: Any, obj_type: type | None = None) -> Any:
                if obj is None:
                    return self
                return self._get_param_holder(obj)

            def __set__(self, obj: Any, values: Any) -> None:
                raise RuntimeError("Cannot set parameter group values directly.")

            def _get_param_holder(self, obj: Any) -> Any:
                """A copy of this group bound to the sub-dict ``obj.__parameters__[name]`` (composed: self)."""
                if not self._is_descriptor():
                    return self
                holder = deepcopy(self)
                for name, p in _get_parameters(self).items():  # composed child groups keep their identity
                    if _is_group(p) and "_name" not in p.__dict__:
                        holder.__dict__[name] = p
                if not hasattr(obj, "__kind__"):
                    _create_param_dict_if_not_exists(obj)
                if self._name not in obj.__parameters__:
                    obj.__parameters__[self._name] = holder.__dict__["__parameters__"]
                else:
                    holder.__dict__["__parameters__"] = obj.__parameters__[self._name]
                return holder

            def _get_value(self, obj: Any, name: str, for_dialog: bool | None = False) -> dict:
                holder = self._get_param_holder(obj)
                return {n: p._get_value(holder, n, for_dialog) for n, p in _get_parameters(holder).items()}

            def _extract_value(self, obj: Any, name: str, for_dialog: bool | None = False) -> dict:
                holder = self._get_param_holder(obj)
                return {
                    n: p._extract_value(holder, n, for_dialog) for n, p in _get_parameters(holder).items()
                }

            def _set_default_for_version(
                self, obj: Any, name: str, version: Version, exclude_validations: bool = False
            ) -> None:
                holder = self._get_param_holder(obj)
                for n, p in _get_parameters(holder).items():
                    p._set_default_for_version(holder, n, version, exclude_validations)

            def _inject(
                self, obj: Any, values: dict, name: str, version: Version, exclude_validations: bool = False
            ) -> None:
                _inject_parameters(self._get_param_holder(obj), values, version, exclude_validations)

            def _validate(self, values: dict, version: Version | None = None) -> None:
                _validate_parameters(self, values, version or Version(0, 0, 0))
                if hasattr(self, "validate") and not self._override_internal_validator:
                    self.validate(values)
                if self._validator is not None:
                    self._validator(values)

            def _validate_specs(self, specs: list) -> None:
                validate_specs(self, specs)

            def validator(self, override: Any = None) -> Any:
                """``@group.validator`` (overrides ``validate``) or ``@group.validator(override=False)``."""
                if isinstance(override, bool):

                    def decorator(func: Callable[[dict], None]) -> None:
                        self._validator = func
                        self._override_internal_validator = override

                    return decorator
                self._validator = override
                self._override_internal_validator = True
                return None

            def __str__(self) -> str:
                return (
                    f"\tGroup name: {self.__dict__.get('_name', self._label)}\n\tGroup label: {self._label}"
                )

        if hasattr(ParameterGroupHolder, "rule"):
            LOGGER.warning(
                f"Can't add the rule method to the parameter group {original_class} because it already has an attribute named 'rule'."
            )
        else:

            def rule(self: Any, condition: Condition, effect: Effect) -> Any:
                self._rule = Rule(condition, effect)
                return self

            ParameterGroupHolder.rule = rule  # type: ignore[attr-defined]
        return ParameterGroupHolder

    return decorate_class
