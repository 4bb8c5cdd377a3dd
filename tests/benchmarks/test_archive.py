"""The run archive (benchmarks/archive.py): a results page collected after its run directories
are gone still counts the runs, adding a seed keeps the others, archived runs are not launched
again, and a page from before the archive seeds it with what it kept."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import bench
import pytest
from archive import archive_path, load_archive
from bench import collect_and_write, plan
from protocols import Budget

from flowpolicy.checkpoint import record_stop
from flowpolicy.envs import BanditEnv
from flowpolicy.errors import UserError
from tests.benchmarks.test_bench import Fixed, fake_finetune_run, tiny_protocol


@pytest.fixture
def protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The tiny fine-tuning protocol with coverage, whose final policies cover two optima;
    ``protocol.loads`` counts the policies loaded to measure coverage."""
    optima = BanditEnv().optima.tolist()
    loads = []

    def load_two_optima(path: Path) -> Fixed:
        loads.append(path)
        return Fixed(optima[:2])

    monkeypatch.setattr(bench, "load_policy", load_two_optima)
    tiny = dataclasses.replace(tiny_protocol(tmp_path / "reference"), coverage=True)
    return SimpleNamespace(tiny=tiny, loads=loads)


def page(docs: Path) -> dict:
    return json.loads((docs / "tiny.json").read_text())


def collect_args(docs: Path, **options) -> SimpleNamespace:
    """plan_and_run's arguments: the tuned method on the bandit, seeds as given."""
    defaults = dict(
        envs=["toy/bandit"], methods=["tuned"], seeds=[0, 1], steps=(), eval_every=None,
        eval_episodes=None, docs_dir=docs, jobs=1, nice=0, collect_only=True,
        rerun_archived=False,
    )  # fmt: skip
    return SimpleNamespace(**(defaults | options))


def test_a_page_collected_after_the_runs_are_gone_is_the_same(tmp_path: Path, protocol) -> None:
    root, docs = tmp_path / "runs", tmp_path / "docs"
    runs = plan(protocol.tiny, root, envs=["toy/bandit"], methods=["tuned"], seeds=[0, 1])
    fake_finetune_run(runs[0].run_dir, 100.0, 80.0)
    fake_finetune_run(runs[1].run_dir, 300.0, 120.0)
    stopped = root / "toy_bandit" / "tuned" / "seed2"
    fake_finetune_run(stopped, 1.0, 1.0)
    (stopped / "done.json").unlink()
    record_stop(stopped, 96, 64, "loss is nan", "Training")
    bench.plan_and_run(protocol.tiny, root, collect_args(docs))
    before = page(docs)
    assert len(protocol.loads) == 2  # coverage measured once per finished run
    archived = json.loads(archive_path(docs, "tiny").read_text())
    assert [(r["seed"], "stopped" in r) for r in archived["runs"]] == [
        (0, False),
        (1, False),
        (2, True),
    ]
    assert archived["runs"][0]["curve"]["step"] == [0, 2000]
    assert archived["runs"][0]["coverage"]["covered"] == 2

    shutil.rmtree(root)  # a new machine: the run directories are gone
    (docs / "tiny_toy_bandit.png").unlink()
    bench.plan_and_run(protocol.tiny, root, collect_args(docs))
    after = page(docs)
    assert len(protocol.loads) == 2  # coverage from the archive, no policy to load
    for key in ("results", "coverage", "stopped", "missing", "budgets"):
        assert after[key] == before[key], key
    assert (docs / "tiny_toy_bandit.png").is_file()  # redrawn from the archived curves
    markdown = (docs / "tiny.md").read_text()
    assert "| tuned | 2 | 2,000 | 200.0 ± 100.0 | 100.0 ± 20.0 | 10.0 → 200.0 |" in markdown
    assert "without their evaluation curves" not in markdown

    # one more seed on disk joins the archived ones instead of replacing them
    fake_finetune_run(root / "toy_bandit" / "tuned" / "seed3", 500.0, 500.0)
    bench.plan_and_run(protocol.tiny, root, collect_args(docs, seeds=[3]))
    (summary,) = page(docs)["results"]["toy/bandit"]
    assert summary["seeds"] == [0, 1, 3] and summary["return_mean"]["zero"] == 300.0
    assert len(load_archive(docs, "tiny").runs) == 4

    # another budget is another experiment: the archived runs do not count for it
    bench.plan_and_run(protocol.tiny, root, collect_args(docs, seeds=[0], steps=["toy/bandit=32"]))
    assert page(docs)["missing"][0]["seed"] == 0


def test_archived_runs_are_not_launched_again_unless_asked(
    tmp_path: Path, protocol, fake_training, capsys
) -> None:
    root, docs = tmp_path / "runs", tmp_path / "docs"
    (tmp_path / "reference" / "toy/bandit" / "bc-flow").mkdir(parents=True)
    (tmp_path / "reference" / "toy/bandit" / "bc-flow" / "done.json").write_text("{}")
    fake_finetune_run(root / "toy_bandit" / "tuned" / "seed0", 100.0, 80.0)
    bench.plan_and_run(protocol.tiny, root, collect_args(docs, seeds=[0]))
    shutil.rmtree(root)

    bench.plan_and_run(protocol.tiny, root, collect_args(docs, collect_only=False))
    assert [c[c.index("--seed") + 1] for c in fake_training] == ["1"]
    assert "1 selected run(s) not on disk are archived in" in capsys.readouterr().out
    bench.plan_and_run(
        protocol.tiny, root, collect_args(docs, seeds=[0], collect_only=False, rerun_archived=True)
    )
    assert [c[c.index("--seed") + 1] for c in fake_training] == ["1", "0"]


def test_a_page_from_before_the_archive_seeds_it(tmp_path: Path, protocol) -> None:
    """The per-seed final and BC returns, coverage and stops of an older page are archived; the
    page's figures are kept and linked for the runs whose curves are lost."""
    root, docs = tmp_path / "runs", tmp_path / "docs"
    for seed, final in ((0, 100.0), (1, 300.0)):
        fake_finetune_run(root / "toy_bandit" / "tuned" / f"seed{seed}", final, final / 2)
    stopped = root / "toy_bandit" / "tuned" / "seed2"
    stopped.mkdir(parents=True)
    record_stop(stopped, 96, 64, "loss is inf", "Training")
    bench.plan_and_run(protocol.tiny, root, collect_args(docs))
    before = page(docs)
    # what an older collect left: the page and its figures, no archive, no run directories
    shutil.rmtree(docs / "archive")
    shutil.rmtree(root)

    bench.plan_and_run(protocol.tiny, root, collect_args(docs))
    after = page(docs)
    for key in ("results", "stopped", "missing"):
        assert after[key] == before[key], key
    (row,) = after["coverage"]["toy/bandit"]
    (old,) = before["coverage"]["toy/bandit"]
    assert row["covered_per_seed"] == old["covered_per_seed"] == [2, 2]
    assert row["quality_mean"] is None  # the bandit's per-seed mean reward was not kept
    date = before["provenance"]["date"]
    kept = docs / "archive" / f"tiny_toy_bandit_{date}.png"
    assert kept.read_bytes()[:4] == b"\x89PNG"
    assert (docs / "archive" / f"tiny_toy_bandit_wall_clock_{date}.png").is_file()

    archived = load_archive(docs, "tiny")
    assert archived.seeded_from.startswith("tiny.json of ")
    assert archived.launch_commands == before["provenance"]["launch_commands"]
    first = archived.find("toy/bandit", "tuned", 0, Budget(64, 32, 2))
    assert first["curve_complete"] is False
    assert first["curve"]["step"] == [0, 2000] and first["curve"]["zero"] == [10.0, 100.0]
    assert archived.find("toy/bandit", "tuned", 2, Budget(64, 32, 2))["stopped"]["step"] == 96

    markdown = (docs / "tiny.md").read_text()
    assert "without their evaluation curves: tuned seed 0, tuned seed 1." in markdown
    assert f"![toy/bandit learning curves before the archive](archive/{kept.name})" in markdown
    assert f"- Runs made on: {before['provenance']['machine']}" in markdown
    assert "](tiny_toy_bandit.png)" not in markdown  # no curve to draw
    assert "| tuned | 2 | 2, 2 | 2.00 ± 0.00 | n/a |" in markdown

    # a finished run on disk replaces the record that lacks its curve
    fake_finetune_run(root / "toy_bandit" / "tuned" / "seed1", 300.0, 150.0)
    bench.plan_and_run(protocol.tiny, root, collect_args(docs))
    markdown = (docs / "tiny.md").read_text()
    assert "without their evaluation curves: tuned seed 0." in markdown
    assert "| tuned | 2 | 2, 2 | 2.00 ± 0.00 | 1.000 (1 of 2 seeds) |" in markdown
    assert load_archive(docs, "tiny").find("toy/bandit", "tuned", 1, Budget(64, 32, 2))[
        "curve_complete"
    ]


def test_a_damaged_archive_is_an_error_that_says_how_to_restore_it(tmp_path: Path) -> None:
    path = archive_path(tmp_path, "tiny")
    path.parent.mkdir()
    path.write_text("{torn")
    with pytest.raises(UserError, match="git checkout -- "):
        load_archive(tmp_path, "tiny")
    runs = plan(tiny_protocol(tmp_path), tmp_path / "runs", envs=["toy/bandit"], seeds=[0])
    with pytest.raises(UserError, match="not a readable run archive"):
        collect_and_write(tiny_protocol(tmp_path), runs, tmp_path, "pytest")
