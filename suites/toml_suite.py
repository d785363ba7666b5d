"""User suites in TOML: `get_suite("path/to/my.toml")` or `--suite path/to/my.toml`.

    name = "cube-hard"
    description = "cube tasks at a longer horizon"
    base = "ogbench"        # optional: a suite name, or a .toml path relative to this file
    seeds = 5               # optional (default: the base's, else 12)
    tasks = [
        "cube-double-play-singletask-task1-v0",                        # its domain's settings in base
        { task = "cube-triple-play-singletask-task2-v0", discount = 0.995 },   # base settings, changed
        { task = "myenv-singletask-task1-v0", horizon = 1, discount = 0.99, sparse = false },  # new domain
    ]

    [budgets]               # offline_steps, online_steps, eval_interval, eval_episodes
    offline_steps = 200000  # (all four are required without a base)

    [config]                # every method (the harness keeps the keys a method's Config has)
    batch_size = 512

    [methods.qam]           # one method (registry name), every domain of this suite
    inv_temp = 3.0
    [methods.qam.cube-double-play]   # one method on one domain
    inv_temp = 10.0

A task table takes `task` and any of horizon, discount, sparse, rho, dataset (default
`<domain>-v0`), shard_dir. Arrays become tuples (e.g. hidden_dims = [256, 256]). Every error names
the file and the offending key.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from suites import (
    BUDGET_KEYS,
    DOMAIN_KEYS,
    Suite,
    SuiteError,
    TaskSettings,
    d4rl,
    domain_of,
    get_suite,
    normalize_method,
)

TOP_KEYS = ("name", "description", "base", "seeds", "tasks", "budgets", "config", "methods")
REQUIRED_DOMAIN_KEYS = ("horizon", "discount", "sparse")


def load(path: Path, _seen: tuple[Path, ...] = ()) -> Suite:
    """Parses and validates a TOML suite file; raises SuiteError naming the file and key."""
    if not path.is_file():
        raise SuiteError(f"suite file {path} does not exist")
    resolved = path.resolve()
    if resolved in _seen:
        raise SuiteError(
            f"{path}: base suites form a cycle: {' -> '.join(str(p) for p in (*_seen, resolved))}"
        )
    data = _parse(path)
    try:
        return _build(data, path, (*_seen, resolved))
    except SuiteError as error:
        raise SuiteError(f"{path}: {error}") from None


def _parse(path: Path) -> dict[str, Any]:
    try:
        import tomllib as toml
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as toml
        except ModuleNotFoundError:
            raise SuiteError(
                f"{path}: reading TOML suites on Python 3.10 needs `pip install tomli`"
            ) from None
    try:
        with path.open("rb") as f:
            return toml.load(f)
    except toml.TOMLDecodeError as error:
        raise SuiteError(f"{path}: not valid TOML: {error}") from None


def _build(data: dict[str, Any], path: Path, seen: tuple[Path, ...]) -> Suite:
    _check_keys(data, TOP_KEYS, "")
    base = _base(data.get("base"), path, seen)
    tasks = _tasks(data.get("tasks"), base)
    domains = dict(base.domains) if base else {}
    domains.update({t.domain: {k: getattr(t, k) for k in DOMAIN_KEYS} for t in tasks})
    return Suite(
        name=_string(data, "name", required=True),
        description=_string(data, "description", required=False),
        tasks=tasks,
        budgets=_budgets(data.get("budgets", {}), base),
        config_overrides={
            **(base.config_overrides if base else {}),
            **_values(data.get("config", {}), "config"),
        },
        methods=_methods(data.get("methods", {}), base, sorted({t.domain for t in tasks})),
        domains=domains,
        seeds=_seeds(data.get("seeds", base.seeds if base else 12)),
    )


def _closest(name: str, known: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _check_keys(table: Mapping[str, Any], known: tuple[str, ...], where: str) -> None:
    for key in table:
        if key not in known:
            raise SuiteError(
                f"unknown key {where + key!r}{_closest(key, known)}; known keys here: {', '.join(known)}"
            )


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise SuiteError(f"{where} must be a table ([{where}]), got {value!r}")
    return value


def _string(data: dict[str, Any], key: str, *, required: bool) -> str:
    value = data.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise SuiteError(f"{key} must be a {'non-empty ' if required else ''}string, got {value!r}")
    return value


def _seeds(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SuiteError(f"seeds must be an integer >= 1, got {value!r}")
    return value


def _base(value: Any, path: Path, seen: tuple[Path, ...]) -> Suite | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SuiteError(f"base must be a suite name or a .toml path, got {value!r}")
    try:
        if value.endswith(".toml") or "/" in value:
            return load(path.parent / value, seen)
        return get_suite(value)
    except SuiteError as error:
        raise SuiteError(f"base: {error}") from None


def _tasks(raw: Any, base: Suite | None) -> list[TaskSettings]:
    if not isinstance(raw, list) or not raw:
        raise SuiteError(f"tasks must be a non-empty array of task names or tables, got {raw!r}")
    tasks = []
    for i, entry in enumerate(raw):
        try:
            tasks.append(_task(entry, base))
        except SuiteError as error:
            raise SuiteError(f"tasks[{i}]: {error}") from None
    return tasks


def _task(entry: Any, base: Suite | None) -> TaskSettings:
    if isinstance(entry, str):
        name, given = entry, {}
    elif isinstance(entry, dict):
        _check_keys(entry, ("task", *DOMAIN_KEYS), "")
        name, given = entry.get("task"), {k: v for k, v in entry.items() if k != "task"}
        if not isinstance(name, str):
            raise SuiteError(f"a task table needs task = '<name>', got {entry!r}")
    else:
        raise SuiteError(f"expected a task name or a table, got {entry!r}")
    if d4rl.is_d4rl(name):
        name = d4rl.task_name(name)  # a Minari id names a directory without its slashes
    domain = domain_of(name)
    settings = {
        "dataset": d4rl.minari_id(name) if d4rl.is_d4rl(name) else f"{domain}-v0",
        **(base.domains.get(domain, {}) if base else {}),
        **given,
    }
    missing = [k for k in REQUIRED_DOMAIN_KEYS if k not in settings]
    if missing:
        source = f"base suite {base.name!r}" if base else "this file (it has no base)"
        raise SuiteError(
            f"task {name!r}: domain {domain!r} has no settings in {source}; give them inline: "
            f"{{ task = {name!r}, {', '.join(f'{k} = ...' for k in missing)} }}"
        )
    return TaskSettings(task=name, domain=domain, **settings)


def _budgets(raw: Any, base: Suite | None) -> dict[str, int]:
    raw = _table(raw, "budgets")
    _check_keys(raw, BUDGET_KEYS, "budgets.")
    budgets = dict(base.budgets) if base else {}
    for key, value in raw.items():
        minimum = 0 if key in ("offline_steps", "online_steps") else 1
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise SuiteError(f"budgets.{key} must be an integer >= {minimum}, got {value!r}")
        budgets[key] = value
    missing = [k for k in BUDGET_KEYS if k not in budgets]
    if missing:
        raise SuiteError(f"budgets: missing {', '.join(missing)} (required when there is no base suite)")
    return budgets


def _value(value: Any, where: str) -> Any:
    if isinstance(value, dict):
        raise SuiteError(f"{where}: a table is not a hyperparameter value")
    if isinstance(value, list):
        return tuple(_value(v, where) for v in value)
    return value


def _values(raw: Any, where: str) -> dict[str, Any]:
    return {key: _value(value, f"{where}.{key}") for key, value in _table(raw, where).items()}


def _methods(raw: Any, base: Suite | None, domains: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    table = {d: {m: dict(v) for m, v in ms.items()} for d, ms in (base.methods if base else {}).items()}
    for method, values in _table(raw, "methods").items():
        where = f"methods.{method}"
        values = _table(values, where)
        common = _values({k: v for k, v in values.items() if not isinstance(v, dict)}, where)
        per_domain = {k: v for k, v in values.items() if isinstance(v, dict)}
        for domain in per_domain:
            if domain not in domains:
                raise SuiteError(
                    f"{where}.{domain}: not a domain of this suite's tasks{_closest(domain, domains)}; "
                    f"domains: {', '.join(domains)}"
                )
        for domain in domains:
            entry = table.setdefault(domain, {}).setdefault(normalize_method(method), {})
            entry.update(common)
            entry.update(_values(per_domain.get(domain, {}), f"{where}.{domain}"))
    return table
