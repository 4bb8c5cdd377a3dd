"""How an algorithm plugs into the runner: what the runner calls (:class:`Algorithm`), what it
reads of a config (:class:`AlgorithmConfig`), and the one registration line each algorithm file
ends with (:class:`AlgorithmSpec`), from which ``flowpolicy train ALGO`` and ``--preset`` are
built (``flowpolicy.algos.registry``).

The runner owns the envs, the device, the loop, evaluation, checkpoints and logging; an
algorithm only acts and learns:

    algo = spec.algorithm(obs_dim, action_low, action_high, config, policy=None)
    action, record = algo.act(obs)            # obs (N, Do) -> env actions (N, Ta_exec * Da)
    metrics = algo.update(batch)              # a RolloutBatch of (T, N, ...) tensors
    algo.eval_policy.act(obs, mode)           # what evaluation runs and policy.pt holds
    algo.state_dict() / algo.load_state_dict(state)   # everything a resume needs

It is built inside ``torch.device(run device)``, so the networks and buffers it makes land on
the run's device; tensors it makes later take ``device=`` or ``*_like`` of their inputs.

Offline-to-online methods (FQL) add two optional hooks. When the config has a non-empty
``dataset`` field, the runner reads that file, checks it against the env's sizes and calls
``algo.load_offline_data(dataset)`` (a :class:`flowpolicy.data.Dataset`; again on resume,
before ``load_state_dict``); then, while ``algo.offline_steps_left > 0``, it calls
``metrics = algo.offline_update()`` before the first rollout, logging and checkpointing after
each call (and evaluating after the last).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from torch import Tensor, nn

from flowpolicy.buffers import RolloutBatch


@runtime_checkable
class AlgorithmConfig(Protocol):
    """The fields of an algorithm's config that the runner reads (the config is a frozen
    dataclass whose field docstrings become ``--help``). Where the config also has ``chunk``,
    ``flow_steps``, ``denoising_steps`` or ``policy_class``, a fine-tuning run sets them from
    the ``--init`` policy."""

    num_envs: int
    """N, envs stepped together."""
    num_steps: int
    """T, policy steps per env per iteration (a rollout is N x T policy steps)."""
    chunk_exec: int
    """Ta_exec <= Ta, actions executed per policy step (env steps per step = N x Ta_exec)."""


@runtime_checkable
class Algorithm(Protocol):
    """What the runner calls. ``act`` and ``update`` are the whole of the learning."""

    config: Any

    def act(self, obs: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Raw observations (N, Do) -> env actions (N, Ta_exec * Da) and the record the
        update will need, each tensor (N, ...) (the runner stores it as (T, N, ...))."""
        ...

    def update(self, batch: RolloutBatch) -> dict[str, float]:
        """Learn from one iteration's rollout; metrics named ``loss/``, ``policy/``, ..."""
        ...

    @property
    def eval_policy(self) -> nn.Module:
        """The policy evaluation runs (EMA weights where the algorithm keeps them), with
        ``act(obs, mode)`` for mode "zero" or "random"."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class AlgorithmFactory(Protocol):
    """The algorithm class: built for the envs' spaces, from a pretrained policy or not."""

    def __call__(
        self,
        obs_dim: int,
        action_low: Tensor,
        action_high: Tensor,
        config: Any,
        policy: nn.Module | None = None,
    ) -> Algorithm: ...


@dataclass(frozen=True)
class Preset:
    """A named starting config of one algorithm: ``flowpolicy train ALGO --preset NAME``.

    ``make`` is a config class or a function returning a config; its docstring says where the
    values come from ("Source: owner/repo, file, commit ..." or "Source: ours ..."), and
    ``--help`` shows it.
    """

    name: str
    make: Callable[[], Any]

    @property
    def source(self) -> str:
        """Where the values come from: the docstring of :attr:`make`."""
        return inspect.getdoc(self.make) or ""

    def config(self) -> Any:
        return self.make()


@dataclass(frozen=True)
class AlgorithmSpec:
    """One algorithm's registration: the last line of its file, listed once in
    ``flowpolicy.algos.registry``."""

    name: str
    """``flowpolicy train NAME``; also ``algo_name`` in a run's config.json."""
    config: type
    """its config dataclass (an :class:`AlgorithmConfig`)."""
    algorithm: AlgorithmFactory
    """its class (an :class:`Algorithm`)."""
    presets: tuple[Preset, ...]
    """its presets, the default (what ``flowpolicy train NAME`` uses) first."""
    fine_tunes: tuple[type[nn.Module], ...]
    """the policy classes ``--init`` may hold for it (the first is what it trains from scratch)."""
    requires_init: bool = False
    """it only fine-tunes: a run without ``--init`` stops with a message (DSRL steers a frozen
    pretrained policy and has nothing to train from scratch)."""
