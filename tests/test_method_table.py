"""The per-domain hyperparameter table of the QAM paper's 16 offline methods: every entry
is a valid config of its registered method, and spot values match the reference's reproduce scripts."""

from __future__ import annotations

import pytest

import suites
from algorithms import registry
from suites.ogbench import BASELINE_TABLE, paper_methods

PAPER_OFFLINE_METHODS = [
    *("qam", "qam-edit", "qam-fql", "fql", "fbrac", "fedit", "ifql", "fawac", "dsrl", "cgql", "cgql-m"),
    *("cgql-l", "bam", "rebrac", "qsm", "dac"),
]


def test_every_method_of_the_table_is_registered_and_every_entry_is_a_valid_config():
    table = paper_methods()
    assert set(PAPER_OFFLINE_METHODS) == {m for row in table.values() for m in row}
    for domain, row in table.items():
        for method, overrides in row.items():
            config = registry.make_config(method, overrides)
            for key, value in overrides.items():
                assert getattr(config, key) == value, (domain, method, key)


@pytest.mark.parametrize(
    ("method", "domain", "expected"),
    [
        ("cgql-m", "puzzle-4x4-play", {"inv_temp": 10.0, "guidance_coef": 1.0, "noisy_coef": 0.001}),
        ("cgql-l", "scene-play", {"inv_temp": 10.0, "guidance_coef": 0.1, "noisy_coef": 0.1}),
        ("qsm", "puzzle-4x4-play", {"inv_temp": 10.0, "alpha": 1.0}),
        ("dac", "cube-double-play", {"alpha": 3.0}),
        ("rebrac", "humanoidmaze-large-navigate", {"alpha_actor": 0.01, "actor_noise": 0.1}),
        ("bam", "puzzle-4x4-play", {"inv_temp": 30.0}),
        ("dsrl", "antmaze-giant-navigate", {"noise_scale": 1.2}),
        ("ifql", "humanoidmaze-medium-navigate", {"kappa": 0.7}),
        ("fawac", "scene-play", {"inv_temp": 6.4}),
        ("fedit", "puzzle-4x4-play", {"edit_scale": 0.8}),
    ],
)
def test_spot_values_match_the_reference(method, domain, expected):
    task = f"{domain}-singletask-task3-v0"
    overrides = suites.get_suite("ogbench").method_overrides(method, task)
    assert {k: overrides[k] for k in expected} == expected
    assert overrides["rho"] == (0.0 if domain.startswith("humanoidmaze") else 0.5)


def test_the_modes_of_the_presets_come_from_the_registry():
    assert registry.make_config("cgql-m", {}).mode == "mse"
    assert registry.make_config("cgql-l", {}).mode == "linex"
    assert registry.make_config("qsm", {}).actor_loss_type == "qsm"
    assert registry.make_config("dac", {}).actor_loss_type == "dac"
    assert len(BASELINE_TABLE) == 11


def test_rlpd_runs_with_the_bc_alpha_the_published_runs_used():
    """The reference's reproduce_rlpd.py never applies its bc_alpha table: the published row is bc_alpha 0."""
    overrides = suites.get_suite("ogbench").method_overrides("rlpd", "scene-play-singletask-task1-v0")
    assert "bc_alpha" not in overrides
    assert registry.make_config("rlpd", overrides).bc_alpha == 0.0
