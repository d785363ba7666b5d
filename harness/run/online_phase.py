"""The online phase of `Trainer` (harness/run/trainer.py): after the offline phase each seed
acts in an environment of its own (harness/run/online.py), every environment step's transition
joins its replay buffer, and from online step `online_warmup_steps` on every environment step
makes `utd_ratio` updates, on the offline phase's evaluation, logging and checkpoint schedule."""

from __future__ import annotations

import time
from typing import Any

from algorithms.base import Metrics
from harness.progress import Progress
from harness.run.envs import make_env
from harness.run.members import Member
from harness.run.online import Explorer, ExplorerGroup
from harness.run.stop import stop_requested


class OnlinePhase:
    """The online half of `Trainer`: its loop, the explorers and the online fields of status.json.
    Uses the trainer's members, agent, buffer, budget, step, stacked, sync, evaluate, checkpoint
    and preempted."""

    def online_phase(self, bar: Progress, start_time: float) -> str | None:
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
            self.rotate_shard()
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
            if self.heartbeat.due():
                self.heartbeat.beat(self.members, step=self.step, phase="online")
            if stop_requested():
                return self.preempted()
        return None

    def explore(self) -> None:
        if self.explorer_group is not None:
            self.explorer_group.step()
        else:
            explorer = self.members[0].explorer
            assert explorer is not None
            explorer.step()

    def start_online(self) -> None:
        """The online phase's acting, one environment of its own per seed: fresh, or as
        checkpointed. The buffer holds the shard of the current step (rotation goes on online:
        `Trainer.rotate_shard`). A method with eval-time parameters acts with its
        `exploration_params` (QGF: its online guidance weight; by default its declared defaults)."""
        self.use_shard(self.data.shard_for_step(self.step, self.budget.offline_steps))
        eval_params = self.agent.exploration_params
        for position, member in enumerate(self.members):
            buffer = self.buffer.member(self.buffer_index[position]) if self.stacked else self.buffer
            explorer = Explorer(
                make_env(self.resolved.task.task),
                self.agent,
                buffer,
                seed=member.seed,
                sparse=self.resolved.task.sparse,
                eval_params=eval_params,
                random_steps=self.budget.online_warmup_steps if self.budget.balanced_sampling else 0,
                reward_shift=self.data.source.reward_shift(self.resolved.task.task),
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
