"""Data-parallel training with torchrun and gloo on 2 CPU processes (flowpolicy.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from flowpolicy import distributed
from flowpolicy.algos.onpolicy import normalize_advantages
from flowpolicy.policies import RunningNorm

PER_ENV_STATE = ("running_return", "previous_done")
"""Algorithm state that belongs to a rank's own envs (the rest must agree on every rank)."""


def torchrun(*args: str, nproc: int = 2, cwd: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += [f"--nproc-per-node={nproc}", "-m", "flowpolicy", *args]
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, stdin=None
    )


def flowpolicy(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "flowpolicy", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)


def tensors(state: object, prefix: str = "") -> dict[str, torch.Tensor]:
    if isinstance(state, dict):
        out = {}
        for key, value in state.items():
            out |= tensors(value, f"{prefix}/{key}")
        return out
    return {prefix: state} if torch.is_tensor(state) else {}


@pytest.fixture(scope="module", params=["ppo", "fpo"])
def two_process_run(request, tmp_path_factory) -> tuple[str, Path]:
    algo = request.param
    run_dir = tmp_path_factory.mktemp("ddp") / algo
    result = torchrun(
        "train", algo, "--env", "toy/bandit", "--num-envs", "8", "--num-steps", "16",
        "--num-minibatches", "4", "--total-steps", "512", "--eval-every", "256",
        "--eval-episodes", "2", "--checkpoint-every", "1", "--run-dir", str(run_dir),
        "--quiet", "True", cwd=run_dir.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return algo, run_dir


def test_every_rank_ends_with_the_same_weights_and_statistics(two_process_run) -> None:
    _, run_dir = two_process_run
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["other_ranks"]) == 1
    rank0 = tensors(checkpoint["algo"])
    rank1 = tensors(checkpoint["other_ranks"][0]["algo"])
    assert rank0.keys() == rank1.keys()
    shared = [name for name in rank0 if not name.endswith(PER_ENV_STATE)]
    assert any("optimizer" in name for name in shared) and any("norm" in name for name in shared)
    for name in shared:
        assert torch.equal(rank0[name], rank1[name]), name
    # The ranks stepped different envs: their own RNG and episode state differ.
    loops = checkpoint["loop"], checkpoint["other_ranks"][0]["loop"]
    assert not torch.equal(loops[0]["rng"]["torch"], loops[1]["rng"]["torch"])


def test_rank_0_alone_writes_the_run_and_steps_count_every_rank(two_process_run) -> None:
    _, run_dir = two_process_run
    config = json.loads((run_dir / "config.json").read_text())
    assert config["world_size"] == 2 and config["algo"]["num_envs"] == 8
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = sorted({row["step"] for row in rows if "charts/iteration" in row})
    assert steps == [128, 256, 384, 512]  # 8 envs in all x 16 steps per iteration
    assert sum("eval/zero/return_mean" in row for row in rows) == 3  # steps 0, 256, 512
    assert json.loads((run_dir / "done.json").read_text())["step"] == 512


def test_a_resume_with_another_number_of_processes_exits_2(two_process_run, tmp_path) -> None:
    _, run_dir = two_process_run
    result = flowpolicy("train", "--resume", str(run_dir), cwd=tmp_path)
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "trained with 2 process(es) and cannot resume with 1" in message
    assert "Traceback" not in result.stderr


def test_an_env_count_the_ranks_cannot_share_exits_2_from_rank_0_only(tmp_path) -> None:
    result = torchrun(
        "train", "ppo", "--env", "toy/bandit", "--num-envs", "3", "--total-steps", "64",
        "--run-dir", str(tmp_path / "run"), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert output.count("does not split over 2 processes") == 1
    assert "flowpolicy/train.py" not in output  # no traceback from a rank
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- collectives


def _collectives(rank: int, init_file: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)
    data = torch.randn(64, 3) * torch.tensor([1.0, 5.0, 0.1]) + 2.0  # the same on both ranks
    half = data[rank * 32 : (rank + 1) * 32]
    norm = RunningNorm(3)
    norm.update(half)
    advantages = normalize_advantages(half[:, 0])
    param = torch.nn.Parameter(torch.zeros(3))
    param.grad = half.mean(0).clone()
    finite = distributed.average_gradients([param], loss_is_finite=rank == 0)
    torch.save(
        {"mean": norm.mean, "var": norm.var, "adv": advantages, "grad": param.grad, "ok": finite},
        f"{out}/rank{rank}.pt",
    )
    distributed.stop()


def test_collectives_give_the_one_process_numbers(tmp_path) -> None:
    mp.spawn(_collectives, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2)
    torch.manual_seed(0)
    data = torch.randn(64, 3) * torch.tensor([1.0, 5.0, 0.1]) + 2.0
    whole = RunningNorm(3)
    whole.update(data)
    expected_adv = normalize_advantages(data[:, 0])
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got["mean"], whole.mean)
        torch.testing.assert_close(got["var"], whole.var)
        torch.testing.assert_close(got["adv"], expected_adv[rank * 32 : (rank + 1) * 32])
        torch.testing.assert_close(got["grad"], data.mean(0))
        assert got["ok"] is False  # rank 1's loss was not finite: no rank may step


# ----------------------------------------------------------------------------- faults


def ppo_args(run_dir: Path) -> list[str]:
    return [
        "train", "ppo", "--env", "toy/bandit", "--num-envs", "8", "--num-steps", "16",
        "--num-minibatches", "4", "--total-steps", "8192", "--eval-every", "4096",
        "--eval-episodes", "2", "--checkpoint-every", "2", "--run-dir", str(run_dir),
        "--quiet", "True",
    ]  # fmt: skip


def rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of torchrun's worker with RANK=rank (read from /proc), None while not started."""
    for task in Path(f"/proc/{launcher}/task").iterdir():
        for child in (task / "children").read_text().split():
            environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            if f"RANK={rank}".encode() in environ:
                return int(child)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_rank_ends_the_job_and_the_run_resumes_to_the_same_numbers(tmp_path) -> None:
    import signal
    import time

    whole = tmp_path / "whole"
    assert torchrun(*ppo_args(whole), cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "-m", "flowpolicy", *ppo_args(killed)]
    job = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True,
                           stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 120
    metrics = killed / "metrics.jsonl"
    while time.monotonic() < deadline:  # kill rank 1 once a few iterations are logged
        if metrics.exists() and metrics.read_text().count("charts/iteration") >= 6:
            break
        time.sleep(0.02)
    os.kill(rank_pid(job.pid, 1), signal.SIGKILL)
    output, _ = job.communicate(timeout=120)  # the job ends: no rank waits forever
    assert job.returncode != 0, output
    assert "rank      : 1" in output and "Signal 9" in output.replace("signal 9", "Signal 9")
    assert not (killed / "done.json").exists()  # stopped mid-run, the checkpoint intact
    checkpoint = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert 0 < checkpoint["loop"]["global_step"] < 8192

    resumed = torchrun("train", "--resume", str(killed), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = [torch.load(run / "checkpoint.pt", weights_only=False) for run in (whole, killed)]
    ranks = [[run, *run["other_ranks"]] for run in final]
    for a, b in zip(*ranks, strict=True):
        for name, tensor in tensors(a["algo"]).items():
            torch.testing.assert_close(tensor, tensors(b["algo"])[name], msg=name)
    done = [json.loads((run / "done.json").read_text()) for run in (whole, killed)]
    assert done[0] | {"wall_time": 0} == done[1] | {"wall_time": 0}
