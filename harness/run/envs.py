"""Environments for evaluation: in this process, or stepped in worker processes.

Both kinds hold a fixed list of environment slots and answer two batched requests: reset some
slots with given seeds, and execute an action chunk on some slots (open loop, cut short at the
episode's end). A chunk's outcome is the same wherever it runs (MuJoCo is deterministic on one
machine), so the kind and the number of workers never change an evaluation's numbers; only the
number of slots does (harness/run/evaluate.py explains why).

This module does not import torch: worker processes start without it.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.run.sources import source_for


def make_env(task: str, **env_kwargs: Any) -> Any:
    """The task's evaluation environment, made by its source (harness/run/sources/); `env_kwargs`
    go to the environment (e.g. max_episode_steps)."""
    return source_for(task).make_env(task, **env_kwargs)


@dataclass
class ChunkOutcome:
    """What executing one chunk did: the rewards of the steps taken (in order), the observation
    after the last of them, and whether the episode ended there (with its success)."""

    observation: np.ndarray
    rewards: list[float]
    done: bool
    success: float


def run_chunk(env: Any, chunk: np.ndarray) -> ChunkOutcome:
    """Execute the actions of `chunk` (H, action_dim) until the episode ends."""
    rewards: list[float] = []
    observation = None
    for action in chunk:
        observation, reward, terminated, truncated, info = env.step(action)
        rewards.append(float(reward))
        if terminated or truncated:
            return ChunkOutcome(observation, rewards, True, float(info["success"]))
    return ChunkOutcome(observation, rewards, False, 0.0)


class LocalEnvs:
    """Environment slots stepped one after the other in this process."""

    def __init__(self, envs: Sequence[Any]) -> None:
        self.envs = list(envs)

    def __len__(self) -> int:
        return len(self.envs)

    def reset(self, requests: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Reset slot i with seed s for every (i, s); their first observations."""
        return [self.envs[slot].reset(seed=seed)[0] for slot, seed in requests]

    def step_chunks(self, requests: Sequence[tuple[int, np.ndarray]]) -> list[ChunkOutcome]:
        return [run_chunk(self.envs[slot], chunk) for slot, chunk in requests]

    def close(self) -> None:
        """Nothing to stop (the environments belong to whoever made them)."""


def _worker(
    connection: multiprocessing.connection.Connection, make: Callable[[], Any], slots: list[int]
) -> None:
    """A worker process: its slots' environments, serving reset and chunk requests."""
    import warnings

    warnings.filterwarnings("ignore")
    envs = {slot: make() for slot in slots}
    connection.send("ready")
    while True:
        command, requests = connection.recv()
        if command == "reset":
            connection.send([envs[slot].reset(seed=seed)[0] for slot, seed in requests])
        elif command == "step":
            connection.send([run_chunk(envs[slot], chunk) for slot, chunk in requests])
        else:
            for env in envs.values():
                env.close()
            connection.close()
            return


class WorkerEnvs:
    """`n` environment slots spread round-robin over `workers` processes, which step their slots
    of one request in parallel. `make` builds one environment in a worker (picklable, e.g.
    `functools.partial(make_env, task)`)."""

    def __init__(self, make: Callable[[], Any], n: int, workers: int) -> None:
        context = multiprocessing.get_context("spawn")  # no fork of a process running torch threads
        self.n = n
        self.workers = min(workers, n)
        self.connections: list[multiprocessing.connection.Connection] = []
        self.processes: list[Any] = []
        for index in range(self.workers):
            parent, child = context.Pipe()
            slots = list(range(index, n, self.workers))
            process = context.Process(target=_worker, args=(child, make, slots), daemon=True)
            process.start()
            child.close()
            self.connections.append(parent)
            self.processes.append(process)
        for connection in self.connections:
            try:
                ready = connection.recv() == "ready"
            except EOFError:
                ready = False
            if not ready:
                self.close()
                raise RuntimeError(
                    "an evaluation worker process failed to start (its error is printed above)"
                )

    def __len__(self) -> int:
        return self.n

    def _call(self, command: str, requests: Sequence[tuple[int, Any]]) -> list[Any]:
        per_worker: list[list[tuple[int, Any]]] = [[] for _ in self.connections]
        for request in requests:
            per_worker[request[0] % self.workers].append(request)
        busy = [i for i, part in enumerate(per_worker) if part]
        for i in busy:
            self.connections[i].send((command, per_worker[i]))
        answers = {i: iter(self.connections[i].recv()) for i in busy}
        return [next(answers[slot % self.workers]) for slot, _ in requests]

    def reset(self, requests: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return self._call("reset", requests)

    def step_chunks(self, requests: Sequence[tuple[int, np.ndarray]]) -> list[ChunkOutcome]:
        return self._call("step", requests)

    def close(self) -> None:
        for connection in self.connections:
            try:
                connection.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
        self.connections, self.processes = [], []


class SlotView:
    """Some slots of LocalEnvs or WorkerEnvs, renumbered 0..len-1 (the slots of the seeds still
    training when a stacked group drops a diverged seed)."""

    def __init__(self, envs: LocalEnvs | WorkerEnvs | SlotView, slots: Sequence[int]) -> None:
        self.envs, self.slots = envs, list(slots)

    def __len__(self) -> int:
        return len(self.slots)

    def reset(self, requests: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        return self.envs.reset([(self.slots[slot], seed) for slot, seed in requests])

    def step_chunks(self, requests: Sequence[tuple[int, np.ndarray]]) -> list[ChunkOutcome]:
        return self.envs.step_chunks([(self.slots[slot], chunk) for slot, chunk in requests])

    def close(self) -> None:
        self.envs.close()


def make_eval_envs(task: str, n: int, *, workers: int = 0, first: Any = None) -> LocalEnvs | WorkerEnvs:
    """`n` evaluation slots of `task`: in this process (`workers` 0; `first` is reused as slot
    0) or in `workers` worker processes."""
    if workers > 0:
        return WorkerEnvs(functools.partial(make_env, task), n, workers)
    envs = [first] if first is not None else []
    envs += [make_env(task) for _ in range(n - len(envs))]
    return LocalEnvs(envs)
