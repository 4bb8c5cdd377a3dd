"""The RLDT authors' port of QAM (their baseline; ``--preset qam-rldt``): the switches it adds
to :class:`~flowpolicy.algos.qam.QAMConfig` (:class:`RLDTPortConfig`, which QAMConfig
inherits), its preset, and the states its actor steps take.

The port keeps QAM's actor loss (adjoint matching) and changes what is around it:

- base ``ema``: ``f_beta`` is a per-iteration EMA (``base_ema_decay``) of the fine-tuned field,
  starting from the pretrained policy, instead of a flow cloned from the replay, and the actor
  gets a velocity MSE to it (``velocity_coef``; RLDT's constraint loss);
- RLDT's critic and data regime: the ``rounds`` schedule of
  :meth:`~flowpolicy.algos.offpolicy.OffPolicyAlgorithm.rounds` on trajectory segments with
  TD(lambda) targets, members on disjoint trajectories (``critic_split``), the discount per
  executed chunk (``discount_per_chunk``) and rewards divided by an EMA of |r|.

With every switch at its default QAM is the paper's; :class:`~flowpolicy.algos.qam.QAM` reads
each switch in one place (the schedule in ``update``, the EMA base after it, the velocity MSE
in ``adjoint_loss``; the critic's in the shared off-policy head).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from flowpolicy.algos.config_blocks import CriticSplit, Schedule
from flowpolicy.algos.rldt import RLDTConfig
from flowpolicy.algos.validation import require_non_negative, require_range
from flowpolicy.buffers import TrajectoryBatch

if TYPE_CHECKING:
    from flowpolicy.algos.qam import QAMConfig


@dataclass(frozen=True)
class RLDTPortConfig:
    """The port's switches, off by default (fields of :class:`~flowpolicy.algos.qam.QAMConfig`,
    whose ``batch_size`` and ``critic_members`` the check reads)."""

    discount_per_chunk: bool = False
    """gamma is the discount per executed chunk (RLDT's convention) instead of per env step."""
    critic_split: CriticSplit = "all"
    """every member on every row (authors) or members on disjoint trajectories (RLDT)."""
    schedule: Schedule = "utd"
    """utd: critic + actor steps on random replay transitions (authors); rounds: RLDT's rounds."""
    rounds: int = 8
    """rounds: rounds of {critic steps, actor steps} per iteration."""
    critic_steps: int = 256
    """rounds: full-batch critic steps per iteration, split evenly over the rounds."""
    actor_steps: int = 32
    """rounds: actor steps per iteration, split evenly over the rounds."""
    min_fresh_fraction: float = 1 / 3
    """rounds: least share of the newest iteration's trajectories in every round."""
    base_ema_decay: float = 0.995
    """ema: base <- decay * base + (1 - decay) * actor after every iteration (RLDT port)."""
    velocity_coef: float = 0.0
    """weight of a velocity MSE of the actor to the base at interpolants of its own actions (RLDT port: 0.2)."""

    def check_rldt_port(self) -> None:
        """A decay below 1, a non-negative MSE weight, and with disjoint critic members on
        random transitions (utd) at least one row per member."""
        require_range(self, "base_ema_decay", 0.0, 1.0, open_high=True)
        require_non_negative(self, "velocity_coef")
        disjoint_rows = self.critic_split == "disjoint" and self.schedule == "utd"
        if disjoint_rows and self.batch_size < self.critic_members:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be >= critic_members ({self.critic_members}) "
                "with critic_split disjoint: each member trains on its own trajectories."
            )


def qam_rldt(**overrides: object) -> QAMConfig:
    """The RLDT authors' port of QAM (their baseline): base = per-iteration EMA (0.995) of the
    fine-tuned actor starting from the pretrained one, no BC loss, velocity MSE to the base
    (0.2), beta 0.3, and RLDT's critic and data regime taken from :class:`RLDTConfig`'s
    defaults (2 members, min target, TD(lambda) on rounds of trajectory segments, reward EMA,
    K = 8, chunk 4). Keyword overrides win.

    Source: RPFey/rldt at commit add6029182ae2598e4eb62037e8b4b8ec8a38ac9,
    cfg/gym/finetune/hopper-v2/ft_qam_flowmatching_mlp.yaml and
    agent/finetune/train_fm_qam_agent.py (policy_ema_tau 0.995, kl_coef 0.2 on the velocity
    difference, inv_temp 0.3)."""
    from flowpolicy.algos.qam import QAMConfig  # qam.py imports this file for its switches

    rldt = RLDTConfig()
    preset = dict(
        base="ema",
        base_ema_decay=0.995,
        velocity_coef=0.2,
        beta=0.3,
        schedule="rounds",
        batch_size=1024,
        critic_split="disjoint",
        discount_per_chunk=True,
        critic_max_grad_norm=None,
        critic_layer_norm=rldt.critic_layer_norm,
        critic_weight_decay=rldt.critic_weight_decay,
    )
    shared = (
        "num_envs",
        "num_steps",
        "gamma",
        "flow_steps",
        "chunk",
        "chunk_exec",
        "critic_members",
        "critic_hidden",
        "critic_activation",
        "critic_init_std",
        "critic_lr",
        "target_decay",
        "target_reduction",
        "bootstrap_actions",
        "td_lambda",
        "reward_ema_rate",
        "replay_iterations",
        "min_fresh_fraction",
        "critic_warmup_iterations",
        "rounds",
        "critic_steps",
        "actor_steps",
    )
    preset |= {name: getattr(rldt, name) for name in shared}
    return QAMConfig(**(preset | overrides))


def random_states(data: TrajectoryBatch, count: int) -> tuple[Tensor, Tensor]:
    """``count`` random (with replacement) raw observations (B, Do) and stored chunks (B, A)
    of a round's segments, for one actor step of the rounds schedule."""
    obs, actions = data.obs.flatten(0, 1), data.actions.flatten(0, 1)
    index = torch.randint(obs.shape[0], (count,), device=obs.device)
    return obs[index], actions[index]
