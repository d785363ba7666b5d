"""One run: (method, task, seed, config) -> records.

The offline phase trains on the dataset, evaluates on a schedule and at its end, logs
training metrics, checkpoints on a schedule and at the end. The online phase (`online_steps` > 0)
follows: the agent acts in its own environment (harness/online.py), each step's transition
joins the replay buffer (dataset + online transitions), and from online step
`online_warmup_steps` on every environment step makes `utd_ratio` updates. Step numbers
continue: online step j is recorded at step offline_steps + j, with phase `online` in evals and
train rows, on the same evaluation, logging and checkpoint schedule. With a sharded (100M)
dataset the shard in the buffer at the switch stays there for the whole online phase.

Running the same command again resumes from the last checkpoint, in either phase: rows written
after that checkpoint are dropped and recomputed, so the records equal those of an
uninterrupted run.

Evaluations play `eval_episodes` episodes on `eval_envs` environments in lockstep, one batched
policy call per chunk (harness/evaluate.py), stepped here or in `RunSpec.eval_workers` worker
processes (harness/envs.py).

Stacked seeds (`run_group`, `flowarena run --seeds`, `flowarena sweep --seeds-per-process`):
seeds of one run train in one process as one stacked agent (algorithms/base.py), one batched
update for all. Each seed keeps a lone run's directory, records and checkpoint format and draws
the random numbers it would draw alone (initialisation, training noise, batches, evaluation and
exploration noise), so it trains as it would alone up to float rounding; see `Trainer` for
divergence and checkpoints.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import threading
import time
import traceback
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

import suites
from algorithms import registry
from algorithms.base import Agent, EnvSpec, Metrics, slice_agent_state, stack_agent_states
from harness import records
from harness.data import OfflineData, ReplayBuffer, make_env
from harness.envs import LocalEnvs, SlotView, WorkerEnvs, make_eval_envs
from harness.errors import UserError
from harness.evaluate import (
    DEFAULT_EVAL_ENVS,
    EvalResult,
    default_eval_envs,
    derive_seed,
    episode_seeds,
    run_episodes,
)
from harness.online import Explorer, ExplorerGroup
from harness.progress import progress_bar

CHECKPOINT_FORMAT = 1
NEXT_CHECKPOINT = "ckpt.next.pt"  # a stacked group's new checkpoint, before the group commits it
DIVERGENCE_CHECK_INTERVAL = 100  # offline steps between reads of the device-side NaN tracker
_stop = threading.Event()


def request_stop() -> None:
    """Ask the running training loop to checkpoint at the next step boundary and return
    "preempted" (safe to call from a signal handler, e.g. on Slurm preemption)."""
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


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
    # it decides which acting noise each episode gets (harness/evaluate.py)
    eval_envs: int = DEFAULT_EVAL_ENVS

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
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
    eval_params: list[dict[str, float]] = field(default_factory=list)
    # Override keys named in the variant even where they equal the suite's value, so that a sweep's
    # variant (e.g. a grid's qam[inv_temp=1]) has one name on every task.
    variant_keys: list[str] = field(default_factory=list)
    # Worker processes stepping the evaluation environments (0: in this process). Never changes a
    # number, so it is not part of the run's identity.
    eval_workers: int = 0


@dataclass
class ResolvedRun:
    spec: RunSpec
    method: registry.Method
    config: Any
    task: suites.TaskSettings
    variant: str
    path: Path

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
            "budget": dataclasses.asdict(self.spec.budget),
            "eval_params": self.spec.eval_params,
            "dataset_dir": self.spec.dataset_dir,
            "code_version": records.code_version(),
            "packages": records.package_versions(),
        }


IDENTITY_KEYS = ("method", "variant", "task", "seed", "config", "task_settings", "budget", "eval_params")


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
    method = registry.get(spec.method)
    suite = suites.get_suite(spec.suite)
    task = suite.task(spec.task)
    fields = registry.config_fields(method)
    suite_values = {**suite.config_overrides, **suite.method_overrides(method.name, task.task)}
    base = registry.make_config(method, {k: v for k, v in suite_values.items() if k in fields})
    user = registry.parse_overrides(method, spec.overrides)
    config = dataclasses.replace(base, **user)
    changed = {k: v for k, v in user.items() if getattr(base, k) != v or k in spec.variant_keys}
    variant = variant_name(method.name, changed)
    _check_eval_params(method, spec.eval_params)
    path = records.run_dir_path(spec.out, spec.sweep, variant, task.task, spec.seed)
    return ResolvedRun(spec, method, config, task, variant, path)


def _check_eval_params(method: registry.Method, grid: list[dict[str, float]]) -> None:
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


def evaluate_grid(
    agent: Agent, envs: Any, *, seed: int, step: int, episodes: int, grid: list[dict[str, float]]
) -> list[tuple[str, EvalResult]]:
    """Evaluate each eval-parameter setting. Episode seeds and the acting noise depend only on
    (run seed, step, setting), so evaluating a setting again later gives the same numbers. Unset
    declared parameters take the agent's defaults (`eval_setting`), also in the label. `envs`: a
    list of environments or LocalEnvs / WorkerEnvs (the same number gives the same numbers)."""
    slots = envs if isinstance(envs, (LocalEnvs, WorkerEnvs, SlotView)) else LocalEnvs(envs)
    return evaluate_seeds(agent, slots, seeds=[seed], step=step, episodes=episodes, grid=grid)[0]


def evaluate_seeds(
    agent: Agent, envs: Any, *, seeds: list[int], step: int, episodes: int, grid: list[dict[str, float]]
) -> list[list[tuple[str, EvalResult]]]:
    """`evaluate_grid` for every seed of an agent (a lone agent and [its seed], or stacked seeds),
    each seed on its len(envs) / len(seeds) slots with its own episode seeds and acting noise: the
    numbers each seed would get evaluated alone."""
    results: list[list[tuple[str, EvalResult]]] = [[] for _ in seeds]
    agent.eval()
    for given in grid:
        params, label = eval_setting(agent.eval_params, given)
        key = zlib.crc32(label.encode())
        noise_seeds = [derive_seed(seed, step, key, 1) for seed in seeds]
        if agent.stack:
            agent.act_generator.manual_seed(noise_seeds)
        else:
            agent.act_generator.manual_seed(noise_seeds[0])
        episode_lists = [episode_seeds(seed, step, 2, n=episodes) for seed in seeds]
        stats = run_episodes(agent, envs, episodes=episodes, seeds=episode_lists, eval_params=params)
        for member, member_stats in enumerate(stats):
            assert member_stats is not None
            results[member].append((label, member_stats.result()))
    agent.train()
    return results


def eval_rows(
    results: list[tuple[str, EvalResult]], keys: dict[str, Any], *, step: int, wall_time_s: float
) -> list[dict[str, Any]]:
    """evals rows of `evaluate_grid` results; `keys` holds sweep, method, variant, task, domain,
    seed and phase."""
    return [
        {
            **keys,
            "step": step,
            "success": result.success,
            "return": result.episode_return,
            "episode_length": result.episode_length,
            "n_episodes": result.n_episodes,
            "eval_params": label,
            "wall_time_s": wall_time_s,
        }
        for label, result in results
    ]


def pick_device(requested: str) -> torch.device:
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError:
        raise UserError(f"unknown device {requested!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"--device {requested} asked for CUDA, but torch sees no GPU here (use --device auto or cpu)"
        )
    return device


def run(spec: RunSpec, *, progress: bool = True) -> str:
    """Train, evaluate and record one run; resumes when its directory holds a checkpoint.
    Returns the final state (done or diverged), or "preempted" after `request_stop()`.
    Raises UserError on bad input."""
    resolved, run_dir, state = _open_run(spec, progress)
    if state is not None:
        return state
    trainer = Trainer([(resolved, run_dir)], progress=progress)  # loads data: bad input fails here
    return _train(trainer)[spec.seed]


def env_spec_of(env: Any, task: suites.TaskSettings) -> EnvSpec:
    """The agent's EnvSpec: the environment's shapes with the task's chunk length and discount."""
    return EnvSpec(
        obs_dim=env.observation_space.shape[-1],
        action_dim=env.action_space.shape[-1],
        horizon=task.horizon,
        discount=task.discount,
    )


def _open_run(spec: RunSpec, progress: bool) -> tuple[ResolvedRun, records.RunDir, str | None]:
    """The run's resolved spec and directory, and its final state when it has already ended."""
    resolved = resolve(spec)
    run_dir = records.RunDir(resolved.path)
    if run_dir.exists():
        _check_same_run(run_dir, resolved)
        state = run_dir.read_status().get("state")
        if state in records.FINAL_STATES:
            _say(f"{resolved.path}: already {state}, nothing to do", progress)
            return resolved, run_dir, state
    return resolved, run_dir, None


def run_group(specs: list[RunSpec], *, progress: bool = True) -> dict[int, str]:
    """Train runs that differ only in their seed together: stacked parameters, one batched update
    for all seeds (algorithms/base.py). Each seed has its own run directory and records, in the
    format of a lone run; seeds already done or diverged are skipped. Returns each seed's state
    (done, diverged, or preempted after `request_stop()`). Raises UserError on bad input."""
    if not specs:
        return {}
    seeds = [spec.seed for spec in specs]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds repeats a seed: {seeds}")
    runs, states = [], {}
    for spec in specs:
        resolved, run_dir, state = _open_run(spec, progress)
        if state is not None:
            states[spec.seed] = state
        else:
            runs.append((resolved, run_dir))
    _check_one_group(runs)
    if runs:
        states.update(_train(Trainer(runs, progress=progress, stacked=True)))
    return {seed: states[seed] for seed in seeds}


def _check_one_group(runs: list[tuple[ResolvedRun, records.RunDir]]) -> None:
    """Stacked runs must differ in their seed only."""
    if not runs:
        return
    keys = [k for k in IDENTITY_KEYS if k != "seed"] + ["dataset_dir"]
    first = runs[0][0].record_spec()
    for resolved, _ in runs[1:]:
        other = resolved.record_spec()
        differing = [k for k in keys if other[k] != first[k]]
        if differing or resolved.spec.device != runs[0][0].spec.device:
            raise UserError(
                f"stacked seeds must share everything but the seed; these differ in {differing or 'device'}"
            )


def _train(trainer: Trainer) -> dict[int, str]:
    """Run a trainer, marking its unfinished runs failed (with the traceback) when it raises."""
    for member in trainer.members:
        if not member.run_dir.exists():
            member.run_dir.write_spec(member.resolved.record_spec())
    try:
        return trainer.run()
    except BaseException as error:
        for member in trainer.members:
            if member.final is None:
                member.run_dir.write_status(
                    "failed",
                    step=trainer.step,
                    error=f"{type(error).__name__}: {error}",
                    traceback=traceback.format_exc(),
                )
        raise
    finally:
        trainer.close()


def _check_same_run(run_dir: records.RunDir, resolved: ResolvedRun) -> None:
    saved = run_dir.read_spec()
    wanted = resolved.record_spec()
    differing = [k for k in IDENTITY_KEYS if saved.get(k) != wanted.get(k)]
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
        old = {"eval_envs": 1, **saved["budget"]}
        fields = [f"{k} {old.get(k)} there, {v} here" for k, v in wanted["budget"].items() if old.get(k) != v]
        text += f" ({'; '.join(fields)})" if fields else ""
    return text


def _say(message: str, enabled: bool = True) -> None:
    if enabled:
        tqdm.write(message, file=sys.stderr)


class DivergenceTracker:
    """The first step at which each seed's metrics stopped being finite, and those metrics, kept on
    the device so that training never waits for it; `check` reads it (one transfer)."""

    def __init__(self, seeds: int, device: torch.device) -> None:
        self.first_step = torch.zeros(seeds, dtype=torch.long, device=device)  # 0: finite so far
        self.values: torch.Tensor | None = None  # (metrics, seeds) at each seed's first bad step
        self.names: list[str] = []

    def record(self, step: int, metrics: Metrics) -> None:
        values = metrics.tensor.reshape(len(metrics.names), -1)
        new = ~torch.isfinite(values).all(0) & (self.first_step == 0)
        self.first_step = torch.where(new, step, self.first_step)
        self.values = values if self.values is None else torch.where(new, values, self.values)
        self.names = metrics.names

    def check(self) -> dict[int, tuple[int, str, float]]:
        """seed index -> (first bad step, first non-finite metric, its value), for every seed
        that went bad."""
        first = self.first_step.cpu().tolist()
        if not any(first):
            return {}
        assert self.values is not None
        values = self.values.cpu().tolist()
        bad = {}
        for index, step in enumerate(first):
            if step:
                row = [values[m][index] for m in range(len(self.names))]
                name, value = next((n, v) for n, v in zip(self.names, row) if not math.isfinite(v))
                bad[index] = (step, name, value)
        return bad

    def keep(self, indices: list[int]) -> None:
        self.first_step = self.first_step[indices]
        self.values = None if self.values is None else self.values[:, indices]


@dataclass
class Member:
    """One seed of a Trainer: its run, its records and its online acting."""

    resolved: ResolvedRun
    run_dir: records.RunDir
    pending_train_rows: list[dict[str, Any]] = field(default_factory=list)
    explorer: Explorer | None = None
    online_state: dict[str, Any] | None = None  # from a checkpoint inside the online phase
    final: str | None = None  # "diverged" once it diverged

    @property
    def seed(self) -> int:
        return self.resolved.spec.seed

    def row_keys(self) -> dict[str, Any]:
        resolved = self.resolved
        return {
            "sweep": resolved.spec.sweep,
            "method": resolved.method.name,
            "variant": resolved.variant,
            "task": resolved.task.task,
            "seed": self.seed,
        }

    def flush_train_rows(self) -> None:
        self.run_dir.append_rows("train", self.pending_train_rows)
        self.pending_train_rows = []

    @property
    def next_ckpt_path(self) -> Path:
        return self.run_dir.path / NEXT_CHECKPOINT


def member_metrics(metrics: Metrics | dict[str, Any], index: int | None) -> dict[str, Any]:
    """One seed's floats of an update's metrics (`index` None: a lone agent's)."""
    return {k: v if index is None else v[index] for k, v in metrics.items()}


class Trainer:
    """One run, or several seeds of one run trained stacked (`stacked`): the offline phase, the
    online phase, evaluations, records, checkpoints and resume.

    Divergence: every update's metrics go to a device-side tracker, read every
    DIVERGENCE_CHECK_INTERVAL offline steps, every online step and before anything is written
    (train rows, evaluations, checkpoints), so training never waits for the device in between
    and nothing computed after a NaN is ever recorded. A seed whose metrics became non-finite is
    recorded as diverged at that first step with that metric, as if checked at every step. In a
    stack the other seeds go on: their slices never mix with its slice (per-seed reductions,
    clipping and Adam; tests/test_stacked.py), and the stack is rebuilt without it.

    Stacked checkpoints: every seed's ckpt.pt holds that seed's slice, in the format of a lone run
    (so `flowarena evaluate` and a lone resume read it), plus the group's seeds. The group writes
    every seed's ckpt.next.pt first and then renames them all over ckpt.pt; a resume finds a
    group interrupted in between and completes the renames if every seed's new checkpoint was
    written, else drops them (`resolve_pending_checkpoints`)."""

    def __init__(
        self, runs: list[tuple[ResolvedRun, records.RunDir]], *, progress: bool = True, stacked: bool = False
    ) -> None:
        self.members = [Member(resolved, run_dir) for resolved, run_dir in runs]
        self.stacked, self.progress = stacked, progress
        self.resolved = runs[0][0]
        spec, task, config = self.resolved.spec, self.resolved.task, self.resolved.config
        self.budget = spec.budget
        self.device = pick_device(spec.device)
        self.env = make_env(task.task)
        self.data = OfflineData(
            task.task, spec.dataset_dir, self.env, sparse=task.sparse, shard_dir=task.shard_dir
        )
        transitions = self.data.load(self.data.shard_for_step(1))
        self.env_spec = env_spec_of(self.env, task)
        seeds: int | list[int] = self.seeds if stacked else self.seeds[0]
        self.agent: Agent = registry.create(
            self.resolved.method, self.env_spec, config, device=self.device, seed=seeds
        )
        capacity = len(transitions["observations"]) + self.budget.online_steps
        self.buffer = ReplayBuffer(
            transitions,
            horizon=task.horizon,
            discount=task.discount,
            device=self.device,
            seed=seeds,
            capacity=capacity,
        )
        self.buffer_index = list(range(len(self.members)))  # stack position -> buffer member
        self.eval_slots: LocalEnvs | WorkerEnvs | SlotView | None = None  # made at the first evaluation
        self.explorer_group: ExplorerGroup | None = None
        self.tracker = DivergenceTracker(len(self.members), self.device)
        self.finished: dict[int, str] = {}
        self.step = 0
        self.synced_step = 0
        self.checkpoint_step = -1
        self.elapsed_s = 0.0

    @property
    def seeds(self) -> list[int]:
        return [member.seed for member in self.members]

    @property
    def phase(self) -> str:
        return "online" if self.step > self.budget.offline_steps else "offline"

    def stack_index(self, position: int) -> int | None:
        return position if self.stacked else None

    # --- the loop ---------------------------------------------------------------------
    def run(self) -> dict[int, str]:
        """Train to the end of the budget; each seed's final state (done, diverged, preempted)."""
        self.restore()
        for member in self.members:
            member.run_dir.write_status(
                "running",
                step=self.step,
                phase=self.phase,
                started_at=time.time(),
                **self.group_status(member),
            )
        start_time = time.perf_counter() - self.elapsed_s
        seeds = f"seed{self.seeds[0]}" if len(self.seeds) == 1 else f"seeds {','.join(map(str, self.seeds))}"
        bar = progress_bar(
            total=self.budget.total_steps,
            initial=self.step,
            desc=f"{self.resolved.variant} {self.resolved.task.task} {seeds}",
            unit="step",
            enabled=self.progress,
        )
        with bar:
            state = self.offline_phase(bar, start_time)
            if state is None and self.step < self.budget.total_steps:
                state = self.online_phase(bar, start_time)
        if state is None:
            for member in self.members:
                member.flush_train_rows()
                member.run_dir.write_status(
                    "done",
                    step=self.step,
                    phase=self.phase,
                    finished_at=time.time(),
                    **self.online_status(member),
                )
                self.finished[member.seed] = "done"
        return self.finished

    def group_status(self, member: Member) -> dict[str, Any]:
        """status.json's `seed_group`: the seeds trained stacked with this one (None alone)."""
        if self.stacked:
            return {"seed_group": self.seeds}
        return {"seed_group": None} if "seed_group" in member.run_dir.read_status() else {}

    def offline_phase(self, bar: tqdm, start_time: float) -> str | None:
        """Gradient steps on the dataset up to `offline_steps`; returns a final state when the
        run stops early (diverged, preempted), else None."""
        budget = self.budget
        while self.step < budget.offline_steps:
            self.step += 1
            self.rotate_shard()
            metrics = self.agent.update(self.sample())
            self.tracker.record(self.step, metrics)
            self.elapsed_s = time.perf_counter() - start_time
            log = self.step % budget.log_interval == 0
            evaluate = self.step % budget.eval_interval == 0 or self.step == budget.offline_steps
            checkpoint = self.step % budget.checkpoint_interval == 0 or self.step == budget.offline_steps
            if log or evaluate or checkpoint or self.step % DIVERGENCE_CHECK_INTERVAL == 0 or _stop.is_set():
                if self.sync(metrics, log=log):
                    return "diverged"
            if log:
                bar.set_postfix(loss=f"{self.first_loss(metrics):.3g}", refresh=False)
            if evaluate:
                success = self.evaluate()
                bar.set_postfix(
                    loss=f"{self.first_loss(metrics):.3g}", success=f"{success:.2f}", refresh=False
                )
            if checkpoint:
                self.checkpoint()
            bar.update(1)
            if _stop.is_set():
                if self.synced_step != self.step and self.sync(metrics, log=False):
                    return "diverged"
                return self.preempted()
        return None

    def online_phase(self, bar: tqdm, start_time: float) -> str | None:
        """Environment steps up to `online_steps`, each followed by `utd_ratio` updates from
        online step `online_warmup_steps` on; returns a final state when the run stops early."""
        budget = self.budget
        self.start_online()
        for member in self.members:
            member.run_dir.write_status(
                "running", step=self.step, phase="online", **self.online_status(member)
            )
        metrics: Metrics | None = None
        while self.step < budget.total_steps:
            self.step += 1
            self.explore()
            if self.step - budget.offline_steps >= budget.online_warmup_steps:
                for _ in range(budget.utd_ratio):
                    metrics = self.agent.update(self.sample())
                    self.tracker.record(self.step, metrics)
            self.elapsed_s = time.perf_counter() - start_time
            # acting reads from the device every chunk anyway: check every step
            if self.sync(metrics, log=self.step % budget.log_interval == 0, phase="online"):
                return "diverged"
            if self.step % budget.eval_interval == 0 or self.step == budget.total_steps:
                success = self.evaluate(phase="online")
                bar.set_postfix(buffer=self.buffer.size, success=f"{success:.2f}", refresh=False)
            if self.step % budget.checkpoint_interval == 0 or self.step == budget.total_steps:
                self.checkpoint()
            bar.update(1)
            if _stop.is_set():
                return self.preempted()
        return None

    def first_loss(self, metrics: Metrics) -> float:
        index = self.stack_index(0)
        return metrics["loss"] if index is None else metrics["loss"][index]

    def sample(self) -> Any:
        batch_size = self.resolved.config.batch_size
        if not self.stacked:
            return self.buffer.sample(batch_size)
        return self.buffer.sample(batch_size, stack=(len(self.members),), members=self.buffer_index)

    def explore(self) -> None:
        if self.explorer_group is not None:
            self.explorer_group.step()
        else:
            explorer = self.members[0].explorer
            assert explorer is not None
            explorer.step()

    def sync(self, metrics: Metrics | None, *, log: bool, phase: str = "offline") -> bool:
        """Read the divergence tracker: record the seeds that diverged, log the others' metrics
        (when `log`) and drop the diverged from the stack. True when no seed is left."""
        self.synced_step = self.step
        bad = self.tracker.check()
        if log:
            for position, member in enumerate(self.members):
                if position not in bad:
                    self.log_train(member, metrics, self.stack_index(position), phase)
        if bad:
            self.drop_diverged(bad)
        return not self.members

    def drop_diverged(self, bad: dict[int, tuple[int, str, float]]) -> None:
        for position, (step, metric, value) in sorted(bad.items()):
            member = self.members[position]
            member.flush_train_rows()
            member.run_dir.write_status(
                "diverged",
                step=step,
                metric=metric,
                error=f"{metric} became {value} at step {step}",
                finished_at=time.time(),
            )
            label = "" if len(self.members) == 1 else f"seed {member.seed} "
            _say(f"{label}diverged: {metric} became {value} at step {step}", self.progress)
            member.final = self.finished[member.seed] = "diverged"
        keep = [position for position in range(len(self.members)) if position not in bad]
        if keep and self.stacked:
            self.compact(keep)
        self.members = [self.members[position] for position in keep]

    def compact(self, keep: list[int]) -> None:
        """Rebuild the stack with the seeds at positions `keep` only (their states unchanged)."""
        full = self.agent.state_dict()
        state = stack_agent_states([slice_agent_state(full, position) for position in keep])
        seeds = [self.members[position].seed for position in keep]
        self.agent = registry.create(
            self.resolved.method,
            self.env_spec,
            self.resolved.config,
            device=self.device,
            seed=seeds,
            state=state,
        )
        self.tracker.keep(keep)
        self.buffer_index = [self.buffer_index[position] for position in keep]
        if self.eval_slots is not None:
            per_seed = len(self.eval_slots) // len(self.members)
            slots = [position * per_seed + k for position in keep for k in range(per_seed)]
            self.eval_slots = SlotView(self.eval_slots, slots)
        if self.explorer_group is not None:
            explorers = [self.members[position].explorer for position in keep]
            for explorer in explorers:
                assert explorer is not None
                explorer.agent = self.agent
            self.explorer_group = ExplorerGroup(self.agent, explorers)  # type: ignore[arg-type]

    def start_online(self) -> None:
        """The online phase's acting, one environment of its own per seed: fresh, or as
        checkpointed. The buffer keeps the shard it holds at the switch (no more rotation). A
        method with eval-time parameters acts with the first setting of the eval grid."""
        self.use_shard(self.data.shard_for_step(self.budget.offline_steps))
        eval_params = {**self.agent.eval_params, **(self.resolved.spec.eval_params or [{}])[0]}
        for position, member in enumerate(self.members):
            buffer = self.buffer.member(self.buffer_index[position]) if self.stacked else self.buffer
            explorer = Explorer(
                make_env(self.resolved.task.task),
                self.agent,
                buffer,
                seed=member.seed,
                sparse=self.resolved.task.sparse,
                eval_params=eval_params,
            )
            if member.online_state is None:
                explorer.start()
            else:
                explorer.load_state_dict(member.online_state)
                member.online_state = None
            member.explorer = explorer
        if self.stacked:
            self.explorer_group = ExplorerGroup(self.agent, [m.explorer for m in self.members])  # type: ignore[misc]

    def online_status(self, member: Member) -> dict[str, Any]:
        """status.json fields of the online phase: the replay buffer's size."""
        if self.phase != "online":
            return {}
        if member.explorer is None and member.online_state is not None:  # resumed at the very end
            saved = member.online_state
            return {"buffer_size": saved["offline_size"] + len(saved["transitions"]["actions"])}
        if member.explorer is not None:
            return {"buffer_size": member.explorer.buffer.size}
        return {"buffer_size": self.buffer.size}

    def rotate_shard(self) -> None:
        self.use_shard(self.data.shard_for_step(self.step))

    def use_shard(self, shard: int) -> None:
        if shard != self.data.current:
            transitions = self.data.load(shard)
            capacity = len(transitions["observations"]) + self.budget.online_steps
            self.buffer.load_offline(transitions, max(capacity, self.buffer.capacity))

    def preempted(self) -> str:
        if self.checkpoint_step != self.step:
            self.checkpoint()
        for member in self.members:
            member.run_dir.write_status(
                "pending", step=self.step, note=f"preempted at step {self.step}; will resume"
            )
            self.finished[member.seed] = "preempted"
        _say(f"stopped at step {self.step} on request; checkpoint saved", self.progress)
        return "preempted"

    # --- records ----------------------------------------------------------------------
    def log_train(self, member: Member, metrics: Metrics | None, index: int | None, phase: str) -> None:
        row = {**member.row_keys(), "phase": phase, "step": self.step, "wall_time_s": self.elapsed_s}
        values = member_metrics(metrics, index) if metrics is not None else {}
        if phase == "online" and member.explorer is not None:
            values = {**values, **member.explorer.metrics()}
        member.pending_train_rows.append({**row, **values})

    def evaluation_slots(self) -> LocalEnvs | WorkerEnvs | SlotView:
        """The evaluation environments: eval_envs slots per seed, made at the first evaluation."""
        if self.eval_slots is None:
            n = default_eval_envs(self.budget.eval_episodes, self.budget.eval_envs)
            workers = self.resolved.spec.eval_workers
            total = n * len(self.members)
            self.eval_slots = make_eval_envs(self.resolved.task.task, total, workers=workers, first=self.env)
        return self.eval_slots

    def evaluate(self, phase: str = "offline") -> float:
        """Evaluate every eval-parameter setting for every seed; returns the first one's success
        of the first setting."""
        results = evaluate_seeds(
            self.agent,
            self.evaluation_slots(),
            seeds=self.seeds,
            step=self.step,
            episodes=self.budget.eval_episodes,
            grid=self.resolved.spec.eval_params or [{}],
        )
        for member, member_results in zip(self.members, results):
            keys = {**member.row_keys(), "domain": self.resolved.task.domain, "phase": phase}
            rows = eval_rows(member_results, keys, step=self.step, wall_time_s=self.elapsed_s)
            member.flush_train_rows()
            member.run_dir.append_rows("evals", rows)
        return results[0][0][1].success

    def close(self) -> None:
        """Stop evaluation workers, if any."""
        if self.eval_slots is not None:
            self.eval_slots.close()
            self.eval_slots = None

    # --- checkpoints --------------------------------------------------------------------
    def checkpoint(self) -> None:
        for member in self.members:
            member.flush_train_rows()
        if self.stacked:
            self.checkpoint_group()
        else:
            member = self.members[0]
            state = self.checkpoint_state(self.agent.state_dict(), self.buffer.state_dict(), member)
            records.atomic_write(member.run_dir.ckpt_path, lambda tmp: torch.save(state, tmp))
        self.checkpoint_step = self.step
        for member in self.members:
            member.run_dir.write_status(
                "running", step=self.step, checkpoint_step=self.step, **self.online_status(member)
            )

    def checkpoint_state(
        self, agent: dict[str, Any], buffer: dict[str, Any], member: Member
    ) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "phase": self.phase,
            "agent": agent,
            "buffer": buffer,
            "online": member.explorer.state_dict() if member.explorer is not None else None,
        }

    def checkpoint_group(self) -> None:
        """Every seed's slice to its ckpt.next.pt, then all of them over ckpt.pt."""
        full = self.agent.state_dict()
        for position, member in enumerate(self.members):
            buffer = self.buffer.member(self.buffer_index[position]).state_dict()
            state = self.checkpoint_state(slice_agent_state(full, position), buffer, member)
            state["seed_group"] = self.seeds
            records.atomic_write(member.next_ckpt_path, lambda tmp, state=state: torch.save(state, tmp))
        for member in self.members:
            os.replace(member.next_ckpt_path, member.run_dir.ckpt_path)

    def restore(self) -> None:
        """Continue from the checkpoints, if any, dropping rows written after them."""
        for member in self.members:
            resolve_pending_checkpoints(member.run_dir.path)
        states = [load_checkpoint(member.run_dir.ckpt_path) for member in self.members]
        steps = {member.seed: state["step"] if state else 0 for member, state in zip(self.members, states)}
        if len(set(steps.values())) > 1:
            raise UserError(
                f"the seeds of this stacked group have checkpoints at different steps ({steps}); resume "
                f"them as they were started (the same seeds together, or each alone with --seed)"
            )
        if all(states):
            agent = stack_agent_states([s["agent"] for s in states]) if self.stacked else states[0]["agent"]
            self.agent.load_state_dict(agent)
            for position, (member, state) in enumerate(zip(self.members, states)):
                buffer = self.buffer.member(position) if self.stacked else self.buffer
                buffer.load_state_dict(state["buffer"])
                member.online_state = state.get("online")
            self.step = self.synced_step = states[0]["step"]
            self.elapsed_s = states[0]["elapsed_s"]
            for member in self.members:
                _say(f"resuming {member.run_dir.path} from step {self.step}", self.progress)
        for member in self.members:
            for kind in ("evals", "train"):
                member.run_dir.truncate_rows(self.step, kind)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A run's checkpoint (on the CPU: generator states must be CPU tensors; load_state_dict
    moves the rest), or None when there is none. Raises UserError when it is unreadable."""
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        reason = (str(error).splitlines() or [""])[0]  # torch's unpickling errors run to pages
        raise UserError(
            f"checkpoint {path} is unreadable ({type(error).__name__}: {reason}); move it away to "
            f"restart this run from scratch (its evals.parquet is kept)"
        ) from None


def _checkpoint_step(path: Path) -> int | None:
    """The step of a checkpoint file, None when it is absent or unreadable (memory-mapped: the
    tensors are not read)."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["step"])
    except Exception:
        return None


def resolve_pending_checkpoints(run_dir: Path) -> None:
    """Finish or undo the commit of a stacked group that stopped between writing its seeds'
    ckpt.next.pt and renaming them over ckpt.pt: if every seed of the group (named in the file)
    has its new checkpoint, as ckpt.next.pt or already renamed, the renames are completed;
    otherwise every ckpt.next.pt of the group is removed and each seed keeps its previous
    checkpoint. Seeds' run directories are siblings (seed<k>)."""
    pending = run_dir / NEXT_CHECKPOINT
    if not pending.exists():
        return
    try:
        saved = torch.load(pending, map_location="cpu", weights_only=True, mmap=True)
        step, group = int(saved["step"]), [int(seed) for seed in saved["seed_group"]]
    except Exception:
        pending.unlink()  # an incomplete write: this seed's new checkpoint does not exist
        return
    dirs = [run_dir.parent / f"seed{seed}" for seed in group]
    complete = all(
        _checkpoint_step(d / NEXT_CHECKPOINT) == step or _checkpoint_step(d / "ckpt.pt") == step for d in dirs
    )
    for d in dirs:
        if (d / NEXT_CHECKPOINT).exists():
            if complete:
                os.replace(d / NEXT_CHECKPOINT, d / "ckpt.pt")
            else:
                (d / NEXT_CHECKPOINT).unlink()
