"""The parity tool's own machinery (scripts/parity/), without the reference: replaying recorded draws
through `algorithms.base._draw` reproduces an update exactly, draws are joined and transposed as
documented, and the name maps translate the reference's parameter names."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import algorithms.base as base
from algorithms import registry
from algorithms.base import Batch, EnvSpec

PARITY = Path(__file__).resolve().parent.parent / "scripts" / "parity"


@pytest.fixture(scope="module")
def tool():
    sys.path.insert(0, str(PARITY))
    try:
        yield importlib.import_module("compare"), importlib.import_module("maps")
    finally:
        sys.path.remove(str(PARITY))


def tiny_fql():
    spec = EnvSpec(obs_dim=3, action_dim=2, horizon=2)
    config = registry.make_config(
        "fql", {"hidden_dims": (8, 8), "num_critics": 2, "batch_size": 4, "flow_steps": 2}
    )
    return registry.create("fql", spec, config, seed=3)


def tiny_batch() -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(
        torch.randn(4, 3, generator=g),
        torch.rand(4, 2, 2, generator=g) * 2 - 1,
        torch.randn(4, 2, generator=g),
        torch.ones(4, 2),
        torch.ones(4, 2),
        torch.zeros(4, 2),
        torch.randn(4, 2, 3, generator=g),
    )


def test_replayed_draws_reproduce_an_update(tool, monkeypatch):
    compare, _ = tool
    recorded: list[tuple[str, np.ndarray]] = []
    original = base._draw

    def recording(fn, shape, generator, device):
        out = original(fn, shape, generator, device)
        recorded.append(("normal" if fn is torch.randn else "uniform", out.numpy().copy()))
        return out

    agent = tiny_fql()
    monkeypatch.setattr(base, "_draw", recording)
    expected = dict(agent.update(tiny_batch()))
    # Served back in call order, the first draw split in two (joined again by the server), to a
    # fresh agent whose own generator is moved on, so that only the served numbers can match.
    kind, first = recorded[0]
    draws = {"000_" + kind: first[:2], "001_" + kind: first[2:]}
    draws.update({f"{i + 1:03d}_{k}": v for i, (k, v) in enumerate(recorded) if i > 0})
    server = compare.DrawServer()
    server.load(draws)
    replay = tiny_fql()
    torch.randn(100, generator=replay.generator)
    monkeypatch.setattr(base, "_draw", server)
    assert dict(replay.update(tiny_batch())) == expected
    assert server.queue == []
    for (name, p), q in zip(agent.named_parameters(), replay.parameters()):
        assert torch.equal(p, q), name


def test_draw_server_layouts_and_mismatches(tool):
    compare, _ = tool
    server = compare.DrawServer()
    eventfirst = np.arange(6, dtype=np.float32).reshape(3, 2)  # (D, B) as tfp draws it
    server.load({"000_normal-eventfirst": eventfirst, "001_uniform": np.zeros(4, np.float32)})
    served = server(torch.randn, (2, 3), None, None)
    assert torch.equal(served, torch.from_numpy(eventfirst.T.copy()))
    with pytest.raises(RuntimeError, match="kinds differ"):
        server(torch.randn, (4,), None, None)
    # integers k from [1, 11) (DDPM steps) come back as uniforms u with floor(10 u) + 1 = k
    steps = np.arange(1, 11, dtype=np.float32)
    server.load({"000_randint-1-11": steps})
    u = server(torch.rand, (10,), None, None)
    assert torch.equal((u * 10).floor() + 1, torch.from_numpy(steps))
    # a draw the reference never uses is skipped by position
    server.load({"000_normal": np.zeros(2, np.float32), "001_normal": np.ones(2, np.float32)}, skip=(0,))
    assert torch.equal(server(torch.randn, (2,), None, None), torch.ones(2))
    server.load({"000_normal": np.zeros(3, np.float32)})
    with pytest.raises(RuntimeError, match="sizes differ"):
        server(torch.randn, (2,), None, None)
    with pytest.raises(RuntimeError, match="no more draws"):
        server(torch.randn, (1,), None, None)


def test_name_maps(tool):
    _, maps = tool
    assert maps.mlp_name("Dense_2/kernel") == "linears.2.weight"
    assert maps.mlp_name("LayerNorm_0/scale") == "norms.0.weight"
    assert maps.tanh_normal_name("MLP_0/Dense_1/bias") == "trunk.linears.1.bias"
    assert maps.tanh_normal_name("OutputDenseLogStd/kernel") == "log_std.weight"
    assert maps.actor_name("mean_net/kernel") == f"net.linears.{len(maps.HIDDEN)}.weight"
    assert maps.ddpm_name("FourierFeatures_0/kernel") == "time_weight"
    assert maps.ddpm_name("MLP_1/LayerNorm_2/bias") == "net.norms.2.bias"
    assert maps.qgf_actor_name("Dense_0/kernel") == f"net.linears.{len(maps.HIDDEN)}.weight"
    with pytest.raises(KeyError):
        maps.mlp_name("Conv_0/kernel")


def test_relative_error(tool):
    compare, _ = tool
    ref = np.array([2.0, -4.0])
    assert compare.rel_error(np.array([2.0, -4.0]), ref) == 0.0
    assert compare.rel_error(np.array([2.0, -3.0]), ref) == pytest.approx(0.25)
    assert compare.rel_error(np.array([1e-3]), np.array([0.0])) == pytest.approx(1e-3)  # absolute at 0
