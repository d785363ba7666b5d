"""`flowarena bench` runs for every method and reports its measurements (never timed here)."""

from __future__ import annotations

import json

import pytest

from algorithms import registry
from harness.cli import main

KEYS = {
    "updates_per_s",
    "seed_updates_per_s",
    "gflop_per_update",
    "gflop_per_s",
    "sampler_batches_per_s",
    "eval_episodes_per_s",
    "threads",
    "device",
    "load_average_1m",
}
TINY_BENCH = [
    "--config",
    "small",
    "--steps",
    "2",
    "--warmup",
    "1",
    "--sampler-batches",
    "2",
    "--threads",
    "1",
    "--compile",
    "off",
]


@pytest.mark.parametrize("method", ["fql", "qam", "qam-fql", "qam-edit", "fbrac", "qgf"])
def test_bench_reports_every_measurement_as_json(method, capsys):
    assert (
        main(["bench", "--method", method, *TINY_BENCH, "--eval-episodes", "1", "--json", "--no-progress"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert KEYS <= set(result)
    assert result["method"] == method and result["config"] == "small" and result["seeds"] == 1
    assert result["shapes"] == {"obs_dim": 37, "action_dim": 5, "horizon": 5, "discount": 0.99}
    assert result["hidden_dims"] == [64, 64] and result["batch_size"] == 32
    assert result["updates_per_s"] > 0 and result["gflop_per_update"] > 0 and result["eval_episodes"] == 1


def test_bench_of_stacked_seeds_counts_seed_updates(capsys):
    assert (
        main(["bench", "--method", "fql", *TINY_BENCH, "--seeds", "3", "--eval-episodes", "0", "--json"]) == 0
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["seeds"] == 3 and "eval_episodes_per_s" not in result
    assert result["seed_updates_per_s"] == pytest.approx(3 * result["updates_per_s"])
    assert "bench: timing 2 fp32 eager updates" in captured.err  # progress goes to stderr


def test_paper_config_is_the_methods_defaults():
    from harness.bench import bench_config

    config = bench_config(registry.get("qam"), "paper", {})
    assert (
        config.hidden_dims == (512, 512, 512, 512) and config.num_critics == 10 and config.batch_size == 256
    )


def test_bench_text_output_and_bad_input(capsys):
    assert main(["bench", "--method", "fql", *TINY_BENCH, "--eval-episodes", "0", "--no-progress"]) == 0
    assert "updates/s" in capsys.readouterr().out
    assert main(["bench", "--method", "fql", "--steps", "0"]) == 2
    assert "--steps must be >= 1" in capsys.readouterr().err


def test_bench_times_eager_and_compiled_updates_back_to_back(capsys):
    # FQL at the config tests/test_compiled.py compiles (the smoke suite's cube-double FQL with 2
    # flow steps), so that Inductor's code comes from the tests' shared cache.
    argv = ["bench", "--method", "fql", *TINY_BENCH[:-2], "--compile", "both"]
    argv += ["--set", "alpha=300", "--set", "flow_steps=2", "--eval-episodes", "0", "--json"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["compiled"] is True and result["compile_s"] >= 0
    assert result["eager_updates_per_s"] > 0 and result["updates_per_s"] > 0
    assert result["compiled_speedup"] == pytest.approx(
        result["updates_per_s"] / result["eager_updates_per_s"]
    )
    assert 0 < result["peak_share"] == pytest.approx(result["gflop_per_s"] / result["peak_gflop_per_s"])


def test_bench_of_every_method_prints_one_table(capsys, monkeypatch):
    monkeypatch.setattr(registry, "names", lambda: ["fql", "qgf"])  # two stand for all, to keep it short
    assert main(["bench", "--method", "all", *TINY_BENCH, "--eval-episodes", "0", "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| method | config | update | precision | seeds | updates/s |")
    rows = [line for line in lines[2:] if line.startswith("|")]
    assert [row.split("|")[1].strip() for row in rows] == ["fql", "qgf"]
    assert all(row.split("|")[3].strip() == "eager" and row.split("|")[4].strip() == "fp32" for row in rows)


def test_medium_config_is_three_by_256():
    from harness.bench import bench_config

    config = bench_config(registry.get("fql"), "medium", {})
    assert config.hidden_dims == (256, 256, 256) and config.num_critics == 2 and config.batch_size == 256
