"""FQL / QC-FQL: the dataset's chunk transitions and the h-step TD target by hand, the one-step
policy distilling the flow when the Q term is off, the replay's dataset-first ring, the config
checks, the CLI's refusal of a dataset that does not fit the env, and the offline-then-online
run resuming exactly after a crash in either phase."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from flowpolicy.algos.chunk_replay import ChunkReplay, dataset_chunks
from flowpolicy.algos.fql import FQL, FQLConfig
from flowpolicy.data import Dataset, save_dataset
from flowpolicy.errors import UserError
from flowpolicy.train import load_policy, resume, train
from tests.test_cli import cli
from tests.test_train import metric_rows, small_config

OBS_DIM = 3
LOW, HIGH = torch.tensor([-1.0, -2.0]), torch.tensor([1.0, 2.0])
TINY = dict(
    num_envs=2,
    num_steps=8,
    flow_steps=4,
    actor_hidden=(16,),
    critic_hidden=(16,),
    batch_size=8,
    utd_ratio=0.25,
)


def _make(**kw) -> FQL:
    torch.manual_seed(0)
    return FQL(OBS_DIM, LOW, HIGH, FQLConfig(**(TINY | kw)))


def _dataset(lengths=(5, 3), obs_dim=OBS_DIM, action_dim=2, terminal_last=True, next_obs=True):
    """Episodes of the given lengths, rewards 1, 2, 3, ...: the first episode terminates
    (``terminal_last``) or is truncated, the others are truncated; next observations are the
    observations + 100 (or not recorded)."""
    n = sum(lengths)
    rng = np.random.default_rng(0)
    ends = np.cumsum(lengths)
    terminals = np.zeros(n, dtype=bool)
    truncations = np.zeros(n, dtype=bool)
    terminals[ends[0] - 1] = terminal_last
    truncations[ends[0] - 1] = not terminal_last
    truncations[ends[1:] - 1] = True
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32)
    return Dataset(
        observations=obs,
        actions=rng.uniform(-1, 1, size=(n, action_dim)),
        rewards=np.arange(1, n + 1, dtype=np.float32),
        terminals=terminals,
        truncations=truncations,
        episode_ends=ends,
        next_observations=obs + 100.0 if next_obs else None,
    )


# ----------------------------------------------------------------------------- QC-FQL's target


def test_chunk_transitions_by_hand() -> None:
    data = _dataset()  # episode 0: steps 0-4 (terminal at 4); episode 1: steps 5-7 (truncated)
    rows = dataset_chunks(data, chunk=3, gamma=0.5)
    # windows inside an episode: [0,1,2], [1,2,3], [2,3,4], [5,6,7]
    assert rows["rewards"].tolist() == [
        1 + 0.5 * 2 + 0.25 * 3,
        2 + 0.5 * 3 + 0.25 * 4,
        3 + 0.5 * 4 + 0.25 * 5,
        6 + 0.5 * 7 + 0.25 * 8,
    ]
    assert rows["terminated"].tolist() == [0, 0, 1, 0]
    assert np.array_equal(rows["obs"], data.observations[[0, 1, 2, 5]])
    assert np.array_equal(rows["next_obs"], data.next_observations[[2, 3, 4, 7]])
    assert np.array_equal(rows["actions"][1], data.actions[[1, 2, 3]].reshape(-1))
    # without recorded next observations: s' = s_{t+1}, and the truncated end is left out
    rows = dataset_chunks(_dataset(next_obs=False), chunk=3, gamma=0.5)
    assert len(rows["rewards"]) == 3
    assert np.array_equal(rows["next_obs"][:2], data.observations[[3, 4]])


def test_qc_td_target_is_the_h_step_target_by_hand() -> None:
    algo = _make(chunk=3, chunk_exec=3, gamma=0.9, critic_members=2)
    for value, target in zip((2.0, 4.0), algo.critic.targets, strict=True):
        torch.nn.init.zeros_(target[-1].weight)  # Qbar_e(s, a) = bias_e, whatever (s, a)
        torch.nn.init.constant_(target[-1].bias, value)
    rewards = torch.tensor([1 + 0.9 * 2 + 0.81 * 3, 3 + 0.9 * 4 + 0.81 * 5])
    terminated = torch.tensor([0.0, 1.0])
    got = algo.td_target(rewards, torch.randn(2, OBS_DIM), terminated)
    assert torch.allclose(got, torch.tensor([5.23 + 0.729 * 3.0, 10.65]))  # mean of 2 and 4
    algo = _make(chunk=3, chunk_exec=3, gamma=0.9, q_agg="min")
    for value, target in zip((2.0, 4.0), algo.critic.targets, strict=True):
        torch.nn.init.zeros_(target[-1].weight)
        torch.nn.init.constant_(target[-1].bias, value)
    got = algo.td_target(rewards, torch.randn(2, OBS_DIM), terminated)
    assert torch.allclose(got, torch.tensor([5.23 + 0.729 * 2.0, 10.65]))


def test_qc_acts_and_learns_on_whole_chunks() -> None:
    algo = _make(chunk=3, chunk_exec=3, offline_steps=4, offline_log_every=4)
    algo.load_offline_data(_dataset(lengths=(5, 4)))
    assert algo.replay.data["actions"].shape[1] == 6  # the critic sees 3 x 2 actions
    metrics = algo.offline_update()
    assert algo.offline_steps_left == 0 and metrics["charts/offline_steps"] == 4.0
    action, record = algo.act(torch.randn(2, OBS_DIM))
    assert action.shape == (2, 6) and record["action"].abs().max() <= 1.0
    assert (action[:, 1::2].abs() <= 2.0).all()  # the second dim's bounds are [-2, 2]


# ----------------------------------------------------------------------------- distillation


def test_one_step_policy_matches_the_flow_when_the_q_term_is_off(monkeypatch) -> None:
    # Data: a_0 = +-0.6 at random (two modes), a_1 = 0.6 sign(s_0), a little noise. Without the
    # Q term the one-step policy only distils the BC flow: mu(s, z) ~ flow(s, z) at the same z.
    # Measured (seeds 0-2, 1000 steps): mean squared gap 0.44-0.57 at start, 0.007-0.012 after;
    # at s_0 = 1, 21-29% / 29-41% of the samples at a_0 > 0.3 / < -0.3, all at a_1 > 0.3.
    rng = np.random.default_rng(0)
    n = 512
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    sign = np.where(rng.random(n) < 0.5, 1.0, -1.0)
    actions = np.stack([0.6 * sign, 0.6 * np.sign(obs[:, 0])], 1) + 0.05 * rng.normal(size=(n, 2))
    data = Dataset(obs, actions, np.zeros(n), np.zeros(n, bool), np.r_[np.zeros(n - 1), 1] > 0, [n])
    torch.manual_seed(0)
    config = FQLConfig(
        **(TINY | dict(actor_hidden=(64, 64), batch_size=64, flow_steps=5)),
        alpha=1.0,
        learning_rate=3e-3,
        offline_steps=1000,
        offline_log_every=1000,
    )
    algo = FQL(2, torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0]), config)
    monkeypatch.setattr(algo, "q_term", lambda obs, actions: (actions.sum() * 0.0, torch.zeros(())))
    algo.load_offline_data(data)

    def gap() -> float:
        probe = torch.randn(256, 2)
        noise = torch.randn(256, 2)
        with torch.no_grad():
            probe_n = algo.flow.obs_norm(probe)
            mu = algo.onestep.raw(probe_n, noise).clamp(-1, 1)
            return float((mu - algo.flow_actions(probe_n, noise)).square().mean())

    before = gap()
    algo.offline_update()
    after = gap()
    assert before > 0.3 and after < 0.03, (before, after)
    with torch.no_grad():  # and what it distilled is the data's: two modes, one conditioned
        sample = algo.onestep.sample(torch.tensor([[1.0, 0.0]]).repeat(500, 1), "random")
    assert (sample[:, 0] > 0.3).float().mean() > 0.15 and (
        sample[:, 0] < -0.3
    ).float().mean() > 0.15
    assert (sample[:, 1] > 0.3).float().mean() > 0.9


# ----------------------------------------------------------------------------- replay and config


def test_the_replay_keeps_the_dataset_and_rings_the_online_rows() -> None:
    replay = ChunkReplay(capacity=7, device=torch.device("cpu"))

    def row(value: int, count: int) -> dict[str, torch.Tensor]:
        return {"rewards": torch.full((count,), float(value)), "obs": torch.zeros(count, 2)}

    replay.set_offline(row(-1, 3), online_rows=2)
    for value in range(3):
        replay.add(row(value, 2))  # 4 online slots: the third add overwrites the first
    assert len(replay) == 7
    assert replay.data["rewards"].tolist() == [-1, -1, -1, 2, 2, 1, 1]
    state = replay.state_dict()
    restored = ChunkReplay(capacity=7, device=torch.device("cpu"))
    restored.set_offline(row(-1, 3), online_rows=2)
    restored.load_state_dict(state)
    assert torch.equal(restored.data["rewards"], replay.data["rewards"])
    other = ChunkReplay(capacity=7, device=torch.device("cpu"))
    other.set_offline(row(-1, 4), online_rows=2)
    with pytest.raises(UserError, match="dataset file changed"):
        other.load_state_dict(state)


@pytest.mark.parametrize(
    "kw,message",
    [
        (dict(chunk=3, chunk_exec=1), "chunk_exec"),
        (dict(q_agg="max"), "q_agg"),
        (dict(alpha=-1.0), "alpha"),
        (dict(tau=0.0), "tau"),
    ],
)
def test_invalid_configs(kw, message) -> None:
    with pytest.raises(ValueError, match=message):
        FQLConfig(**kw)


# ----------------------------------------------------------------------------- the runner


def _nav_dataset(path: Path, obs_dim: int = 2) -> Path:
    """Random toy/nav-sized transitions (episodes of 20 steps) in a dataset file."""
    rng = np.random.default_rng(1)
    n = 120
    ends = np.arange(20, n + 1, 20)
    last = np.zeros(n, dtype=bool)
    last[ends - 1] = True
    obs = rng.uniform(-1, 1, size=(n, obs_dim))
    data = Dataset(obs, rng.uniform(-1, 1, (n, 2)), rng.normal(size=n), last & False, last, ends)
    data.next_observations = obs + 0.1
    data.metadata["env_id"] = "toy/nav"
    save_dataset(path, data)
    return path


def test_a_dataset_that_does_not_fit_the_env_exits_2(tmp_path) -> None:
    path = _nav_dataset(tmp_path / "wide.h5", obs_dim=5)
    result = cli(
        *["train", "fql", "--env", "toy/nav", "--dataset", str(path)],
        *["--run-dir", str(tmp_path / "run"), "--quiet", "True"],
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    message = " ".join(result.stderr.split())  # wrapped to the terminal's width
    for words in ("does not fit toy/nav", "observation size 5 vs the env's 2", "--env"):
        assert words in message
    assert not (tmp_path / "run").exists()


class _Interrupted(Exception):
    pass


LOOP = TINY | dict(chunk=2, chunk_exec=2, offline_steps=24, offline_log_every=8)


@pytest.mark.parametrize("phase", ["offline", "online"])
def test_offline_then_online_resumes_to_the_uninterrupted_numbers(
    tmp_path, monkeypatch, phase
) -> None:
    dataset = str(_nav_dataset(tmp_path / "nav.h5"))
    algo = FQLConfig(**LOOP, dataset=dataset)
    reference = train(small_config(tmp_path / "ref", algo, steps=96, eval_every=64)).run_dir
    rows = metric_rows(reference)
    offline_rows = [row for row in rows if "charts/offline_steps" in row]
    assert [row["charts/offline_steps"] for row in offline_rows] == [8.0, 16.0, 24.0]
    assert all(row["step"] == 0 for row in offline_rows)
    online = [row for row in rows if "charts/replay_size" in row]
    assert (
        online and online[0]["charts/replay_size"] == 6 * 19 + 2 * 8
    )  # 6 episodes x 19 windows + a rollout
    config = small_config(tmp_path / "crash", algo, steps=96, eval_every=64)
    method = "offline_update" if phase == "offline" else "update"
    original, calls = getattr(FQL, method), {"n": 0}

    def crashing(self, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise _Interrupted
        return original(self, *args)

    monkeypatch.setattr(FQL, method, crashing)
    with pytest.raises(_Interrupted):
        train(config)
    monkeypatch.setattr(FQL, method, original)
    resumed = resume(config.run_dir).run_dir
    assert metric_rows(resumed) == rows
    saved = json.loads((Path(config.run_dir) / "config.json").read_text())
    assert saved["algo"]["dataset"] == dataset and saved["algo_name"] == "fql"
    policy = load_policy(resumed)  # rebuilt without reading the dataset
    assert policy.act(torch.zeros(3, 2), "zero").shape == (3, 4)
