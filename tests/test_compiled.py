"""The compiled update (algorithms/compiled.py) is the eager update: same draws, same losses, same
parameters, for every registered method, stacked or lone, and across a kill and resume.

Tolerances. Captured by Dynamo and run by AOTAutograd's eager backend, the graph runs the eager
update's own operators, so every method must match to 1e-6 relative (it matches bit for bit here).
Inductor (the backend runs use; compiled here for FQL, whose compile is the cheapest) fuses and
reorders float32 arithmetic: metrics agree to 1e-4 relative and parameters to 1e-4 absolute after
three updates (a third of one Adam step at lr 3e-4: Adam moves a parameter whose gradient is
within rounding of zero by a rounding-dependent amount). Stacked and lone seeds agree as in
tests/test_stacked.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TASK, kill_after_checkpoint, run_args

from algorithms import registry
from algorithms.base import Batch, EnvSpec, slice_agent_state
from harness.bench import PAPER_SHAPES
from harness.cli import main
from harness.timing import synthetic_buffer
from suites.smoke import TINY

SPEC = EnvSpec(obs_dim=7, action_dim=2, horizon=3)
FEW_STEPS = {"flow_steps": 2, "diffusion_steps": 2}  # shorter graphs: tracing time grows with them
UPDATES = 3


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    return None


def tiny_agent(name: str, seed: int | list[int] = 1, **extra):
    method = registry.get(name)
    fields = registry.config_fields(method)
    values = {k: v for k, v in {**TINY, **FEW_STEPS, **extra}.items() if k in fields}
    return registry.create(method, SPEC, registry.make_config(method, values), seed=seed)


def run_both(name: str, backend: str, seed: int | list[int] = 1):
    """An eager and a compiled agent from the same state, updated on the same batches."""
    eager, compiled = tiny_agent(name, seed), tiny_agent(name, seed)
    compiled.use_compiled_update(backend=backend)
    stack = () if isinstance(seed, int) else (len(seed),)
    buffer = synthetic_buffer(SPEC, device=torch.device("cpu"))
    metrics = []
    for _ in range(UPDATES):
        batch = buffer.sample(eager.config.batch_size, stack=stack)
        metrics.append((dict(eager.update(batch)), dict(compiled.update(batch))))
    return eager, compiled, metrics


def assert_same_update(eager, compiled, metrics, *, rel: float, params_abs: float) -> None:
    for eager_metrics, compiled_metrics in metrics:
        assert list(compiled_metrics) == list(eager_metrics)
        for name, value in eager_metrics.items():
            assert compiled_metrics[name] == pytest.approx(value, rel=rel, abs=1e-6), name
    eager_state, compiled_state = eager.state_dict(), compiled.state_dict()
    for name, tensor in eager_state["modules"].items():
        torch.testing.assert_close(compiled_state["modules"][name], tensor, rtol=0, atol=params_abs, msg=name)
    for key in ("generator", "act_generator"):  # the planned draws consumed the generators exactly
        assert torch.equal(compiled_state[key], eager_state[key])


@pytest.mark.parametrize("name", registry.names())
def test_captured_update_equals_the_eager_update(name):
    eager, compiled, metrics = run_both(name, "aot_eager")
    assert_same_update(eager, compiled, metrics, rel=1e-6, params_abs=1e-6)


def test_inductor_update_equals_the_eager_update():
    # FQL as the kill-and-resume run below trains it (same shapes and config), so that one of the
    # two compiles Inductor's code and the other loads it from the tests' shared cache.
    from harness.run.spec import RunSpec, resolve

    resolved = resolve(RunSpec("fql", TASK, 0, suite="smoke", overrides={"flow_steps": "2"}))
    spec = EnvSpec(**PAPER_SHAPES)  # cube-double's
    eager, compiled = (registry.create("fql", spec, resolved.config, seed=0) for _ in range(2))
    compiled.use_compiled_update()
    buffer = synthetic_buffer(spec, device=torch.device("cpu"))
    metrics = []
    for _ in range(UPDATES):
        batch = buffer.sample(resolved.config.batch_size)
        metrics.append((dict(eager.update(batch)), dict(compiled.update(batch))))
    assert_same_update(eager, compiled, metrics, rel=1e-4, params_abs=1e-4)


def test_compiled_stacked_seeds_equal_compiled_lone_seeds():
    stacked, lone = tiny_agent("fql", [3, 5]), [tiny_agent("fql", 3), tiny_agent("fql", 5)]
    for agent in (stacked, *lone):
        agent.use_compiled_update(backend="aot_eager")
    buffers = [synthetic_buffer(SPEC, device=torch.device("cpu"), seed=seed) for seed in (3, 5)]
    for _ in range(UPDATES):
        batches = [buffer.sample(stacked.config.batch_size) for buffer in buffers]
        stacked.update(Batch(*(torch.stack(tensors) for tensors in zip(*(b.tensors() for b in batches)))))
        for agent, batch in zip(lone, batches):
            agent.update(batch)
    for index, agent in enumerate(lone):
        got = slice_agent_state(stacked.state_dict()["modules"], index)
        for name, tensor in agent.state_dict()["modules"].items():
            torch.testing.assert_close(got[name], tensor, rtol=1e-4, atol=1e-5)  # as tests/test_stacked.py


def test_a_draw_the_plan_does_not_have_is_an_error():
    from algorithms.base import _TAPE

    agent = tiny_agent("fql")
    _TAPE.replay, _TAPE.position = [torch.zeros(2, 3)], 0
    try:
        with pytest.raises(RuntimeError, match="draw 0 of the plan has shape"):
            agent.randn(4, 6)
        _TAPE.position = 1
        with pytest.raises(RuntimeError, match="drew more than the 1 draws"):
            agent.randn(2, 3)
    finally:
        _TAPE.replay = None


RUN_DIR = Path("default") / "fql[flow_steps=2]" / TASK / "seed0"


def test_killed_compiled_run_resumes_to_the_uninterrupted_compiled_records(dataset_dir, tmp_path):
    def args(out: Path) -> list[str]:
        flags = run_args(dataset_dir, out, steps=60, checkpoint_interval=20)
        return [*flags, "--compile", "on", "--set", "flow_steps=2"]

    # In this process the graph compiled by the test above is reused; the killed run starts afresh.
    whole = tmp_path / "whole"
    assert main(args(whole)) == 0
    spec = json.loads((whole / RUN_DIR / "spec.json").read_text())
    assert spec["compile"] == {"mode": "on", "compiled": True}

    killed = tmp_path / "killed"
    status = kill_after_checkpoint(args(killed), killed / RUN_DIR / "status.json", 20, timeout_s=300)
    assert status["step"] < 60  # killed mid-run

    assert main(args(killed)) == 0
    for name in ("evals.parquet", "train.parquet"):
        expected = pd.read_parquet(whole / RUN_DIR / name).drop(columns=["wall_time_s"])
        got = pd.read_parquet(killed / RUN_DIR / name).drop(columns=["wall_time_s"])
        pd.testing.assert_frame_equal(got, expected)


def test_auto_compiles_long_runs_only():
    from harness.run.compile import AUTO_MIN_UPDATES, wants_compile

    assert not wants_compile("auto", AUTO_MIN_UPDATES - 1, "cpu")
    assert wants_compile("auto", AUTO_MIN_UPDATES, "cpu")
    assert not wants_compile("auto", 10**7, "cuda:1")  # not measured on a GPU yet: --compile on there
    assert wants_compile("on", 10, "cuda") and not wants_compile("off", 10**7, "cpu")


def test_sweeps_pass_compile_to_their_runs_and_refuse_a_bad_value(tmp_path, capsys):
    from harness.cli import build_parser
    from harness.sweep.cli import spec_from_args
    from harness.sweep.plan import make_plan

    spec_file = tmp_path / "s.toml"
    spec_file.write_text(
        f'name = "c"\nsuite = "smoke"\nmethods = ["fql"]\ncompile = "off"\nout = "{tmp_path}"\n'
    )

    def plan(*argv: str):
        return make_plan(spec_from_args(build_parser().parse_args(["sweep", str(spec_file), *argv])))

    assert {run.spec.compile for run in plan().runs} == {"off"}
    assert {run.spec.compile for run in plan("--compile", "on").runs} == {"on"}  # flags win
    spec_file.write_text(spec_file.read_text().replace('"off"', '"sometimes"'))
    assert main(["sweep", str(spec_file), "--dry-run"]) == 2
    assert "compile must be one of auto, on, off" in capsys.readouterr().err
