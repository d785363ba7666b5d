"""The valid values of config keys: what each method declares and the registry checks.

A method's config declares, for each key, the values that mean something (a learning rate is a
finite number above 0, a Polyak rate lies in (0, 1], a count is an integer of at least 1). The
declarations are a `VALID` mapping on the config dataclass, read along its bases, so keys that
many methods share (`lr`, `target_tau`, `hidden_dims`, ...) are declared once in `BaseConfig`.
Booleans need no declaration: their type says it all. `registry.parse_overrides` and
`registry.register` (for presets) check every value with `problem`, so a bad `--set`, `--grid`,
TOML entry, suite value or preset is refused where it is parsed, never trained on.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Valid:
    """A key's valid values: a number in a range (bounds open or closed, an integer or not), one
    of some choices, a sequence of such numbers, and/or None."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False
    choices: tuple[str, ...] = ()
    sequence: bool = False  # a non-empty tuple whose every item is valid
    none: bool = False  # None is valid too
    even: bool = False

    def describe(self) -> str:
        """The valid values in words, e.g. 'a finite number > 0', 'a number in (0, 1]'."""
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        else:
            text = self._describe_number()
        if self.sequence:
            text = f"a non-empty comma-separated list, each {text}"
        return text + (", or none" if self.none else "")

    def _describe_number(self) -> str:
        kind = "an even integer" if self.even else "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return kind

    def problem(self, value: Any) -> str | None:
        """None when `value` is valid, else what is wrong with it (for the error message)."""
        if value is None:
            return None if self.none else "none is not allowed"
        if self.sequence:
            if not isinstance(value, (tuple, list)) or not value:
                return "needs at least one entry"
            for item in value:
                problem = self._item_problem(item)
                if problem:
                    return f"entry {item!r} {problem}"
            return None
        return self._item_problem(value)

    def _item_problem(self, value: Any) -> str | None:
        if self.choices:
            return None if value in self.choices else "is not one of the choices"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return "is not a number"
        if not math.isfinite(value):
            return "is not finite"
        if self.integer and value != int(value):
            return "is not an integer"
        if self.even and int(value) % 2:
            return "is not even"
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return "is out of range"
        if self.high is not None and (value > self.high or (self.high_open and value == self.high)):
            return "is out of range"
        return None


def _num(value: float) -> str:
    return f"{value:g}"


# The kinds of value most keys are.
COUNT = Valid(low=1, integer=True)  # sizes, steps, counts, batch
COUNT_OR_ZERO = Valid(low=0, integer=True)
LAYER_WIDTHS = Valid(low=1, integer=True, sequence=True)
POSITIVE = Valid(low=0, low_open=True)  # learning rates, scales that divide or are logged
NON_NEGATIVE = Valid(low=0)  # coefficients that may be 0 (0 turns the term off)
FINITE = Valid()  # any finite number (a sign may be meaningful)
POLYAK_RATE = Valid(low=0, high=1, low_open=True)  # (0, 1]
PROBABILITY = Valid(low=0, high=1)  # [0, 1]
OPEN_UNIT = Valid(low=0, high=1, low_open=True, high_open=True)  # (0, 1)
FINITE_OR_NONE = Valid(none=True)


def one_of(*choices: str) -> Valid:
    return Valid(choices=tuple(choices))


def declared(config_cls: type) -> dict[str, Valid]:
    """Every key's declaration: the `VALID` mappings of the config class and its bases (the
    class's own win), plus booleans, which their type declares."""
    merged: dict[str, Valid] = {}
    for cls in reversed(config_cls.__mro__):
        merged.update(cls.__dict__.get("VALID", {}))
    hints = typing.get_type_hints(config_cls)
    return {
        name: merged[name]
        for name in _field_names(config_cls)
        if name in merged and hints.get(name) is not bool
    }


def undeclared(config_cls: type) -> list[str]:
    """Keys of the config that are neither booleans nor declared: a method's omission."""
    hints = typing.get_type_hints(config_cls)
    known = declared(config_cls)
    return [name for name in _field_names(config_cls) if name not in known and hints.get(name) is not bool]


def check(config_cls: type, values: Mapping[str, Any]) -> tuple[str, Any, Valid] | None:
    """The first (key, value, declaration) of `values` that is not valid, or None."""
    rules = declared(config_cls)
    for key, value in values.items():
        rule = rules.get(key)
        if rule is not None and rule.problem(value) is not None:
            return key, value, rule
    return None


def describe_all(config_cls: type) -> dict[str, str]:
    """Each key's valid values in words (booleans: 'true or false')."""
    rules = declared(config_cls)
    hints = typing.get_type_hints(config_cls)
    return {
        name: rules[name].describe()
        if name in rules
        else "true or false"
        if hints.get(name) is bool
        else "any"
        for name in _field_names(config_cls)
    }


def _field_names(config_cls: type) -> list[str]:
    return [field.name for field in dataclasses.fields(config_cls)]
