"""The TOML sweep spec, read by `spec_from_toml` into a SweepSpec (every key optional except what a sweep needs: a name and methods or a preset):

name = "inv-temp"
suite = "ogbench"                 # or a suite .toml path
preset = "adjoint-vs-bptt"        # instead of methods: qam and fbrac at the suite's settings
methods = ["qam", "fbrac"]
tasks = ["cube-double-play", "puzzle-3x3-play-singletask-task1-v0"]   # domains or tasks
seeds = 12                        # a count, or a list [0, 3, 7]
out = "results"
dataset_dir = "/data/ogbench"
device = "auto"
loggers = ["tensorboard"]         # experiment trackers: tensorboard, wandb (default: none)
compile = "auto"                  # compiled updates: auto, on, off (harness/run/compile.py)
precision = "fp32"                # products: fp32, tf32, bf16 (harness/run/precision.py)

[budget]                          # any harness.run.spec.Budget field; default: the suite's
offline_steps = 1000000
eval_interval = 50000

[set]                             # every method
batch_size = 256
[set.fbrac]                       # one method
alpha = 0.1

[grid.qam]                        # one variant per value (cross product over keys)
inv_temp = [0.3, 1, 3, 10]

[eval_params.qgf]                 # evaluation-time parameters (cross product)
guidance_weight = [0.004, 0.01, 0.04]

[executor]                        # ExecutorOptions
kind = "slurm"
runs_per_gpu = 4
partition = "gpu"
time = "12:00:00"
sbatch = { constraint = "a100" }
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import suites
from harness.args import parse_loggers, parse_seeds
from harness.errors import UserError
from harness.sweep.options import DEFAULT_EXECUTOR, ExecutorOptions
from harness.sweep.spec import SweepSpec

SPEC_KEYS = (
    "name",
    "suite",
    "preset",
    "methods",
    "tasks",
    "seeds",
    "out",
    "dataset_dir",
    "device",
    "eval_workers",
    "loggers",
    "compile",
    "precision",
    "budget",
    "set",
    "grid",
    "eval_params",
    "executor",
)


def read_toml(path: Path) -> dict[str, Any]:
    try:
        import tomllib as toml
    except ModuleNotFoundError:  # Python 3.10
        try:
            import tomli as toml
        except ModuleNotFoundError:
            raise UserError("reading TOML sweep specs on Python 3.10 needs `pip install tomli`") from None
    if not path.is_file():
        raise UserError(f"sweep spec {path} does not exist")
    try:
        with path.open("rb") as f:
            data = toml.load(f)
    except toml.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML: {error}") from None
    for key in data:
        if key not in SPEC_KEYS:
            raise UserError(f"{path}: unknown key {key!r}; known keys: {', '.join(SPEC_KEYS)}")
    return data


def _table(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise UserError(f"{where}: [{key}] must be a table, got {value!r}")
    return value


def _per_method(raw: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """TOML `[set] batch_size = 64` and `[set.qam] inv_temp = 3` -> {'': {...}, 'qam': {...}}."""
    table: dict[str, dict[str, Any]] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            table.setdefault(suites.normalize_method(key), {}).update(value)
        else:
            table.setdefault("", {})[key] = value
    for method, values in table.items():
        for key, value in values.items():
            if isinstance(value, dict):
                raise UserError(
                    f"{where}: {method + '.' if method else ''}{key} must be a value, not a table"
                )
    return table


def _toml_grid(raw: dict[str, Any], where: str, key: str) -> dict[str, dict[str, list[Any]]]:
    table = _per_method(raw, where)
    for method, values in table.items():
        for name, value in values.items():
            label = f"[{key}{'.' + method if method else ''}] {name}"
            if not isinstance(value, list) or not value:
                raise UserError(f"{where}: {label} must be a non-empty array of values")
    return table


def spec_from_toml(path: Path) -> SweepSpec:
    data = read_toml(path)
    where = str(path)
    executor = _table(data, "executor", where)
    unknown = [k for k in executor if k not in DEFAULT_EXECUTOR and k != "kind"]
    if unknown:
        raise UserError(f"{where}: unknown [executor] key(s) {', '.join(unknown)}")
    budget = _table(data, "budget", where)
    methods = data.get("methods", [])
    tasks = data.get("tasks", [])
    loggers = data.get("loggers", [])
    for key, value in (("methods", methods), ("tasks", tasks), ("loggers", loggers)):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UserError(f"{where}: {key} must be an array of names, got {value!r}")
    return SweepSpec(
        name=data.get("name", ""),
        methods=methods,
        suite=data.get("suite", "ogbench"),
        tasks=tasks,
        seeds=parse_seeds(data["seeds"]) if "seeds" in data else [],
        overrides=_per_method(_table(data, "set", where), where),
        grid=_toml_grid(_table(data, "grid", where), where, "grid"),
        eval_params=_toml_grid(_table(data, "eval_params", where), where, "eval_params"),
        budget=dict(budget),
        out=data.get("out", "results"),
        dataset_dir=data.get("dataset_dir"),
        device=data.get("device", "auto"),
        eval_workers=data.get("eval_workers", 0),
        loggers=parse_loggers(loggers),
        compile=data.get("compile", "auto"),
        precision=data.get("precision", "fp32"),
        preset=data.get("preset"),
        executor=ExecutorOptions(**executor),
    )
