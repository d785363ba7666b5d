"""The method registry: names, presets, typed config overrides and discovery.

Names are case-insensitive with '-' and '_' equal. A preset is a registered name for a class
with its own defaults (`qam-fql` = `qam` with fql_alpha > 0). Methods are found in this
package's modules and in other packages through the `flowarena.algorithms` entry-point group.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import pkgutil
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, TypeVar

import torch

from algorithms import values
from algorithms.base import Agent, EnvSpec, stack_agent_states

ENTRY_POINT_GROUP = "flowarena.algorithms"
_BUILDING_BLOCKS = {"base", "registry", "nets", "flow", "critic"}

A = TypeVar("A", bound=type[Agent])


class RegistryError(ValueError):
    """An unknown method or config key, a value of the wrong type or outside the key's valid values."""


@dataclass(frozen=True)
class Method:
    name: str  # canonical registry name, e.g. "qam-fql"
    cls: type[Agent]
    defaults: Mapping[str, Any] = field(default_factory=dict)  # the preset's own defaults
    description: str = ""

    def default_config(self) -> Any:
        return self.cls.Config(**self.defaults)


_methods: dict[str, Method] = {}
_discovered = False


def normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-")


def register(
    cls: A | None = None, *, presets: Mapping[str, Mapping[str, Any]] | None = None
) -> A | Callable[[A], A]:
    """Class decorator: `@register` or `@register(presets={"qam-fql": {"fql_alpha": 30.0}})`."""

    def wrap(agent_cls: A) -> A:
        if not agent_cls.name:
            raise RegistryError(f"{agent_cls.__name__} needs a class attribute `name` to be registered")
        add(Method(normalize(agent_cls.name), agent_cls, {}, _first_line(agent_cls.__doc__)))
        for preset, defaults in (presets or {}).items():
            _check_keys(agent_cls, defaults, preset)
            check_values(agent_cls, defaults, preset)
            add(Method(normalize(preset), agent_cls, dict(defaults), _first_line(agent_cls.__doc__)))
        return agent_cls

    return wrap(cls) if cls is not None else wrap


def add(method: Method) -> None:
    existing = _methods.get(method.name)
    if existing is not None and existing.cls.__qualname__ != method.cls.__qualname__:
        raise RegistryError(
            f"method name {method.name!r} is taken by {existing.cls.__module__}.{existing.cls.__qualname__}"
        )
    _methods[method.name] = method


def unregister(name: str) -> None:
    _methods.pop(normalize(name), None)


def discover() -> None:
    """Import this package's method modules and the `flowarena.algorithms` entry points."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module("algorithms")
    for module in pkgutil.iter_modules(package.__path__):
        if module.name not in _BUILDING_BLOCKS and not module.name.startswith("_"):
            importlib.import_module(f"algorithms.{module.name}")
    for entry_point in entry_points(group=ENTRY_POINT_GROUP):
        loaded = entry_point.load()
        if isinstance(loaded, type) and issubclass(loaded, Agent) and normalize(loaded.name) not in _methods:
            register(loaded)


def names() -> list[str]:
    discover()
    return sorted(_methods)


def get(name: str) -> Method:
    discover()
    key = normalize(name)
    if key not in _methods:
        raise RegistryError(
            f"unknown method {name!r}{_suggest(key, _methods)}; known methods: {', '.join(names())}"
        )
    return _methods[key]


def config_fields(method: str | Method) -> dict[str, dataclasses.Field]:
    m = get(method) if isinstance(method, str) else method
    return {f.name: f for f in dataclasses.fields(m.cls.Config)}


def make_config(method: str | Method, overrides: Mapping[str, Any] | None = None) -> Any:
    """The method's config: the class defaults, then the preset's, then `overrides` (strings are
    parsed by the field's type)."""
    m = get(method) if isinstance(method, str) else method
    values = dict(m.defaults)
    values.update(parse_overrides(m, overrides or {}))
    return m.cls.Config(**values)


def parse_overrides(method: str | Method, overrides: Mapping[str, Any]) -> dict[str, Any]:
    m = get(method) if isinstance(method, str) else method
    _check_keys(m.cls, overrides, m.name)
    hints = typing.get_type_hints(m.cls.Config)
    parsed = {key: coerce(value, hints[key], key) for key, value in overrides.items()}
    check_values(m.cls, parsed, m.name)
    return parsed


def check_values(cls: type[Agent], parsed: Mapping[str, Any], label: str) -> None:
    """Refuses the first value outside its key's declared valid values (algorithms/values.py)."""
    bad = values.check(cls.Config, parsed)
    if bad is not None:
        key, value, rule = bad
        shown = ",".join(map(str, value)) if isinstance(value, (tuple, list)) else value
        raise RegistryError(f"{label}: {key}={shown} {rule.problem(value)}; {key} takes {rule.describe()}")


def non_default_overrides(method: str | Method, config: Any) -> dict[str, Any]:
    """Fields of `config` that differ from the method's (preset) defaults."""
    m = get(method) if isinstance(method, str) else method
    default = m.default_config()
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(default, f.name)
    }


def create(
    method: str | Method,
    spec: EnvSpec,
    config: Any = None,
    *,
    device: str | torch.device = "cpu",
    seed: int | Sequence[int] = 0,
    state: dict[str, Any] | None = None,
) -> Agent:
    """Build an agent with its network initialisation seeded by `seed`, leaving the global RNG
    as it was. With a list of seeds the agent holds them stacked, slice k initialised exactly as
    a lone agent of seed k (networks, targets and generators). `state` (an agent state_dict, e.g.
    from `stack_agent_states`) is loaded instead of that initialisation."""
    m = get(method) if isinstance(method, str) else method
    config = m.default_config() if config is None else config
    if not isinstance(seed, int):
        seed = [int(s) for s in seed]
        if not seed or len(set(seed)) != len(seed):
            raise RegistryError(f"stacked seeds must be distinct and at least one, got {seed}")
        if not m.cls.supports_seed_stack:
            raise RegistryError(f"{m.name} does not support stacked seeds; run its seeds one at a time")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed if isinstance(seed, int) else seed[0])
        agent = m.cls(spec, config, device=device, seed=seed).to(device)
    if state is None and not isinstance(seed, int):
        # lone agents on the same device: their generator states fit the stack's generators
        state = stack_agent_states(
            [create(m, spec, config, device=device, seed=s).state_dict() for s in seed]
        )
    if state is not None:
        agent.load_state_dict(state)
    return agent


def coerce(value: Any, annotation: Any, key: str) -> Any:
    """Parse `value` (often a string from the command line) as `annotation`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in args:
                return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return coerce(value, arg, key)
            except RegistryError as error:
                errors.append(str(error))
        raise RegistryError(errors[0])
    if origin in (tuple, list, Sequence):
        items = value
        if isinstance(value, str):
            items = [v for v in value.strip("()[] ").split(",") if v.strip()]
        if not isinstance(items, (list, tuple)):
            raise RegistryError(f"{key} expects a comma-separated list, got {value!r}")
        item_type = args[0] if args else str
        parsed = [coerce(v, item_type, key) for v in items]
        return tuple(parsed) if origin is tuple else parsed
    if annotation is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in {"true", "1", "yes", "on"}:
            return True
        if text in {"false", "0", "no", "off"}:
            return False
        raise RegistryError(f"{key} expects true or false, got {value!r}")
    if annotation in (int, float):
        if isinstance(value, bool):
            raise RegistryError(f"{key} expects {annotation.__name__}, got {value!r}")
        try:
            number = float(value) if annotation is float else _as_int(value)
        except (TypeError, ValueError):
            raise RegistryError(f"{key} expects {annotation.__name__}, got {value!r}") from None
        return number
    if annotation is str:
        return str(value)
    return value


def _as_int(value: Any) -> int:
    number = float(value)
    if not number.is_integer():
        raise ValueError(value)
    return int(number)


def _check_keys(cls: type[Agent], overrides: Mapping[str, Any], label: str) -> None:
    known = [f.name for f in dataclasses.fields(cls.Config)]
    for key in overrides:
        if key not in known:
            raise RegistryError(
                f"unknown config key {key!r} for {label}{_suggest(key, known)}; valid keys: {', '.join(known)}"
            )


def _suggest(key: str, choices: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _first_line(doc: str | None) -> str:
    return (doc or "").strip().splitlines()[0] if doc and doc.strip() else ""
