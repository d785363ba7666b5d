"""Named benchmark suites: task lists, per-domain settings and per-method hyperparameters.

Pure data: importing `suites` never imports torch, so the analysis side and the CLI can use it.

    get_suite("ogbench")          the QAM paper's 50 OGBench tasks (suites/ogbench.py)
    get_suite("ogbench-qgf")      the QGF paper's protocol (suites/ogbench.py)
    get_suite("smoke")            3 tasks, tiny budgets and networks (suites/smoke.py)
    get_suite("demo")             cube-single task1, small networks: `flowarena demo` (suites/demo.py)
    get_suite("d4rl")             the FQL paper's 18 D4RL tasks through Minari (suites/d4rl.py)
    get_suite("ogbench-quality")  the QAM paper's data-quality study: noisy/stitch data (suites/ogbench.py)
    get_suite("path/to/my.toml")  a user suite (see `load_toml`); suites/<name>.toml files are named suites

The harness builds a run's config from `suite.config_overrides` (every method), then
`suite.method_overrides(method, task)` (this method on this task's domain), then the user's overrides,
keeping only the keys that the method's Config has. `suite.method_eval_params(method)` is the list of
evaluation-time settings a run of the method evaluates unless the user gives its own `--eval-param`
(every suite: QGF's guidance weights QGF_GUIDANCE_WEIGHTS, DEFAULT_EVAL_PARAMS).

`suite.settings_for(task)` also answers for an OGBench or D4RL task the suite does not list: its
domain's settings when the suite has that domain, else the defaults (suites/defaults.py for OGBench,
suites/d4rl.py for D4RL), with a one-line notice saying which. A D4RL task may be named by its
Minari id (`D4RL/antmaze/umaze-v1`); its settings carry the harness's name (`D4RL-antmaze-umaze-v1`).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
import itertools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BUDGET_KEYS",
    "DEFAULT_EVAL_PARAMS",
    "DOMAIN_KEYS",
    "QGF_GUIDANCE_WEIGHTS",
    "RHO_METHODS",
    "Suite",
    "SuiteError",
    "TaskSettings",
    "describe",
    "domain_of",
    "get_suite",
    "load_toml",
    "make_tasks",
    "normalize_method",
    "suite_names",
]

BUDGET_KEYS = ("offline_steps", "online_steps", "eval_interval", "eval_episodes")
# Methods whose ensemble critic takes the domain's pessimism rho (mean - rho * std in the TD target).
RHO_METHODS = (
    *("qam", "qam-edit", "qam-fql", "fql", "fbrac", "fedit", "ifql", "fawac", "dsrl", "cgql", "cgql-m"),
    *("cgql-l", "bam", "rebrac", "qsm", "dac", "rlpd"),
)
# The QGF paper's guidance weights, evaluated at every evaluation point of a QGF run.
QGF_GUIDANCE_WEIGHTS = (0.004, 0.008, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12)
# Evaluation-time parameter values every suite evaluates by default: registry method -> key -> values
# (their cross product). A run's own --eval-param for the method replaces the whole list.
DEFAULT_EVAL_PARAMS: dict[str, dict[str, tuple[float, ...]]] = {
    "qgf": {"guidance_weight": QGF_GUIDANCE_WEIGHTS}
}
# Settings a domain gives each of its tasks (TaskSettings fields other than task and domain).
DOMAIN_KEYS = ("horizon", "discount", "sparse", "rho", "dataset", "shard_dir")

_BUILTIN = {
    "ogbench": ("suites.ogbench", "ogbench_suite"),
    "ogbench-qgf": ("suites.ogbench", "ogbench_qgf_suite"),
    "smoke": ("suites.smoke", "smoke_suite"),
    "demo": ("suites.demo", "demo_suite"),
    "d4rl": ("suites.d4rl", "d4rl_suite"),
    "ogbench-quality": ("suites.ogbench", "ogbench_quality_suite"),
}
_HERE = Path(__file__).resolve().parent
_TASK_RE = re.compile(r"^(?P<domain>.+?)-singletask(?:-task\d+)?-v\d+$")


class SuiteError(Exception):
    """An unknown suite or task, or a malformed suite definition."""


def domain_of(task: str) -> str:
    """`cube-double-play-singletask-task1-v0` -> `cube-double-play` (also for `-singletask-v0`);
    a D4RL task's domain as suites/d4rl.py names it (`D4RL/pen/human-v2` -> `pen-human`)."""
    from suites import d4rl

    if d4rl.is_d4rl(task):
        return d4rl.domain(task)
    match = _TASK_RE.match(task)
    if match is None:
        raise SuiteError(
            f"{task!r} is not an OGBench single-task name: expected '<domain>-singletask-task<N>-v0' "
            "or '<domain>-singletask-v0', e.g. 'cube-double-play-singletask-task1-v0'"
        )
    return match.group("domain")


def normalize_method(name: str) -> str:
    """Registry spelling: case-insensitive, '_' equals '-'."""
    return name.strip().lower().replace("_", "-")


def _closest(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class TaskSettings:
    """One task and the settings of its domain."""

    task: str
    domain: str
    horizon: int  # action chunk length H (1: no chunking)
    discount: float
    sparse: bool  # rewards r' = -1 if r != 0 else 0
    dataset: str  # OGBench dataset name, e.g. cube-double-play-v0
    shard_dir: str | None = None  # directory of *.npz shards under the dataset dir (100M datasets)
    rho: float = 0.5  # ensemble pessimism of the TD target for RHO_METHODS

    def __post_init__(self) -> None:
        def bad(key: str, expected: str) -> SuiteError:
            return SuiteError(f"task {self.task!r}: {key} must be {expected}, got {getattr(self, key)!r}")

        if not _is_int(self.horizon) or self.horizon < 1:
            raise bad("horizon", "an integer >= 1")
        if not _is_number(self.discount) or not 0 < self.discount <= 1:
            raise bad("discount", "a number in (0, 1]")
        if not _is_number(self.rho) or self.rho < 0:
            raise bad("rho", "a number >= 0")
        if not isinstance(self.sparse, bool):
            raise bad("sparse", "true or false")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise bad("dataset", "a dataset name such as 'cube-double-play-v0'")
        if self.shard_dir is not None and (not isinstance(self.shard_dir, str) or not self.shard_dir):
            raise bad("shard_dir", "a directory name or absent")
        object.__setattr__(self, "discount", float(self.discount))
        object.__setattr__(self, "rho", float(self.rho))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def make_tasks(
    names: list[str] | tuple[str, ...], domains: Mapping[str, Mapping[str, Any]]
) -> list[TaskSettings]:
    """TaskSettings for task names, each taking the settings of its domain in `domains`."""
    tasks = []
    for name in names:
        domain = domain_of(name)
        if domain not in domains:
            raise SuiteError(
                f"task {name!r}: no settings for domain {domain!r}{_closest(domain, list(domains))}"
            )
        tasks.append(TaskSettings(task=name, domain=domain, **domains[domain]))
    return tasks


@dataclass
class Suite:
    """A named task list with its settings, budgets and hyperparameters."""

    name: str
    description: str
    tasks: list[TaskSettings]
    budgets: dict[str, int]  # defaults for offline_steps, online_steps, eval_interval, eval_episodes
    config_overrides: dict[str, Any] = field(default_factory=dict)  # applied to every method
    methods: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # domain -> method -> values
    domains: dict[str, dict[str, Any]] = field(default_factory=dict)  # domain -> settings (DOMAIN_KEYS)
    seeds: int = 12  # default number of seeds per task
    # one line `flowarena run` prints for a method this suite gives no per-domain values
    # (e.g. "other methods run with their class defaults"); empty: none
    methods_note: str = ""
    # method -> eval-time parameter -> values evaluated by default (DEFAULT_EVAL_PARAMS)
    eval_params: dict[str, dict[str, tuple[float, ...]]] = field(
        default_factory=lambda: {m: dict(v) for m, v in DEFAULT_EVAL_PARAMS.items()}
    )

    def __post_init__(self) -> None:
        names = [t.task for t in self.tasks]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SuiteError(f"suite {self.name!r} lists tasks more than once: {', '.join(duplicates)}")
        missing = [k for k in BUDGET_KEYS if k not in self.budgets]
        if missing:
            raise SuiteError(f"suite {self.name!r} has no budget for {', '.join(missing)}")

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    def task(self, name: str) -> TaskSettings:
        for settings in self.tasks:
            if settings.task == name:
                return settings
        raise SuiteError(
            f"task {name!r} is not in suite {self.name!r}{_closest(name, self.task_names)}; "
            f"`flowarena suites {self.name}` lists its {len(self.tasks)} tasks"
        )

    def settings_for(self, name: str) -> tuple[TaskSettings, str | None]:
        """A task's settings and a notice saying where they came from (None for a task this suite
        lists): an unlisted OGBench task takes its domain's settings in this suite, else the
        defaults of suites/defaults.py. Any other name is a SuiteError naming the closest task."""
        from suites import d4rl, defaults

        if d4rl.is_d4rl(name):
            name = d4rl.task_name(name)
        if name in self.task_names:
            return self.task(name), None
        if d4rl.is_d4rl(name):
            domain, hint = d4rl.domain(name), "`flowarena suites d4rl` lists the D4RL suite"
        else:
            domain, hint = defaults.ogbench_domain(name), "see `flowarena suites --defaults`"
        if domain is None:
            known = [*self.task_names, *defaults.known_tasks()]
            raise SuiteError(
                f"task {name!r} is not in suite {self.name!r} and not an OGBench task{_closest(name, known)}; "
                f"`flowarena suites {self.name}` lists the suite's tasks and `flowarena suites --defaults` "
                "the OGBench datasets whose tasks run outside a suite"
            )
        if domain in self.domains:
            settings = TaskSettings(task=name, domain=domain, **self.domains[domain])
            source = f"the settings of its domain {domain} in this suite ({describe(settings)})"
        else:
            settings, source = _default_settings(name, domain)
        notice = f"note: {name} is not in suite {self.name!r}; running it with {source}"
        return settings, f"{notice}; {hint}"

    def methods_notice(self, method: str, task: str) -> str | None:
        """The suite's `methods_note` when it gives `method` no values on `task`'s domain."""
        settings = self.settings_for(task)[0]
        if not self.methods_note or self.methods.get(settings.domain, {}).get(normalize_method(method)):
            return None
        return f"note: suite {self.name!r} has no {normalize_method(method)} values for {settings.task}: {self.methods_note}"

    def method_overrides(self, method: str, task: str) -> dict[str, Any]:
        """Per-domain hyperparameters of a registry method on a task ({} if none); a task outside
        the suite as `settings_for` finds it."""
        settings = self.settings_for(task)[0]
        key = normalize_method(method)
        values: dict[str, Any] = {"rho": settings.rho} if key in RHO_METHODS else {}
        values.update(self.methods.get(settings.domain, {}).get(key, {}))
        return values

    def method_eval_params(self, method: str) -> list[dict[str, float]]:
        """The evaluation-time settings a run of `method` evaluates by default: the cross product of
        its lists in `eval_params` ([] for a method without any)."""
        values = self.eval_params.get(normalize_method(method), {})
        if not values:
            return []
        return [dict(zip(values, map(float, combo))) for combo in itertools.product(*values.values())]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "seeds": self.seeds,
            "budgets": dict(self.budgets),
            "config_overrides": dict(self.config_overrides),
            "tasks": [dataclasses.asdict(t) for t in self.tasks],
            "methods": {d: {m: dict(v) for m, v in ms.items()} for d, ms in self.methods.items()},
            "eval_params": {m: {k: list(v) for k, v in keys.items()} for m, keys in self.eval_params.items()},
            **({"methods_note": self.methods_note} if self.methods_note else {}),
        }


def _default_settings(name: str, domain: str) -> tuple[TaskSettings, str]:
    """The settings of a task whose domain the suite lacks (D4RL's or the OGBench family's
    defaults), and where they came from in words."""
    from suites import d4rl, defaults

    if d4rl.is_d4rl(name):
        settings, family = d4rl.settings(name), "the D4RL defaults"
    else:
        settings = TaskSettings(task=name, domain=domain, **defaults.default_settings(domain))
        family = f"the OGBench defaults for {defaults.kind_of(domain)}"
    return settings, f"{family} ({describe(settings)}) and each method's default hyperparameters"


def describe(settings: TaskSettings) -> str:
    """`horizon 5, discount 0.99, sparse rewards, rho 0.5, dataset cube-single-play-v0`."""
    dataset = f"{settings.shard_dir} (shards)" if settings.shard_dir else settings.dataset
    rewards = "sparse" if settings.sparse else "dense"
    return (
        f"horizon {settings.horizon}, discount {settings.discount:g}, {rewards} rewards, "
        f"rho {settings.rho:g}, dataset {dataset}"
    )


def _toml_suites() -> dict[str, Path]:
    return {p.stem: p for p in sorted(_HERE.glob("*.toml"))}


def suite_names() -> list[str]:
    """Built-in suites, then the suites/<name>.toml files shipped with the package."""
    return [*_BUILTIN, *(n for n in _toml_suites() if n not in _BUILTIN)]


def get_suite(name_or_path: str | os.PathLike[str]) -> Suite:
    """A named suite, or a TOML suite file (a path ending in .toml or containing a '/')."""
    text = os.fspath(name_or_path)
    if text.endswith(".toml") or os.sep in text or "/" in text:
        return load_toml(Path(text))
    key = text.strip().lower()
    if key in _BUILTIN:
        module, factory = _BUILTIN[key]
        return getattr(importlib.import_module(module), factory)()
    shipped = _toml_suites()
    if key in shipped:
        suite = load_toml(shipped[key])
        if suite.name != key:
            raise SuiteError(f"{shipped[key]}: name = {suite.name!r} must equal the file name {key!r}")
        return suite
    known = suite_names()
    raise SuiteError(
        f"unknown suite {text!r}{_closest(key, known)}; known suites: {', '.join(known)} "
        "(or give the path of a .toml suite file)"
    )


def load_toml(path: Path) -> Suite:
    """A user suite from a TOML file; suites/toml_suite.py describes the format."""
    from suites.toml_suite import load

    return load(Path(path))
