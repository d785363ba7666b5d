"""What a sweep runs: `SweepSpec` (methods, variants through overrides and grids, tasks, seeds,
budgets, evaluation settings, executor options), the named presets, the [METHOD.]KEY=VALUE
syntax of its flags, and the checks of a spec before anything is resolved."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import suites
from harness.errors import UserError
from harness.run.compile import check_choice as check_compile_choice
from harness.run.precision import check_name as check_precision
from harness.sweep.options import ExecutorOptions
from suites.ogbench import sensitivity_tasks


@dataclass(frozen=True)
class Preset:
    """A named sweep: its methods (each at the suite's per-domain settings), and the suite, seeds
    and budgets it uses where the flags and the TOML spec leave them unset."""

    methods: tuple[str, ...]
    description: str
    suite: str | None = None  # applies while the spec's suite is the default one
    seeds: int | None = None  # a count; None: the suite's
    budget: dict[str, int] = field(default_factory=dict)  # over the suite's budgets, under the flags
    online: bool = False  # its table needs an online phase
    tasks: tuple[str, ...] = ()  # while the suite is the preset's; empty: the suite's tasks
    # one variant per entry, each KEY=VALUE of every method (a relative `xF` resolved per domain)
    variants: tuple[dict[str, str], ...] = ()


# The QAM paper's 16 offline methods, in its table's order.
QAM_PAPER_METHODS = (
    *("qam", "qam-edit", "qam-fql", "fql", "fbrac", "fedit", "ifql", "fawac", "dsrl", "cgql", "cgql-m"),
    *("cgql-l", "bam", "rebrac", "qsm", "dac"),
)
# The QAM reference's experiments/reproduce_quality.py: the methods it runs on noisy/stitch data.
QAM_QUALITY_METHODS = ("qam-edit", "qam-fql", "qam", "rebrac", "fedit", "fql", "qsm", "dsrl", "bam")
# The QAM reference's experiments/reproduce_sensitivity.py: QAM-EDIT with one knob changed at a time.
QAM_SENSITIVITY_VARIANTS = (
    *({"inv_temp": f"x{factor}"} for factor in ("0.1", "0.3", "3", "10")),
    {"num_critics": "2"},
    *({"flow_steps": str(steps)} for steps in (1, 3, 20, 30)),
    {"clip_grad": "false"},
)
PRESETS = {
    "adjoint-vs-bptt": Preset(
        methods=("qam", "fbrac"),
        description="QAM (adjoint matching) vs FBRAC (backprop through the flow's Euler steps), each at "
        "the paper's per-domain settings that the suite supplies; compare them paired by seed",
    ),
    "qam-paper": Preset(
        methods=QAM_PAPER_METHODS,
        description="the QAM paper's offline table: its 16 methods at its per-domain settings on the "
        "suite's tasks, 12 seeds, the offline phase only (ogbench: 1M steps)",
        suite="ogbench",
        seeds=12,
        budget={"online_steps": 0},
    ),
    "qam-paper-online": Preset(
        methods=(*QAM_PAPER_METHODS, "rlpd"),
        description="the QAM paper's offline-to-online table: its 16 methods through both phases "
        "(ogbench: 1M offline + 500K online steps) and RLPD online only with balanced sampling (its "
        "protocol), 12 seeds; the runs' offline evaluations also give the offline table",
        suite="ogbench",
        seeds=12,
        online=True,
    ),
    "qam-quality": Preset(
        methods=QAM_QUALITY_METHODS,
        description="the QAM paper's data-quality study: its 9 methods on noisy (manipulation) and "
        "stitch (maze) data, each at its play/navigate domain's settings (suite ogbench-quality: 30 "
        "tasks, 1M offline + 500K online steps), 12 seeds",
        suite="ogbench-quality",
        seeds=12,
        online=True,
    ),
    "qam-sensitivity": Preset(
        methods=("qam-edit",),
        description="the QAM paper's sensitivity study: QAM-EDIT with one knob changed from its "
        "per-domain value (inv_temp x0.1, x0.3, x3, x10; 2 critics; 1, 3, 20, 30 flow steps; no "
        "gradient clipping) on task2 of each manipulation and task1 of each maze domain (ogbench: 1M "
        "offline + 500K online steps), 12 seeds",
        suite="ogbench",
        seeds=12,
        online=True,
        tasks=tuple(sensitivity_tasks()),
        variants=QAM_SENSITIVITY_VARIANTS,
    ),
}


DEFAULT_SUITE = "ogbench"


@dataclass
class SweepSpec:
    """What to run. In `overrides`, `grid` and `eval_params` the key "" means every method."""

    name: str
    methods: list[str]
    suite: str = DEFAULT_SUITE
    tasks: list[str] = field(default_factory=list)  # task or domain names; empty: the whole suite
    seeds: list[int] = field(default_factory=list)  # empty: the suite's number of seeds
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    eval_params: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    # one-at-a-time variants (a preset's): each {KEY: VALUE} of every method, times the grid
    variants: list[dict[str, Any]] = field(default_factory=list)
    budget: dict[str, int] = field(default_factory=dict)  # over the suite's budgets
    out: str = "results"
    dataset_dir: str | None = None
    device: str = "auto"
    preset: str | None = None
    eval_workers: int = 0  # worker processes stepping each run's evaluation environments
    loggers: list[str] = field(default_factory=list)  # experiment trackers of every run (--logger)
    compile: str = "auto"  # --compile of every run (harness/run/compile.py)
    precision: str = "fp32"  # --precision of every run (harness/run/precision.py)
    executor: ExecutorOptions = field(default_factory=ExecutorOptions)

    @property
    def sweep_dir(self) -> Path:
        return Path(self.out) / self.name

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_key(text: str, flag: str) -> tuple[str, str]:
    """`qam.inv_temp` -> ('qam', 'inv_temp'); `batch_size` -> ('', 'batch_size')."""
    method, sep, key = text.strip().rpartition(".")
    if not key or (sep and not method):
        raise UserError(f"{flag} expects [METHOD.]KEY=..., got {text!r}")
    return suites.normalize_method(method), key


def parse_assignment(item: str, flag: str) -> tuple[str, str, str]:
    """`qam.inv_temp=3` -> ('qam', 'inv_temp', '3')."""
    target, sep, value = item.partition("=")
    if not sep or not value.strip():
        raise UserError(f"{flag} expects [METHOD.]KEY=VALUE, got {item!r}")
    return (*split_key(target, flag), value.strip())


def grid_values(text: str, flag: str = "--grid") -> list[str]:
    """`0.3,1,3,10` -> four values; with a `|` the values are split on it instead (for list-valued
    keys: `hidden_dims=64,64|256,256`)."""
    parts = [v.strip() for v in text.split("|" if "|" in text else ",")]
    if not parts or any(not v for v in parts):
        raise UserError(f"{flag} expects [METHOD.]KEY=V1,V2,... with no empty value, got {text!r}")
    if len(set(parts)) != len(parts):
        raise UserError(f"{flag} repeats a value: {text!r}")
    return parts


def apply_preset(spec: SweepSpec) -> None:
    if spec.preset is None:
        return
    key = spec.preset.strip().lower()
    if key not in PRESETS:
        raise UserError(f"unknown preset {spec.preset!r}; presets: {', '.join(PRESETS)}")
    preset = PRESETS[key]
    given = [suites.normalize_method(m) for m in spec.methods]
    if given and sorted(given) != sorted(preset.methods):
        raise UserError(
            f"preset {key} runs {', '.join(preset.methods)}; drop --methods {','.join(spec.methods)}"
        )
    spec.preset, spec.methods = key, list(preset.methods)
    spec.name = spec.name or key
    if preset.suite and spec.suite == DEFAULT_SUITE:
        spec.suite = preset.suite
    if preset.seeds and not spec.seeds:
        spec.seeds = list(range(preset.seeds))
    if preset.tasks and not spec.tasks and spec.suite == preset.suite:
        spec.tasks = list(preset.tasks)
    spec.variants = [dict(v) for v in preset.variants]
    spec.budget = {**preset.budget, **spec.budget}


def check_preset_budget(spec: SweepSpec, online_steps: int) -> None:
    """A preset of the online table needs an online phase (a suite may have none, e.g. smoke)."""
    if spec.preset and PRESETS[spec.preset].online and online_steps == 0:
        raise UserError(
            f"preset {spec.preset} is the online table, but suite {spec.suite} has no online phase; "
            f"give --online-steps N"
        )


def validate_spec(spec: SweepSpec) -> None:
    if not spec.name or "/" in spec.name or spec.name.startswith("."):
        raise UserError(f"give the sweep a --name (a plain directory name), got {spec.name!r}")
    if not spec.methods:
        raise UserError("no methods: give --methods (e.g. qam,fbrac) or --preset adjoint-vs-bptt")
    spec.executor.validate()
    if not isinstance(spec.eval_workers, int) or isinstance(spec.eval_workers, bool) or spec.eval_workers < 0:
        raise UserError(f"--eval-workers must be an integer >= 0, got {spec.eval_workers!r}")
    check_compile_choice(spec.compile)
    check_precision(spec.precision)
    for method, keys in spec.overrides.items():
        both = [k for k in keys if k in spec.grid.get(method, {})]
        if both:
            raise UserError(f"both --set and --grid give {method + '.' if method else ''}{both[0]}; keep one")
    varied = {key for variant in spec.variants for key in variant}
    for flag, table in (("--set", spec.overrides), ("--grid", spec.grid)):
        clash = sorted(varied & {key for keys in table.values() for key in keys})
        if clash:
            raise UserError(f"preset {spec.preset} varies {clash[0]} itself; drop {flag} ...{clash[0]}=...")
