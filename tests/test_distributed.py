"""Data-parallel training with torchrun and gloo on 2 CPU processes (flowpolicy.distributed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
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
    if isinstance(state, dict | list | tuple):
        items = state.items() if isinstance(state, dict) else enumerate(state)
        out = {}
        for key, value in items:
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


def test_an_off_policy_run_keeps_one_replay_per_rank_and_the_same_weights(tmp_path) -> None:
    """RLDT end to end: each rank fills its own replay, every update leaves identical weights."""
    run_dir = tmp_path / "rldt"
    flags = ["--num-envs", "4", "--num-steps", "8", "--flow-steps", "4", "--chunk", "1"]
    flags += ["--chunk-exec", "1", "--actor-hidden", "16", "--critic-hidden", "16"]
    flags += ["--num-particles", "4", "--rounds", "2", "--critic-steps", "4", "--actor-steps", "2"]
    flags += ["--min-extrp-step", "2", "--critic-warmup-iterations", "1"]
    run = ["--env", "toy/nav", "--total-steps", "96", "--eval-every", "64", "--eval-episodes"]
    run += ["2", "--checkpoint-every", "1", "--run-dir", str(run_dir), "--quiet", "True"]
    result = torchrun("train", "rldt", *flags, *run, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    checkpoint = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    rank0 = tensors(checkpoint["algo"])
    rank1 = tensors(checkpoint["other_ranks"][0]["algo"])
    replay = [name for name in rank0 if "replay" in name]
    assert replay and any(not torch.equal(rank0[name], rank1[name]) for name in replay)
    shared = [name for name in rank0 if "replay" not in name]
    assert any("optimizer" in name for name in shared)
    for name in shared:
        assert torch.equal(rank0[name], rank1[name]), name
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted({row["step"] for row in rows if "charts/iteration" in row}) == [32, 64, 96]


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


def count_in(path: Path, text: str) -> int:
    return path.read_text().count(text) if path.exists() else 0


def kill_rank_1_when(
    args: list[str], cwd: Path, ready: Callable[[], bool]
) -> tuple[subprocess.Popen, str]:
    """Start ``flowpolicy *args`` on 2 processes, SIGKILL rank 1 once ``ready()``, and wait for
    the job to end; (the job, its output)."""
    import signal
    import time

    env = os.environ | {"OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node=2", "-m", "flowpolicy", *args]
    job = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True,
                           stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 300  # a loaded CI machine starts 2 ranks slowly
    while time.monotonic() < deadline and not ready() and job.poll() is None:
        time.sleep(0.02)
    rank_1 = rank_pid(job.pid, 1) if job.poll() is None else None
    if rank_1 is None:
        job.kill()
        output, _ = job.communicate(timeout=60)
        pytest.fail(f"the job ended (or never got ready) before rank 1 could be killed:\n{output}")
    os.kill(rank_1, signal.SIGKILL)
    output, _ = job.communicate(timeout=120)  # the job ends: no rank waits forever
    return job, output


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_a_killed_rank_ends_the_job_and_the_run_resumes_to_the_same_numbers(tmp_path) -> None:
    whole = tmp_path / "whole"
    assert torchrun(*ppo_args(whole), cwd=tmp_path).returncode == 0

    killed = tmp_path / "killed"
    metrics = killed / "metrics.jsonl"
    # kill rank 1 once a few iterations are logged
    job, output = kill_rank_1_when(
        ppo_args(killed), tmp_path, lambda: count_in(metrics, "charts/iteration") >= 6
    )
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


# ----------------------------------------------------------------------------- pretraining


def pretrain_args(dataset: str, run_dir: Path, *extra: str) -> list[str]:
    return [
        "pretrain", "--dataset", dataset, "--policy", "flow", "--chunk", "1",
        "--hidden", "16", "16", "16", "--batch-size", "32", "--gradient-steps", "3000",
        "--log-every", "50", "--eval-every", "0", "--eval-episodes", "2",
        "--checkpoint-every", "100", "--ema-start", "10", "--seed", "3",
        "--run-dir", str(run_dir), "--tensorboard", "False", "--quiet", "True", *extra,
    ]  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc (Linux)")
def test_pretraining_shards_the_data_and_resumes_to_the_same_numbers(tmp_path) -> None:
    """BC on 2 processes: rank 0 alone writes, every rank's RNG is checkpointed, a killed rank
    ends the job, and a 2-process resume ends with the uninterrupted run's weights."""
    from tests.test_pretrain import bandit_dataset, metric_rows

    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    whole = tmp_path / "whole"
    result = torchrun(*pretrain_args(dataset, whole), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("done:") == 1
    assert json.loads((whole / "config.json").read_text())["world_size"] == 2
    checkpoint = torch.load(whole / "checkpoint.pt", weights_only=False)
    assert len(checkpoint["other_ranks"]) == 1 and "rng" in checkpoint["other_ranks"][0]
    assert [row["step"] for row in metric_rows(whole) if "loss/bc" in row][-1] == 3000

    killed = tmp_path / "killed"
    metrics = killed / "metrics.jsonl"
    # kill rank 1 once the first checkpoint (step 100) is on disk and the run went past it
    job, output = kill_rank_1_when(
        pretrain_args(dataset, killed),
        tmp_path,
        lambda: (killed / "checkpoint.pt").exists() and count_in(metrics, '"loss/bc":') >= 3,
    )
    assert job.returncode != 0 and not (killed / "done.json").exists(), output
    assert 0 < torch.load(killed / "checkpoint.pt", weights_only=False)["loop"]["step"] < 3000
    assert flowpolicy("pretrain", "--resume", str(killed), cwd=tmp_path).returncode == 2
    resumed = torchrun("pretrain", "--resume", str(killed), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    final = [torch.load(run / "checkpoint.pt", weights_only=False) for run in (whole, killed)]
    for name, tensor in tensors(final[0]["bc"]).items():
        torch.testing.assert_close(tensor, tensors(final[1]["bc"])[name], msg=name)
    assert metric_rows(whole) == metric_rows(killed)


def test_a_batch_the_ranks_cannot_share_exits_2_from_rank_0_only(tmp_path) -> None:
    from tests.test_pretrain import bandit_dataset

    dataset = bandit_dataset(tmp_path / "bandit.hdf5")
    result = torchrun(*pretrain_args(dataset, tmp_path / "run", "--batch-size", "33"), cwd=tmp_path)
    assert result.returncode != 0
    output = " ".join((result.stdout + result.stderr).split())
    assert output.count("--batch-size 33 does not split over 2 processes") == 1
    assert "flowpolicy/pretrain.py" not in output  # no traceback from a rank
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- devices


def test_more_ranks_than_gpus_are_refused_unless_they_may_share(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    second = distributed.Ranks(rank=1, world_size=2, local_rank=1, local_world_size=2)
    monkeypatch.delenv(distributed.SHARE_GPUS, raising=False)
    with pytest.raises(distributed.UserError, match="FLOWPOLICY_SHARE_GPUS=1"):
        distributed.rank_device(torch.device("cuda"), second)
    monkeypatch.setenv(distributed.SHARE_GPUS, "1")
    assert distributed.rank_device(torch.device("cuda"), second) == torch.device("cuda", 0)
    assert distributed.rank_device(torch.device("cpu"), second) == torch.device("cpu")
