"""Update parity with the authors' JAX code, measured: flowarena's half, and the command that runs both.

For each method it runs scripts/parity/reference_side.py in the reference's environment (which records
the reference agent's initial parameters, a batch, every random draw of every update in call order,
and the loss terms, gradients and parameters after update 1 and update N), then builds our agent at the
same config, copies the reference's initial parameters into it (scripts/parity/maps.py), serves our
update the recorded draws in call order (by patching `algorithms.base._draw`, through which every random
draw of an update goes), runs the same N updates and compares every loss term, every gradient and every
parameter (online and target). Error = max |ours - reference| / max |reference| per tensor, the largest
over all tensors; one line per method. It also compares our own initialisation with the reference's
statistically (`init_check`).

usage (from the repository root, with flowarena's environment):
  python scripts/parity/compare.py --reference ~/.cache/qam-reference/qam \
      --reference-python ~/.cache/qam-reference/venv/bin/python [--methods fql,qam,dsrl] [--updates 10]
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from maps import KINDS, METHODS, OURS_COMMON, MethodParity  # noqa: E402

import algorithms.base as base  # noqa: E402
from algorithms import registry  # noqa: E402
from algorithms.base import Batch, EnvSpec  # noqa: E402

TOL_ONE = 1e-5  # float32, after one update
TOL_MANY = 1e-4  # after N updates (rounding differences grow through Adam's normalisation)
BATCH_FIELDS = ("observations", "actions", "rewards", "masks", "valid", "terminals", "next_observations")


def load(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def group(record: dict[str, np.ndarray], prefix: str) -> dict[str, np.ndarray]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in record.items() if k.startswith(prefix + "/")}


def param_map(setup: MethodParity, ref_params: dict[str, np.ndarray]) -> dict[str, str]:
    """reference parameter name -> our parameter name, for every reference parameter ours has."""
    out = {}
    for kind, ref_prefix, our_path in setup.networks:
        to_ours = KINDS[kind]
        for key in ref_params:
            if key == ref_prefix or key.startswith(ref_prefix + "/"):
                rest = key[len(ref_prefix) + 1 :]
                leaf = to_ours(rest)
                out[key] = f"{our_path}.{leaf}" if leaf else our_path
    return out


def check_coverage(setup: MethodParity, mapping: dict[str, str], ref_params, ours: dict[str, Any]) -> None:
    missing = sorted(set(ours) - set(mapping.values()))
    unmapped = sorted(
        k for k in ref_params if k not in mapping and not any(k.startswith(u) for u in setup.ref_unused)
    )
    if missing or unmapped:
        raise SystemExit(
            f"parameter map incomplete: ours without reference {missing}, reference unmapped {unmapped}"
        )


class DrawServer:
    """Replaces algorithms.base._draw: each draw of ours is served from the reference's recorded draws
    in call order, consecutive recorded draws joined when ours asks for several at once (QAM's SDE
    noise is one draw here, one per step there); the kinds (normal / uniform) must agree. Draws
    recorded in tfp's event-first layout are transposed to ours first; an integer k drawn uniformly
    from [lo, hi) (QGF's grid times, DDPM steps) is served as the uniform (k - lo + 1/2) / (hi - lo),
    which ours turns back into k."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, np.ndarray]] = []
        self.served = 0

    def load(self, draws: dict[str, np.ndarray], skip: tuple[int, ...] = ()) -> None:
        """This update's recorded draws, less those at positions `skip` (never used by the reference)."""
        self.queue = [(k.split("_", 1)[1], draws[k]) for i, k in enumerate(sorted(draws)) if i not in skip]
        self.served = 0

    def __call__(self, fn: Callable, shape: tuple[int, ...], generator: Any, device: Any) -> torch.Tensor:
        kind = "normal" if fn is torch.randn else "uniform"
        need, parts = math.prod(shape), []
        while need > 0:
            if not self.queue:
                raise RuntimeError(f"ours draws {kind} {shape} but the reference recorded no more draws")
            ref_kind, value = self.queue.pop(0)
            if ref_kind.endswith("-eventfirst"):  # tfp's (D, *batch) layout -> ours (*batch, D)
                ref_kind, value = ref_kind.split("-")[0], np.moveaxis(value, 0, -1)
            if ref_kind.startswith(
                "randint-"
            ):  # k in [lo, hi) -> a uniform u with floor(u (hi - lo)) = k - lo
                lo, hi = (int(x) for x in ref_kind.split("-")[1:])
                ref_kind, value = "uniform", ((value - lo + 0.5) / (hi - lo)).astype(np.float32)
            if ref_kind != kind:
                raise RuntimeError(
                    f"draw kinds differ: ours {kind} {shape}, reference {ref_kind} {value.shape}"
                )
            parts.append(value.reshape(-1))
            need -= value.size
        if need < 0:
            raise RuntimeError(f"draw sizes differ: ours {shape}, reference {[p.size for p in parts]}")
        self.served += len(parts)
        dev = device if device is not None else "cpu"
        return torch.from_numpy(np.concatenate(parts)).reshape(shape).to(dev)


def rel_error(ours: np.ndarray, ref: np.ndarray) -> float:
    ours, ref = np.asarray(ours, np.float64).reshape(ref.shape), np.asarray(ref, np.float64)
    scale = np.abs(ref).max() if ref.size else 0.0
    diff = np.abs(ours - ref).max() if ref.size else 0.0
    return float(diff / scale) if scale > 0 else float(diff)


def worst(pairs: dict[str, tuple[np.ndarray, np.ndarray]]) -> tuple[float, str]:
    errors = {name: rel_error(o, r) for name, (o, r) in pairs.items()}
    name = max(errors, key=errors.get)
    return errors[name], name


def build_ours(setup: MethodParity, batch: dict[str, np.ndarray], discount: float):
    _, horizon, act_dim = batch["actions"].shape
    spec = EnvSpec(batch["observations"].shape[-1], act_dim, horizon, discount)
    fields = registry.config_fields(setup.ours)
    common = {k: v for k, v in OURS_COMMON.items() if k in fields}  # QGF has no num_critics key
    config = registry.make_config(setup.ours, {**common, **setup.ours_overrides})
    return registry.create(setup.ours, spec, config, seed=0)


def run_ours(setup: MethodParity, record: dict[str, np.ndarray]) -> dict[str, Any]:
    """Our agent from the reference's initial parameters, fed the reference's draws: N updates.
    Returns per step 1 and N: metrics, gradients (before clipping) and parameters, by our names."""
    updates = int(record["meta/updates"])
    batch_np = group(record, "batch")
    agent = build_ours(setup, batch_np, float(record["meta/discount"]))
    ref_init = group(record, "init")
    mapping = param_map(setup, ref_init)
    ours_params = dict(agent.named_parameters())
    check_coverage(setup, mapping, ref_init, ours_params)
    with torch.no_grad():
        for ref_key, our_key in mapping.items():
            target = ours_params[our_key]
            target.copy_(torch.from_numpy(ref_init[ref_key]).reshape(target.shape))
    batch = Batch(*(torch.from_numpy(batch_np[k]) for k in BATCH_FIELDS))

    grads: dict[str, np.ndarray] = {}
    polyak, clip = agent._polyak_update, base.clip_grad_norm_stacked

    def snapshot() -> None:  # the first of clipping (if the method clips) and Polyak, after backward
        if not grads:
            grads.update(
                {
                    n: p.grad.detach().clone().numpy()
                    for n, p in agent.named_parameters()
                    if p.grad is not None
                }
            )

    def snapshot_then_clip(*args: Any, **kwargs: Any) -> Any:
        snapshot()
        return clip(*args, **kwargs)

    def snapshot_then_polyak() -> None:
        snapshot()
        polyak()

    agent._polyak_update = snapshot_then_polyak
    base.clip_grad_norm_stacked = snapshot_then_clip
    server, original = DrawServer(), base._draw
    base._draw = server
    out: dict[str, Any] = {"mapping": mapping, "unused_draws": []}
    try:
        for step in range(1, updates + 1):
            server.load(group(record, f"draws{step}"), setup.skip_draws)
            grads.clear()
            metrics = dict(agent.update(batch))
            if not grads:
                raise RuntimeError(
                    "no gradients seen: Agent.update no longer calls clip_grad_norm_stacked or _polyak_update "
                    "between backward and the optimiser step; update scripts/parity/compare.py (run_ours)"
                )
            if server.queue and not server.served:
                raise RuntimeError("our update drew no random numbers through algorithms.base._draw")
            out["unused_draws"].append([v.shape for _, v in server.queue])
            if step in (1, updates):
                out[step] = {
                    "metrics": metrics,
                    "grads": dict(grads),
                    "params": {n: p.detach().clone().numpy() for n, p in agent.named_parameters()},
                }
    finally:
        base._draw = original
        base.clip_grad_norm_stacked = clip
    return out


def declared_factor(setup: MethodParity, ref_key: str) -> float:
    """ours / reference for a loss term or gradient under a declared departure, else 1."""
    return next((f for k, f in setup.declared.items() if ref_key == k or ref_key.startswith(k)), 1.0)


def compare(setup: MethodParity, record: dict[str, np.ndarray], ours: dict[str, Any]) -> dict[str, Any]:
    """Largest relative errors of loss terms, gradients and parameters at step 1 and step N."""
    updates = int(record["meta/updates"])
    mapping = ours["mapping"]
    result: dict[str, Any] = {}
    for step in (1, updates):
        ref_loss, ref_grad, ref_par = (group(record, f"{g}{step}") for g in ("loss", "grad", "params"))
        mine = ours[step]
        losses = {
            r: (np.float32(mine["metrics"][o]) / declared_factor(setup, r), ref_loss[r])
            for r, o in setup.losses.items()
        }
        grads = {
            r: (mine["grads"][o] / declared_factor(setup, r), ref_grad[r])
            for r, o in mapping.items()
            if o in mine["grads"]
        }
        params = {r: (mine["params"][o], ref_par[r]) for r, o in mapping.items()}
        result[step] = {"loss": worst(losses), "grad": worst(grads), "param": worst(params)}
    return result


def init_check(setup: MethodParity, record: dict[str, np.ndarray]) -> tuple[float, str]:
    """Our own initialisation against the reference's, tensor by tensor (different draws, so
    statistically): a constant reference tensor (zero biases, LayerNorm's ones) must be the same
    constant in ours, any other must have the same standard deviation within 5 / sqrt(n) relative
    (n entries; the sampling error of a standard deviation is below 0.71 / sqrt(n) for every
    distribution used here). Returns the worst |ratio - 1| in units of that bound (<= 1 passes)."""
    init = group(record, "init")
    agent = build_ours(setup, group(record, "batch"), float(record["meta/discount"]))
    mine = {n: p.detach().numpy().ravel() for n, p in agent.named_parameters()}
    worst, where = 0.0, ""
    for ref_key, our_key in param_map(setup, init).items():
        ours, ref = mine[our_key], init[ref_key].ravel()
        if np.all(ref == ref[0]):
            dev = 0.0 if np.all(ours == ref[0]) else math.inf
        else:
            dev = abs(ours.std() / ref.std() - 1) * math.sqrt(ref.size) / 5
        if dev > worst:
            worst, where = dev, ref_key
    return worst, where


def reference_record(args, setup: MethodParity, name: str, workdir: Path) -> dict[str, np.ndarray]:
    out = workdir / f"{name}.npz"
    if args.reuse and out.exists():
        return load(out)
    print(f"{name}: running the reference ({setup.ref_agent}) with JIT off...", file=sys.stderr, flush=True)
    overrides = [f"{k}={v!r}" for k, v in setup.ref_config().items()]
    cmd = [
        args.reference_python,
        str(Path(__file__).resolve().parent / "reference_side.py"),
        "--reference", qgf_path(args) if setup.ref_repo == "qgf" else args.reference, "--agent", setup.ref_agent, "--out", str(out),
        "--updates", str(args.updates), *(["--batched-example"] if setup.ref_repo == "qgf" else []), *overrides,
    ]  # fmt: skip
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"reference side failed for {name}:\n{done.stderr[-3000:]}")
    return load(out)


def qgf_path(args: argparse.Namespace) -> str:
    return args.qgf_reference or str(
        Path(args.reference).expanduser().parent.parent / "qgf-reference" / "qgf"
    )


def line(setup: MethodParity, name: str, result: dict[str, Any], updates: int) -> tuple[str, bool]:
    """One line per method. A method with declared departures (README; QGF) is DECLARED when every
    error (scaling factors divided out) is within TOL_MANY: what remains are the departures'
    measured effects (docs/fidelity.md)."""
    ok, ok_declared = True, True
    parts = []
    for step, tol in ((1, TOL_ONE), (updates, TOL_MANY)):
        for what in ("loss", "grad", "param"):
            err, where = result[step][what]
            ok &= err <= tol
            ok_declared &= err <= TOL_MANY
            parts.append(f"{what}@{step} {err:.1e}")
    init, _ = result["init"]
    ok &= init <= 1
    ok_declared &= init <= 1
    parts.append(f"init {init:.2f}")
    status = "PASS" if ok else "DECLARED" if setup.declared and ok_declared else "FAIL"
    return f"{name:8s} {status:8s}  " + "  ".join(parts), status != "FAIL"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reference", required=True, help="the reference checkout (agents/, utils/)")
    p.add_argument(
        "--qgf-reference", help="the QGF reference checkout, for qgf (default: beside --reference)"
    )
    p.add_argument("--reference-python", required=True, help="the Python of the reference's JAX environment")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, of: {', '.join(METHODS)}")
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--keep", help="keep the reference records (.npz) in this folder")
    p.add_argument("--reuse", action="store_true", help="with --keep: use records already there")
    p.add_argument("-v", "--verbose", action="store_true", help="name the worst tensor of every check")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        print(f"unknown method(s) {unknown}; the parity check knows {', '.join(METHODS)}", file=sys.stderr)
        return 2
    for path in (args.reference, args.reference_python):
        if not os.path.exists(path):
            print(f"not found: {path} (see scripts/parity/README.md for the set-up)", file=sys.stderr)
            return 2
    print(f"tolerance: relative error <= {TOL_ONE:g} after 1 update, <= {TOL_MANY:g} after {args.updates}")
    all_ok = True
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.keep or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for name in names:
            setup = METHODS[name]
            record = reference_record(args, setup, name, workdir)
            ours = run_ours(setup, record)
            result = compare(setup, record, ours)
            result["init"] = init_check(setup, record)
            text, ok = line(setup, name, result, args.updates)
            all_ok &= ok
            print(text, flush=True)
            if args.verbose:
                for step in (1, args.updates):
                    for what, (err, where) in result[step].items():
                        print(f"    {what}@{step}: {err:.2e} at {where}")
                print(f"    init: {result['init'][0]:.2f} (of the 5/sqrt(n) bound) at {result['init'][1]}")
                unused = {str(u) for u in ours["unused_draws"][0]}
                print(f"    reference draws ours did not use (per update): {sorted(unused) or 'none'}")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
