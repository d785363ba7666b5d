"""The online phase: acting with full chunks, the stored transitions' rules, the buffer's growth,
both phases in the records, and resume inside the online phase (kill -9 and stop requests)."""

from __future__ import annotations

import io
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TASK, run_args

from algorithms import registry
from algorithms.base import Agent, BaseConfig, EnvSpec
from harness.cli import main
from harness.errors import UserError
from harness.run import online, train
from harness.run.data import ReplayBuffer
from harness.run.online import Explorer, reset_seed
from suites.smoke import TINY

RUN_DIR = Path("default/fql") / TASK / "seed0"
OFFLINE, ONLINE, DATASET_SIZE = 12, 28, 400  # conftest's dataset: 4 episodes of 100 transitions
# 12 offline steps, so online checkpoints (every 10 steps) fall inside a chunk of H=5 actions.
ONLINE_FLAGS = dict(
    steps=OFFLINE,
    online_steps=ONLINE,
    online_warmup_steps=5,
    eval_interval=20,
    eval_episodes=1,
    checkpoint_interval=10,
)


# --- unit tests on a scripted environment ----------------------------------------------------
class ScriptedEnv:
    """Observations [seed value, t, sum of actions]; reward 2 at a termination, else 0; episodes
    are truncated after `max_steps` and terminate (success) after `terminate_at[seed]` steps."""

    def __init__(self, terminate_at: dict[int, int], max_steps: int = 7, drift: float = 0.0) -> None:
        self.terminate_at, self.max_steps, self.drift = terminate_at, max_steps, drift
        self.reset_seeds: list[int] = []

    def reset(self, seed: int):
        self.seed, self.t, self.total = seed, 0, 0.0
        self.reset_seeds.append(seed)
        return self.obs(), {}

    def obs(self) -> np.ndarray:
        return np.array([self.seed % 1000 / 1000, self.t, self.total + self.drift * self.t])

    def step(self, action: np.ndarray):
        self.t += 1
        self.total += float(np.sum(action))
        terminated = self.t == self.terminate_at.get(self.seed)
        truncated = self.t >= self.max_steps and not terminated
        return self.obs(), 2.0 if terminated else 0.0, terminated, truncated, {"success": terminated}


class RandomChunks(Agent):
    """Uniform random chunks from `act_generator`, remembering every chunk it gave."""

    name = "random-chunks-test"

    def __init__(self, spec: EnvSpec) -> None:
        super().__init__(spec, BaseConfig(), device="cpu", seed=0)
        self.chunks: list[np.ndarray] = []

    def act(self, obs: torch.Tensor) -> torch.Tensor:
        chunk = self.rand(*obs.shape[:-1], self.spec.chunk_dim, generator=self.act_generator) * 2 - 1
        self.chunks.append(chunk.reshape(self.spec.horizon, self.spec.action_dim).numpy())
        return chunk


SPEC = EnvSpec(obs_dim=3, action_dim=2, horizon=5)
N_OFFLINE = 10
RUN_SEED = 7
# Episode 0 is truncated at step 7 (2nd action of its 2nd chunk); episode 1 terminates at step 3.
SCRIPT = {reset_seed(RUN_SEED, 1): 3}


def offline_buffer(online_steps: int) -> ReplayBuffer:
    rng = np.random.default_rng(0)
    data = {
        "observations": rng.normal(size=(N_OFFLINE, 3)),
        "actions": rng.uniform(-1, 1, size=(N_OFFLINE, 2)),
        "rewards": np.zeros(N_OFFLINE),
        "masks": np.ones(N_OFFLINE),
        "terminals": (np.arange(N_OFFLINE) == N_OFFLINE - 1).astype(float),
        "next_observations": rng.normal(size=(N_OFFLINE, 3)),
    }
    return ReplayBuffer(data, horizon=5, discount=0.99, seed=0, capacity=N_OFFLINE + online_steps)


def explorer(env: ScriptedEnv | None = None, *, sparse: bool = False) -> Explorer:
    """A started explorer of the scripted environment with room for 40 online steps."""
    env = env or ScriptedEnv(SCRIPT)
    ex = Explorer(env, RandomChunks(SPEC), offline_buffer(40), seed=RUN_SEED, sparse=sparse)
    ex.start()
    return ex


def online_rows(buffer: ReplayBuffer, key: str) -> np.ndarray:
    return buffer.storage[key][N_OFFLINE : buffer.size].numpy()


@pytest.mark.parametrize("sparse", [False, True])
def test_chunks_run_open_loop_and_episode_ends_follow_the_rules(sparse):
    ex = explorer(sparse=sparse)
    for _ in range(12):
        ex.step()
    buffer, env, chunks = ex.buffer, ex.env, ex.agent.chunks
    assert buffer.size == N_OFFLINE + 12
    assert env.reset_seeds == [reset_seed(RUN_SEED, e) for e in range(3)]
    # chunks: steps 1-5, 6-7 (truncated, rest dropped), 8-10 (terminated after 3), 11-12
    assert len(chunks) == 4
    executed = np.concatenate([chunks[0], chunks[1][:2], chunks[2][:3], chunks[3][:2]])
    np.testing.assert_array_equal(online_rows(buffer, "actions"), executed.astype(np.float32))
    ends = np.zeros(12)
    ends[[6, 9]] = 1  # truncation at step 7, termination at step 10
    np.testing.assert_array_equal(online_rows(buffer, "terminals"), ends)
    np.testing.assert_array_equal(online_rows(buffer, "masks"), 1 - (np.arange(12) == 9))
    rewards = np.zeros(12)
    rewards[9] = -1.0 if sparse else 2.0  # sparse: r' = -1 if r != 0 else 0, as for the dataset
    np.testing.assert_array_equal(online_rows(buffer, "rewards"), rewards)
    observations = online_rows(buffer, "observations")
    next_observations = online_rows(buffer, "next_observations")
    np.testing.assert_array_equal(observations[1:7, 1], np.arange(1, 7))  # t within episode 0
    assert next_observations[6, 1] == 7 and observations[7, 1] == 0  # the end's own next obs, then a reset
    assert next_observations[9, 1] == 3 and observations[10, 1] == 0
    metrics = ex.metrics()
    assert metrics["buffer_size"] == N_OFFLINE + 12 and metrics["online_episodes"] == 2
    assert metrics["online_episode_length"] == 5 and metrics["online_success"] == 0.5
    assert metrics["online_return"] == 1.0  # (0 + 2) / 2, the environment's own rewards
    assert np.isnan(ex.metrics()["online_return"])  # no episode finished since the last call


def test_exploration_noise_ignores_evaluation_reseeding():
    a, b = explorer(), explorer()
    for i in range(9):
        b.agent.act_generator.manual_seed(1000 + i)  # as evaluate_grid does before each evaluation
        a.step()
        b.step()
    np.testing.assert_array_equal(online_rows(a.buffer, "actions"), online_rows(b.buffer, "actions"))
    assert len({chunk.tobytes() for chunk in a.agent.chunks}) == len(a.agent.chunks)  # fresh noise


@pytest.mark.parametrize("steps", [3, 9, 13])  # mid-chunk in episode 0, in episode 1, after two ends
def test_restored_explorer_continues_the_same_trajectory(steps):
    whole, first = explorer(), explorer()
    for _ in range(steps):
        first.step()
    saved = io.BytesIO()
    torch.save(first.state_dict(), saved)
    state = torch.load(io.BytesIO(saved.getvalue()), weights_only=True)  # as a checkpoint is read
    assert len(state["transitions"]["next_index"]) <= 3  # next obs kept only at episode ends and the last
    resumed = Explorer(
        ScriptedEnv(SCRIPT), RandomChunks(SPEC), offline_buffer(40), seed=RUN_SEED, sparse=False
    )
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(resumed.observation, first.observation)
    for _ in range(20 - steps):
        resumed.step()
    for _ in range(20):
        whole.step()
    for key in ("observations", "actions", "rewards", "masks", "terminals", "next_observations"):
        np.testing.assert_array_equal(online_rows(resumed.buffer, key), online_rows(whole.buffer, key))
    assert resumed.episode == whole.episode and resumed.env.reset_seeds[-1] == whole.env.reset_seeds[-1]


def test_a_replay_that_does_not_reproduce_the_episode_is_refused():
    first = explorer()
    for _ in range(4):
        first.step()
    drifting = ScriptedEnv(SCRIPT, drift=1e-9)
    resumed = Explorer(drifting, RandomChunks(SPEC), offline_buffer(40), seed=RUN_SEED, sparse=False)
    with pytest.raises(UserError, match="cannot resume the online phase.*not deterministic"):
        resumed.load_state_dict(first.state_dict())


@pytest.mark.parametrize("method", registry.names())
def test_every_registered_method_acts_and_learns_online(method):
    spec = registry.get(method)
    tiny = {k: v for k, v in TINY.items() if k in registry.config_fields(spec)}
    agent = registry.create(spec, SPEC, registry.make_config(spec, tiny), seed=0)
    ex = Explorer(ScriptedEnv(SCRIPT), agent, offline_buffer(12), seed=RUN_SEED, sparse=True)
    ex.start()
    for _ in range(12):
        ex.step()
        metrics = agent.update(ex.buffer.sample(8))
        assert torch.isfinite(metrics.tensor).all(), dict(metrics)
    assert ex.buffer.size == N_OFFLINE + 12 and ex.episode == 2
    assert np.abs(online_rows(ex.buffer, "actions")).max() <= 1


def test_reward_rule_matches_the_dataset_rule():
    assert online.online_reward(-3.0, sparse=True) == -1.0 and online.online_reward(0.0, sparse=True) == 0.0
    assert online.online_reward(-3.0, sparse=False) == -3.0


# --- end-to-end runs on generated data ---------------------------------------------------------
def comparable(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=["wall_time_s"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def whole_run(dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted offline-then-online run."""
    out = tmp_path_factory.mktemp("online-whole")
    assert main(run_args(dataset_dir, out, **ONLINE_FLAGS)) == 0
    return out / RUN_DIR


def test_offline_then_online_run_records_both_phases(whole_run):
    evals = pd.read_parquet(whole_run / "evals.parquet")
    train_rows = pd.read_parquet(whole_run / "train.parquet")
    status = json.loads((whole_run / "status.json").read_text())
    assert evals["step"].tolist() == [12, 20, 40]  # end of offline, then every 20 and the end
    assert evals["phase"].tolist() == ["offline", "online", "online"]
    assert train_rows["step"].tolist() == [10, 20, 30, 40]
    assert train_rows["phase"].tolist() == ["offline", "online", "online", "online"]
    online_rows = train_rows[train_rows["phase"] == "online"]
    assert (online_rows["buffer_size"] == DATASET_SIZE + online_rows["step"] - OFFLINE).all()
    assert online_rows["loss"].notna().all()  # updates began at online step 5
    assert status["state"] == "done" and status["step"] == OFFLINE + ONLINE and status["phase"] == "online"
    assert status["buffer_size"] == DATASET_SIZE + ONLINE
    checkpoint = torch.load(whole_run / "ckpt.pt", weights_only=True)
    assert checkpoint["phase"] == "online" and len(checkpoint["online"]["transitions"]["actions"]) == ONLINE


def test_killed_online_phase_resumes_with_the_same_records(dataset_dir, tmp_path, whole_run):
    args = run_args(dataset_dir, tmp_path, **ONLINE_FLAGS)
    process = subprocess.Popen([sys.executable, "-m", "harness.cli", *args], stderr=subprocess.DEVNULL)
    status_path = tmp_path / RUN_DIR / "status.json"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if status_path.exists() and json.loads(status_path.read_text()).get("checkpoint_step", 0) >= 20:
            break
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    status = json.loads(status_path.read_text())
    assert status["state"] == "running" and 20 <= status["checkpoint_step"] < OFFLINE + ONLINE
    assert status["buffer_size"] == DATASET_SIZE + status["checkpoint_step"] - OFFLINE

    subprocess.run([sys.executable, "-m", "harness.cli", *args], check=True, capture_output=True)
    for name in ("evals.parquet", "train.parquet"):
        expected = comparable(pd.read_parquet(whole_run / name))
        pd.testing.assert_frame_equal(comparable(pd.read_parquet(tmp_path / RUN_DIR / name)), expected)


def test_stop_request_in_online_phase_then_rerun_completes_identically(
    flowarena, tmp_path, whole_run, monkeypatch
):
    original_step = Explorer.step

    def step_then_stop(self: Explorer) -> None:
        original_step(self)
        if self.buffer.size == DATASET_SIZE + 13:  # inside a chunk, between checkpoints
            train.request_stop()

    monkeypatch.setattr(Explorer, "step", step_then_stop)
    try:
        assert flowarena(tmp_path, **ONLINE_FLAGS) == 1
    finally:
        train.clear_stop()
    monkeypatch.setattr(Explorer, "step", original_step)
    status = json.loads((tmp_path / RUN_DIR / "status.json").read_text())
    assert status["state"] == "pending" and status["checkpoint_step"] == OFFLINE + 13
    assert flowarena(tmp_path, **ONLINE_FLAGS) == 0
    for name in ("evals.parquet", "train.parquet"):
        expected = comparable(pd.read_parquet(whole_run / name))
        pd.testing.assert_frame_equal(comparable(pd.read_parquet(tmp_path / RUN_DIR / name)), expected)


def test_kill_after_the_last_checkpoint_finishes_without_acting_again(flowarena, tmp_path, whole_run):
    shutil.copytree(whole_run, tmp_path / RUN_DIR)
    status_path = tmp_path / RUN_DIR / "status.json"
    status = json.loads(status_path.read_text())
    status_path.write_text(json.dumps({**status, "state": "running", "buffer_size": 0}))
    assert flowarena(tmp_path, **ONLINE_FLAGS) == 0
    status = json.loads(status_path.read_text())
    assert status["state"] == "done" and status["buffer_size"] == DATASET_SIZE + ONLINE
    evals = comparable(pd.read_parquet(whole_run / "evals.parquet"))
    pd.testing.assert_frame_equal(comparable(pd.read_parquet(tmp_path / RUN_DIR / "evals.parquet")), evals)


def test_utd_ratio_sets_the_updates_per_environment_step(flowarena, tmp_path, monkeypatch):
    updates = []
    original_update = Agent.update

    def counted_update(self: Agent, batch):
        updates.append(batch)
        return original_update(self, batch)

    monkeypatch.setattr(Agent, "update", counted_update)
    flags = dict(
        steps=0, online_steps=6, online_warmup_steps=2, utd_ratio=3, eval_interval=6, eval_episodes=1
    )
    assert flowarena(tmp_path, **flags) == 0
    assert len(updates) == 3 * (6 - 2 + 1)  # online steps 2..6
    evals = pd.read_parquet(tmp_path / RUN_DIR / "evals.parquet")
    assert evals["step"].tolist() == [6] and evals["phase"].tolist() == ["online"]


def test_nan_loss_in_online_phase_ends_the_run_as_diverged(flowarena, tmp_path):
    flags = dict(steps=0, online_steps=6, online_warmup_steps=1, eval_interval=6, eval_episodes=1)
    assert flowarena(tmp_path, "--set", "lr=1e12", **flags) == 1
    status = json.loads((tmp_path / "default" / "fql[lr=1e+12]" / TASK / "seed0" / "status.json").read_text())
    assert status["state"] == "diverged" and status["step"] == 2 and status["metric"] == "critic_loss"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (dict(online_steps=10, online_warmup_steps=20), "--online-warmup-steps 20 exceeds --online-steps 10"),
        (dict(online_steps=10, online_warmup_steps=5, utd_ratio=0), "--utd-ratio must be an integer >= 1"),
        (dict(online_steps=10, online_warmup_steps=-1), "--online-warmup-steps must be an integer >= 0"),
    ],
)
def test_bad_online_budget_is_a_clear_error(flowarena, tmp_path, capsys, flags, message):
    assert flowarena(tmp_path, **flags) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / RUN_DIR).exists()
