"""OGBench tasks outside a suite (suites/defaults.py, Suite.settings_for, `flowarena suites --defaults`):
their settings follow the shared protocol's family rules (which reproduce the ogbench suite's own
domains), every listed dataset is an environment ogbench registers, a suite's own domain wins over the
defaults, and a name OGBench does not know is one error naming the closest task. Through `flowarena
run`: such a task trains with the defaults after a one-line note; an unknown one exits 2."""

from __future__ import annotations

import json

import pytest
from conftest import TASK, run_args, run_suites_cli

import suites
import suites.cli
from harness.cli import main
from suites import defaults
from suites.ogbench import DOMAINS


@pytest.fixture(scope="module")
def ogbench() -> suites.Suite:
    return suites.get_suite("ogbench")


def test_the_family_rules_reproduce_the_suite_domains() -> None:
    for domain, settings in DOMAINS.items():
        assert defaults.default_settings(domain) == {**settings, "shard_dir": None}, domain


def test_every_listed_dataset_is_an_ogbench_environment() -> None:
    gymnasium = pytest.importorskip("gymnasium")
    pytest.importorskip("ogbench")
    assert len(defaults.DATASETS) == len(set(defaults.DATASETS)) == 48
    for domain in defaults.DATASETS:
        env = domain.rsplit("-", 1)[0]  # drop the dataset type (play, navigate, stitch...)
        for task in defaults.task_names(domain):
            assert task.replace(domain, env) in gymnasium.registry, task
        if defaults._has_visual(domain):
            assert f"visual-{env}-singletask-task1-v0" in gymnasium.registry, domain


@pytest.mark.parametrize(
    ("task", "horizon", "discount", "sparse", "rho"),
    [
        ("cube-single-play-singletask-task1-v0", 5, 0.99, False, 0.5),
        ("puzzle-4x5-noisy-singletask-task2-v0", 5, 0.99, True, 0.5),
        ("scene-noisy-singletask-v0", 5, 0.99, True, 0.5),
        ("antmaze-medium-navigate-singletask-task3-v0", 1, 0.99, False, 0.5),
        ("pointmaze-giant-stitch-singletask-task4-v0", 1, 0.995, False, 0.5),
        ("humanoidmaze-giant-navigate-singletask-task5-v0", 1, 0.995, False, 0.0),
        ("antsoccer-arena-navigate-singletask-task1-v0", 1, 0.99, False, 0.5),
    ],
)
def test_an_unlisted_task_runs_with_the_defaults_and_a_notice(
    ogbench: suites.Suite, task: str, horizon: int, discount: float, sparse: bool, rho: float
) -> None:
    settings, notice = ogbench.settings_for(task)
    assert (settings.task, settings.domain) == (task, suites.domain_of(task))
    assert (settings.horizon, settings.discount, settings.sparse, settings.rho) == (
        horizon,
        discount,
        sparse,
        rho,
    )
    assert settings.dataset == f"{settings.domain}-v0" and settings.shard_dir is None
    assert notice.startswith(f"note: {task} is not in suite 'ogbench'; running it with the OGBench defaults")
    assert f"horizon {horizon}, discount {discount:g}, {'sparse' if sparse else 'dense'} rewards" in notice
    assert "\n" not in notice
    assert ogbench.method_overrides("qam", task) == {"rho": rho}  # no per-domain hyperparameters
    assert ogbench.method_overrides("qgf", task) == {}


def test_a_suite_domain_wins_over_the_defaults(ogbench: suites.Suite) -> None:
    settings, notice = ogbench.settings_for("puzzle-4x4-play-singletask-v0")  # the default-task alias
    assert settings.shard_dir == "puzzle-4x4-play-100m-v0" and settings.sparse  # the suite's 100M data
    assert "the settings of its domain puzzle-4x4-play in this suite" in notice
    assert ogbench.method_overrides("qam", "puzzle-4x4-play-singletask-v0") == {"rho": 0.5, "inv_temp": 30.0}
    qgf = suites.get_suite("ogbench-qgf").settings_for("scene-play-singletask-v0")[0]
    assert (qgf.discount, qgf.sparse) == (0.999, False)  # that suite's domain, not the defaults
    listed, none = ogbench.settings_for("cube-double-play-singletask-task1-v0")
    assert none is None and listed == ogbench.task("cube-double-play-singletask-task1-v0")
    octuple = ogbench.settings_for("cube-octuple-play-singletask-task2-v0")[0]
    assert octuple.shard_dir == "cube-octuple-play-100m-v0"  # OGBench ships only its 100M shards


@pytest.mark.parametrize(
    ("task", "closest"),
    [
        ("cube-singel-play-singletask-task1-v0", "cube-single-play-singletask-task1-v0"),
        ("cube-single-play-singletask-task6-v0", "cube-single-play-singletask-task"),
        ("cube-single-singletask-task1-v0", "cube-single-play-singletask-task1-v0"),
        ("humanoidmaze-teleport-navigate-singletask-v0", "-teleport-navigate-singletask-v0"),
        ("cube-single-play-singletask-task1-v1", "cube-single-play-singletask-task1-v0"),
    ],
)
def test_a_name_ogbench_does_not_know_is_one_error_with_the_closest(
    ogbench: suites.Suite, task: str, closest: str
) -> None:
    with pytest.raises(suites.SuiteError) as error:
        ogbench.settings_for(task)
    message = str(error.value)
    assert (
        "and not an OGBench task (did you mean '" in message and closest in message.split("did you mean")[1]
    )
    assert "`flowarena suites --defaults`" in message


def test_pixel_tasks_are_named_as_such(ogbench: suites.Suite) -> None:
    with pytest.raises(suites.SuiteError, match="pixel-based .* use 'cube-double-play-singletask-task2-v0'"):
        ogbench.settings_for("visual-cube-double-play-singletask-task2-v0")


def test_cli_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    rows = {
        line.split()[0]: line.split()[1:]
        for line in run_suites_cli(capsys, "--defaults").splitlines()
        if line
    }
    assert rows["cube-single-play"] == ["manipulation", "5", "0.99", "no", "0.5", "cube-single-play-v0"]
    assert rows["humanoidmaze-giant-stitch"] == [
        "locomotion",
        "1",
        "0.995",
        "no",
        "0",
        "humanoidmaze-giant-stitch-v0",
    ]
    assert rows["cube-octuple-play"][-2:] == ["cube-octuple-play-100m-v0", "(shards)"]
    payload = json.loads(run_suites_cli(capsys, "--defaults", "--json"))
    assert len(payload) == 48
    assert payload[0]["tasks"][1] == "pointmaze-medium-navigate-singletask-task1-v0"
    with pytest.raises(suites.SuiteError, match="--defaults takes no suite NAME"):
        run_suites_cli(capsys, "ogbench", "--defaults")


# --- through `flowarena run` --------------------------------------------------------------------------


def test_run_trains_an_unlisted_ogbench_task_with_the_defaults(dataset_dir, tmp_path, capsys) -> None:
    suite = tmp_path / "mine.toml"  # a suite without cube-double: TASK runs with the OGBench defaults
    suite.write_text(
        'name = "mine"\ndescription = "scene only"\n'
        'tasks = [{ task = "scene-play-singletask-task1-v0", horizon = 1, discount = 0.9, sparse = false }]\n'
        "[budgets]\noffline_steps = 10\nonline_steps = 0\neval_interval = 10\neval_episodes = 2\n"
        "[config]\nhidden_dims = [64, 64]\nnum_critics = 2\nbatch_size = 32\n"
    )
    args = run_args(dataset_dir, tmp_path, steps=10, eval_interval=10)
    args[args.index("smoke")] = str(suite)
    assert main(args) == 0
    notice = (
        f"note: {TASK} is not in suite 'mine'; running it with the OGBench defaults for manipulation (horizon 5, "
        "discount 0.99, dense rewards, rho 0.5, dataset cube-double-play-v0) and each method's default "
        "hyperparameters; see `flowarena suites --defaults`\n"
    )
    assert notice in capsys.readouterr().err
    spec = json.loads((tmp_path / "default" / "fql" / TASK / "seed0" / "spec.json").read_text())
    assert spec["suite"] == str(suite) and spec["config"]["alpha"] == 10.0  # FQL's class default
    assert spec["config"]["hidden_dims"] == [64, 64] and spec["config"]["rho"] == 0.5  # the suite's config
    assert spec["task_settings"] == {
        "task": TASK,
        "domain": "cube-double-play",
        **defaults.default_settings("cube-double-play"),
    }


def test_run_of_a_name_ogbench_does_not_know_exits_2_with_the_closest(dataset_dir, tmp_path, capsys) -> None:
    args = run_args(dataset_dir, tmp_path)
    args[args.index("--task") + 1] = "cube-dubble-play-singletask-task1-v0"
    assert main(args) == 2
    assert "did you mean 'cube-double-play-singletask-task1-v0'?" in capsys.readouterr().err
    assert not (tmp_path / "default").exists()
