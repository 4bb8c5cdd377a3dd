"""Demonstration datasets: the Dataset contract, our file format, and the D4RL / Minari /
robomimic readers against small files built here with h5py."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from flowpolicy.data import (
    FORMAT_NAME,
    FORMAT_VERSION,
    Dataset,
    DatasetError,
    load_dataset,
    save_dataset,
)
from flowpolicy.errors import UserError


def make_dataset(lengths=(3, 2), terminal_last=(True, False), obs_dim=2, next_obs=True):
    """Episodes of the given lengths; observation row t is (t, 10 t, ...), action t is -t."""
    n = sum(lengths)
    ends = np.cumsum(lengths)
    terminals = np.zeros(n, dtype=bool)
    terminals[ends - 1] = terminal_last
    truncations = np.zeros(n, dtype=bool)
    truncations[ends - 1] = ~np.asarray(terminal_last)
    obs = np.arange(n, dtype=np.float32)[:, None] * 10.0 ** np.arange(obs_dim, dtype=np.float32)
    return Dataset(
        observations=obs,
        actions=-np.arange(n, dtype=np.float32)[:, None],
        rewards=np.arange(n, dtype=np.float32) + 0.5,
        terminals=terminals,
        truncations=truncations,
        episode_ends=ends,
        next_observations=obs + 1.0 if next_obs else None,
        metadata={"env_id": "toy/test", "seed": 3},
    )


# ----------------------------------------------------------------------------- Dataset


def test_dataset_coerces_dtypes_and_reports_sizes():
    data = Dataset(
        observations=np.zeros((4, 3), dtype=np.float64),
        actions=np.zeros(4, dtype=np.int64),  # 1-d actions become (N, 1)
        rewards=[1, 2, 3, 4],
        terminals=[0, 1, 0, 0],
        truncations=np.array([0, 0, 0, 1], dtype=np.uint8),
        episode_ends=[2, 4],
    )
    assert data.observations.dtype == np.float32 and data.actions.shape == (4, 1)
    assert data.actions.dtype == np.float32 and data.rewards.dtype == np.float32
    assert data.terminals.dtype == bool and data.truncations.dtype == bool
    assert data.episode_ends.dtype == np.int64
    assert (data.num_transitions, data.num_episodes, data.obs_dim, data.action_dim) == (4, 2, 3, 1)
    assert data.episode_slices() == [slice(0, 2), slice(2, 4)]
    np.testing.assert_array_equal(data.episode_returns(), [3.0, 7.0])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"actions": np.zeros((4, 1))}, "actions has 4 rows"),
        ({"rewards": np.zeros(4)}, "rewards has shape"),
        ({"episode_ends": [3, 4]}, "last episode end is 4"),
        ({"episode_ends": [3, 3, 5]}, "strictly increasing"),
        ({"episode_ends": [0, 5]}, "strictly increasing"),
        ({"terminals": [False, True, True, False, False]}, "step 1 ends no episode"),
        ({"truncations": [False] * 5}, "step 4 is the last step"),
        ({"observations": np.full((5, 2), np.nan)}, "observations holds a NaN"),
        ({"next_observations": np.zeros((5, 3))}, "next_observations has shape"),
        ({"metadata": {"bad": object()}}, "JSON-serialisable"),
    ],
)
def test_dataset_rejects_inconsistent_fields(change, message):
    good = make_dataset()
    fields = {
        "observations": good.observations,
        "actions": good.actions,
        "rewards": good.rewards,
        "terminals": good.terminals,
        "truncations": good.truncations,
        "episode_ends": good.episode_ends,
        "next_observations": good.next_observations,
        "metadata": good.metadata,
    }
    with pytest.raises(ValueError, match=message):
        Dataset(**{**fields, **change})


def test_dataset_rejects_no_transitions():
    with pytest.raises(ValueError, match="no transitions"):
        Dataset(np.zeros((0, 2)), np.zeros((0, 1)), [], [], [], [])


def test_chunk_indices_hand_worked_example():
    data = make_dataset(lengths=(3, 2))
    padded = data.chunk_indices(2, pad=True)
    assert padded.dtype == np.int64
    np.testing.assert_array_equal(padded, [[0, 1], [1, 2], [2, 2], [3, 4], [4, 4]])
    np.testing.assert_array_equal(data.chunk_indices(2, pad=False), [[0, 1], [1, 2], [3, 4]])
    np.testing.assert_array_equal(data.chunk_indices(1), [[0], [1], [2], [3], [4]])
    assert data.chunk_indices(4, pad=False).shape == (0, 4)  # no episode is long enough


@pytest.mark.parametrize("seed", range(5))
def test_chunk_indices_never_cross_an_episode_end(seed):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 9, size=rng.integers(1, 7))
    data = make_dataset(lengths=tuple(lengths), terminal_last=tuple(rng.random(len(lengths)) < 0.5))
    episode_of = np.repeat(np.arange(len(lengths)), lengths)
    for chunk in (1, 2, 4, 8):
        for pad in (True, False):
            rows = data.chunk_indices(chunk, pad=pad)
            assert rows.shape[1] == chunk
            # Every index of a row lies in the episode of the row's first step ...
            assert np.all(episode_of[rows] == episode_of[rows[:, :1]])
            steps = np.diff(rows, axis=1)
            if pad:
                # ... one row per transition, advancing by one step, then holding the last step.
                np.testing.assert_array_equal(rows[:, 0], np.arange(data.num_transitions))
                assert np.all((steps == 1) | ((steps == 0) & (rows[:, 1:] == rows[:, :-1])))
                held = rows[:, 1:][steps == 0]
                assert np.all(np.isin(held, data.episode_ends - 1))
            else:
                assert np.all(steps == 1)
                assert len(rows) == np.maximum(lengths - chunk + 1, 0).sum()


def test_chunk_indices_rejects_bad_chunk():
    with pytest.raises(ValueError, match="chunk"):
        make_dataset().chunk_indices(0)


def test_subset_takes_whole_episodes_in_order():
    data = make_dataset(lengths=(3, 2, 4), terminal_last=(True, False, True))
    part = data.subset([2, 0])
    np.testing.assert_array_equal(part.episode_ends, [4, 7])
    rows = [5, 6, 7, 8, 0, 1, 2]
    np.testing.assert_array_equal(part.observations, data.observations[rows])
    np.testing.assert_array_equal(part.next_observations, data.next_observations[rows])
    np.testing.assert_array_equal(part.actions, data.actions[rows])
    np.testing.assert_array_equal(part.terminals, data.terminals[rows])
    np.testing.assert_array_equal(part.truncations, data.truncations[rows])
    np.testing.assert_array_equal(part.episode_returns(), data.episode_returns()[[2, 0]])
    assert part.metadata == data.metadata and part.metadata is not data.metadata
    masked = data.subset(np.array([False, True, False]))
    np.testing.assert_array_equal(masked.actions, data.actions[3:5])
    for bad, message in [([3], r"\[0, 3\)"), ([1, 1], "distinct"), ([], "at least one")]:
        with pytest.raises(ValueError, match=message):
            data.subset(bad)


# ----------------------------------------------------------------------------- our format


def assert_same(a: Dataset, b: Dataset) -> None:
    for name in ("observations", "actions", "rewards", "terminals", "truncations"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
        assert getattr(a, name).dtype == getattr(b, name).dtype, name
    np.testing.assert_array_equal(a.episode_ends, b.episode_ends)
    if a.next_observations is None:
        assert b.next_observations is None
    else:
        np.testing.assert_array_equal(a.next_observations, b.next_observations)


@pytest.mark.parametrize("next_obs", [True, False])
def test_save_load_round_trip(tmp_path, next_obs):
    data = make_dataset(lengths=(3, 2, 1), terminal_last=(True, False, False), next_obs=next_obs)
    data.metadata["policy_return"] = np.float32(1.5)  # numpy scalars are stored as numbers
    data.metadata["command"] = ["flowpolicy", "collect", "--episodes", "3"]
    path = tmp_path / "sub" / "demos.hdf5"
    save_dataset(path, data)
    assert sorted(p.name for p in path.parent.iterdir()) == ["demos.hdf5"]  # no temp file left
    with h5py.File(path, "r") as file:
        assert file.attrs["format"] == FORMAT_NAME
        assert file.attrs["format_version"] == FORMAT_VERSION
        assert ("next_observations" in file) == next_obs
    for fmt in ("auto", "flowpolicy"):
        loaded = load_dataset(path, format=fmt)
        assert_same(data, loaded)
        assert loaded.metadata == {
            "env_id": "toy/test",
            "seed": 3,
            "policy_return": 1.5,
            "command": ["flowpolicy", "collect", "--episodes", "3"],
        }


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "demos.hdf5"
    save_dataset(path, make_dataset(lengths=(3, 2)))
    save_dataset(path, make_dataset(lengths=(1,), terminal_last=(True,)))
    assert load_dataset(path).num_transitions == 1


def test_hand_written_file_in_our_format_loads(tmp_path):
    """What docs/data.md tells users to write from their own code (flags as uint8 works too)."""
    path = tmp_path / "mine.hdf5"
    with h5py.File(path, "w") as file:
        file.attrs["format"] = "flowpolicy-dataset"
        file.attrs["format_version"] = 1
        file.attrs["metadata"] = json.dumps({"env_id": "Hopper-v5"})
        file["observations"] = np.ones((3, 11))
        file["actions"] = np.zeros((3, 3))
        file["rewards"] = np.array([1.0, 2.0, 3.0])
        file["terminals"] = np.array([0, 0, 0], dtype=np.uint8)
        file["truncations"] = np.array([0, 1, 1], dtype=np.uint8)
        file["episode_ends"] = np.array([2, 3])
    data = load_dataset(path)
    assert (data.num_episodes, data.obs_dim, data.action_dim) == (2, 11, 3)
    assert data.metadata == {"env_id": "Hopper-v5"} and data.next_observations is None
    np.testing.assert_array_equal(data.episode_returns(), [3.0, 3.0])


# ----------------------------------------------------------------------------- D4RL


def write_d4rl(path: Path, n: int = 7, **override) -> None:
    arrays = {
        "observations": np.arange(2 * n, dtype=np.float64).reshape(n, 2),
        "actions": np.arange(n, dtype=np.float32).reshape(n, 1) / 10,
        "rewards": np.arange(n, dtype=np.float32),
        # Episode 0: steps 0-2, terminal. Episode 1: steps 3-4, time limit. Episode 2: steps
        # 5-6, still running when the recording stopped.
        "terminals": np.array([0, 0, 1, 0, 0, 0, 0], dtype=np.float32)[:n],
        "timeouts": np.array([0, 0, 0, 0, 1, 0, 0], dtype=bool)[:n],
        "next_observations": np.arange(2 * n, dtype=np.float64).reshape(n, 2) + 2,
    }
    arrays.update(override)
    with h5py.File(path, "w") as file:
        for name, array in arrays.items():
            if array is not None:
                file[name] = array
        file["infos/qpos"] = np.zeros((n, 3))  # extra keys are ignored


def test_d4rl_reader(tmp_path):
    path = tmp_path / "hopper.hdf5"
    write_d4rl(path)
    data = load_dataset(path)
    np.testing.assert_array_equal(data.episode_ends, [3, 5, 7])
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(data.truncations, [0, 0, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(data.observations, np.arange(14).reshape(7, 2))
    np.testing.assert_array_equal(data.next_observations, np.arange(14).reshape(7, 2) + 2)
    np.testing.assert_allclose(data.actions[:, 0], np.arange(7) / 10)
    np.testing.assert_array_equal(data.episode_returns(), [3.0, 7.0, 11.0])
    assert data.metadata == {"source": "d4rl", "source_path": str(path)}


def test_d4rl_without_next_observations(tmp_path):
    path = tmp_path / "d4rl.h5"
    write_d4rl(path, next_observations=None)
    data = load_dataset(path, format="d4rl")
    assert data.next_observations is None and data.num_episodes == 3


# ----------------------------------------------------------------------------- Minari


def write_minari(folder: Path, dict_obs: bool = False) -> Path:
    """A Minari dataset directory: episode 0 (3 steps, terminated), episode 1 (2 steps,
    truncated). Observation t of episode e is 100 e + t (so T + 1 per episode)."""
    (folder / "data").mkdir(parents=True)
    metadata = {
        "dataset_id": "mujoco/toy/expert-v0",
        "data_format": "hdf5",
        "total_episodes": 2,
        "total_steps": 5,
        "env_spec": json.dumps({"id": "Toy-v1", "max_episode_steps": 2}),
        "observation_space": "a long serialised space",
        "action_space": "another one",
        "algorithm_name": "SAC",
    }
    (folder / "data" / "metadata.json").write_text(json.dumps(metadata))
    with h5py.File(folder / "data" / "main_data.hdf5", "w") as file:
        for e, (steps, terminated) in enumerate([(3, True), (2, False)]):
            group = file.create_group(f"episode_{e}")
            obs = (100.0 * e + np.arange(steps + 1))[:, None]
            if dict_obs:
                group["observations/observation"] = np.hstack([obs, -obs])
                group["observations/desired_goal"] = obs + 0.5
            else:
                group["observations"] = obs
            group["actions"] = np.full((steps, 2), e, dtype=np.float32)
            group["rewards"] = np.ones(steps)
            group["terminations"] = np.array([False] * (steps - 1) + [terminated])
            group["truncations"] = np.array([False] * (steps - 1) + [not terminated])
    return folder


def test_minari_reader_directory_and_file(tmp_path):
    folder = write_minari(tmp_path / "toy-expert-v0")
    for path in (folder, folder / "data" / "main_data.hdf5"):
        data = load_dataset(path)
        np.testing.assert_array_equal(data.episode_ends, [3, 5])
        np.testing.assert_array_equal(data.observations[:, 0], [0, 1, 2, 100, 101])
        np.testing.assert_array_equal(data.next_observations[:, 0], [1, 2, 3, 101, 102])
        np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0])
        np.testing.assert_array_equal(data.truncations, [0, 0, 0, 0, 1])
        np.testing.assert_array_equal(data.actions, [[0, 0]] * 3 + [[1, 1]] * 2)
        assert data.metadata["env_id"] == "Toy-v1"
        assert data.metadata["dataset_id"] == "mujoco/toy/expert-v0"
        assert data.metadata["minari"]["algorithm_name"] == "SAC"
        assert "observation_space" not in data.metadata["minari"]


def test_minari_dict_observations(tmp_path):
    folder = write_minari(tmp_path / "goal", dict_obs=True)
    with pytest.raises(DatasetError, match=r"obs_keys.*desired_goal, observation"):
        load_dataset(folder)
    data = load_dataset(folder, obs_keys=["desired_goal", "observation"])
    first = np.array([0, 1, 2, 100, 101], dtype=np.float32)
    np.testing.assert_array_equal(data.observations, np.stack([first + 0.5, first, -first], 1))
    np.testing.assert_array_equal(data.next_observations[:, 1], first + 1)
    assert data.metadata["obs_keys"] == ["desired_goal", "observation"]
    with pytest.raises(DatasetError, match=r"\['goal'\] not found"):
        load_dataset(folder, obs_keys=["goal"])


# ----------------------------------------------------------------------------- robomimic


def write_robomimic(path: Path, next_obs: bool = True) -> None:
    """demo_1 (3 steps, done at the end), demo_2 (2 steps, done only mid-way), demo_10 (1 step).
    Observations of demo d at step t: object = 10 d + t (3 wide), eef = -(10 d + t) (2 wide)."""
    env_args = {"env_name": "Lift", "type": 1, "env_kwargs": {"control_freq": 20}}
    with h5py.File(path, "w") as file:
        data = file.create_group("data")
        data.attrs["env_args"] = json.dumps(env_args)
        data.attrs["total"] = 6
        for d, dones in [(10, [0]), (2, [1, 0]), (1, [0, 1, 1])]:  # written out of order
            demo = data.create_group(f"demo_{d}")
            steps = len(dones)
            value = (10.0 * d + np.arange(steps + 1))[:, None]
            for group, rows in (("obs", value[:-1]), ("next_obs", value[1:])):
                if group == "next_obs" and not next_obs:
                    continue
                demo[f"{group}/object"] = np.repeat(rows, 3, axis=1)
                demo[f"{group}/robot0_eef_pos"] = np.repeat(-rows, 2, axis=1)
                demo[f"{group}/agentview_image"] = np.zeros((steps, 4, 4, 3), dtype=np.uint8)
            demo["actions"] = np.full((steps, 7), d, dtype=np.float64)
            demo["rewards"] = np.array(dones, dtype=np.float64)
            demo["dones"] = np.array(dones, dtype=np.int64)
        file["mask/train"] = np.array([b"demo_1", b"demo_2"])


def test_robomimic_reader(tmp_path):
    path = tmp_path / "lift.hdf5"
    write_robomimic(path)
    data = load_dataset(path, obs_keys=["robot0_eef_pos", "object"])
    value = np.array([10, 11, 12, 20, 21, 100], dtype=np.float32)  # demo_1, demo_2, demo_10
    np.testing.assert_array_equal(data.episode_ends, [3, 5, 6])
    expected = np.stack([-value, -value, value, value, value], axis=1)
    np.testing.assert_array_equal(data.observations, expected)
    np.testing.assert_array_equal(data.next_observations[:, 2], value + 1)
    np.testing.assert_array_equal(data.actions[:, 0], [1, 1, 1, 2, 2, 10])
    # Only a demo's last step ends it: the mid-way "dones" of demo_1 and demo_2 are ignored.
    np.testing.assert_array_equal(data.terminals, [0, 0, 1, 0, 0, 0])
    np.testing.assert_array_equal(data.truncations, [0, 0, 0, 0, 1, 1])
    assert data.metadata["env_name"] == "Lift"
    assert data.metadata["env_args"]["env_kwargs"] == {"control_freq": 20}
    assert data.metadata["obs_keys"] == ["robot0_eef_pos", "object"]
    assert data.metadata["source"] == "robomimic"
    # A comma-separated string works too (what a command line passes).
    same = load_dataset(path, format="robomimic", obs_keys="robot0_eef_pos, object")
    np.testing.assert_array_equal(same.observations, expected)


def test_robomimic_without_next_obs(tmp_path):
    path = tmp_path / "lift.hdf5"
    write_robomimic(path, next_obs=False)
    assert load_dataset(path, obs_keys=["object"]).next_observations is None


def test_robomimic_obs_keys_are_required_and_checked(tmp_path):
    path = tmp_path / "lift.hdf5"
    write_robomimic(path)
    available = r"\[agentview_image, object, robot0_eef_pos\]"
    with pytest.raises(DatasetError, match=f"obs_keys.*Available keys: {available}"):
        load_dataset(path)
    with pytest.raises(DatasetError, match=f"\\['cube'\\] not found.*{available}"):
        load_dataset(path, obs_keys=["object", "cube"])
    with pytest.raises(DatasetError, match="low-dimensional"):
        load_dataset(path, obs_keys=["agentview_image"])


# ----------------------------------------------------------------------------- errors


def expect_error(path, *fragments, **kwargs) -> str:
    with pytest.raises(DatasetError) as info:
        load_dataset(path, **kwargs)
    message = str(info.value)
    assert isinstance(info.value, UserError)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    assert "Traceback" not in message and "\n" not in message
    return message


def test_error_missing_path(tmp_path):
    expect_error(tmp_path / "nope.hdf5", "does not exist")


def test_error_not_hdf5(tmp_path):
    path = tmp_path / "demos.npz"
    path.write_text("not an hdf5 file")
    expect_error(path, "not an HDF5 file", "docs/data.md")
    expect_error(path, "not an HDF5 file", format="d4rl")


def test_error_missing_key(tmp_path):
    d4rl = tmp_path / "d4rl.hdf5"
    write_d4rl(d4rl, timeouts=None)
    expect_error(d4rl, "'timeouts'", "d4rl")
    robomimic = tmp_path / "robomimic.hdf5"
    write_robomimic(robomimic)
    with h5py.File(robomimic, "a") as file:
        del file["data/demo_2/actions"]
    expect_error(robomimic, "'data/demo_2/actions'", obs_keys=["object"])
    ours = tmp_path / "ours.hdf5"
    save_dataset(ours, make_dataset())
    with h5py.File(ours, "a") as file:
        del file["truncations"]
    expect_error(ours, "'truncations'", "flowpolicy")


def test_error_wrong_shapes(tmp_path):
    d4rl = tmp_path / "d4rl.hdf5"
    write_d4rl(d4rl, actions=np.zeros((6, 1)))
    expect_error(d4rl, "'actions' has 6 rows", "7 were expected")
    ours = tmp_path / "ours.hdf5"
    save_dataset(ours, make_dataset())
    with h5py.File(ours, "a") as file:
        del file["actions"]
        file["actions"] = np.zeros((4, 1))
    expect_error(ours, "actions has 4 rows but observations has 5")
    minari = write_minari(tmp_path / "minari")
    with h5py.File(minari / "data" / "main_data.hdf5", "a") as file:
        del file["episode_1/observations"]
        file["episode_1/observations"] = np.zeros((2, 1))  # needs T + 1 = 3 rows
    expect_error(minari, "'episode_1': 'observations' has 2 rows", "3 were expected")


def test_error_empty(tmp_path):
    d4rl = tmp_path / "d4rl.hdf5"
    write_d4rl(d4rl, n=0)
    expect_error(d4rl, "no transitions")
    ours = tmp_path / "ours.hdf5"
    with h5py.File(ours, "w") as file:
        file.attrs["format"] = FORMAT_NAME
        for name in ("observations", "actions"):
            file[name] = np.zeros((0, 2))
        for name in ("rewards", "terminals", "truncations", "episode_ends"):
            file[name] = np.zeros(0)
    expect_error(ours, "no transitions")
    minari = tmp_path / "minari"
    (minari / "data").mkdir(parents=True)
    h5py.File(minari / "data" / "main_data.hdf5", "w").close()
    expect_error(minari, "no transitions", format="minari")


def test_error_unknown_layout_and_misplaced_obs_keys(tmp_path):
    path = tmp_path / "other.hdf5"
    with h5py.File(path, "w") as file:
        file["states"] = np.zeros((3, 2))
    expect_error(path, "Could not tell", "[states]")
    d4rl = tmp_path / "d4rl.hdf5"
    write_d4rl(d4rl)
    expect_error(d4rl, "Leave obs_keys out", obs_keys=["observation"])
    expect_error(tmp_path, "not a Minari dataset")
