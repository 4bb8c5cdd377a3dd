"""Every preset's values are pinned, names its source, and reports what options replace.

``presets.json`` beside this file holds every field of every preset. A change to a preset (or to
a config default a preset inherits) fails here until the file is updated on purpose:

    .venv/bin/python -m tests.algos.test_presets   # rewrites presets.json; review the diff
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from flowpolicy.algos.presets import ALGOS, PRESETS, find_preset, overridden_values
from flowpolicy.cli import main
from flowpolicy.errors import UserError

SNAPSHOT = Path(__file__).with_name("presets.json")
EVERY_PRESET = [preset for algo in ALGOS for preset in PRESETS[algo]]


def resolved_values() -> dict[str, dict[str, dict]]:
    """{algo: {preset: every field of its config}} as JSON would hold it."""
    values = {
        algo: {p.name: dataclasses.asdict(p.config()) for p in PRESETS[algo]} for algo in ALGOS
    }
    return json.loads(json.dumps(values))


def test_every_preset_matches_its_pinned_values() -> None:
    pinned = json.loads(SNAPSHOT.read_text())
    now = resolved_values()
    assert sorted(now) == sorted(pinned), "algorithms added or removed: update presets.json"
    for algo in now:
        assert sorted(now[algo]) == sorted(pinned[algo]), f"{algo}: presets added or removed"
        for name, fields in now[algo].items():
            changed = {
                k: (pinned[algo][name].get(k), v)
                for k, v in fields.items()
                if pinned[algo][name].get(k, "<missing>") != v
            }
            assert not changed, f"preset {name} changed (pinned, now): {changed}"


@pytest.mark.parametrize("preset", EVERY_PRESET, ids=lambda p: p.name)
def test_every_preset_names_its_source(preset) -> None:
    source = preset.source
    assert "Source:" in source, f"{preset.name}: its docstring must say 'Source: ...'"
    where = source.split("Source:", 1)[1]
    # An outside source is a GitHub repository at a 40-hex commit, with a file; ours says so.
    repo, commit = r"[\w-]+/[\w.-]+", r"commit [0-9a-f]{40}"
    outside = re.match(rf"\s*{repo}\b", where) and re.search(commit, where)
    assert outside or where.strip().startswith("ours"), (preset.name, where)


def test_the_released_values_the_issue_names() -> None:
    """The values a reader checks against the authors' code, spelled out by hand."""
    fpp = find_preset("fpo", "fpo++").config()
    assert (fpp.actor_hidden, fpp.actor_activation, fpp.output_scale) == ((256,) * 3, "elu", 1.0)
    assert (fpp.critic_hidden, fpp.critic_activation) == ((768,) * 3, "elu")
    assert (fpp.ema_decay, fpp.ema_start_iterations) == (0.95, 500)
    assert (fpp.learning_rate, fpp.anneal_lr, fpp.max_grad_norm) == (1e-4, False, 1.0)
    finetune = find_preset("fpo", "fpo-finetune").config()
    assert (finetune.learning_rate, finetune.critic_learning_rate) == (1e-5, 1e-4)
    assert 0.01 <= finetune.clip_coef <= 0.02 and finetune.max_grad_norm == 5.0
    assert finetune.cfm_reduction == "chunk_sum" and finetune.critic_warmup_iterations == 1
    assert finetune.ratio_mode == "per_action" and finetune.trust_region == "ppo"
    paper_ppo, fpo = find_preset("ppo", "ppo-fpo-paper").config(), find_preset("fpo").config()
    assert (paper_ppo.learning_rate, paper_ppo.clip_coef) == (3e-4, 0.1)
    assert (paper_ppo.actor_hidden, paper_ppo.activation) == (fpo.actor_hidden, "silu")
    # the rest of what a Gaussian policy shares with FPO is FPO's
    for name in ("num_envs", "num_steps", "num_minibatches", "update_epochs", "gamma"):
        assert getattr(paper_ppo, name) == getattr(fpo, name), name
    for name in ("gae_lambda", "vf_coef", "max_grad_norm", "clip_vloss", "critic_hidden"):
        assert getattr(paper_ppo, name) == getattr(fpo, name), name
    assert (paper_ppo.critic_activation, paper_ppo.squash) == (fpo.critic_activation, fpo.squash)


def test_the_humanoid_presets_share_networks_and_data() -> None:
    """FPO++'s released humanoid settings and Gaussian PPO with the same networks and data."""
    fpp, ppo = (
        find_preset("fpo", "fpo++-humanoid").config(),
        find_preset("ppo", "ppo-humanoid").config(),
    )
    assert (fpp.num_envs, fpp.num_steps, fpp.num_minibatches) == (4096, 24, 4)
    assert (fpp.update_epochs, fpp.mc_samples, fpp.flow_steps) == (32, 32, 64)
    assert (fpp.trust_region, fpp.clip_coef, fpp.cfm_loss_clamp, fpp.logratio_clamp) == (
        "aspo", 0.05, 20.0, 10.0,
    )  # fmt: skip
    assert (fpp.actor_hidden, fpp.actor_activation, fpp.output_scale) == ((256,) * 3, "elu", 1.0)
    assert (ppo.actor_hidden, ppo.activation) == (fpp.actor_hidden, fpp.actor_activation)
    for name in ("num_envs", "num_steps", "num_minibatches", "gamma", "gae_lambda", "vf_coef"):
        assert getattr(ppo, name) == getattr(fpp, name), name
    for name in ("critic_hidden", "critic_activation", "max_grad_norm", "scale_rewards"):
        assert getattr(ppo, name) == getattr(fpp, name), name
    assert (ppo.learning_rate, ppo.desired_kl, ppo.clip_coef, ppo.ent_coef) == (
        1e-3,
        0.01,
        0.2,
        0.01,
    )
    assert ppo.update_epochs == 5 and not ppo.anneal_lr and not fpp.scale_rewards


def test_unknown_preset_lists_the_available_ones() -> None:
    with pytest.raises(UserError, match=r"Presets for fpo: fpo, fpo\+\+, fpo-finetune"):
        find_preset("fpo", "fpo+++")
    with pytest.raises(UserError, match="Unknown algorithm 'sac'"):
        find_preset("sac")


def test_overridden_values_name_the_preset_value() -> None:
    preset = find_preset("fpo", "fpo++")
    config = dataclasses.replace(preset.config(), learning_rate=1e-3, mc_samples=16)
    assert overridden_values(preset, config) == {
        "learning_rate": {"preset": 1e-4, "value": 1e-3}
    }  # mc_samples 16 is the preset's own value: nothing replaced


def test_cli_reports_and_records_replaced_values(tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    args = ["train", "fpo", "--preset", "fpo++", "--env", "toy/bandit", "--num-envs", "2"]
    args += ["--num-steps", "4", "--num-minibatches", "2", "--update-epochs", "1"]
    args += ["--total-steps", "8", "--eval-every", "0", "--eval-episodes", "1"]
    args += ["--learning-rate", "0.001", "--run-dir", str(run_dir), "--tensorboard", "False"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "--learning-rate 0.001 replaces preset fpo++'s 0.0001" in err
    config = json.loads((run_dir / "config.json").read_text())
    assert config["preset"] == "fpo++"
    assert config["preset_overrides"]["learning_rate"] == {"preset": 1e-4, "value": 1e-3}
    assert config["preset_overrides"]["num_envs"] == {"preset": 8, "value": 2}


def test_cli_help_shows_the_presets_source(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["train", "ppo", "--preset", "ppo-fpo-paper", "--help"])
    out = capsys.readouterr().out
    assert "akanazawa/fpo" in out and "418c2554f7cd22d52e14c07d951280929d73bf2f" in out


def test_cli_unknown_preset_exits_2_and_lists_them(capsys) -> None:
    assert main(["train", "ppo", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert "Presets for ppo: ppo, ppo-fpo-paper" in err and "Traceback" not in err


if __name__ == "__main__":
    SNAPSHOT.write_text(json.dumps(resolved_values(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {SNAPSHOT}")
