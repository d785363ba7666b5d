"""What a run is: `RunSpec` (method, task, seed, overrides, budget...) and `Budget`, resolved by
`resolve` into a method, config, task settings, variant name and directory; spec.json
(`ResolvedRun.record_spec`) and the identity checks that a run directory holds the same run.
Variant and evaluation-setting labels are made here."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import suites
from algorithms import registry
from harness.errors import UserError
from harness.run import records
from harness.run.compile import check_choice, compile_record, wants_compile
from harness.run.evaluate import DEFAULT_EVAL_ENVS
from harness.run.precision import check_name as check_precision
from harness.run.precision import recorded_precision, with_precision


@dataclass
class Budget:
    offline_steps: int = 1_000_000
    online_steps: int = 0
    eval_interval: int = 50_000
    eval_episodes: int = 50
    log_interval: int = 5_000
    checkpoint_interval: int = 50_000
    online_warmup_steps: int = 5_000  # updates begin at this online step (the reference's start_training)
    utd_ratio: int = 1  # updates per online environment step
    # environments evaluating in lockstep (at most eval_episodes); part of a run's identity, since
    # it decides which acting noise each episode gets (harness/run/evaluate.py)
    eval_envs: int = DEFAULT_EVAL_ENVS
    # online batches half offline, half online, and random warm-up actions (harness/run/balanced.py)
    balanced_sampling: bool = False

    def validate(self) -> None:
        if not isinstance(self.balanced_sampling, bool):
            raise UserError(f"balanced_sampling must be true or false, got {self.balanced_sampling!r}")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "balanced_sampling":
                continue
            minimum = 0 if f.name in ("offline_steps", "online_steps", "online_warmup_steps") else 1
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise UserError(
                    f"--{f.name.replace('_', '-')} must be an integer >= {minimum}, got {value!r}"
                )
        if 0 < self.online_steps < self.online_warmup_steps:
            raise UserError(
                f"--online-warmup-steps {self.online_warmup_steps} exceeds --online-steps "
                f"{self.online_steps}: the online phase would never update the agent; pass a "
                f"smaller --online-warmup-steps (the protocol's is 5000)"
            )

    @property
    def total_steps(self) -> int:
        return self.offline_steps + self.online_steps


@dataclass
class RunSpec:
    """Everything that defines a run. `overrides` are the user's config changes (they name
    the variant); the suite supplies per-domain settings and hyperparameters."""

    method: str
    task: str
    seed: int
    out: str = "results"
    sweep: str = "default"
    suite: str = "ogbench"
    overrides: dict[str, Any] = field(default_factory=dict)
    dataset_dir: str | None = None
    budget: Budget = field(default_factory=Budget)
    device: str = "auto"
    # Evaluation-time settings (one evals row each); empty: the suite's for the method, filled in
    # by `resolve` (suites.DEFAULT_EVAL_PARAMS)
    eval_params: list[dict[str, float]] = field(default_factory=list)
    # Override keys named in the variant even where they equal the suite's value, so that a sweep's
    # variant (e.g. a grid's qam[inv_temp=1]) has one name on every task.
    variant_keys: list[str] = field(default_factory=list)
    # Worker processes stepping the evaluation environments (0: in this process). Never changes a
    # number, so it is not part of the run's identity.
    eval_workers: int = 0
    # Experiment trackers that also get the records' rows (harness/run/trackers.py): tensorboard,
    # wandb. Not part of the run's identity either.
    loggers: list[str] = field(default_factory=list)
    # `--compile auto|on|off` (harness/run/compile.py): changes speed only, so not identity either.
    compile: str = "auto"
    # `--precision fp32|tf32|bf16` (harness/run/precision.py): part of the run's identity and variant.
    precision: str = "fp32"


@dataclass
class ResolvedRun:
    spec: RunSpec
    method: registry.Method
    config: Any
    task: suites.TaskSettings
    variant: str
    path: Path

    @property
    def compiled(self) -> bool:
        """Whether this run's update runs compiled (`--compile`, harness/run/compile.py)."""
        return wants_compile(self.spec.compile, self.spec.budget.total_steps, self.spec.device)

    def record_spec(self) -> dict[str, Any]:
        """spec.json: all that is needed to rerun."""
        return {
            "method": self.method.name,
            "variant": self.variant,
            "task": self.task.task,
            "domain": self.task.domain,
            "seed": self.spec.seed,
            "sweep": self.spec.sweep,
            "suite": self.spec.suite,
            "overrides": {k: _jsonable(v) for k, v in self.spec.overrides.items()},
            "config": {k: _jsonable(v) for k, v in dataclasses.asdict(self.config).items()},
            "task_settings": {k: _jsonable(v) for k, v in dataclasses.asdict(self.task).items()},
            "budget": budget_record(self.spec.budget),
            "eval_params": self.spec.eval_params,
            "dataset_dir": self.spec.dataset_dir,
            "compile": compile_record(self.spec.compile, self.compiled),
            "precision": self.spec.precision,
            "code_version": records.code_version(),
            "packages": records.package_versions(),
        }


def budget_record(budget: Budget) -> dict[str, Any]:
    """spec.json's budget. `balanced_sampling` is written only when on, so that the runs recorded
    before it existed keep their identity (harness/run/balanced.py)."""
    record = dataclasses.asdict(budget)
    if not record["balanced_sampling"]:
        del record["balanced_sampling"]
    return record


def method_protocol(method: str | registry.Method) -> dict[str, Any]:
    """A method's own budget defaults (its Agent's `protocol`, e.g. RLPD's online-only schedule
    with balanced sampling), applied by harness.args.budget_from_args; {} for most methods."""
    m = registry.get(method) if isinstance(method, str) else method
    protocol = dict(getattr(m.cls, "protocol", None) or {})
    known = {f.name for f in dataclasses.fields(Budget)}
    unknown = sorted(set(protocol) - known)
    if unknown:
        raise UserError(
            f"{m.name}'s protocol sets {', '.join(unknown)}, which are not budget keys: {', '.join(sorted(known))}"
        )
    return protocol


IDENTITY_KEYS = (
    "method",
    "variant",
    "task",
    "seed",
    "config",
    "task_settings",
    "budget",
    "eval_params",
    "precision",
)


def identity(record: dict[str, Any]) -> dict[str, Any]:
    """A spec.json's identity keys; a spec.json from before `precision` existed is fp32."""
    return {**{k: record.get(k) for k in IDENTITY_KEYS}, "precision": recorded_precision(record)}


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (tuple, list)):
        return "x".join(format_value(v) for v in value)
    return str(value)


def variant_name(method: str, overrides: dict[str, Any]) -> str:
    """`qam[inv_temp=3]`: the method plus the overrides that change its config."""
    if not overrides:
        return method
    return f"{method}[{','.join(f'{k}={format_value(v)}' for k, v in sorted(overrides.items()))}]"


def eval_params_label(params: dict[str, float]) -> str:
    return ",".join(f"{k}={format_value(v)}" for k, v in sorted(params.items()))


def eval_setting(declared: dict[str, float], given: dict[str, float]) -> tuple[dict[str, float], str]:
    """A grid entry completed by the method's declared defaults, and its label (which names every
    declared parameter; empty for a method without any)."""
    params = {**declared, **given}
    return params, eval_params_label(params)


def resolve(spec: RunSpec) -> ResolvedRun:
    """Method, config and task settings of a run; raises UserError on bad input."""
    spec.budget.validate()
    check_choice(spec.compile)
    check_precision(spec.precision)
    method = registry.get(spec.method)
    suite = suites.get_suite(spec.suite)
    task = suite.settings_for(spec.task)[0]  # an OGBench task outside the suite: suites/defaults.py
    fields = registry.config_fields(method)
    suite_values = {**suite.config_overrides, **suite.method_overrides(method.name, task.task)}
    base = registry.make_config(method, {k: v for k, v in suite_values.items() if k in fields})
    relative = relative_values(method, base, spec.overrides)
    user = registry.parse_overrides(method, {k: v for k, v in spec.overrides.items() if k not in relative})
    config = dataclasses.replace(base, **user, **relative)
    changed = {k: v for k, v in user.items() if getattr(base, k) != v or k in spec.variant_keys}
    changed.update({k: str(spec.overrides[k]).strip().lower() for k in relative})  # named as given: xF
    variant = with_precision(variant_name(method.name, changed), spec.precision)
    if not spec.eval_params:  # the suite's evaluation-time settings for the method (QGF: 9 weights)
        spec = dataclasses.replace(spec, eval_params=suite.method_eval_params(method.name))
    check_eval_params(method, spec.eval_params)
    check_balanced_sampling(spec.budget, task)
    path = records.run_dir_path(spec.out, spec.sweep, variant, task.task, spec.seed)
    return ResolvedRun(spec, method, config, task, variant, path)


RELATIVE_VALUE = re.compile(r"^x(?P<factor>(\d+\.?\d*|\.\d+)(e[-+]?\d+)?)$")


def relative_values(method: registry.Method, base: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The overrides written `xF` (F > 0): F times the value the run has without them, i.e. the
    suite's per-domain value (else the method's default), so `inv_temp=x0.3` is 0.3 times each
    domain's inv_temp. An integer key must come out a whole number (`flow_steps=x2`)."""
    values = {}
    for key, text in overrides.items():
        match = RELATIVE_VALUE.match(text.strip().lower()) if isinstance(text, str) else None
        if match is None:
            continue
        registry.parse_overrides(method, {key: getattr(base, key, None)})  # an unknown key: its message
        current, factor = getattr(base, key), float(match["factor"])
        if isinstance(current, bool) or not isinstance(current, (int, float)) or factor <= 0:
            raise UserError(
                f"{method.name}.{key}={text}: a relative value xF needs F > 0 and a numeric key "
                f"({key} is {current!r} here)"
            )
        value = factor * current
        if isinstance(current, int):
            if abs(value - round(value)) > 1e-9:
                raise UserError(f"{method.name}.{key}={text}: {factor:g} x {current} is not a whole number")
            value = round(value)
        values[key] = value
    registry.check_values(method.cls, values, method.name)  # x1000 of a Polyak rate is no rate
    return values


def check_balanced_sampling(budget: Budget, task: suites.TaskSettings) -> None:
    """Balanced batches take chunks from the online transitions from the first update on: the
    warm-up must leave at least one chunk's worth of them."""
    if budget.balanced_sampling and budget.online_steps > 0 and budget.online_warmup_steps < task.horizon:
        raise UserError(
            f"balanced sampling (--balanced-sampling, or the method's protocol) draws half of each "
            f"batch from the online transitions, but with "
            f"--online-warmup-steps {budget.online_warmup_steps} the first update comes before one "
            f"chunk of {task.horizon} steps exists; pass --online-warmup-steps {task.horizon} or more"
        )


def check_eval_params(method: registry.Method, grid: list[dict[str, float]]) -> None:
    declared = method.cls.eval_params
    for params in grid:
        for key in params:
            if key not in declared:
                known = ", ".join(declared) or "none"
                raise UserError(f"{method.name} has no evaluation parameter {key!r} (it declares: {known})")
    labels = [eval_setting(declared, params)[1] for params in grid]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"--eval-param gives the setting {', '.join(repeated)} more than once")


def check_same_run(run_dir: records.RunDir, resolved: ResolvedRun) -> None:
    saved = identity(run_dir.read_spec())
    wanted = identity(resolved.record_spec())
    differing = [k for k in IDENTITY_KEYS if saved[k] != wanted[k]]
    if differing:
        raise UserError(
            f"{run_dir.path} holds a run with a different {identity_difference(saved, wanted, differing)}; "
            f"use another --out or --sweep, or move that directory away (nothing was changed)"
        )


def identity_difference(saved: dict[str, Any], wanted: dict[str, Any], differing: list[str]) -> str:
    """The differing identity keys, with the budget's differing fields spelled out (a run from
    before Budget.eval_envs evaluated on one environment: --eval-envs 1 resumes it)."""
    text = ", ".join(differing)
    if "budget" in differing and isinstance(saved.get("budget"), dict):
        old = {"eval_envs": 1, "balanced_sampling": False, **saved["budget"]}
        new = {"balanced_sampling": False, **wanted["budget"]}
        fields = [f"{k} {old.get(k)} there, {v} here" for k, v in new.items() if old.get(k) != v]
        text += f" ({'; '.join(fields)})" if fields else ""
    if "precision" in differing:
        text += f" ({saved['precision']} there, {wanted['precision']} here)"
    return text
