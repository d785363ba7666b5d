"""suites/: the OGBench task lists, per-domain settings, the QAM paper's hyperparameter table, TOML
user suites and the `flowarena suites` command. The expected values are written here independently of
suites/ogbench.py: the hyperparameter table is ALGORITHMS.md's markdown, parsed at test time."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_suites_cli

import suites
import suites.cli
from suites.ogbench import QGF_GUIDANCE_WEIGHTS
from suites.smoke import TINY

REPO = Path(__file__).resolve().parents[1]

# Copied from docs/methods/qam.md, "Per-domain hyperparameters used in the QAM paper".
PAPER_TABLE_MARKDOWN = """
| domain (5 tasks each) | QAM inv_temp | QAM-EDIT inv_temp / edit_scale | QAM-FQL inv_temp / fql_alpha | FQL alpha | FBRAC alpha |
|---|---|---|---|---|---|
| puzzle-3x3-play (sparse) | 3 | 1 / 0.1 | 3 / 0 | 300 | 0.03 |
| scene-play (sparse) | 1 | 1 / 0 | 1 / 300 | 300 | 100 |
| cube-double-play | 1 | 1 / 0 | 1 / 0 | 300 | 0.1 |
| antmaze-large-navigate | 10 | 1 / 0.1 | 3 / 30 | 3 | 0.1 |
| humanoidmaze-medium-navigate | 3 | 3 / 0.1 | 1 / 30 | 30 | 30 |
| cube-triple-play | 3 | 3 / 0.1 | 10 / 300 | 30 | 0.03 |
| cube-quadruple-play (100M) | 1 | 3 / 0.1 | 0.3 / 30 | 100 | 1 |
| puzzle-4x4-play (sparse, 100M) | 30 | 0.1 / 0.9 | 3 / 3 | 1 | 0.3 |
| antmaze-giant-navigate | 3 | 10 / 0.1 | 3 / 30 | 3 | 0.1 |
| humanoidmaze-large-navigate | 3 | 3 / 0.1 | 0.3 / 30 | 30 | 10 |
"""

TABLE_METHODS = ("qam", "qam-edit", "qam-fql", "fql", "fbrac")


def parse_paper_table(markdown: str) -> dict[str, dict[str, dict[str, float]]]:
    """domain -> method -> expected overrides (without rho), from the markdown rows."""
    rows = [line for line in markdown.strip().splitlines() if line.startswith("| ") and "---" not in line]
    table = {}
    for line in rows[1:]:
        domain, qam, edit, qfql, fql, fbrac = (cell.strip() for cell in line.strip("|").split("|"))
        edit_temp, edit_scale = (float(x) for x in edit.split("/"))
        qfql_temp, fql_alpha = (float(x) for x in qfql.split("/"))
        table[domain.split(" (")[0]] = {
            "qam": {"inv_temp": float(qam)},
            "qam-edit": {"inv_temp": edit_temp, "edit_scale": edit_scale},
            "qam-fql": {"inv_temp": qfql_temp, "fql_alpha": fql_alpha},
            "fql": {"alpha": float(fql)},
            "fbrac": {"alpha": float(fbrac)},
        }
    return table


PAPER = parse_paper_table(PAPER_TABLE_MARKDOWN)


def expected_settings(domain: str) -> dict[str, object]:
    """The shared protocol of ALGORITHMS.md, written as rules."""
    manipulation = domain.split("-")[0] in ("cube", "puzzle", "scene")
    return {
        "horizon": 5 if manipulation else 1,
        "discount": 0.995 if domain.startswith(("antmaze-giant", "humanoidmaze")) else 0.99,
        "sparse": domain.startswith(("puzzle", "scene")),
        "rho": 0.0 if domain.startswith("humanoidmaze") else 0.5,
        "dataset": f"{domain}-v0",
        "shard_dir": f"{domain}-100m-v0" if domain in ("puzzle-4x4-play", "cube-quadruple-play") else None,
    }


@pytest.fixture(scope="module")
def ogbench() -> suites.Suite:
    return suites.get_suite("ogbench")


# --- the ogbench suite ---------------------------------------------------------------------


def test_parsed_table_has_ten_domains() -> None:
    assert len(PAPER) == 10
    assert PAPER["puzzle-4x4-play"]["qam-edit"] == {"inv_temp": 0.1, "edit_scale": 0.9}


def test_ogbench_has_50_tasks_in_10_domains(ogbench: suites.Suite) -> None:
    assert len(ogbench.tasks) == 50
    assert sorted({t.domain for t in ogbench.tasks}) == sorted(PAPER)
    expected = {f"{d}-singletask-task{i}-v0" for d in PAPER for i in range(1, 6)}
    assert set(ogbench.task_names) == expected
    assert all(suites.domain_of(t.task) == t.domain for t in ogbench.tasks)


@pytest.mark.parametrize("domain", sorted(PAPER))
def test_ogbench_domain_settings(ogbench: suites.Suite, domain: str) -> None:
    tasks = [t for t in ogbench.tasks if t.domain == domain]
    assert len(tasks) == 5
    for task in tasks:
        actual = {k: getattr(task, k) for k in suites.DOMAIN_KEYS}
        assert actual == expected_settings(domain), task.task


@pytest.mark.parametrize("method", TABLE_METHODS)
@pytest.mark.parametrize("domain", sorted(PAPER))
def test_ogbench_hyperparameters_match_the_paper_table(
    ogbench: suites.Suite, domain: str, method: str
) -> None:
    expected = {**PAPER[domain][method], "rho": expected_settings(domain)["rho"]}
    for i in range(1, 6):
        assert ogbench.method_overrides(method, f"{domain}-singletask-task{i}-v0") == expected


def test_zero_edit_scale_or_fql_alpha_rows_are_plain_qam_settings(ogbench: suites.Suite) -> None:
    # puzzle-3x3 QAM-EDIT runs QAM at inv_temp 1 (its row), not the QAM column's 3.
    task = "puzzle-3x3-play-singletask-task1-v0"
    assert ogbench.method_overrides("qam-edit", task) == {"inv_temp": 1.0, "edit_scale": 0.1, "rho": 0.5}
    assert ogbench.method_overrides("qam-fql", task) == {"inv_temp": 3.0, "fql_alpha": 0.0, "rho": 0.5}


def test_method_names_are_normalized_like_the_registry(ogbench: suites.Suite) -> None:
    task = "scene-play-singletask-task2-v0"
    expected = ogbench.method_overrides("qam-fql", task)
    assert ogbench.method_overrides("QAM_FQL", task) == expected
    assert ogbench.method_overrides(" Qam-Fql ", task) == expected


def test_methods_without_a_table_get_no_overrides(ogbench: suites.Suite) -> None:
    assert ogbench.method_overrides("qgf", "cube-double-play-singletask-task1-v0") == {}
    assert ogbench.method_overrides("my-method", "cube-double-play-singletask-task1-v0") == {}


def test_method_overrides_are_fresh_copies(ogbench: suites.Suite) -> None:
    task = "cube-double-play-singletask-task1-v0"
    ogbench.method_overrides("qam", task)["inv_temp"] = 99.0
    assert ogbench.method_overrides("qam", task)["inv_temp"] == 1.0
    suites.get_suite("ogbench").config_overrides["hidden_dims"] = (1,)
    assert suites.get_suite("ogbench").config_overrides == {}


def test_ogbench_budgets_and_qgf_weights(ogbench: suites.Suite) -> None:
    assert ogbench.budgets == {
        "offline_steps": 1_000_000,
        "online_steps": 500_000,
        "eval_interval": 50_000,
        "eval_episodes": 50,
    }
    assert ogbench.config_overrides == {}
    assert ogbench.seeds == 12
    assert QGF_GUIDANCE_WEIGHTS == (0.004, 0.008, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12)


def test_unknown_task_names_the_closest(ogbench: suites.Suite) -> None:
    with pytest.raises(suites.SuiteError, match="cube-double-play-singletask-task1-v0"):
        ogbench.method_overrides("qam", "cube-doubel-play-singletask-task1-v0")


@pytest.mark.parametrize(
    ("task", "domain"),
    [
        ("cube-double-play-singletask-task1-v0", "cube-double-play"),
        ("humanoidmaze-large-navigate-singletask-task5-v0", "humanoidmaze-large-navigate"),
        ("puzzle-4x4-play-singletask-v0", "puzzle-4x4-play"),
    ],
)
def test_domain_of(task: str, domain: str) -> None:
    assert suites.domain_of(task) == domain


def test_domain_of_rejects_non_task_names() -> None:
    with pytest.raises(suites.SuiteError, match="singletask"):
        suites.domain_of("cube-double-play-v0")


# --- other named suites ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ogbench", "ogbench-qgf", "smoke"])
def test_every_override_is_a_valid_config_value(name: str) -> None:
    """Each suite value names a real Config field of its method and has the right type."""
    from algorithms import registry

    suite = suites.get_suite(name)
    for method in registry.names():
        fields = registry.config_fields(method)
        for task in suite.task_names:
            per_method = suite.method_overrides(method, task)
            unknown = set(per_method) - set(fields)
            assert not unknown, f"{name}: {method} on {task} sets unknown keys {unknown}"
            common = {k: v for k, v in suite.config_overrides.items() if k in fields}
            config = registry.make_config(method, {**common, **per_method})
            assert all(getattr(config, k) == v for k, v in per_method.items())


def test_unknown_suite_lists_known_and_closest() -> None:
    with pytest.raises(suites.SuiteError) as info:
        suites.get_suite("ogbnech")
    message = str(info.value)
    assert "did you mean 'ogbench'?" in message
    for name in ("ogbench", "ogbench-qgf", "smoke"):
        assert name in message


def test_suite_names_includes_builtins_and_shipped_toml() -> None:
    names = suites.suite_names()
    assert names[:3] == ["ogbench", "ogbench-qgf", "smoke"]
    assert "ogbench-task1" in names
    for name in names:
        assert suites.get_suite(name).name == name


def test_smoke_suite(ogbench: suites.Suite) -> None:
    smoke = suites.get_suite("smoke")
    assert smoke.task_names == [
        "cube-double-play-singletask-task1-v0",
        "puzzle-3x3-play-singletask-task1-v0",
        "scene-play-singletask-task1-v0",
    ]
    for task in smoke.tasks:
        assert task == ogbench.task(task.task)
        for method in (*TABLE_METHODS, "qgf"):
            assert smoke.method_overrides(method, task.task) == ogbench.method_overrides(method, task.task)
    assert smoke.config_overrides == TINY == {"hidden_dims": (64, 64), "num_critics": 2, "batch_size": 32}
    assert smoke.budgets["offline_steps"] <= 1000 and smoke.budgets["eval_episodes"] <= 5
    assert smoke.budgets["eval_interval"] <= smoke.budgets["offline_steps"]


def test_ogbench_qgf_suite() -> None:
    qgf = suites.get_suite("ogbench-qgf")
    domains = ("cube-triple-play", "cube-quadruple-play", "puzzle-4x4-play", "scene-play")
    assert sorted({t.domain for t in qgf.tasks}) == sorted(domains)
    assert len(qgf.tasks) == 20
    for task in qgf.tasks:
        assert (task.discount, task.sparse, task.horizon) == (0.999, False, 5)
        assert task.shard_dir == f"{task.domain}-100m-v0"
        assert qgf.method_overrides("qgf", task.task) == {
            "batch_size": 1024,
            "hidden_dims": (1024,) * 4,
            "actor_layer_norm": True,
            "time_embedding_dim": 16,
            "critic_norm_first": True,
            "actor_output_init": "lecun",
            "bc_loss": "qgf",
        }
        assert qgf.method_overrides("qam", task.task) == {**PAPER[task.domain]["qam"], "rho": 0.5}
    assert qgf.budgets == {
        "offline_steps": 500_000,
        "online_steps": 0,
        "eval_interval": 50_000,
        "eval_episodes": 30,
    }
    assert qgf.seeds == 10


def test_suite_rejects_duplicate_tasks_and_missing_budgets(ogbench: suites.Suite) -> None:
    task = ogbench.tasks[0]
    with pytest.raises(suites.SuiteError, match="more than once"):
        suites.Suite("x", "", [task, task], dict(ogbench.budgets))
    with pytest.raises(suites.SuiteError, match="eval_episodes"):
        suites.Suite("x", "", [task], {"offline_steps": 1, "online_steps": 0, "eval_interval": 1})


@pytest.mark.parametrize(
    ("key", "value"), [("horizon", 0), ("horizon", 2.5), ("discount", 1.5), ("sparse", "yes"), ("rho", -1)]
)
def test_task_settings_validation(key: str, value: object) -> None:
    settings = {"horizon": 5, "discount": 0.99, "sparse": False, "dataset": "d-v0", key: value}
    with pytest.raises(suites.SuiteError, match=key):
        suites.TaskSettings(task="d-singletask-task1-v0", domain="d", **settings)


# --- TOML suites -------------------------------------------------------------------------------

FULL_TOML = """
name = "my-suite"
description = "a test suite"
base = "ogbench"
seeds = 3
tasks = [
    "cube-double-play-singletask-task1-v0",
    { task = "cube-triple-play-singletask-task2-v0", discount = 0.995 },
    { task = "myenv-singletask-task1-v0", horizon = 1, discount = 0.9, sparse = true, rho = 1 },
]

[budgets]
offline_steps = 1000

[config]
hidden_dims = [32, 32]

[methods.qam]
inv_temp = 7.0

[methods.QAM_EDIT.cube-double-play]
edit_scale = 0.5

[methods.qgf]
guidance = 0.1
"""


def write(tmp_path: Path, text: str, name: str = "suite.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_toml_suite_inherits_and_overrides(tmp_path: Path) -> None:
    suite = suites.get_suite(write(tmp_path, FULL_TOML))
    assert (suite.name, suite.description, suite.seeds) == ("my-suite", "a test suite", 3)
    double, triple, mine = suite.tasks
    assert double == suites.get_suite("ogbench").task(double.task)
    assert (triple.discount, triple.horizon, triple.sparse) == (0.995, 5, False)
    assert (mine.domain, mine.horizon, mine.discount, mine.sparse, mine.rho) == ("myenv", 1, 0.9, True, 1.0)
    assert (mine.dataset, mine.shard_dir) == ("myenv-v0", None)
    assert suite.budgets == {**suites.get_suite("ogbench").budgets, "offline_steps": 1000}
    assert suite.config_overrides == {"hidden_dims": (32, 32)}
    assert suite.method_overrides("qam", double.task) == {"inv_temp": 7.0, "rho": 0.5}
    assert suite.method_overrides("qam", mine.task) == {"inv_temp": 7.0, "rho": 1.0}
    assert suite.method_overrides("qam-edit", double.task) == {"inv_temp": 1.0, "edit_scale": 0.5, "rho": 0.5}
    assert suite.method_overrides("qam-edit", triple.task) == {"inv_temp": 3.0, "edit_scale": 0.1, "rho": 0.5}
    assert suite.method_overrides("fql", triple.task) == {"alpha": 30.0, "rho": 0.5}
    assert suite.method_overrides("qgf", mine.task) == {"guidance": 0.1}


def test_toml_suite_without_base_and_with_a_relative_base(tmp_path: Path) -> None:
    standalone = """
name = "standalone"
tasks = [{ task = "myenv-singletask-v0", horizon = 2, discount = 0.98, sparse = false }]
[budgets]
offline_steps = 10
online_steps = 0
eval_interval = 5
eval_episodes = 1
"""
    write(tmp_path, standalone, "standalone.toml")
    suite = suites.get_suite(str(tmp_path / "standalone.toml"))
    assert suite.task("myenv-singletask-v0").horizon == 2 and suite.seeds == 12
    child = write(
        tmp_path,
        'name = "child"\nbase = "standalone.toml"\ntasks = ["myenv-singletask-task3-v0"]\n',
        "c.toml",
    )
    inherited = suites.get_suite(child)
    assert inherited.task("myenv-singletask-task3-v0").discount == 0.98
    assert inherited.budgets["offline_steps"] == 10


TOML_ERRORS = [
    ('name = "x"\nnmae = 1\ntasks = ["scene-play-singletask-task1-v0"]\nbase="ogbench"', "'nmae'", "'name'"),
    ('base = "ogbench"\ntasks = ["scene-play-singletask-task1-v0"]', "name must be", "name"),
    ('name = "x"\nbase = "ogbench"\ntasks = []', "tasks must be", "non-empty"),
    ('name = "x"\nbase = "ogbnech"\ntasks = ["a-singletask-v0"]', "base: unknown suite", "'ogbench'"),
    ('name = "x"\ntasks = ["scene-play-singletask-task1-v0"]', "tasks[0]", "horizon = ..."),
    ('name = "x"\nbase = "ogbench"\ntasks = ["scene-play-v0"]', "tasks[0]", "singletask"),
    ('name = "x"\nbase = "ogbench"\ntasks = [{ task = "scene-play-singletask-v0", horizon = 0 }]', "tasks[0]", "horizon must be"),
    ('name = "x"\nbase = "ogbench"\ntasks = [{ task = "scene-play-singletask-v0", horizn = 1 }]', "'horizn'", "'horizon'"),
    ('name = "x"\nbase = "ogbench"\ntasks = ["scene-play-singletask-task1-v0"]\n[budgets]\noffline_stepz = 1', "'budgets.offline_stepz'", "'offline_steps'"),
    ('name = "x"\nbase = "ogbench"\ntasks = ["scene-play-singletask-task1-v0"]\n[budgets]\neval_episodes = 0', "budgets.eval_episodes", ">= 1"),
    ('name = "x"\nbase = "ogbench"\ntasks = ["scene-play-singletask-task1-v0"]\n[methods.qam.cube-double-play]\ninv_temp = 1', "methods.qam.cube-double-play", "scene-play"),
    ('name = "x"\nbase = "ogbench"\ntasks = ["scene-play-singletask-task1-v0"]\n[config.nested]\na = 1', "config.nested", "table"),
    ('name = "x"\nbase = "ogbench"\ntasks = ["scene-play-singletask-task1-v0"]\nseeds = 0', "seeds", ">= 1"),
    ('name = "x"\ntasks = [', "not valid TOML", "Invalid"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "first", "second"), TOML_ERRORS)
def test_toml_errors_name_the_file_and_key(tmp_path: Path, text: str, first: str, second: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(suites.SuiteError) as info:
        suites.get_suite(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert first in message and second in message, message


def test_toml_missing_file_and_base_cycle(tmp_path: Path) -> None:
    with pytest.raises(suites.SuiteError, match="does not exist"):
        suites.get_suite(tmp_path / "nope.toml")
    write(tmp_path, 'name = "a"\nbase = "b.toml"\ntasks = ["x-singletask-v0"]', "a.toml")
    write(tmp_path, 'name = "b"\nbase = "a.toml"\ntasks = ["x-singletask-v0"]', "b.toml")
    with pytest.raises(suites.SuiteError, match="cycle"):
        suites.get_suite(tmp_path / "a.toml")


def test_shipped_toml_suite() -> None:
    suite = suites.get_suite("ogbench-task1")
    assert suite.task_names == [f"{d}-singletask-task1-v0" for d in PAPER]
    assert suite.budgets == suites.get_suite("ogbench").budgets


# --- purity and CLI ----------------------------------------------------------------------------


def test_suites_never_import_torch() -> None:
    code = (
        "import sys, suites, suites.cli, suites.ogbench, suites.smoke, suites.toml_suite\n"
        "for name in suites.suite_names(): suites.get_suite(name)\n"
        "heavy = sorted(m for m in ('torch', 'numpy', 'pandas') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_cli_lists_suites(capsys: pytest.CaptureFixture[str]) -> None:
    lines = run_suites_cli(capsys).splitlines()
    assert lines[0].split()[:3] == ["suite", "tasks", "domains"]
    assert lines[1].split()[:3] == ["ogbench", "50", "10"]
    rows = json.loads(run_suites_cli(capsys, "--json"))
    assert {r["name"]: r["tasks"] for r in rows}["smoke"] == 3


def test_cli_shows_one_suite(capsys: pytest.CaptureFixture[str]) -> None:
    out = run_suites_cli(capsys, "ogbench", "--method", "qam_edit")
    row = next(line for line in out.splitlines() if line.startswith("puzzle-4x4-play-singletask-task2-v0"))
    assert row.split()[1:6] == ["5", "0.99", "yes", "0.5", "puzzle-4x4-play-v0"]
    assert "(shards: puzzle-4x4-play-100m-v0)" in row and "inv_temp=0.1 edit_scale=0.9" in row
    payload = json.loads(run_suites_cli(capsys, "smoke", "--json", "--method", "fql"))
    assert payload["config_overrides"] == {"hidden_dims": [64, 64], "num_critics": 2, "batch_size": 32}
    assert payload["method_overrides"]["scene-play-singletask-task1-v0"] == {"rho": 0.5, "alpha": 300.0}
    assert [t["task"] for t in payload["tasks"]] == suites.get_suite("smoke").task_names


def test_cli_unknown_suite_raises_suite_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(suites.SuiteError, match="smoke"):
        run_suites_cli(capsys, "smoek")
