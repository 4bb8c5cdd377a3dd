"""The on-policy training loop: rollouts -> algo.update -> metrics -> logger, with evaluation,
atomic checkpoints and exact resume in one place.

Data flows one way: env -> algo.act -> buffer -> algo.update(batch) -> metrics -> logger. The
loop never looks inside an algorithm's record; algorithms never touch envs, files or loggers.

A run directory holds ``config.json`` (resolved), ``metrics.jsonl``, ``tb/`` (TensorBoard),
``checkpoint.pt`` and, once finished, ``done.json``: enough to resume or evaluate the run. The
run's config lives in :mod:`flowpolicy.train_config`, what it builds before the loop in
:mod:`flowpolicy.run_setup`; both are importable from here as before.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import torch
from torch import Tensor

from flowpolicy import distributed
from flowpolicy.buffers import RolloutBuffer
from flowpolicy.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    record_stop,
    refuse_resume_if_stopped,
    save_checkpoint,
    save_json,
)
from flowpolicy.device import (
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
)
from flowpolicy.envs.tensor_env import make_tensor_env
from flowpolicy.errors import NonFiniteLossError, UserError
from flowpolicy.evaluation import EVAL_SEED_OFFSET, evaluate_modes
from flowpolicy.logging import Logger, SilentLogger, start_wandb
from flowpolicy.policy_io import POLICY_NAME, save_policy
from flowpolicy.run_setup import (
    INIT_POLICY_NAME,
    build_algorithm,
    load_algorithm,
    load_any_policy,
    load_init_policy,
    load_offline_dataset,
    load_policy,
    require_wandb,
    with_policy_settings,
)
from flowpolicy.train_config import (
    TrainConfig,
    TrainResult,
    config_to_dict,
    default_run_dir,
    read_run_config,
)

__all__ = [  # the training API, including what lives in train_config and run_setup
    "INIT_POLICY_NAME",
    "TrainConfig",
    "TrainResult",
    "build_algorithm",
    "config_to_dict",
    "default_run_dir",
    "load_algorithm",
    "load_any_policy",
    "load_policy",
    "read_run_config",
    "resume",
    "train",
]


class EpisodeStats:
    """Raw (unscaled) returns and lengths of the episodes that end during rollouts, kept as
    tensors on the env's device: the loop reads them once per iteration, not once per step.

    returns, lengths: (N,) of the running episodes; the finished ones are summed.
    """

    def __init__(self, num_envs: int, device: torch.device) -> None:
        self.returns = torch.zeros(num_envs, dtype=torch.float64, device=device)
        self.lengths = torch.zeros(num_envs, dtype=torch.int64, device=device)
        self._zero_sums()

    def _zero_sums(self) -> None:
        self.finished = torch.zeros((), dtype=torch.int64, device=self.returns.device)
        self.return_sum = torch.zeros((), dtype=torch.float64, device=self.returns.device)
        self.length_sum = torch.zeros((), dtype=torch.int64, device=self.returns.device)

    def add(self, rewards: Tensor, dones: Tensor, steps: int) -> None:
        """rewards (N,) and dones (N,) bool of one step that executed ``steps`` actions."""
        self.returns += rewards
        self.lengths += steps
        self.finished += dones.sum()
        self.return_sum += (self.returns * dones).sum()
        self.length_sum += (self.lengths * dones).sum()
        self.returns.masked_fill_(dones, 0.0)
        self.lengths.masked_fill_(dones, 0)

    def pop_metrics(self) -> dict[str, float]:
        """Mean over episodes finished since the last call (empty if none finished)."""
        # Every rank's episodes together in a torchrun job (one small all-reduce).
        sums = torch.stack([self.finished.double(), self.return_sum, self.length_sum.double()])
        finished, return_sum, length_sum = distributed.all_sum(sums).tolist()
        count = int(finished)
        metrics = {}
        if count:
            metrics = {
                "charts/episode_return": return_sum / count,
                "charts/episode_length": length_sum / count,
                "charts/episodes": float(count),
            }
        self._zero_sums()
        return metrics


# ----------------------------------------------------------------------------- the loop


def train(
    config: TrainConfig,
    env_factory: Callable[[], gym.Env] | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train one run; returns its directory and final metrics.

    Args:
        config: the run (``config.env`` is ignored when ``env_factory`` is given).
        env_factory: optional zero-argument callable returning a Gymnasium env.
        resume: continue the run in ``config.run_dir`` from its last checkpoint.

    Under ``torchrun`` (``WORLD_SIZE`` set) this is one rank of a data-parallel run
    (:mod:`flowpolicy.distributed`): it steps ``num_envs / world_size`` envs seeded after the
    ranks before it, averages gradients with the others at every optimiser step, and leaves
    the run directory, logging and evaluation to rank 0.

    Raises:
        UserError: bad env, unreadable run directory, or a loss that became NaN/inf (the last
            good checkpoint is left untouched and ``stopped.json`` records the stop), or a
            resume of a run that such a loss stopped, or with another number of processes.
    """
    ranks = distributed.ranks_from_environment()
    run_dir = Path(config.run_dir) if config.run_dir else default_run_dir(config)
    if not resume and (run_dir / CHECKPOINT_NAME).exists():
        raise UserError(
            f"{run_dir} already holds a run. Continue it with `flowpolicy train --resume "
            f"{run_dir}`, or pass another --run-dir."
        )
    if resume:
        refuse_resume_if_stopped(run_dir)
        distributed.check_resume_world_size(run_dir, ranks.world_size)
    if config.wandb_project is not None:
        require_wandb()
    device = distributed.rank_device(resolve_device(config.device), ranks)
    torch.set_num_threads(config.torch_threads)
    init_policy = load_init_policy(config, run_dir, resume)
    config = with_policy_settings(config, init_policy)
    cfg = distributed.rank_share(config.algo, ranks.world_size)  # this rank's envs
    saved_config = config_to_dict(config, ranks.world_size)
    distributed.start(device, ranks)
    seed_everything(config.seed)  # the same on every rank: the same initial weights
    env_seed = config.seed + ranks.rank * cfg.num_envs  # rank r's envs follow rank r-1's
    env_spec = env_factory if env_factory is not None else config.env
    envs = make_tensor_env(
        env_spec,
        cfg.num_envs,
        seed=env_seed,
        chunk_exec=cfg.chunk_exec,
        device=device,
        vector_env=config.vector_env,
    )
    algo = build_algorithm(dataclasses.replace(config, algo=cfg), envs, init_policy, device)
    if ranks.rank > 0:
        seed_everything(env_seed)  # then each rank draws its own actions and minibatches
    dataset = load_offline_dataset(config, envs)
    if dataset is not None:  # before a resume's load_state_dict: the replay is rebuilt from it
        algo.load_offline_data(dataset)
    obs = envs.reset(seed=env_seed)  # (N, Do) on the device
    # Env steps of all ranks together: --total-steps and the logged steps count them all.
    steps_per_vector_step = cfg.num_envs * cfg.chunk_exec * ranks.world_size
    steps_per_iteration = steps_per_vector_step * cfg.num_steps
    stats = EpisodeStats(cfg.num_envs, device)
    global_step, iteration, wall_offset = 0, 0, 0.0
    keep_lines = resume_step = None

    if resume:
        # Loaded straight onto this run's device: a run checkpointed on a GPU resumes on a CPU
        # and the other way round.
        checkpoint_state = load_checkpoint(run_dir / CHECKPOINT_NAME, map_location=device)
        if ranks.rank > 0:  # rank 0's state is the checkpoint's own, the others' are listed
            checkpoint_state = checkpoint_state["other_ranks"][ranks.rank - 1]
        algo.load_state_dict(checkpoint_state["algo"])
        loop = checkpoint_state["loop"]
        global_step, iteration, wall_offset = (
            loop["global_step"],
            loop["iteration"],
            loop["wall_time"],
        )
        # Checkpoints before the tensor env boundary hold numpy arrays here.
        obs = torch.as_tensor(loop["obs"], dtype=torch.float32, device=device)
        stats.returns = torch.as_tensor(loop["episode_returns"], device=device).double()
        stats.lengths = torch.as_tensor(loop["episode_lengths"], device=device).long()
        envs.load_state(loop["env_state"])
        set_rng_state(loop["rng"])
        keep_lines, resume_step = loop["metrics_lines"], global_step
    elif ranks.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.json").write_text(json.dumps(saved_config, indent=2) + "\n")
        if init_policy is not None:
            save_policy(run_dir / INIT_POLICY_NAME, init_policy, {"source": str(config.init)})

    wandb_run = None
    if config.wandb_project is not None and ranks.is_main:
        wandb_run = start_wandb(run_dir, config.wandb_project, config.wandb_mode, saved_config)
    if ranks.is_main:
        logger = Logger(
            run_dir, keep_lines, resume_step, config.tensorboard, config.quiet, wandb_run
        )
    else:
        logger = SilentLogger()
    start = time.perf_counter()

    def wall_time() -> float:
        return wall_offset + time.perf_counter() - start

    def evaluate() -> dict[str, float]:
        """Rank 0 evaluates; every rank gets its numbers (a stop_at_return stops them all)."""
        metrics = {}
        if ranks.is_main:
            metrics = evaluate_modes(
                algo.eval_policy,
                env_spec,
                config.eval_episodes,
                config.seed + EVAL_SEED_OFFSET,
                cfg.chunk_exec,
            )
            logger.log(global_step, wall_time(), metrics)
        return distributed.broadcast_from_main(metrics)

    checkpoint_step = global_step

    def checkpoint() -> None:
        nonlocal checkpoint_step
        loop_state = {
            "global_step": global_step,
            "iteration": iteration,
            "wall_time": wall_time(),
            "obs": obs,
            "episode_returns": stats.returns.clone(),
            "episode_lengths": stats.lengths.clone(),
            "env_state": envs.state(),
            "rng": rng_state(),
            "metrics_lines": logger.lines,
            "last_eval": last_eval,
        }
        # Rank 0 writes every rank's state (envs, RNG, replay) into the one checkpoint.
        own = {"algo": algo.state_dict(), "loop": loop_state}
        states = distributed.gather_to_main(None if ranks.is_main else distributed.to_cpu(own))
        if ranks.is_main:
            state = own | {"config": saved_config}
            if ranks.distributed:
                state["other_ranks"] = states[1:]
            save_checkpoint(run_dir / CHECKPOINT_NAME, state)
            export_policy()
        checkpoint_step = global_step

    def export_policy() -> None:
        """RUN_DIR/policy.pt: the policy the run evaluates, readable without the run's code
        (``flowpolicy eval``, ``--init``, ``load_policy_from``), on any device."""
        metadata = {
            "source": f"flowpolicy train {config.algo_name}",
            "env_id": config.env if env_factory is None else None,
            "run_dir": str(run_dir),
            "step": global_step,
            "eval_seed": config.seed + EVAL_SEED_OFFSET,
            "eval": last_eval,
        }
        save_policy(run_dir / POLICY_NAME, algo.eval_policy, metadata)

    if not resume:
        processes = f", {ranks.world_size} processes" if ranks.distributed else ""
        logger.print(
            f"[bold]flowpolicy[/] {config.algo_name} on {config.env} ({device}{processes}) "
            f"-> {run_dir}"
        )
        last_eval = evaluate()
        checkpoint()
    else:
        logger.print(f"[bold]flowpolicy[/] resuming {run_dir} at step {global_step:,}")
        # The last evaluation travels with the checkpoint so that a stop_at_return reached just
        # before a crash still ends the resumed run, and done.json reports it.
        last_eval = checkpoint_state["loop"].get("last_eval", {})
        if ranks.is_main and not (run_dir / POLICY_NAME).is_file():  # from before policy.pt
            export_policy()
    next_eval = (
        (global_step // config.eval_every + 1) * config.eval_every if config.eval_every else None
    )

    buffer = RolloutBuffer(cfg.num_steps, cfg.num_envs, envs.obs_dim, device)
    last_return = float("nan")

    def target_reached() -> bool:
        target = config.stop_at_return
        return target is not None and last_eval.get("eval/zero/return_mean", -math.inf) >= target

    try:
        # The offline phase of offline-to-online methods (FQL): gradient steps on the dataset
        # before the first rollout, checkpointed after each call so a resume continues it.
        while getattr(algo, "offline_steps_left", 0) > 0:
            logger.log(global_step, wall_time(), algo.offline_update())
            logger.print(f"offline phase: {algo.offline_steps_left:,} gradient steps left")
            if algo.offline_steps_left == 0:
                last_eval = evaluate()
            checkpoint()
        while global_step < config.total_steps and not target_reached():
            iteration_start = time.perf_counter()
            progress = global_step / config.total_steps
            buffer.reset()
            act_time = env_time = 0.0  # where an iteration's time goes (charts/time_*)
            for _ in range(cfg.num_steps):
                tick = time.perf_counter()
                action, record = algo.act(obs)
                tock = time.perf_counter()
                step = envs.step(action)
                act_time, env_time = act_time + tock - tick, env_time + time.perf_counter() - tock
                buffer.add(
                    obs,
                    record,
                    step.reward,
                    step.final_obs,
                    step.terminated.float(),
                    step.done.float(),
                )
                stats.add(step.reward, step.done, cfg.chunk_exec)
                obs = step.obs
                global_step += steps_per_vector_step
            tick = time.perf_counter()
            metrics = algo.update(buffer.batch(progress))
            update_time = time.perf_counter() - tick
            iteration += 1
            metrics |= stats.pop_metrics()
            metrics["charts/sps"] = steps_per_iteration / (time.perf_counter() - iteration_start)
            metrics |= {
                "charts/time_act": act_time,
                "charts/time_env": env_time,
                "charts/time_update": update_time,
            }
            metrics["charts/iteration"] = iteration
            logger.log(global_step, wall_time(), metrics)
            last_return = metrics.get("charts/episode_return", last_return)
            finished = global_step >= config.total_steps
            if finished or (next_eval is not None and global_step >= next_eval):
                last_eval = evaluate()
                while next_eval is not None and next_eval <= global_step:
                    next_eval += config.eval_every
            finished = finished or target_reached()
            if finished or iteration % config.checkpoint_every == 0:
                checkpoint()
            logger.progress(
                global_step,
                config.total_steps,
                metrics["charts/sps"],
                f"return {last_return:8.2f} | eval zero "
                f"{last_eval.get('eval/zero/return_mean', float('nan')):8.2f} random "
                f"{last_eval.get('eval/random/return_mean', float('nan')):8.2f}",
            )
    except NonFiniteLossError as error:
        # Resuming would replay the same numbers into the same stop: record it so that a
        # resume (and the benchmark harness) says so instead of repeating it.
        if not ranks.is_main:
            raise UserError(f"rank {ranks.rank}: {error}") from error
        raise record_stop(run_dir, global_step, checkpoint_step, str(error), "Training") from error
    finally:
        envs.close()
        logger.close()

    final = {"step": global_step, "wall_time": round(wall_time(), 3)} | last_eval
    if target_reached():
        final["stopped_at_return"] = config.stop_at_return
    if ranks.is_main:
        save_json(run_dir / "done.json", final)
    distributed.stop()
    return TrainResult(run_dir, final)


def resume(
    run_dir: str | Path,
    env_factory: Callable[[], gym.Env] | None = None,
    device: str | None = None,
) -> TrainResult:
    """Continue the run in ``run_dir`` from its last checkpoint (same config, same numbers on
    the same machine). ``device`` moves it to another device (e.g. a GPU run continued on a
    CPU); config.json then records the new one."""
    config = dataclasses.replace(read_run_config(run_dir), run_dir=str(run_dir))
    if device is not None:
        resolve_device(device)  # a bad device fails before anything is written
        config = dataclasses.replace(config, device=device)
        if distributed.is_main_process():
            save_json(
                Path(run_dir) / "config.json",
                config_to_dict(config, distributed.run_world_size(run_dir)),
            )
    return train(config, env_factory=env_factory, resume=True)
