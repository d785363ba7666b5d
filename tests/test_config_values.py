"""Config values are checked where they are parsed: each kind of declared value accepts and refuses
the right numbers, every method declares every key, and a bad `--set`, `--grid` or TOML value ends
`run`, `sweep` and `bench` with one message and exit 2 before anything is written."""

from __future__ import annotations

import json
import math

import pytest

from algorithms import registry, values
from harness.cli import main

TASK = "cube-single-play-singletask-task1-v0"


@pytest.mark.parametrize(
    ("rule", "good", "bad"),
    [
        (values.COUNT, [1, 2, 10**6], [0, -1, 1.5, math.nan, math.inf, "3"]),
        (values.COUNT_OR_ZERO, [0, 7], [-1, 0.5]),
        (values.POSITIVE, [1e-12, 3e-4, 1e9], [0.0, -1e-9, math.nan, math.inf, -math.inf]),
        (values.NON_NEGATIVE, [0.0, 0.1, 100.0], [-1e-9, math.nan, math.inf]),
        (values.FINITE, [-5.0, 0.0, 2.5], [math.nan, math.inf, None]),
        (values.POLYAK_RATE, [1e-6, 0.005, 1.0], [0.0, 1.0000001, 2.0, -0.1, math.nan]),
        (values.PROBABILITY, [0.0, 0.5, 1.0], [-0.01, 1.01, math.nan]),
        (values.OPEN_UNIT, [0.01, 0.99], [0.0, 1.0]),
        (values.FINITE_OR_NONE, [None, -3.0], [math.nan]),
        (values.LAYER_WIDTHS, [(1,), (256, 256)], [(), (0,), (256, -1), (64, 2.5), 256]),
        (values.Valid(low=2, integer=True, even=True), [2, 64], [0, 1, 3, 63]),
        (values.one_of("vp", "cosine"), ["vp", "cosine"], ["VP", "linear", 1]),
    ],
)
def test_each_kind_of_value_accepts_its_values_and_refuses_the_rest(rule, good, bad):
    for value in good:
        assert rule.problem(value) is None, (rule.describe(), value)
    for value in bad:
        assert rule.problem(value) is not None, (rule.describe(), value)


def test_booleans_are_not_numbers():
    assert values.POSITIVE.problem(True) == "is not a number"


def test_descriptions_say_the_range():
    assert values.POLYAK_RATE.describe() == "a finite number in (0, 1]"
    assert values.COUNT.describe() == "an integer >= 1"
    assert values.POSITIVE.describe() == "a finite number > 0"
    assert values.FINITE_OR_NONE.describe() == "a finite number, or none"
    assert values.one_of("a", "b").describe() == "one of a, b"


@pytest.mark.parametrize("name", registry.names())
def test_every_method_declares_every_key_and_its_defaults_are_valid(name):
    method = registry.get(name)
    assert values.undeclared(method.cls.Config) == []
    config = method.default_config()
    fields = {key: getattr(config, key) for key in values.declared(method.cls.Config)}
    assert values.check(method.cls.Config, fields) is None


@pytest.mark.parametrize(
    ("method", "key", "value", "valid"),
    [
        ("fql", "lr", "nan", "a finite number > 0"),
        ("fql", "lr", "-1", "a finite number > 0"),
        ("fql", "lr", "inf", "a finite number > 0"),
        ("fql", "batch_size", "0", "an integer >= 1"),
        ("qam", "num_critics", "0", "an integer >= 1"),
        ("fql", "hidden_dims", "0", "each an integer >= 1"),
        ("qam", "flow_steps", "0", "an integer >= 1"),
        ("fql", "target_tau", "2", "in (0, 1]"),
        ("fql", "target_tau", "0", "in (0, 1]"),
        ("fql", "alpha", "-3", "a finite number >= 0"),
        ("ifql", "kappa", "1.5", "in [0, 1]"),
        ("dac", "time_dim", "63", "an even integer >= 2"),
        ("dac", "beta_schedule", "quadratic", "one of vp, cosine, linear"),
    ],
)
def test_a_bad_set_value_is_refused_before_the_run_starts(tmp_path, capsys, method, key, value, valid):
    error = refused_run(tmp_path, capsys, method, f"{key}={value}")
    assert f"{method}: {key}={value} " in error.replace(".0 ", " ") and valid in error, error


def refused_run(tmp_path, capsys, method: str, assignment: str) -> str:
    """`flowarena run --set ASSIGNMENT`'s stderr, after checking it exits 2 without a traceback
    and without a run directory (so no status `diverged`)."""
    out = tmp_path / "results"
    assert main(["run", "--method", method, "--task", TASK, "--set", assignment, "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert not out.exists()
    return error


def test_qam_fql_and_edit_together_are_refused_by_the_cli(tmp_path, capsys):
    assert "cannot be combined" in refused_run(tmp_path, capsys, "qam-edit", "fql_alpha=10")


def test_sweep_grid_set_and_toml_values_are_checked_at_planning(tmp_path, capsys):
    base = ["sweep", "--name", "s", "--tasks", TASK, "--out", str(tmp_path / "r")]
    assert main([*base, "--methods", "fql", "--grid", "fql.lr=1e-3,-1"]) == 2
    assert "fql: lr=-1" in capsys.readouterr().err
    assert main([*base, "--methods", "fql,qam", "--set", "target_tau=0"]) == 2
    assert "target_tau takes a finite number in (0, 1]" in capsys.readouterr().err
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "s"\nmethods = ["qam"]\ntasks = ["{TASK}"]\n[grid.qam]\ninv_temp = [0.3, nan]\n')
    assert main(["sweep", str(spec), "--out", str(tmp_path / "r")]) == 2
    assert "qam: inv_temp=nan is not finite" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bench_checks_its_set_values(capsys):
    assert main(["bench", "--method", "fql", "--set", "flow_steps=0"]) == 2
    assert "flow_steps takes an integer >= 1" in capsys.readouterr().err


def test_presets_are_checked_when_registered():
    from algorithms.fql import FQL

    with pytest.raises(registry.RegistryError, match="bad-preset: alpha=-1"):
        registry.register(FQL, presets={"bad-preset": {"alpha": -1.0}})
    assert "bad-preset" not in registry.names()


def test_methods_lists_the_valid_values(capsys):
    assert main(["methods", "--json"]) == 0
    listing = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listing["qam"]["valid"]["target_tau"] == "a finite number in (0, 1]"
    assert listing["qam"]["valid"]["clip_terminal"] == "true or false"
    assert main(["methods"]) == 0
    assert "lr=0.0003" in capsys.readouterr().out


def test_a_relative_value_is_checked_once_resolved(tmp_path, capsys):
    """`xF` multiplies the suite's per-domain value; the product must still be valid."""
    error = refused_run(tmp_path, capsys, "fql", "target_tau=x1000")
    assert "target_tau takes a finite number in (0, 1]" in error
