"""The training loop: `Trainer` trains one run, or several seeds of one run stacked, through the
offline phase (here) and the online phase (harness/run/online_phase.py), evaluating, logging
train rows and checkpointing (harness/run/checkpoint.py) on the budget's schedule; it drops
diverged seeds from a stack and stops at a stop request (harness/run/stop.py)."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any

import torch

import suites
from algorithms import registry
from algorithms.base import Agent, EnvSpec, Metrics, slice_agent_state, stack_agent_states
from algorithms.compiled import use_compiled_update
from harness.errors import UserError
from harness.progress import Progress, progress_bar, say
from harness.run import records
from harness.run.balanced import sample_balanced
from harness.run.checkpoint import Checkpoints
from harness.run.compile import CACHE_DIR_NAME, use_cache_dir
from harness.run.data import ReplayBuffer
from harness.run.envs import LocalEnvs, SlotView, WorkerEnvs, make_env, make_eval_envs
from harness.run.evaluate import default_eval_envs
from harness.run.grid import eval_rows, evaluate_seeds
from harness.run.heartbeat import Heartbeat
from harness.run.members import DIVERGENCE_CHECK_INTERVAL, DivergenceTracker, Member, member_metrics
from harness.run.online import ExplorerGroup
from harness.run.online_phase import OnlinePhase
from harness.run.precision import apply as apply_precision
from harness.run.precision import check_here
from harness.run.shards import OfflineData, swap_offline
from harness.run.spec import ResolvedRun
from harness.run.stop import stop_requested


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


def env_spec_of(env: Any, task: suites.TaskSettings) -> EnvSpec:
    """The agent's EnvSpec: the environment's shapes with the task's chunk length and discount."""
    return EnvSpec(
        obs_dim=env.observation_space.shape[-1],
        action_dim=env.action_space.shape[-1],
        horizon=task.horizon,
        discount=task.discount,
    )


class Trainer(OnlinePhase, Checkpoints):
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
        spec, task = self.resolved.spec, self.resolved.task
        self.budget = spec.budget
        self.device = pick_device(spec.device)
        said = check_here(spec.precision, self.device)  # before the data loads
        if said:
            say(said)
        self.env = make_env(task.task)
        self.data = OfflineData(
            task.task, spec.dataset_dir, self.env, sparse=task.sparse, shard_dir=task.shard_dir
        )
        transitions = self.data.load(self.data.shard_for_step(1))
        self.env_spec = env_spec_of(self.env, task)
        seeds: int | list[int] = self.seeds if stacked else self.seeds[0]
        if self.resolved.compiled:
            use_cache_dir(Path(spec.out) / spec.sweep / CACHE_DIR_NAME)  # shared by the sweep's runs
        self.agent = self.make_agent(seeds)
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
        self.heartbeat = Heartbeat()  # status.json's step and heartbeat_at, every HEARTBEAT_S
        self.postfix: dict[str, str] = {}  # the progress bar's loss and last success

    def make_agent(self, seeds: int | list[int], state: dict[str, Any] | None = None) -> Agent:
        """The run's agent (from `state` if given), its update compiled where `--compile` says so."""
        agent = registry.create(
            self.resolved.method,
            self.env_spec,
            self.resolved.config,
            device=self.device,
            seed=seeds,
            state=state,
        )
        apply_precision(agent, self.resolved.spec.precision)
        if self.resolved.compiled:
            use_compiled_update(agent)
        return agent

    @property
    def seeds(self) -> list[int]:
        return [member.seed for member in self.members]

    @property
    def phase(self) -> str:
        return "online" if self.step > self.budget.offline_steps else "offline"

    def stack_index(self, position: int) -> int | None:
        return position if self.stacked else None

    # --- the loop -------------------------------------------------------------------------------------
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

    def offline_phase(self, bar: Progress, start_time: float) -> str | None:
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
            if (
                log
                or evaluate
                or checkpoint
                or self.step % DIVERGENCE_CHECK_INTERVAL == 0
                or stop_requested()
            ):
                if self.sync(metrics, log=log):
                    return "diverged"
            if log or evaluate:
                self.postfix["loss"] = f"{self.first_loss(metrics):.3g}"
            if evaluate:
                self.postfix["success"] = f"{self.evaluate():.2f}"
            if log or evaluate:
                bar.set_postfix(self.postfix, refresh=False)
            if checkpoint:
                self.checkpoint()
            bar.update(1)
            if self.heartbeat.due():
                self.heartbeat.beat(self.members, step=self.step, phase="offline")
            if stop_requested():
                if self.synced_step != self.step and self.sync(metrics, log=False):
                    return "diverged"
                return self.preempted()
        return None

    def first_loss(self, metrics: Metrics) -> float:
        index = self.stack_index(0)
        return metrics["loss"] if index is None else metrics["loss"][index]

    def sample(self) -> Any:
        batch_size = self.resolved.config.batch_size
        sample = self.buffer.sample
        if self.budget.balanced_sampling and self.phase == "online":
            sample = functools.partial(sample_balanced, self.buffer)
        if not self.stacked:
            return sample(batch_size)
        return sample(batch_size, stack=(len(self.members),), members=self.buffer_index)

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
            say(f"{label}diverged: {metric} became {value} at step {step}", self.progress)
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
        self.agent = self.make_agent(seeds, state)
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

    def rotate_shard(self) -> None:
        """Train step `self.step` on its shard (harness/run/shards.py). Online, the new shard
        replaces the buffer's dataset part and the online transitions stay."""
        shard = self.data.shard_for_step(self.step, self.budget.offline_steps)
        if self.step <= self.budget.offline_steps:
            self.use_shard(shard)
        elif shard != self.data.current:
            moved = swap_offline(self.buffer, self.data.load(shard))
            for member in self.members:
                if member.explorer is not None:  # its episode's first transition moved with the rest
                    member.explorer.episode_start += moved

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
        say(f"stopped at step {self.step} on request; checkpoint saved", self.progress)
        return "preempted"

    # --- records --------------------------------------------------------------------------------------
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
        self.heartbeat.beat(self.members, step=self.step, phase=phase, activity="evaluating")
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
        self.heartbeat.expire()  # the loop's next check says that training goes on
        return results[0][0][1].success

    def close(self) -> None:
        """Stop evaluation workers, if any."""
        if self.eval_slots is not None:
            self.eval_slots.close()
            self.eval_slots = None
