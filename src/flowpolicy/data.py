"""Demonstration datasets: one in-memory layout, our own HDF5 file format, and readers for
D4RL, Minari and robomimic files that a user already has on disk.

A :class:`Dataset` is a flat sequence of N transitions ``(s_t, a_t, r_t, s'_t)`` cut into E
episodes by ``episode_ends`` (exclusive end index of each episode). Each episode's last step
carries exactly how it ended: ``terminals`` (an absorbing state: no bootstrapping past it) or
``truncations`` (a time limit or the end of the recording: the future was cut off, not absent).
Behaviour cloning needs the episode boundaries so that no action chunk crosses into the next
episode (ALGORITHMS.md section 1); offline-to-online methods need terminal vs truncated to
bootstrap correctly.

Shapes: ``N`` transitions, ``E`` episodes, ``Do`` observation size, ``Da`` action size,
``Ta`` chunk length.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flowpolicy.errors import UserError

FORMAT_NAME = "flowpolicy-dataset"
FORMAT_VERSION = 1

DatasetFormat = Literal["auto", "flowpolicy", "d4rl", "minari", "robomimic"]


class DatasetError(UserError):
    """A dataset file that can't be read: missing, not HDF5, missing keys, bad shapes, empty."""


@dataclass(eq=False)  # arrays have no single truth value; compare fields explicitly
class Dataset:
    """Transitions of whole episodes, stored flat.

    Attributes:
        observations: (N, Do) float32, the observation acted on at each step.
        actions: (N, Da) float32, the env actions as executed.
        rewards: (N,) float32.
        terminals: (N,) bool, the episode ended in an absorbing state at this step.
        truncations: (N,) bool, the episode was cut off at this step (time limit, end of the
            recording). Both flags may be set on the same step; termination then wins.
        episode_ends: (E,) int64, exclusive end index of each episode; strictly increasing,
            the last one equals N. Episode e spans ``[episode_ends[e-1], episode_ends[e])``.
        next_observations: (N, Do) float32, the true next observation of each step (the final
            observation at an episode's end), or None if the source did not record it.
        metadata: JSON-serialisable facts about the data: ``env_id``, ``seed``, ``source``,
            ``command``, ``policy_return``, ...

    Invariants checked on construction (``ValueError`` otherwise): N >= 1, consistent leading
    sizes, finite values, valid ``episode_ends``, and ``terminals | truncations`` true exactly on
    the last step of every episode.
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    terminals: np.ndarray
    truncations: np.ndarray
    episode_ends: np.ndarray
    next_observations: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.observations = _float_matrix(self.observations, "observations")
        self.actions = _float_matrix(self.actions, "actions")
        self.rewards = np.asarray(self.rewards, dtype=np.float32)
        self.terminals = np.asarray(self.terminals).astype(bool, copy=False)
        self.truncations = np.asarray(self.truncations).astype(bool, copy=False)
        self.episode_ends = np.asarray(self.episode_ends).astype(np.int64, copy=False)
        if self.next_observations is not None:
            self.next_observations = _float_matrix(self.next_observations, "next_observations")
        self._check_shapes()
        self._check_episodes()
        self._check_finite()
        if not isinstance(self.metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(self.metadata).__name__}")
        try:
            _metadata_json(self.metadata)
        except (TypeError, ValueError) as error:
            raise ValueError(f"metadata must be JSON-serialisable: {error}") from error

    def _check_shapes(self) -> None:
        n = self.observations.shape[0]
        if n == 0:
            raise ValueError("the dataset has no transitions (observations has 0 rows)")
        expected = {
            "actions": (self.actions, None),
            "rewards": (self.rewards, (n,)),
            "terminals": (self.terminals, (n,)),
            "truncations": (self.truncations, (n,)),
        }
        if self.next_observations is not None:
            expected["next_observations"] = (self.next_observations, self.observations.shape)
        for name, (array, shape) in expected.items():
            if shape is None and array.shape[0] != n:
                raise ValueError(
                    f"{name} has {array.shape[0]} rows but observations has {n}; "
                    "every per-step array needs one row per transition"
                )
            if shape is not None and array.shape != shape:
                raise ValueError(
                    f"{name} has shape {array.shape}, expected {shape} "
                    f"(observations has shape {self.observations.shape})"
                )

    def _check_episodes(self) -> None:
        ends, n = self.episode_ends, self.observations.shape[0]
        if ends.ndim != 1 or ends.size == 0:
            raise ValueError(f"episode_ends must be a non-empty 1-d array, got shape {ends.shape}")
        if ends[0] <= 0 or np.any(np.diff(ends) <= 0):
            raise ValueError(
                "episode_ends must be strictly increasing and positive (every episode has at "
                f"least one step), got {_preview(ends)}"
            )
        if ends[-1] != n:
            raise ValueError(
                f"the last episode end is {int(ends[-1])} but there are {n} transitions; "
                "episode_ends[-1] must equal the number of transitions"
            )
        is_last = np.zeros(n, dtype=bool)
        is_last[ends - 1] = True
        done = self.terminals | self.truncations
        if np.any(done != is_last):
            step = int(np.flatnonzero(done != is_last)[0])
            what = "ends no episode" if done[step] else "is the last step of an episode"
            raise ValueError(
                f"step {step} {what}, but terminals|truncations is {bool(done[step])} there; "
                "terminals|truncations must be true exactly on the last step of each episode"
            )

    def _check_finite(self) -> None:
        arrays = {"observations": self.observations, "actions": self.actions}
        arrays["rewards"] = self.rewards
        if self.next_observations is not None:
            arrays["next_observations"] = self.next_observations
        for name, array in arrays.items():
            bad = ~np.isfinite(array)
            if bad.any():
                row = int(np.argwhere(bad)[0][0])
                raise ValueError(f"{name} holds a NaN or infinite value (first at row {row})")

    @property
    def num_transitions(self) -> int:
        """N."""
        return int(self.observations.shape[0])

    @property
    def num_episodes(self) -> int:
        """E."""
        return int(self.episode_ends.shape[0])

    @property
    def obs_dim(self) -> int:
        """Do."""
        return int(self.observations.shape[1])

    @property
    def action_dim(self) -> int:
        """Da."""
        return int(self.actions.shape[1])

    @property
    def episode_starts(self) -> np.ndarray:
        """(E,) int64 index of each episode's first step."""
        return np.concatenate([[0], self.episode_ends[:-1]]).astype(np.int64)

    def episode_slices(self) -> list[slice]:
        """One ``slice(start, end)`` per episode, in order."""
        return [
            slice(int(s), int(e))
            for s, e in zip(self.episode_starts, self.episode_ends, strict=True)
        ]

    def episode_returns(self) -> np.ndarray:
        """(E,) float64 undiscounted return ``sum_t r_t`` of each episode."""
        return np.add.reduceat(self.rewards.astype(np.float64), self.episode_starts)

    def chunk_indices(self, chunk: int, pad: bool = True) -> np.ndarray:
        """Row indices of action chunks that never cross an episode end.

        Row i lists the ``chunk`` (Ta) consecutive steps that start at a transition t of
        episode ``[s, e)``: ``[t, t+1, ..., t+Ta-1]``. With ``pad=True`` there is one row per
        transition and indices past the episode's last step repeat it, ``min(t+j, e-1)``
        (diffusion-policy practice: the tail of a chunk holds the final action). With
        ``pad=False`` only windows with ``t + Ta <= e`` are kept.

        Example: episodes of lengths 3 and 2, chunk 2 ->
        pad: ``[[0,1],[1,2],[2,2],[3,4],[4,4]]``; no pad: ``[[0,1],[1,2],[3,4]]``.

        Returns:
            (n, Ta) int64, n = N with padding, ``sum_e max(0, len_e - Ta + 1)`` without.
        """
        if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
            raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
        lengths = np.diff(np.concatenate([[0], self.episode_ends]))
        end_of = np.repeat(self.episode_ends, lengths)  # (N,) episode end of each step
        starts = np.arange(self.num_transitions, dtype=np.int64)
        if not pad:
            keep = starts + chunk <= end_of
            starts, end_of = starts[keep], end_of[keep]
        rows = starts[:, None] + np.arange(chunk, dtype=np.int64)[None, :]
        return np.minimum(rows, end_of[:, None] - 1)

    def subset(self, episodes: Sequence[int] | np.ndarray) -> Dataset:
        """A new dataset of whole episodes, in the order given (e.g. a train/validation split).

        Args:
            episodes: distinct episode indices in ``[0, E)``, or a boolean mask of length E.
        """
        index = np.asarray(episodes)
        if index.dtype == bool:
            if index.shape != (self.num_episodes,):
                raise ValueError(
                    f"a boolean episode mask needs shape ({self.num_episodes},), got {index.shape}"
                )
            index = np.flatnonzero(index)
        if index.size == 0:
            raise ValueError("subset needs at least one episode")
        if index.ndim != 1 or not np.issubdtype(index.dtype, np.integer):
            raise ValueError(f"episodes must be a 1-d sequence of integers, got {episodes!r}")
        if index.min() < 0 or index.max() >= self.num_episodes:
            raise ValueError(
                f"episode indices must lie in [0, {self.num_episodes}), got {_preview(index)}"
            )
        if np.unique(index).size != index.size:
            raise ValueError(f"episode indices must be distinct, got {_preview(index)}")
        slices = self.episode_slices()
        rows = np.concatenate([np.arange(slices[e].start, slices[e].stop) for e in index])
        lengths = np.array([slices[e].stop - slices[e].start for e in index], dtype=np.int64)
        return Dataset(
            observations=self.observations[rows],
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            terminals=self.terminals[rows],
            truncations=self.truncations[rows],
            episode_ends=np.cumsum(lengths),
            next_observations=(
                None if self.next_observations is None else self.next_observations[rows]
            ),
            metadata=copy.deepcopy(self.metadata),
        )


def _float_matrix(array: Any, name: str) -> np.ndarray:
    """A (N, D) float32 view or copy of ``array``; 1-d input becomes (N, 1)."""
    array = np.asarray(array, dtype=np.float32)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 2-d (N, D), got shape {array.shape}")
    return array


def _preview(array: np.ndarray, limit: int = 8) -> str:
    """The first few entries of an index array, for error messages."""
    items = ", ".join(str(int(x)) for x in array[:limit])
    return f"[{items}{', ...' if array.size > limit else ''}]"


def _json_default(value: Any) -> Any:
    """Let numpy scalars and arrays (e.g. a policy_return computed with numpy) into JSON."""
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _metadata_json(metadata: dict[str, Any]) -> str:
    return json.dumps(metadata, default=_json_default, sort_keys=True)


def _h5py() -> Any:
    """Import h5py on first use, so that ``flowpolicy.data`` imports without it."""
    try:
        import h5py
    except ImportError as error:
        raise DatasetError(
            "Reading and writing dataset files needs the h5py package, which is not installed. "
            "Install it with `pip install h5py`."
        ) from error
    return h5py


# ----------------------------------------------------------------------------- our format


def save_dataset(path: str | Path, dataset: Dataset) -> None:
    """Write ``dataset`` in the flowpolicy HDF5 format (docs/data.md), atomically.

    The file is written beside ``path`` under a temporary name, flushed to disk and renamed over
    ``path``, so a crash never leaves a torn file. Parent directories are created.
    """
    h5py = _h5py()
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    arrays = {
        "observations": dataset.observations,
        "actions": dataset.actions,
        "rewards": dataset.rewards,
        "terminals": dataset.terminals,
        "truncations": dataset.truncations,
        "episode_ends": dataset.episode_ends,
    }
    if dataset.next_observations is not None:
        arrays["next_observations"] = dataset.next_observations
    try:
        with h5py.File(tmp, "w") as file:
            file.attrs["format"] = FORMAT_NAME
            file.attrs["format_version"] = FORMAT_VERSION
            file.attrs["metadata"] = _metadata_json(dataset.metadata)
            for name, array in arrays.items():
                file.create_dataset(name, data=array, compression="gzip", compression_opts=4)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_dataset(
    path: str | Path,
    format: DatasetFormat = "auto",
    obs_keys: Sequence[str] | None = None,
) -> Dataset:
    """Read a dataset file (or Minari dataset directory) into a :class:`Dataset`.

    Args:
        path: an HDF5 file, or a Minari dataset directory.
        format: ``"auto"`` detects it: a directory is Minari; an HDF5 file with root attribute
            ``format = "flowpolicy-dataset"`` is ours; one with ``data/demo_*`` groups is
            robomimic; one with ``episode_*`` groups is a Minari ``main_data.hdf5``; one with flat
            ``observations`` and ``actions`` is D4RL.
        obs_keys: for dict observations (robomimic, Minari), the keys to concatenate, in order.

    Raises:
        DatasetError: the path is missing or unreadable, or its content is not a valid dataset.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(
            f"No dataset at {path}: the path does not exist. Check the spelling, or make one "
            "with `flowpolicy collect` (see docs/data.md)."
        )
    if format == "auto":
        format = _detect_format(path)
    readers = {
        "flowpolicy": _read_flowpolicy,
        "d4rl": _read_d4rl,
        "minari": _read_minari,
        "robomimic": _read_robomimic,
    }
    if format not in readers:
        raise DatasetError(
            f"Unknown dataset format {format!r} for {path}; use one of "
            "auto, flowpolicy, d4rl, minari, robomimic."
        )
    if format != "minari" and path.is_dir():
        raise DatasetError(
            f"{path} is a directory, but format {format!r} reads a single HDF5 file. Pass the "
            "file's path, or format='minari' for a Minari dataset directory."
        )
    try:
        return readers[format](path, obs_keys)
    except OSError as error:  # h5py reports damaged or truncated content as OSError
        raise DatasetError(
            f"Could not read the dataset {path} ({error}). The file may be damaged or still "
            "being written; check it or write it again."
        ) from error


def _detect_format(path: Path) -> str:
    """The format name of ``path``, from its layout (see :func:`load_dataset`)."""
    if path.is_dir():
        return "minari"
    with _open_hdf5(path) as file:
        keys = list(file.keys())
        if _attr_str(file.attrs.get("format")) == FORMAT_NAME or "episode_ends" in keys:
            return "flowpolicy"
        data = file.get("data")
        if data is not None and any(key.startswith("demo_") for key in data):
            return "robomimic"
        if any(key.startswith("episode_") for key in keys):
            return "minari"
        if "observations" in keys and "actions" in keys:
            return "d4rl"
    raise DatasetError(
        f"Could not tell which dataset format {path} is in; its top-level keys are "
        f"{_key_list(keys)}. flowpolicy reads its own format, D4RL (flat observations, actions, "
        "rewards, terminals, timeouts), Minari (episode_* groups) and robomimic (data/demo_* "
        "groups); convert the data to one of them as shown in docs/data.md."
    )


def _open_hdf5(path: Path) -> Any:
    """``h5py.File(path, "r")``, with a DatasetError when the file is not HDF5 or unreadable."""
    h5py = _h5py()
    if not h5py.is_hdf5(path):
        raise DatasetError(
            f"{path} is not an HDF5 file. flowpolicy reads datasets stored in HDF5 (its own "
            "format, D4RL, Minari, robomimic); convert the data as shown in docs/data.md."
        )
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(
            f"Could not open the HDF5 file {path} ({error}). It may be damaged or still being "
            "written; check the file or write it again."
        ) from error


def _attr_str(value: Any) -> str | None:
    """An HDF5 string attribute as ``str`` (h5py returns bytes for fixed-length strings)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _attr_str(value.item())
    return value if isinstance(value, str) else None


def _key_list(keys: Sequence[str], limit: int = 20) -> str:
    keys = list(keys)
    shown = ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "")
    return f"[{shown}]" if keys else "[] (none)"


def _node(group: Any, key: str, path: Path, fmt: str) -> Any:
    """``group[key]`` (an array or a group), or a DatasetError naming the key and the file."""
    node = group.get(key)
    if node is None:
        name = f"{group.name.rstrip('/')}/{key}".lstrip("/")
        raise DatasetError(
            f"The dataset file {path} has no '{name}', which a {fmt} dataset needs. Check that "
            f"the file is in the {fmt} format and complete; docs/data.md lists the keys each "
            "format needs."
        )
    return node


def _read_array(group: Any, key: str, path: Path, fmt: str) -> np.ndarray:
    """``group[key]`` as a numpy array, or a DatasetError naming the key and the file."""
    node = _node(group, key, path, fmt)
    if not hasattr(node, "shape"):
        raise DatasetError(
            f"In the dataset file {path}, '{node.name.lstrip('/')}' is a group where a {fmt} "
            "dataset has an array. Check the file's format; docs/data.md lists the layout."
        )
    return node[()]


def _vector(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    """A per-step scalar array as (T,); (T, 1) is accepted too."""
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DatasetError(
            f"In the dataset file {path}, '{name}' has shape {array.shape}; it should hold one "
            "number per step, shape (T,). Fix the file's layout (see docs/data.md)."
        )
    return array


def _matrix(array: np.ndarray, name: str, path: Path) -> np.ndarray:
    """A per-step vector array as (T, D); (T,) becomes (T, 1)."""
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise DatasetError(
            f"In the dataset file {path}, '{name}' has shape {array.shape}, but flowpolicy reads "
            "low-dimensional data only, shape (T, D). Choose low-dimensional observation keys "
            "(obs_keys) or flatten the data before saving it."
        )
    return array


def _check_rows(path: Path, where: str, rows: int, **arrays: np.ndarray) -> None:
    """Every array has ``rows`` rows, or a DatasetError naming the first one that does not."""
    for name, array in arrays.items():
        if array.shape[0] != rows:
            raise DatasetError(
                f"In the dataset file {path}, {where}'{name}' has {array.shape[0]} rows but "
                f"{rows} were expected (one per step). The arrays of a dataset must agree in "
                "length; fix or re-export the file."
            )


def _no_obs_keys(obs_keys: Sequence[str] | None, path: Path, fmt: str) -> None:
    if obs_keys is not None:
        raise DatasetError(
            f"obs_keys was given, but the observations in {path} ({fmt} format) are a plain "
            "array, not a dict of arrays. Leave obs_keys out."
        )


def _key_names(obs_keys: Sequence[str] | str | None) -> list[str] | None:
    """obs_keys as a list; a string is read as comma-separated names."""
    if obs_keys is None:
        return None
    if isinstance(obs_keys, str):
        obs_keys = obs_keys.split(",")
    return [key.strip() for key in obs_keys]


def _leaf_keys(group: Any) -> list[str]:
    """Names (relative, ``a/b`` for nested groups) of every array below ``group``."""
    names: list[str] = []

    def visit(name: str, node: Any) -> None:
        if hasattr(node, "shape"):
            names.append(name)

    group.visititems(visit)
    return names


def _select_obs(
    node: Any, obs_keys: list[str] | None, path: Path, fmt: str
) -> tuple[np.ndarray, bool]:
    """Observations of one episode as (T, Do), concatenating ``obs_keys`` of a dict in order.

    Returns:
        The (T, Do) array and whether the observations were a dict.
    """
    where = node.name.lstrip("/")
    if hasattr(node, "shape"):
        _no_obs_keys(obs_keys, path, fmt)
        return _matrix(node[()], where, path), False
    available = _leaf_keys(node)
    if not obs_keys:
        raise DatasetError(
            f"The observations in {path} ('{where}') are a dict of arrays; choose the "
            f"low-dimensional ones with obs_keys (names, concatenated in the order given). "
            f"Available keys: {_key_list(available, limit=50)}."
        )
    unknown = [key for key in obs_keys if key not in available]
    if unknown:
        raise DatasetError(
            f"obs_keys {unknown} not found in {path} ('{where}'). Available keys: "
            f"{_key_list(available, limit=50)}."
        )
    parts = [_matrix(node[key][()], f"{where}/{key}", path) for key in obs_keys]
    _check_rows(
        path,
        "",
        parts[0].shape[0],
        **{f"{where}/{k}": p for k, p in zip(obs_keys, parts, strict=True)},
    )
    return np.concatenate(parts, axis=1), True


def _episode_flags(
    lengths: Sequence[int], terminal_last: Sequence[bool]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """terminals, truncations and episode_ends for episodes that end after their last step.

    An episode whose last step is not terminal was cut off (time limit or end of the
    recording), so it is marked truncated there.
    """
    ends = np.cumsum(np.asarray(lengths, dtype=np.int64))
    terminals = np.zeros(int(ends[-1]), dtype=bool)
    terminals[ends - 1] = np.asarray(terminal_last, dtype=bool)
    truncations = np.zeros_like(terminals)
    truncations[ends - 1] = ~terminals[ends - 1]
    return terminals, truncations, ends


def _build(path: Path, fmt: str, **fields: Any) -> Dataset:
    """A Dataset, with its validation errors turned into a DatasetError naming the file."""
    if len(fields["observations"]) == 0:
        raise DatasetError(
            f"The dataset file {path} holds no transitions. Point at a file with recorded "
            "steps, or record some with `flowpolicy collect`."
        )
    try:
        return Dataset(**fields)
    except ValueError as error:
        raise DatasetError(
            f"The dataset file {path} ({fmt} format) is not a valid dataset: {error}. Fix the "
            "file, or re-export it; docs/data.md describes each format."
        ) from error


def _read_flowpolicy(path: Path, obs_keys: Sequence[str] | None) -> Dataset:
    fmt = "flowpolicy"
    _no_obs_keys(obs_keys, path, fmt)
    with _open_hdf5(path) as file:
        version = file.attrs.get("format_version", FORMAT_VERSION)
        if int(version) > FORMAT_VERSION:
            raise DatasetError(
                f"The dataset file {path} has format_version {int(version)}, newer than this "
                f"flowpolicy reads ({FORMAT_VERSION}). Upgrade flowpolicy to read it."
            )
        try:
            metadata = json.loads(_attr_str(file.attrs.get("metadata")) or "{}")
        except json.JSONDecodeError as error:
            raise DatasetError(
                f"The metadata attribute of {path} is not valid JSON ({error}). Rewrite it as a "
                "JSON object string, or delete it."
            ) from error
        if not isinstance(metadata, dict):
            raise DatasetError(
                f"The metadata attribute of {path} is JSON but not an object (dict). Rewrite it "
                'as a JSON object string, e.g. \'{"env_id": "Hopper-v5"}\'.'
            )
        names = ["observations", "actions", "rewards", "terminals", "truncations", "episode_ends"]
        fields = {name: _read_array(file, name, path, fmt) for name in names}
        if "next_observations" in file:
            fields["next_observations"] = _read_array(file, "next_observations", path, fmt)
    for name in ("terminals", "truncations"):
        fields[name] = _vector(fields[name], name, path) != 0
    fields["rewards"] = _vector(fields["rewards"], "rewards", path)
    return _build(path, fmt, metadata=metadata, **fields)


def _read_d4rl(path: Path, obs_keys: Sequence[str] | None) -> Dataset:
    fmt = "d4rl"
    _no_obs_keys(obs_keys, path, fmt)
    with _open_hdf5(path) as file:
        observations = _matrix(_read_array(file, "observations", path, fmt), "observations", path)
        actions = _matrix(_read_array(file, "actions", path, fmt), "actions", path)
        rewards = _vector(_read_array(file, "rewards", path, fmt), "rewards", path)
        terminals = _vector(_read_array(file, "terminals", path, fmt), "terminals", path) != 0
        if "timeouts" not in file:
            # Without them, time-limited episodes would run into each other silently.
            raise DatasetError(
                f"The dataset file {path} has no 'timeouts', which a d4rl dataset needs to "
                "know where time-limited episodes end. If the data has no time limits, add "
                "an all-false 'timeouts' array of the same length as 'terminals'."
            )
        timeouts = _vector(_read_array(file, "timeouts", path, fmt), "timeouts", path) != 0
        next_observations = None
        if "next_observations" in file:
            next_observations = _read_array(file, "next_observations", path, fmt)
    n = observations.shape[0]
    arrays = {"actions": actions, "rewards": rewards, "terminals": terminals, "timeouts": timeouts}
    if next_observations is not None:
        arrays["next_observations"] = next_observations
    _check_rows(path, "", n, **arrays)
    if n == 0:
        return _build(path, fmt, observations=observations)  # raises: no transitions
    # An episode ends where the data says terminal or timeout; whatever follows the last such
    # step is an episode cut off by the end of the recording.
    truncations = timeouts.copy()
    truncations[-1] |= not (terminals[-1] or timeouts[-1])
    episode_ends = np.flatnonzero(terminals | truncations) + 1
    metadata = {"source": fmt, "source_path": str(path)}
    return _build(
        path,
        fmt,
        observations=observations,
        actions=actions,
        rewards=rewards,
        terminals=terminals,
        truncations=truncations,
        episode_ends=episode_ends,
        next_observations=next_observations,
        metadata=metadata,
    )


def _numbered(keys: Sequence[str], prefix: str) -> list[str]:
    """Keys ``prefix<i>`` sorted by the number i (demo_2 before demo_10)."""
    chosen = [key for key in keys if key.startswith(prefix) and key[len(prefix) :].isdigit()]
    return sorted(chosen, key=lambda key: int(key[len(prefix) :]))


def _minari_files(path: Path) -> tuple[Path, Path | None]:
    """(main_data.hdf5, metadata.json or None) for a Minari directory or its HDF5 file."""
    if path.is_file():
        meta = path.with_name("metadata.json")
        return path, meta if meta.is_file() else None
    for folder in (path / "data", path):
        if (folder / "main_data.hdf5").is_file():
            meta = folder / "metadata.json"
            return folder / "main_data.hdf5", meta if meta.is_file() else None
    raise DatasetError(
        f"{path} is a directory without data/main_data.hdf5, so it is not a Minari dataset in "
        "the HDF5 storage format. Point at a Minari dataset directory (e.g. "
        "~/.minari/datasets/<dataset_id>) or at a dataset file."
    )


def _read_minari(path: Path, obs_keys: Sequence[str] | None) -> Dataset:
    fmt = "minari"
    keys = _key_names(obs_keys)
    data_file, meta_file = _minari_files(path)
    info: dict[str, Any] = {}
    if meta_file is not None:
        try:
            info = json.loads(meta_file.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise DatasetError(
                f"Could not read the Minari metadata {meta_file} ({error}). Repair the file or "
                "remove it (it is optional for reading)."
            ) from error
    if info.get("data_format", "hdf5") != "hdf5":
        raise DatasetError(
            f"The Minari dataset {path} is stored as {info['data_format']!r}; flowpolicy reads "
            "the HDF5 storage only. Re-create it with data_format='hdf5'."
        )
    parts: dict[str, list[np.ndarray]] = {"obs": [], "next": [], "act": [], "rew": []}
    lengths, terminal_last, dict_obs = [], [], False
    with _open_hdf5(data_file) as file:
        for name in _numbered(list(file.keys()), "episode_"):
            group = file[name]
            observations = _node(group, "observations", data_file, fmt)
            obs, dict_obs = _select_obs(observations, keys, data_file, fmt)
            actions = _read_array(group, "actions", data_file, fmt)
            actions = _matrix(actions, f"{name}/actions", data_file)
            rewards = _read_array(group, "rewards", data_file, fmt)
            rewards = _vector(rewards, f"{name}/rewards", data_file)
            terms = _read_array(group, "terminations", data_file, fmt).reshape(-1) != 0
            truncs = _read_array(group, "truncations", data_file, fmt).reshape(-1) != 0
            steps = actions.shape[0]
            if steps == 0:
                continue  # an episode with no steps holds no transition
            where = f"'{name}': "
            _check_rows(data_file, where, steps, rewards=rewards, terminations=terms)
            _check_rows(data_file, where, steps, truncations=truncs)
            # Minari stores T + 1 observations: the first and the final one.
            _check_rows(data_file, where, steps + 1, observations=obs)
            parts["obs"].append(obs[:-1])
            parts["next"].append(obs[1:])
            parts["act"].append(actions)
            parts["rew"].append(rewards)
            lengths.append(steps)
            terminal_last.append(bool(terms[-1]))
    if not lengths:
        raise DatasetError(
            f"The Minari dataset {path} holds no transitions (no non-empty episode_* groups). "
            "Point at a dataset with recorded episodes."
        )
    terminals, truncations, episode_ends = _episode_flags(lengths, terminal_last)
    metadata: dict[str, Any] = {"source": fmt, "source_path": str(path)}
    env_id = _minari_env_id(info.get("env_spec"))
    if env_id is not None:
        metadata["env_id"] = env_id
    if "dataset_id" in info:
        metadata["dataset_id"] = info["dataset_id"]
    if dict_obs:
        metadata["obs_keys"] = keys
    metadata["minari"] = {k: v for k, v in info.items() if k not in _MINARI_SPACE_KEYS}
    return _build(
        data_file,
        fmt,
        observations=np.concatenate(parts["obs"]),
        actions=np.concatenate(parts["act"]),
        rewards=np.concatenate(parts["rew"]),
        terminals=terminals,
        truncations=truncations,
        episode_ends=episode_ends,
        next_observations=np.concatenate(parts["next"]),
        metadata=metadata,
    )


# Serialised gymnasium spaces: long, and of no use without minari to decode them.
_MINARI_SPACE_KEYS = frozenset({"observation_space", "action_space"})


def _minari_env_id(env_spec: Any) -> str | None:
    """The env id inside Minari's ``env_spec`` (a JSON string of a gymnasium EnvSpec)."""
    if isinstance(env_spec, str):
        try:
            env_spec = json.loads(env_spec)
        except json.JSONDecodeError:
            return None
    if isinstance(env_spec, dict) and isinstance(env_spec.get("id"), str):
        return env_spec["id"]
    return None


def _read_robomimic(path: Path, obs_keys: Sequence[str] | None) -> Dataset:
    fmt = "robomimic"
    keys = _key_names(obs_keys)
    parts: dict[str, list[np.ndarray]] = {"obs": [], "next": [], "act": [], "rew": []}
    lengths, terminal_last, all_next = [], [], True
    with _open_hdf5(path) as file:
        data = _node(file, "data", path, fmt)
        env_args = _robomimic_env_args(data.attrs.get("env_args"))
        for name in _numbered(list(data.keys()), "demo_"):
            demo = data[name]
            obs, _ = _select_obs(_node(demo, "obs", path, fmt), keys, path, fmt)
            where = f"data/{name}"
            actions = _matrix(_read_array(demo, "actions", path, fmt), f"{where}/actions", path)
            rewards = _vector(_read_array(demo, "rewards", path, fmt), f"{where}/rewards", path)
            dones = _vector(_read_array(demo, "dones", path, fmt), f"{where}/dones", path) != 0
            steps = actions.shape[0]
            if steps == 0:
                continue
            arrays = {"obs": obs, "rewards": rewards, "dones": dones}
            if "next_obs" in demo:
                arrays["next_obs"], _ = _select_obs(demo["next_obs"], keys, path, fmt)
                parts["next"].append(arrays["next_obs"])
            else:
                all_next = False
            _check_rows(path, f"'{where}': ", steps, **arrays)
            parts["obs"].append(obs)
            parts["act"].append(actions)
            parts["rew"].append(rewards)
            lengths.append(steps)
            # The demo's last step ends it; robomimic's dones say whether the task was done.
            terminal_last.append(bool(dones[-1]))
    if not lengths:
        raise DatasetError(
            f"The robomimic file {path} holds no transitions (no non-empty data/demo_* groups). "
            "Point at a file with recorded demonstrations."
        )
    terminals, truncations, episode_ends = _episode_flags(lengths, terminal_last)
    metadata: dict[str, Any] = {"source": fmt, "source_path": str(path), "obs_keys": keys}
    if env_args is not None:
        if isinstance(env_args.get("env_name"), str):
            metadata["env_name"] = env_args["env_name"]
        metadata["env_args"] = env_args
    return _build(
        path,
        fmt,
        observations=np.concatenate(parts["obs"]),
        actions=np.concatenate(parts["act"]),
        rewards=np.concatenate(parts["rew"]),
        terminals=terminals,
        truncations=truncations,
        episode_ends=episode_ends,
        next_observations=np.concatenate(parts["next"]) if all_next else None,
        metadata=metadata,
    )


def _robomimic_env_args(value: Any) -> dict[str, Any] | None:
    """robomimic's ``data.attrs["env_args"]`` JSON string as a dict (None if absent or bad)."""
    text = _attr_str(value)
    if text is None:
        return None
    try:
        env_args = json.loads(text)
    except json.JSONDecodeError:
        return None
    return env_args if isinstance(env_args, dict) else None
