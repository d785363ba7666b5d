"""The command line: method registry, bad input (one message, exit code 2, nothing lost)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TASK, run_args
from plugin_method import FlowBC

from algorithms import registry
from harness.cli import main

TESTS = Path(__file__).parent


@pytest.fixture
def registered_flow_bc():
    registry.register(FlowBC)
    yield FlowBC.name
    registry.unregister(FlowBC.name)


def test_methods_lists_registry_with_config_defaults(capsys):
    assert main(["methods", "--json"]) == 0
    listing = {m["name"]: m for m in json.loads(capsys.readouterr().out)}
    assert listing["fql"]["config"]["alpha"] == 10.0
    assert listing["fql"]["config"]["hidden_dims"] == [512, 512, 512, 512]


def test_class_registered_in_a_test_is_listed_and_runs(registered_flow_bc, flowarena, tmp_path, capsys):
    assert main(["methods"]) == 0
    assert "test-flow-bc" in capsys.readouterr().out
    assert flowarena(tmp_path, method="Test_Flow_BC", steps=10) == 0  # names: any case, '_' == '-'
    status = json.loads((tmp_path / "default/test-flow-bc" / TASK / "seed0/status.json").read_text())
    assert status["state"] == "done"


def test_method_from_an_entry_point_package(dataset_dir, tmp_path):
    """An outside package declares its class in the `flowarena.algorithms` entry-point group."""
    site = tmp_path / "site"
    package = site / "myplugin"
    package.mkdir(parents=True)
    source = (TESTS / "plugin_method.py").read_text().replace('"test-flow-bc"', '"plugin-bc"')
    (package / "__init__.py").write_text(source)
    dist_info = site / "myplugin-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: myplugin\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text("[flowarena.algorithms]\nplugin-bc = myplugin:FlowBC\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = subprocess.run(
        [sys.executable, "-m", "harness.cli", "methods"], env=env, capture_output=True, text=True, check=True
    )
    assert "plugin-bc" in listed.stdout
    args = run_args(dataset_dir, tmp_path / "out", method="plugin-bc", steps=10)
    subprocess.run([sys.executable, "-m", "harness.cli", *args], env=env, check=True, capture_output=True)
    assert (tmp_path / "out/default/plugin-bc" / TASK / "seed0/evals.parquet").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "qamm"], "unknown method 'qamm'"),
        (["--task", "cube-double-play-singletask-task9-v0"], "not in suite"),
        (["--set", "alpah=3"], "did you mean 'alpha'"),
        (["--set", "alpha=lots"], "alpha expects float"),
        (["--set", "hidden_dims=64,x"], "hidden_dims expects int"),
        (["--set", "alpha"], "expects KEY=VALUE"),
        (["--offline-steps", "-5"], "--offline-steps must be"),
        (
            ["--device", "cuda:0"] if not __import__("torch").cuda.is_available() else ["--device", "tpu"],
            "device",
        ),
    ],
)
def test_bad_input_is_one_message_and_exit_code_2(dataset_dir, tmp_path, capsys, extra, message):
    assert main([*run_args(dataset_dir, tmp_path), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") <= 3 and "Traceback" not in err
    assert not (tmp_path / "default").exists()  # nothing written for bad input


def test_missing_dataset_says_how_to_get_one(tmp_path, capsys):
    assert main([*run_args(tmp_path / "empty", tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "cube-double-play-v0" in err
    assert "ogbench.download_datasets" in err and "flowarena datagen --env cube-double-v0" in err


def test_corrupt_dataset_is_reported(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    (data / "cube-double-play-v0.npz").write_bytes(b"PK\x03\x04 this is not a zip file")
    assert main([*run_args(data, tmp_path)]) == 2
    assert "not a readable OGBench dataset" in capsys.readouterr().err


def test_corrupt_checkpoint_keeps_records(flowarena, tmp_path, capsys):
    assert flowarena(tmp_path, steps=20, checkpoint_interval=10) == 0
    run_dir = tmp_path / "default/fql" / TASK / "seed0"
    status = json.loads((run_dir / "status.json").read_text())
    status["state"] = "running"  # as if killed before the end
    (run_dir / "status.json").write_text(json.dumps(status))
    (run_dir / "ckpt.pt").write_bytes(b"garbage")
    (run_dir / "ckpt.prev.pt").write_bytes(b"garbage too")  # with one readable, the run falls back to it
    evals = (run_dir / "evals.parquet").read_bytes()
    assert flowarena(tmp_path, steps=20, checkpoint_interval=10) == 2
    assert "no readable checkpoint" in capsys.readouterr().err
    assert (run_dir / "evals.parquet").read_bytes() == evals
    assert (run_dir / "ckpt.pt").read_bytes() == b"garbage"
    assert (run_dir / "ckpt.prev.pt").read_bytes() == b"garbage too"


def test_datagen_command_is_deterministic_and_ogbench_readable(tmp_path):
    import ogbench

    for out in ("a", "b"):
        code = main(
            [
                "datagen",
                "--env",
                "puzzle-3x3-v0",
                "--episodes",
                "2",
                "--episode-length",
                "30",
                "--out",
                str(tmp_path / out),
            ]
        )
        assert code == 0
    first = (tmp_path / "a" / "puzzle-3x3-play-v0.npz").read_bytes()
    assert first == (tmp_path / "b" / "puzzle-3x3-play-v0.npz").read_bytes()
    _, train, val = ogbench.make_env_and_datasets(
        "puzzle-3x3-play-singletask-task1-v0", dataset_dir=str(tmp_path / "a")
    )
    assert train["observations"].shape[0] == 2 * 30 and val["observations"].shape[0] == 30
    assert {"rewards", "masks", "next_observations"} <= set(train)
    assert (
        main(["datagen", "--env", "antmaze-large-navigate-v0", "--episodes", "1", "--out", str(tmp_path)])
        == 2
    )


def test_demo_names_variants_that_share_a_config(tmp_path):
    from harness.demo import same_config_notes

    def write(variant: str, method: str, config: dict) -> None:
        run_dir = tmp_path / variant / TASK / "seed0"
        run_dir.mkdir(parents=True)
        spec = {"variant": variant, "method": method, "task": TASK, "seed": 0, "config": config}
        (run_dir / "spec.json").write_text(json.dumps(spec))

    write("qam", "qam", {"inv_temp": 1.0, "fql_alpha": 0.0})
    write("qam-fql", "qam-fql", {"inv_temp": 1.0, "fql_alpha": 0.0})
    write("qam-edit", "qam-edit", {"inv_temp": 1.0, "fql_alpha": 0.5})
    write("fql", "fql", {"inv_temp": 1.0, "fql_alpha": 0.0})  # same values, another class
    assert same_config_notes(tmp_path) == [
        f"qam, qam-fql: same config on {TASK}, from the suite's per-domain table"
    ]


@pytest.mark.parametrize(
    ("suite", "extra", "note"),
    [
        ("ogbench", [], True),
        ("ogbench", ["--online-steps", "0"], False),
        ("ogbench", ["--online-steps", "6000"], False),
        ("smoke", [], False),
    ],
)
def test_run_says_when_its_online_phase_is_the_suites_default(
    monkeypatch, tmp_path, capsys, suite, extra, note
):
    import harness.run.train

    budgets = []
    monkeypatch.setattr(
        harness.run.train, "run", lambda spec, progress: budgets.append(spec.budget) or "done"
    )
    argv = ["run", "--method", "fql", "--task", TASK, "--suite", suite, "--offline-steps", "200"]
    assert main([*argv, "--out", str(tmp_path), *extra]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "online steps" in line]
    if note:
        assert budgets[0].online_steps == 500_000
        assert lines == [
            "note: after the offline phase this run trains 500,000 online steps, suite ogbench's default; "
            "give --online-steps 0 for an offline-only run"
        ]
    else:
        assert lines == []
