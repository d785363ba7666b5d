"""`--precision` (algorithms/precision.py, harness/run/precision.py): what each mode computes, that
float32 stays as it was, that precision is part of a run's identity, and the refusals.

bf16 runs its mathematics on any CPU (slowly where there are no bfloat16 units); the harness
refuses it there, so the tests that go through the command line make the device report units
(`bf16_here`) and one test makes it report none. Bounds: bf16 rounds each product's operands to 8
significant bits (relative 2^-9 each); docs/precision.md measures one update's per-tensor errors
at about 1% (median over the methods, at the medium config). The bounds below, 10% on the total
loss and 30% on each gradient's norm-relative error, sit well above that rounding on any CPU; the
test that the products really are bfloat16 reads the operands' dtypes, not a rounding.
"""

from __future__ import annotations

import json
import re
import warnings

import pandas as pd
import pytest
import torch
from conftest import TASK
from torch.utils._python_dispatch import TorchDispatchMode

from algorithms import precision as precisions
from algorithms import registry
from algorithms.base import EnvSpec
from algorithms.compiled import CompiledUpdateMismatch, use_compiled_update
from algorithms.precision import use_precision
from harness.bench_table import format_table
from harness.cli import main
from harness.errors import UserError
from harness.run import records
from harness.run.spec import RunSpec, check_same_run, resolve
from harness.timing import synthetic_buffer
from suites.smoke import TINY

SPEC = EnvSpec(obs_dim=7, action_dim=2, horizon=3)
FEW_STEPS = {"flow_steps": 2, "diffusion_steps": 2}
PRODUCTS = ("mm", "bmm", "baddbmm", "addmm", "addbmm")


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    return None


@pytest.fixture
def bf16_here(monkeypatch):
    """This device reports bfloat16 units, so that the harness runs bf16 on any CPU."""
    monkeypatch.setattr(precisions, "bf16_units", lambda device: "units of the test")


def tiny_agent(name: str, precision: str = "fp32", seed: int | list[int] = 1):
    method = registry.get(name)
    fields = registry.config_fields(method)
    values = {k: v for k, v in {**TINY, **FEW_STEPS}.items() if k in fields}
    agent = registry.create(method, SPEC, registry.make_config(method, values), seed=seed)
    use_precision(agent, precision, allow_emulated=True)
    return agent


def batch_for(agent, seed: int = 0):
    buffer = synthetic_buffer(SPEC, device=torch.device("cpu"), seed=seed)
    return buffer.sample(agent.config.batch_size, stack=agent.stack)


class ProductDtypes(TorchDispatchMode):
    """The dtypes of every matrix product's operands, forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in PRODUCTS:
            operands = (
                args[1:3] if func.overloadpacket.__name__ in ("baddbmm", "addmm", "addbmm") else args[:2]
            )
            self.dtypes.update(operand.dtype for operand in operands)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", registry.names())
def test_bf16_computes_products_in_bfloat16_and_keeps_the_rest_in_float32(name):
    agent = tiny_agent(name, "bf16", seed=[1, 2])  # stacked seeds: every ensemble path
    batch = batch_for(agent)
    with ProductDtypes() as seen:
        metrics = dict(agent.update(batch))
    assert seen.dtypes == {torch.bfloat16}
    with agent.computing():
        loss, _ = agent.loss(batch)
        actions = agent.act(batch.observations)
    assert loss.dtype == torch.float32 and actions.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in agent._trainable())
    state = [
        v for s in agent.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1
    ]
    assert state and all(v.dtype == torch.float32 for v in state)
    assert all(torch.isfinite(torch.as_tensor(v)).all() for v in metrics.values())


@pytest.mark.parametrize("name", ["fql", "qam", "fbrac", "rebrac"])
def test_fp32_products_stay_float32(name):
    agent = tiny_agent(name, "fp32")
    with ProductDtypes() as seen:
        agent.update(batch_for(agent))
    assert seen.dtypes == {torch.float32}


def gradients(agent, batch) -> list[torch.Tensor]:
    agent.optimizer.zero_grad(set_to_none=True)
    agent.gradient_step(batch)
    return [p.grad.clone() for p in agent._trainable()]


def relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-12))


@pytest.mark.parametrize("name", ["fql", "qam", "fbrac", "ifql"])
def test_bf16_is_close_to_float32_but_not_equal(name):
    full, reduced = tiny_agent(name, "fp32"), tiny_agent(name, "bf16")
    batch = batch_for(full)
    loss_full = full.loss(batch)[0].item()
    with reduced.computing():
        loss_reduced = reduced.loss(batch)[0].item()
    assert loss_reduced != loss_full  # the products were rounded
    assert abs(loss_reduced - loss_full) < 0.1 * abs(loss_full)
    errors = [
        relative(r, f) for r, f in zip(gradients(reduced, batch), gradients(full, batch)) if f.norm() > 0
    ]
    assert max(errors) < 0.3, errors
    assert max(errors) > 1e-5  # not a float32 computation


@pytest.mark.parametrize("precision", ["fp32", "tf32"])
def test_fp32_and_cpu_tf32_updates_are_the_plain_update(precision):
    plain = tiny_agent("qam")
    chosen = tiny_agent("qam", precision)
    for seed in range(3):
        batch = batch_for(plain, seed)
        assert dict(plain.update(batch)) == dict(chosen.update(batch))
    for a, b in zip(plain.parameters(), chosen.parameters()):
        assert torch.equal(a, b)


def test_the_compiled_update_honours_bf16():
    eager, compiled = tiny_agent("fql", "bf16"), tiny_agent("fql", "bf16")
    full = tiny_agent("fql", "fp32")
    use_compiled_update(compiled)
    batch = batch_for(eager)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CompiledUpdateMismatch)
        compiled.update(batch)  # the first call checks the compiled gradients against the eager ones
        compiled.update(batch)
    assert compiled.compiled_update is not None
    eager.update(batch)
    eager.update(batch)
    full.update(batch)
    full.update(batch)
    compiled_grads = [p.grad for p in compiled._trainable()]
    eager_errors = [relative(c, e.grad) for c, e in zip(compiled_grads, eager._trainable())]
    full_errors = [relative(c, f.grad) for c, f in zip(compiled_grads, full._trainable())]
    assert max(eager_errors) < 0.3
    assert max(full_errors) > 1e-5  # Inductor computed in bfloat16 too, not in float32


def test_cuda_settings_are_scoped():
    """On CUDA `tf32` sets TF32 products for the agent's scope only (settable without a GPU)."""
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    with precisions.device_settings("tf32", torch.device("cuda")):
        assert matmul.fp32_precision == "tf32"
    assert matmul.fp32_precision == before
    with precisions.device_settings("fp32", torch.device("cuda")):
        assert matmul.fp32_precision == "ieee"
    with precisions.device_settings("tf32", torch.device("cpu")):
        assert matmul.fp32_precision == before


# --- the harness: identity, records, refusals -----------------------------------------------------
def tiny_run(dataset_dir, out, *extra: str) -> int:
    args = ["run", "--method", "fql", "--task", TASK, "--suite", "smoke", "--dataset-dir", str(dataset_dir)]
    args += ["--out", str(out), "--offline-steps", "20", "--eval-interval", "10", "--eval-episodes", "1"]
    return main([*args, "--no-progress", *extra])


def test_a_bf16_run_is_its_own_variant_and_says_so_everywhere(tmp_path, dataset_dir, bf16_here, capsys):
    out = tmp_path / "results"
    assert tiny_run(dataset_dir, out, "--precision", "bf16") == 0
    assert tiny_run(dataset_dir, out) == 0
    assert "bfloat16" in capsys.readouterr().err
    run_dirs = sorted(p.parent for p in out.glob("default/*/*/seed0/spec.json"))
    assert [p.parts[-3] for p in run_dirs] == ["fql", "fql@bf16"]
    for run_dir, precision in zip(run_dirs, ["fp32", "bf16"]):
        assert json.loads((run_dir / "spec.json").read_text())["precision"] == precision
        for kind in ("evals", "train"):
            rows = pd.read_parquet(run_dir / f"{kind}.parquet")
            assert set(rows["precision"]) == {precision} and len(rows) >= 2
    assert main(["collect", str(out / "default")]) == 0
    assert main(["leaderboard", str(out / "default"), "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"\bfql@bf16\b", table) and re.search(r"\bfql\b(?!@)", table)


def test_a_run_never_resumes_in_another_precision(tmp_path, dataset_dir, bf16_here):
    spec = RunSpec(
        method="fql", task=TASK, seed=0, out=str(tmp_path), suite="smoke", dataset_dir=str(dataset_dir)
    )
    resolved = resolve(spec)
    run_dir = records.RunDir(resolved.path)
    run_dir.write_spec({**resolved.record_spec(), "precision": "bf16"})  # e.g. a directory moved by hand
    with pytest.raises(UserError, match=r"different precision \(bf16 there, fp32 here\)"):
        check_same_run(run_dir, resolved)
    old = resolved.record_spec()
    del old["precision"]  # a run recorded before the setting existed is fp32
    run_dir.write_spec(old)
    check_same_run(run_dir, resolved)


def test_records_from_before_precision_load_as_fp32(tmp_path):
    from analysis.records import load

    sweep = tmp_path / "old"
    sweep.mkdir()
    row = {"method": "fql", "variant": "fql", "task": TASK, "seed": 0, "phase": "offline", "step": 10}
    pd.DataFrame([{**row, "success": 0.5}]).to_parquet(sweep / "evals.parquet")
    assert list(load(sweep)["precision"]) == ["fp32"]
    assert set(load(sweep, published=True)["precision"]) == {"fp32", "as published"}


def test_bf16_is_refused_where_the_device_has_no_units(tmp_path, dataset_dir, monkeypatch, capsys):
    monkeypatch.setattr(precisions, "bf16_units", lambda device: None)
    out = tmp_path / "results"
    assert tiny_run(dataset_dir, out, "--precision", "bf16") == 2
    assert main(["bench", "--method", "fql", "--config", "small", "--precision", "fp32,bf16"]) == 2
    sweep = ["sweep", "--suite", "smoke", "--methods", "fql", "--tasks", TASK, "--seeds", "1"]
    assert main([*sweep, "--name", "s", "--out", str(out), "--precision", "bf16", "--no-progress"]) == 2
    errors = capsys.readouterr().err
    assert errors.count("--precision bf16 needs bfloat16 units") == 3 and "Traceback" not in errors
    assert not out.exists()


def test_an_unknown_precision_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "--method", "fql", "--task", TASK, "--precision", "fp8", "--out", str(tmp_path)])
    assert exit_info.value.code == 2
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\nmethods = ["fql"]\ntasks = ["{TASK}"]\nprecision = "fp16"\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "r"), "--dry-run"]) == 2
    assert "unknown precision 'fp16'" in capsys.readouterr().err


def test_bench_times_each_precision_against_its_own_peak(bf16_here):
    from harness.bench import BenchSettings, run_bench

    settings = BenchSettings(
        method="fql", config="small", steps=2, warmup=1, sampler_batches=0, eval_episodes=0, compile="off"
    )
    result = run_bench(
        BenchSettings(**{**settings.__dict__, "precisions": ("fp32", "bf16")}), progress=False
    )[0]
    assert set(result["by_precision"]) == {"fp32", "bf16"} and result["precision"] == "fp32"
    for figures in result["by_precision"].values():
        assert figures["updates_per_s"] > 0 and figures["peak_gflop_per_s"] > 0
        assert figures["peak_share"] == pytest.approx(figures["gflop_per_s"] / figures["peak_gflop_per_s"])
    table = format_table([result, result])
    assert "| bf16 updates/s | bf16 / fp32 | bf16 % of bf16 peak |" in table
    assert re.search(r"peak GFLOP/s \(one 2048\^2 matrix product\): fp32 [\d.]+; bf16 [\d.]+", table)


def test_a_sweep_plans_precision_variants_from_flags_and_toml(tmp_path, capsys):
    base = [
        "sweep",
        "--suite",
        "smoke",
        "--methods",
        "fql",
        "--tasks",
        TASK,
        "--out",
        str(tmp_path),
        "--dry-run",
    ]
    assert main([*base, "--name", "a", "--precision", "bf16"]) == 0
    assert re.search(r"^fql@bf16\s+1\s+2\s+2", capsys.readouterr().out, re.M)  # the smoke suite: 2 seeds
    spec = tmp_path / "s.toml"
    spec.write_text(
        f'name = "s"\nmethods = ["qam"]\ntasks = ["{TASK}"]\nsuite = "smoke"\nprecision = "tf32"\n'
    )
    assert main(["sweep", str(spec), "--out", str(tmp_path), "--dry-run", "--set", "inv_temp=3"]) == 0
    assert "qam[inv_temp=3]@tf32" in capsys.readouterr().out
    assert not any(tmp_path.glob("*/*"))  # a dry run writes nothing
