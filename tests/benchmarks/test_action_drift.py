"""benchmarks/action_drift.py: the raw-action shares it counts, and its table for a real
(tiny) fine-tuning run made from a policy file."""

from __future__ import annotations

import torch
from action_drift import Args, main, raw_action_stats

from flowpolicy.algos.fpo import FPOConfig
from flowpolicy.train import train
from tests.test_finetune import pretrained_flow_policy
from tests.test_train import SMALL_FPO, small_config


class FixedRawActions(torch.nn.Module):
    """Always samples the raw chunk (0.5, -3.0) and executes it clipped, one action per step."""

    chunk_exec = 1

    def sample(self, obs: torch.Tensor, mode: str) -> torch.Tensor:
        return torch.tensor([[0.5, -3.0]]).expand(obs.shape[0], 2)

    def env_action(self, raw: torch.Tensor) -> torch.Tensor:
        return raw.clamp(-1.0, 1.0)


def test_raw_action_stats_count_every_coordinate() -> None:
    stats = raw_action_stats(FixedRawActions(), "toy/nav", decisions=7, seed=0)
    assert stats.mean_abs == 1.75
    assert stats.max_abs == 3.0
    assert stats.past_bound == 0.5  # -3.0 of each (0.5, -3.0) is past 1
    assert stats.far_past_bound == 0.5  # and past 2
    assert 0.5 < stats.p99_abs <= 3.0


def test_table_row_for_a_fine_tuning_run(tmp_path, capsys) -> None:
    policy_file = pretrained_flow_policy(tmp_path)
    config = small_config(
        tmp_path, FPOConfig(**SMALL_FPO), init=str(policy_file), steps=256, tensorboard=True
    )
    run_dir = train(config).run_dir

    table = main(Args(runs=[run_dir], decisions=5, out=tmp_path / "drift.md"))

    header, separator, row = table.splitlines()
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[0].endswith("/run") and cells[1:3] == ["3", "yes"]  # run, seed, finished
    assert cells[7].count("→") == 1  # FPO logs policy/cfm_loss to TensorBoard
    written = (tmp_path / "drift.md").read_text()
    assert written.startswith("# Raw actions past the squash")
    assert "Made by `python benchmarks/action_drift.py " in written
    assert written.endswith("\n\n" + table + "\n")
    assert table in capsys.readouterr().out
