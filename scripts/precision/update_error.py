"""How far a reduced-precision update strays from the float32 one, measured per method.

For each method three agents start from the same parameters and generators and take the same
batches: float32 (the reference here), bf16 (`--precision bf16`, algorithms/precision.py) and
TF32-like (float32 with every matrix product's operands rounded to TF32's 10-bit mantissa,
round-to-nearest-even, and float32 accumulation: what CUDA's TF32 tensor cores do, emulated on the
CPU). After update 1 and update N (default 100) it compares every loss term, every gradient and every
parameter (online and target) with the float32 agent's, per tensor, and prints the largest over the
tensors of each kind, one line per method and precision. Loss terms and gradients as the parity
tool does (scripts/parity/compare.py): max |x - fp32| / max |fp32|. Parameters relative to how far
they moved, ||x - fp32|| / ||fp32 - initial||: Adam's first steps move every entry by about lr times
the sign of its gradient, so an entry whose gradient is near zero can move the other way under any
rounding, and a max-based error of a bias that starts at zero reads 2 after one such flip. With
`--compiled` it gives instead the compiled bf16 update's first gradients against the eager bf16
update's, in the statistic of algorithms/compiled.py's check (error / largest entry, per tensor).

usage (from the repository root):
  python scripts/precision/update_error.py [--methods fql,qam] [--config medium] [--updates 100] [--json OUT.json]
  python scripts/precision/update_error.py --compiled --methods fql,qam,fbrac,rebrac

Needs no bfloat16 units (where there are none bf16 runs on emulated kernels, slowly). The results
and the command that made them: docs/precision.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from algorithms import registry  # noqa: E402
from algorithms.base import EnvSpec  # noqa: E402
from algorithms.compiled import plan_draws, use_compiled_update  # noqa: E402
from algorithms.precision import use_precision  # noqa: E402
from harness.bench import PAPER_SHAPES, bench_config  # noqa: E402
from harness.timing import synthetic_buffer  # noqa: E402

PRODUCTS = {"mm": (0, 1), "bmm": (0, 1), "baddbmm": (1, 2), "addmm": (1, 2), "addbmm": (1, 2)}
TF32_DROPPED_BITS = 13  # float32 keeps 23 mantissa bits, TF32 10


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """float32 values rounded to the nearest TF32 value (ties to even); inf and NaN kept."""
    if x.dtype != torch.float32:
        return x
    bits = x.contiguous().view(torch.int32)
    half, low_mask = 1 << (TF32_DROPPED_BITS - 1), (1 << TF32_DROPPED_BITS) - 1
    odd = (bits >> TF32_DROPPED_BITS) & 1
    rounded = ((bits + (half - 1) + odd) & ~low_mask).view(torch.float32)
    return torch.where(torch.isfinite(x), rounded, x)


class TF32Products(TorchDispatchMode):
    """Every matrix product, forward and backward, on operands rounded to TF32."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        operands = PRODUCTS.get(func.overloadpacket.__name__)
        if operands is not None:
            args = tuple(round_to_tf32(a) if i in operands else a for i, a in enumerate(args))
        return func(*args, **(kwargs or {}))


def make_agent(method: Any, config: Any, precision: str) -> Any:
    agent = registry.create(method, EnvSpec(**PAPER_SHAPES), config, seed=0)
    use_precision(agent, "bf16" if precision == "bf16" else "fp32", allow_emulated=True)
    return agent


def update(agent: Any, batch: Any, precision: str) -> dict[str, float]:
    if precision == "tf32-like":
        with TF32Products():
            return dict(agent.update(batch))
    return dict(agent.update(batch))


def error(got: torch.Tensor, want: torch.Tensor) -> float:
    scale = want.abs().max().item()
    return (got - want).abs().max().item() / scale if scale else float((got - want).abs().max().item())


def largest(errors: dict[str, float]) -> tuple[str, float]:
    name = max(errors, key=lambda k: errors[k])
    return name, errors[name]


def snapshot(agent: Any, metrics: dict[str, float]) -> dict[str, dict[str, torch.Tensor]]:
    return {
        "loss terms": {k: torch.tensor(float(v)) for k, v in metrics.items()},
        "gradients": {n: p.grad.clone() for n, p in agent.named_parameters() if p.grad is not None},
        "parameters": {n: p.detach().clone() for n, p in agent.named_parameters()},
    }


def displacement_error(got: torch.Tensor, want: torch.Tensor, start: torch.Tensor) -> float:
    """How far a parameter tensor's trajectory strays, as a share of how far it moved:
    ||x - fp32|| / ||fp32 - initial||."""
    moved = (want - start).norm().item()
    return (got - want).norm().item() / moved if moved else 0.0


def measure_method(name: str, config_name: str, updates: int, batches: list[Any]) -> list[dict[str, Any]]:
    method = registry.get(name)
    config = bench_config(method, config_name, {})
    agents = {p: make_agent(method, config, p) for p in ("fp32", "bf16", "tf32-like")}
    initial = {n: p.detach().clone() for n, p in agents["fp32"].named_parameters()}
    snapshots: dict[str, dict[int, Any]] = {p: {} for p in agents}
    for step, batch in enumerate(batches[:updates], start=1):
        for precision, agent in agents.items():
            metrics = update(agent, batch, precision)
            if step in (1, updates):
                snapshots[precision][step] = snapshot(agent, metrics)
    rows = []
    for precision in ("bf16", "tf32-like"):
        for step in sorted({1, updates}):
            row: dict[str, Any] = {"method": name, "precision": precision, "update": step}
            for kind, tensors in snapshots[precision][step].items():
                want = snapshots["fp32"][step][kind]
                if kind == "parameters":
                    errors = {k: displacement_error(tensors[k], want[k], initial[k]) for k in want}
                else:
                    errors = {k: error(tensors[k], want[k]) for k in want if k in tensors}
                row[f"{kind} (largest)"], row[kind] = largest(errors)
            rows.append(row)
    return rows


def compiled_mismatch(name: str, config_name: str, batch: Any) -> tuple[str, float]:
    """The compiled bf16 update's first gradients against the eager bf16 update's on the same state,
    batch and draws, as algorithms/compiled.py's check measures them (it warns above its tolerance)."""
    method = registry.get(name)
    config = bench_config(method, config_name, {})
    eager, compiled = make_agent(method, config, "bf16"), make_agent(method, config, "bf16")
    use_compiled_update(compiled)
    plan, _ = plan_draws(compiled, batch)
    draws = [planned.draw() for planned in plan]
    eager.gradient_step(batch, draws)
    compiled.compiled_update._call(batch, draws)
    grads = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    return largest({n: error(p.grad, grads[n]) for n, p in compiled.named_parameters() if n in grads})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="all", help="comma-separated registry names (default: all)")
    parser.add_argument("--config", default="medium", choices=("paper", "medium", "small"))
    parser.add_argument("--updates", type=int, default=100)
    parser.add_argument(
        "--compiled", action="store_true", help="instead: the compiled bf16 update's first gradients"
    )
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    names = (
        registry.names() if args.methods == "all" else [registry.get(m).name for m in args.methods.split(",")]
    )
    buffer = synthetic_buffer(EnvSpec(**PAPER_SHAPES), device=torch.device("cpu"))
    rows = []
    if args.compiled:
        print("| method | compiled bf16 gradients against eager bf16 | largest in |\n|---|---|---|")
    else:
        print(
            "| method | precision | update | loss terms | gradients | parameters | largest parameter error in |"
        )
        print("|---|---|---|---|---|---|---|")
    for name in names:
        tic = time.perf_counter()
        batch_size = bench_config(registry.get(name), args.config, {}).batch_size
        batches = [buffer.sample(batch_size) for _ in range(args.updates)]
        if args.compiled:
            worst, value = compiled_mismatch(name, args.config, batches[0])
            rows.append({"method": name, "compiled gradients": value, "compiled gradients (largest)": worst})
            print(f"| {name} | {value:.2g} | {worst} |", flush=True)
        for row in [] if args.compiled else measure_method(name, args.config, args.updates, batches):
            rows.append(row)
            print(
                f"| {name} | {row['precision']} | {row['update']} | {row['loss terms']:.2g} | "
                f"{row['gradients']:.2g} | {row['parameters']:.2g} | {row['parameters (largest)']} |",
                flush=True,
            )
        print(f"  ({name}: {time.perf_counter() - tic:.0f} s)", file=sys.stderr, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
