"""The compiled update (algorithms/compiled.py) is the eager update: same draws, same losses, same
parameters, for every registered method, stacked or lone, and across a kill and resume.

Tolerances. Captured by Dynamo and run by AOTAutograd's eager backend, with GELU and Mish kept in
their eager forms (algorithms.nets.EXP_FORMS_WHEN_COMPILED off), the graph runs the eager update's
own operators, so every method must match to 1e-6 relative (it matches bit for bit here). The exp
forms of GELU and Mish that compiled graphs use are checked on their own: exact in float64 with
exact first and second derivatives, and within float32 rounding of the float64 function.
Inductor (the backend runs use; compiled here for FQL, whose compile is the cheapest) fuses and
reorders float32 arithmetic, so it is checked on one update from the same state: metrics to 1e-5
relative, gradients to 1e-4 relative (1e-6 absolute). Not on parameters after several updates:
Adam's first steps move every parameter by about lr times the sign of its gradient, so a
parameter whose gradient is zero up to rounding moves by up to 2 lr differently (measured 1.2e-3
after three updates with lr 3e-4), whatever the update's accuracy. Stacked and lone seeds agree as
in tests/test_stacked.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import TASK, kill_after_checkpoint, run_args

from algorithms import nets, registry
from algorithms.base import Batch, EnvSpec, slice_agent_state
from algorithms.compiled import use_compiled_update
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
    use_compiled_update(compiled, backend=backend)
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
def test_captured_update_equals_the_eager_update(name, monkeypatch):
    monkeypatch.setattr(nets, "EXP_FORMS_WHEN_COMPILED", False)
    eager, compiled, metrics = run_both(name, "aot_eager")
    assert_same_update(eager, compiled, metrics, rel=1e-6, params_abs=1e-6)


def eager_gelu(x):
    return torch.nn.functional.gelu(x, approximate="tanh")


# (compiled-graph form, its autograd.Function, the eager function) of each activation
ACTIVATIONS = {
    "gelu": (nets.gelu_tanh, nets._SigmoidGelu, eager_gelu),
    "mish": (nets.mish, nets._ExpFormMish, torch.nn.functional.mish),
}


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_exp_form_activation_is_exact_with_exact_first_and_second_derivatives(name):
    _, exp_form, eager_form = ACTIVATIONS[name]
    x = torch.cat([torch.linspace(-30.0, 30.0, 241), torch.randn(64)]).double().requires_grad_()
    torch.testing.assert_close(exp_form.apply(x), eager_form(x), rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(exp_form.apply, (x,))
    assert torch.autograd.gradgradcheck(exp_form.apply, (x,))


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_compiled_activation_is_the_eager_one_to_float_rounding(name):
    # float32 against the float64 function; where the eager float32 form cancels (GELU's 1 + tanh(u)
    # for x < -4) the exp form is the more accurate one, so the bound is on the error.
    activation, exp_form, eager_form = ACTIVATIONS[name]
    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-30.0, 30.0, 2001), torch.randn(4096, generator=generator)])
    upstream = torch.randn(x.shape, generator=generator)

    def value_and_grad(function, dtype):
        inputs = x.to(dtype).requires_grad_()
        y = function(inputs)
        return y.detach().double(), torch.autograd.grad(y, inputs, upstream.to(dtype))[0].double()

    compiled = value_and_grad(torch.compile(activation, backend="aot_eager", fullgraph=True), torch.float32)
    for got, truth in zip(compiled, value_and_grad(eager_form, torch.float64)):
        assert ((got - truth).abs() / (1 + truth.abs())).max() < 4e-6  # measured at most 9e-7
    for got, want in zip(compiled, value_and_grad(exp_form.apply, torch.float32)):
        assert torch.equal(got, want)  # the compiled graph did take the exp form


def test_inductor_update_equals_the_eager_update():
    # FQL as the kill-and-resume run below trains it (same shapes and config), so that one of the
    # two compiles Inductor's code and the other loads it from the tests' shared cache.
    from harness.run.spec import RunSpec, resolve

    resolved = resolve(RunSpec("fql", TASK, 0, suite="smoke", overrides={"flow_steps": "2"}))
    spec = EnvSpec(**PAPER_SHAPES)  # cube-double's
    eager, compiled = (registry.create("fql", spec, resolved.config, seed=0) for _ in range(2))
    use_compiled_update(compiled)
    batch = synthetic_buffer(spec, device=torch.device("cpu")).sample(resolved.config.batch_size)
    eager_metrics, compiled_metrics = dict(eager.update(batch)), dict(compiled.update(batch))
    assert list(compiled_metrics) == list(eager_metrics)
    for name, value in eager_metrics.items():
        assert compiled_metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
    for (name, eager_param), compiled_param in zip(eager.named_parameters(), compiled.parameters()):
        if eager_param.grad is not None:
            torch.testing.assert_close(compiled_param.grad, eager_param.grad, rtol=1e-4, atol=1e-6, msg=name)
    for key in ("generator", "act_generator"):
        assert torch.equal(compiled.state_dict()[key], eager.state_dict()[key])


def test_compiled_stacked_seeds_equal_compiled_lone_seeds():
    stacked, lone = tiny_agent("fql", [3, 5]), [tiny_agent("fql", 3), tiny_agent("fql", 5)]
    for agent in (stacked, *lone):
        use_compiled_update(agent, backend="aot_eager")
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


def test_a_compiled_update_that_disagrees_with_the_eager_one_falls_back_to_eager(monkeypatch):
    from algorithms.compiled import CompiledUpdate, CompiledUpdateMismatch

    healthy = tiny_agent("fql")
    use_compiled_update(healthy, backend="aot_eager")
    eager, faulty = tiny_agent("fql"), tiny_agent("fql")
    use_compiled_update(faulty, backend="aot_eager")
    real_call = CompiledUpdate._call

    def miscompiled(self, batch, draws):  # a compiler fault: one gradient 1% off
        values = real_call(self, batch, draws)
        self.agent.critic.net.linears[0].weight.grad.mul_(1.01)
        return values

    buffer = synthetic_buffer(SPEC, device=torch.device("cpu"))
    batches = [buffer.sample(eager.config.batch_size) for _ in range(UPDATES)]
    for batch in batches:
        healthy.update(batch)
    assert healthy.compiled_update is not None
    monkeypatch.setattr(CompiledUpdate, "_call", miscompiled)
    with pytest.warns(CompiledUpdateMismatch, match=r"critic\.net\.linears\.0\.weight differs by 0\.01"):
        faulty.update(batches[0])
    assert faulty.compiled_update is None
    eager.update(batches[0])
    for batch in batches[1:]:
        eager.update(batch)
        faulty.update(batch)
    for name, tensor in eager.state_dict()["modules"].items():
        assert torch.equal(faulty.state_dict()["modules"][name], tensor), name


def test_gradient_mismatch_is_relative_to_each_parameters_largest_gradient():
    from algorithms.compiled import gradient_mismatch

    grad = torch.tensor([[2.0, -1.0], [0.5, 0.0]])
    assert gradient_mismatch([grad, None], [grad * 1.0005, None]) is None  # within 1e-3 of 2.0
    index, error = gradient_mismatch([grad, grad], [grad, grad + torch.tensor([[0.0, 0.02], [0.0, 0.0]])])
    assert index == 1 and error == pytest.approx(0.01)
    assert gradient_mismatch([grad], [None]) == (0, float("inf"))
    assert gradient_mismatch([grad], [grad * float("nan")])[0] == 0  # a NaN only the compiled update has
    assert gradient_mismatch([grad * float("nan")], [grad]) is None  # a diverging run says nothing


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


def test_each_cpu_code_path_gets_its_own_compile_cache(monkeypatch, tmp_path):
    """Inductor reuses generated C++ across ATEN_CPU_CAPABILITY settings, and vectorised code then
    fails to compile under `default`: a sweep's cache is split by the CPU-path variables."""
    from harness.run.compile import CACHE_ENV, CPU_PATH_VARIABLES, cpu_path_key, use_cache_dir

    for name in CPU_PATH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cpu_path_key() == ""
    assert use_cache_dir(tmp_path / "a") == tmp_path / "a"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    assert cpu_path_key() == "ATEN_CPU_CAPABILITY-default_MKL_CBWR-COMPATIBLE"
    assert use_cache_dir(tmp_path / "a") == tmp_path / "a" / "ATEN_CPU_CAPABILITY-default_MKL_CBWR-COMPATIBLE"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))  # the user's own setting wins
    assert use_cache_dir(tmp_path / "a") == tmp_path / "mine"
