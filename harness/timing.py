"""The timing pieces of `flowarena bench` (harness/bench.py): a random-transition replay buffer, rates
of a call with the device synchronised, the device's practical peak (one large matrix product), an
update's FLOPs, and the training loop's step timed for one or more update paths taking turns."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PEAK_MATMUL_SIZE = 2048
SYNTHETIC_TRANSITIONS = 20_000
SYNTHETIC_EPISODE_LENGTH = 1_000


def synthetic_buffer(spec: Any, *, device: Any, seed: int = 0) -> Any:
    """A replay buffer of random transitions in episodes of SYNTHETIC_EPISODE_LENGTH steps."""
    import numpy as np

    from harness.run.data import ReplayBuffer

    rng = np.random.default_rng(seed)
    n = SYNTHETIC_TRANSITIONS
    observations = rng.normal(size=(n, spec.obs_dim)).astype(np.float32)
    terminals = np.zeros(n, np.float32)
    terminals[SYNTHETIC_EPISODE_LENGTH - 1 :: SYNTHETIC_EPISODE_LENGTH] = 1.0
    data = {
        "observations": observations,
        "actions": rng.uniform(-1, 1, size=(n, spec.action_dim)).astype(np.float32),
        "rewards": -(rng.uniform(size=n) < 0.9).astype(np.float32),
        "masks": np.ones(n, np.float32),
        "terminals": terminals,
        "next_observations": np.roll(observations, -1, axis=0),
    }
    return ReplayBuffer(data, horizon=spec.horizon, discount=spec.discount, device=device, seed=seed)


def _synchronize(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rate(count: int, fn: Callable[[], Any], device: Any) -> float:
    """Calls of `fn` per second over `count` calls."""
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(count):
        fn()
    _synchronize(device)
    return count / (time.perf_counter() - start)


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker, whose global module hooks break
    `torch.autograd.grad` inside the counted code (QAM's lean adjoint, QGF's guidance): every
    count goes to the "Global" total, the only one reported here."""

    parents = ("Global",)

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def update_flops(agent: Any, batch: Any) -> int:
    """Floating-point operations of one update (forward and backward), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        agent.update(batch)
    return int(counter.get_total_flops())


def peak_gflops(
    device: Any, precision: str = "fp32", size: int = PEAK_MATMUL_SIZE, repeats: int = 5
) -> float:
    """GFLOP/s of one large matrix product here in `precision` (algorithms/precision.py): the
    device's practical peak. bf16 multiplies bfloat16 matrices, tf32 float32 ones under the process's
    TF32 setting (float32 on a CPU)."""
    import torch

    from algorithms import precision as precisions

    dtype = getattr(torch, precisions.AUTOCAST_DTYPES.get(precision, "float32"))
    with precisions.device_settings(precision, device):
        a = torch.randn(size, size, device=device).to(dtype)
        b = torch.randn(size, size, device=device).to(dtype)
        a @ b  # warm-up
        rate = _rate(repeats, lambda: a @ b, device)
    return 2 * size**3 * rate / 1e9


class TrainingStep:
    """The training loop's step for one agent: sample on the device, update, metrics into the
    device-side NaN tracker, read every DIVERGENCE_CHECK_INTERVAL steps. The first call's time is
    kept: a compiled update plans its draws and compiles then."""

    def __init__(
        self, agent: Any, buffer: Any, batch_size: int, stack: tuple, seeds: int, device: Any
    ) -> None:
        from harness.run.members import DivergenceTracker

        self.agent, self.buffer, self.batch_size, self.stack = agent, buffer, batch_size, stack
        self.tracker = DivergenceTracker(seeds, device)
        self.index = 0
        self.first_s = 1.0 / _rate(1, self, device)

    def __call__(self) -> None:
        from harness.run.members import DIVERGENCE_CHECK_INTERVAL

        self.index += 1
        self.tracker.record(
            self.index, self.agent.update(self.buffer.sample(self.batch_size, stack=self.stack))
        )
        if self.index % DIVERGENCE_CHECK_INTERVAL == 0:
            self.tracker.check()


def time_alternately(
    steppers: dict[Any, TrainingStep],
    steps: int,
    repeats: int,
    device: Any,
    say: Callable[[str], None],
    label: Callable[[Any], str] = str,
) -> dict[Any, dict[str, float]]:
    """updates/s of each path (keyed as in `steppers`, e.g. (precision, compiled)), best of `repeats`
    rounds of `steps` updates, the paths taking turns in every round so that a busy machine slows
    them alike; and each path's extra time at its first update (compile_s)."""
    rates: dict[Any, list[float]] = {key: [] for key in steppers}
    for round_index in range(repeats):
        for key, step in steppers.items():
            say(f"timing {steps} {label(key)} updates (round {round_index + 1}/{repeats})")
            rates[key].append(_rate(steps, step, device))
            say(f"{rates[key][-1]:.3g} {label(key)} updates/s")
    timings = {}
    for key, step in steppers.items():
        best = max(rates[key])
        timings[key] = {"updates_per_s": best, "compile_s": max(0.0, step.first_s - 1.0 / best)}
    return timings


def path_label(key: tuple[str, bool]) -> str:
    precision, compiled = key
    return f"{precision} {'compiled' if compiled else 'eager'}"


def precision_figures(
    timings: dict[Any, dict[str, float]], precision: str, flops: float, seeds: int
) -> dict[str, Any]:
    """One precision's updates/s (its compiled update's when timed), ms, GFLOP/s and, with both
    paths timed, the eager rate and the compiled speed-up."""
    compiled = (precision, True) in timings
    main = timings[precision, compiled]
    figures = {
        "updates_per_s": main["updates_per_s"],
        "seed_updates_per_s": main["updates_per_s"] * seeds,
        "ms_per_update": 1000.0 / main["updates_per_s"],
        "compile_s": main["compile_s"] if compiled else None,
        "gflop_per_s": flops * main["updates_per_s"] / 1e9,
    }
    if compiled and (precision, False) in timings:
        eager = timings[precision, False]["updates_per_s"]
        figures.update(eager_updates_per_s=eager, compiled_speedup=main["updates_per_s"] / eager)
    return figures
