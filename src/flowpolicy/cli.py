"""Command line: ``flowpolicy train | eval | video | collect | pretrain | plot``.

    flowpolicy train ALGO [--preset NAME] [options]   train (ALGO: ppo, fpo, rldt, reinflow, dppo, qam;
                                                      --help lists options, presets and their sources)
    flowpolicy train --resume RUN_DIR [--device D]    continue a killed run from its checkpoint
    flowpolicy eval PATH [--episodes N]               evaluate a train run, a pretrain run or a
                                                      policy file in zero and random sampling
    flowpolicy video PATH [--out FILE.mp4]            render a policy's episodes (MuJoCo envs) to
                                                      an .mp4 or .gif (docs/video.md)
    flowpolicy collect --env ENV --out DIR [options]  train a medium expert and record a dataset
    flowpolicy pretrain --dataset PATH [options]      behaviour-clone a flow/diffusion/Gaussian
    flowpolicy pretrain --resume RUN_DIR              continue a killed pretraining run
    flowpolicy plot RUN_DIR [RUN_DIR ...] --out DIR   learning curves and results tables of runs

Mistakes in the input (unknown env, bad hyper-parameter, unreadable run directory) print one
paragraph saying what was wrong and what to do, and exit with code 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Any

import tyro
from rich.console import Console
from rich.markup import escape

from flowpolicy.errors import UserError

TYRO_CONFIG = (tyro.conf.OmitArgPrefixes, tyro.conf.AvoidSubcommands, tyro.conf.FlagConversionOff)
USAGE = __doc__.split("\n\n")[1]

stderr = Console(stderr=True, highlight=False)


def parse_train(args: list[str]):
    """``ALGO [--preset P] [options]`` -> TrainConfig. Options that replace a value of the
    preset are listed on the console (and recorded in config.json by the run)."""
    from flowpolicy.algos.presets import describe_overrides, find_preset, overridden_values
    from flowpolicy.train import TrainConfig

    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        print(algorithm_list())
        raise SystemExit(0)
    algo, rest = args[0], args[1:]
    name = None
    if "--preset" in rest:
        at = rest.index("--preset")
        if at + 1 >= len(rest):
            raise UserError("--preset needs a name, e.g. `--preset fpo++`.")
        name = rest[at + 1]
        rest = rest[:at] + rest[at + 2 :]
    preset = find_preset(algo, name)
    default = TrainConfig(algo=preset.config(), preset=preset.name)
    try:
        config = tyro.cli(
            TrainConfig,
            default=default,
            args=rest,
            config=TYRO_CONFIG,
            prog=f"flowpolicy train {algo}" + (f" --preset {name}" if name else ""),
            description=(
                f"Train with preset {preset.name}. Every option below overrides the preset's "
                f"value.\n\n{preset.source}"
            ),
        )
    except ValueError as error:  # raised by the configs' __post_init__ checks
        raise UserError(f"Invalid hyper-parameter: {error}") from error
    overrides = overridden_values(preset, config.algo)
    if overrides and not config.quiet:
        stderr.print(describe_overrides(preset, overrides), markup=False)
    return config


def algorithm_list() -> str:
    """The registered algorithms and their presets (flowpolicy.algos.registry)."""
    from flowpolicy.algos.registry import ALGORITHMS

    lines = ["algorithms (flowpolicy train ALGO [--preset NAME]; the first preset is the default):"]
    for name, spec in ALGORITHMS.items():
        lines.append(f"  {name:<10} presets: {', '.join(p.name for p in spec.presets)}")
    return "\n".join(lines)


@dataclass(frozen=True)
class EvalArgs:
    """Evaluate a policy in zero and random sampling: a `flowpolicy train` run (the EMA weights
    where the algorithm keeps them), a `flowpolicy pretrain` run, or a policy file."""

    path: Annotated[str, tyro.conf.Positional]
    """run directory of `flowpolicy train` or `flowpolicy pretrain`, or a policy file."""
    episodes: int = 10
    """episodes per sampling mode."""
    seed: int | None = None
    """env and noise seed; default: the run's evaluation seed (a policy file: the evaluation seed
    it records, else 10000)."""
    env: str | None = None
    """env id; default: the run's env (a policy file: the env it records, if any)."""
    device: str = "auto"
    """where the policy acts: auto (CUDA when available), cpu, cuda or cuda:N; a policy trained
    on any device evaluates on any other."""


def parse_resume(args: list[str]) -> tuple[str, str | None]:
    """``--resume RUN_DIR [--device D]`` -> (RUN_DIR, D or None: the run's own device)."""
    usage = "usage: flowpolicy train --resume RUN_DIR [--device auto|cpu|cuda|cuda:N]"
    if len(args) == 2:
        return args[1], None
    if len(args) == 4 and args[2] == "--device":
        return args[1], args[3]
    raise UserError(usage)


@dataclass(frozen=True)
class EvalTarget:
    """What `flowpolicy eval` and `flowpolicy video` act with, found from a PATH."""

    policy: Any  # a torch module with act(obs (B, Do), mode) -> env actions (B, Ta_exec * Da)
    env: str  # env id
    seed: int  # env and noise seed of the evaluation
    chunk_exec: int  # actions executed per policy call
    what: str  # the policy, in words


def load_eval_target(
    path_name: str, device_name: str, env: str | None, seed: int | None
) -> EvalTarget:
    """The policy of a train run (EMA weights where the algorithm keeps them), a pretrain run or
    a policy file on ``device_name``, with its env, chunking and evaluation seed; ``env`` and
    ``seed`` replace the recorded ones where given."""
    from flowpolicy.device import resolve_device
    from flowpolicy.evaluation import EVAL_SEED_OFFSET
    from flowpolicy.policy_io import POLICY_NAME, is_train_run_dir, read_policy_file
    from flowpolicy.train import load_algorithm

    path = Path(path_name)
    device = resolve_device(device_name)
    if is_train_run_dir(path):
        config, algo, checkpoint = load_algorithm(path, device)
        policy, recorded_env = algo.eval_policy, config.env
        recorded_seed, chunk_exec = config.seed + EVAL_SEED_OFFSET, config.algo.chunk_exec
        what = f"{config.algo_name}, checkpoint at step {checkpoint['loop']['global_step']:,}"
    elif path.exists():
        # A pretrain run (its exported EMA policy) or a policy file: the policy records its env,
        # chunking and evaluation seed. Files written before the seed was recorded fall back
        # to the pretrain run's config.json, or to seed 0's evaluation seed.
        policy_file = read_policy_file(path / POLICY_NAME if path.is_dir() else path)
        policy, metadata = policy_file.policy.to(device), policy_file.metadata
        recorded_env, chunk_exec = metadata.get("env_id"), policy.chunk_exec
        fallback = EVAL_SEED_OFFSET + (pretrain_seed(path) if path.is_dir() else 0)
        recorded_seed = int(metadata.get("eval_seed", fallback))
        what = f"{type(policy).__name__} from {metadata.get('source', 'a policy file')}"
    else:
        raise UserError(
            f"{path} does not exist. Pass a run directory of `flowpolicy train` or `flowpolicy "
            "pretrain`, or a policy file (RUN_DIR/policy.pt)."
        )
    env = env or recorded_env
    if env is None:
        raise UserError(f"{path} does not record which env it acts in; pass --env ENV_ID.")
    return EvalTarget(policy, env, recorded_seed if seed is None else seed, chunk_exec, what)


def run_eval(args: list[str]) -> int:
    from flowpolicy.evaluation import MODES, evaluate

    options = tyro.cli(EvalArgs, args=args, config=TYRO_CONFIG, prog="flowpolicy eval")
    if options.episodes <= 0:
        raise UserError(f"--episodes must be positive, got {options.episodes}.")
    target = load_eval_target(options.path, options.device, options.env, options.seed)
    print(f"{target.what} on {target.env}, {options.episodes} episodes")
    for mode in MODES:
        returns = evaluate(
            target.policy, target.env, options.episodes, target.seed, target.chunk_exec, mode
        )
        print(f"  {mode:>6} sampling: return {returns.mean():10.2f} +/- {returns.std():.2f}")
    return 0


@dataclass(frozen=True)
class VideoArgs:
    """Render a policy's episodes offscreen into a video, one after another at the env's
    real-time frame rate: a `flowpolicy train` run, a `flowpolicy pretrain` run or a policy
    file, in a Gymnasium MuJoCo, dmc/ or playground/ env (docs/video.md)."""

    path: Annotated[str, tyro.conf.Positional]
    """run directory of `flowpolicy train` or `flowpolicy pretrain`, or a policy file."""
    out: str | None = None
    """the video file: .mp4 (also .mkv, .mov, .avi, .webm) or .gif; default RUN_DIR/video.mp4
    (a policy file: NAME.mp4 beside it)."""
    episodes: int = 1
    """episodes, played one after another into the one file."""
    mode: str = "zero"
    """sampling: zero (deterministic) or random."""
    seed: int | None = None
    """env and noise seed; default: the run's evaluation seed, as in `flowpolicy eval`."""
    env: str | None = None
    """env id; default: the run's env (a policy file: the env it records, if any)."""
    width: int = 640
    """frame width in pixels."""
    height: int = 480
    """frame height in pixels."""
    max_steps: int | None = None
    """cut each episode after this many control steps; default: play it to its end."""
    device: str = "auto"
    """where the policy acts: auto (CUDA when available), cpu, cuda or cuda:N."""


def run_video(args: list[str]) -> int:
    """``flowpolicy video``: options are VideoArgs' fields (docs/video.md)."""
    from flowpolicy import video  # first: it picks MuJoCo's OpenGL backend before MuJoCo loads

    options = tyro.cli(VideoArgs, args=args, config=TYRO_CONFIG, prog="flowpolicy video")
    out = Path(options.out) if options.out else video.default_out(Path(options.path))
    video.check_options(
        out, options.episodes, options.mode, options.width, options.height, options.max_steps
    )
    video.check_gl()
    target = load_eval_target(options.path, options.device, options.env, options.seed)
    print(f"{target.what} on {target.env}, {options.episodes} episodes, {options.mode} sampling")
    result = video.record_video(
        target.policy,
        target.env,
        out,
        episodes=options.episodes,
        seed=target.seed,
        chunk_exec=target.chunk_exec,
        mode=options.mode,
        width=options.width,
        height=options.height,
        max_steps=options.max_steps,
    )
    for i, (ret, steps) in enumerate(zip(result.returns, result.steps, strict=True)):
        print(f"  episode {i + 1}: return {ret:10.2f} in {steps} steps")
    print(f"wrote {result.path}: {result.frames} frames at {result.fps:g} fps")
    return 0


def pretrain_seed(run_dir: Path) -> int:
    """The seed in a pretrain run's config.json (0 if it has none)."""
    try:
        return int(json.loads((run_dir / "config.json").read_text()).get("seed", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def run_collect(args: list[str]) -> int:
    """``flowpolicy collect``: options are CollectConfig's fields (docs/collect.md)."""
    import shlex

    from flowpolicy.collect import CollectConfig, collect

    try:
        config = tyro.cli(
            CollectConfig,
            args=args,
            config=TYRO_CONFIG,
            prog="flowpolicy collect",
            description=(
                "Train a Gaussian PPO expert until its evaluation return reaches a medium-level "
                "target (or load --policy), then record a demonstration dataset with it."
            ),
        )
    except ValueError as error:  # raised by CollectConfig's and PPOConfig's __post_init__
        raise UserError(f"Invalid collect option: {error}") from error
    # The reproducing command, however the script was launched (console script, python -m).
    command = shlex.join(["flowpolicy", "collect", *args])
    try:
        collect(config, command=command)
    except KeyboardInterrupt:
        stderr.print(
            "interrupted; run the same command again to continue (the expert resumes from its "
            f"last checkpoint): {command}"
        )
        return 130
    return 0


def run_pretrain(args: list[str]) -> int:
    """``flowpolicy pretrain``: options are PretrainConfig's and BCConfig's fields
    (docs/pretrain.md); ``--resume RUN_DIR`` continues a run."""
    from flowpolicy import pretrain

    if args and args[0] == "--resume":
        if len(args) != 2:
            raise UserError("usage: flowpolicy pretrain --resume RUN_DIR")
        run_dir = args[1]
        result = pretrain.resume(run_dir)
    else:
        try:
            with parse_on_rank_0_only():
                config = tyro.cli(
                    pretrain.PretrainConfig,
                    args=args,
                    config=TYRO_CONFIG,
                    prog="flowpolicy pretrain",
                    description="Behaviour-clone a policy on a dataset (DPPO/ReinFlow defaults).",
                )
        except ValueError as error:  # raised by the configs' __post_init__ checks
            raise UserError(f"Invalid pretrain option: {error}") from error
        if config.run_dir is None:
            config = replace(config, run_dir=str(pretrain.default_run_dir(config)))
        run_dir = config.run_dir
        try:
            result = pretrain.pretrain(config)
        except KeyboardInterrupt:
            stderr.print(
                "interrupted; the last checkpoint is kept: resume with "
                f"`flowpolicy pretrain --resume {run_dir}`"
            )
            return 130
    if on_rank_0():
        print(f"done: {result.run_dir} (policy: {result.run_dir / 'policy.pt'})")
    return 0


def run_plot(args: list[str]) -> int:
    """``flowpolicy plot``: options are PlotConfig's fields (docs/plot.md)."""
    from flowpolicy.plot import PlotConfig, plot

    try:
        config = tyro.cli(PlotConfig, args=args, config=TYRO_CONFIG, prog="flowpolicy plot")
    except ValueError as error:  # PlotConfig.__post_init__, where tyro does not report it itself
        raise UserError(f"Invalid plot option: {error}") from error
    output = plot(config)
    for warning in output.warnings:
        stderr.print(f"[bold yellow]warning:[/] {warning}")
    print(output.table)
    names = ", ".join(path.name for path in output.files)
    print(f"wrote {len(output.files)} files to {config.out}: {names}")
    return 0


def on_rank_0() -> bool:
    """True except on ranks 1.. of a torchrun job, which run the same command silently
    (read here from torchrun's RANK, not flowpolicy.distributed, so the CLI starts without
    importing torch)."""
    return os.environ.get("RANK", "0") == "0"


@contextlib.contextmanager
def parse_on_rank_0_only() -> Iterator[None]:
    """Under torchrun every rank parses the same options: only rank 0 prints their errors and
    help (the other ranks exit with the same code, silently)."""
    if on_rank_0():
        yield
        return
    with (
        open(os.devnull, "w") as null,
        contextlib.redirect_stdout(null),
        contextlib.redirect_stderr(null),
    ):
        yield


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``flowpolicy`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    run_dir = None
    try:
        if not argv or argv[0] in ("-h", "--help"):
            print(USAGE)
            return 0
        command, args = argv[0], argv[1:]
        if command == "train":
            from flowpolicy.train import default_run_dir, resume, train

            if args and args[0] == "--resume":
                with parse_on_rank_0_only():
                    run_dir, device = parse_resume(args)
                result = resume(run_dir, device=device)
            else:
                with parse_on_rank_0_only():
                    config = parse_train(args)
                if config.run_dir is None:
                    config = replace(config, run_dir=str(default_run_dir(config)))
                run_dir = config.run_dir
                result = train(config)
            if on_rank_0():
                print(f"done: {result.run_dir}")
            return 0
        if command == "eval":
            return run_eval(args)
        if command == "video":
            return run_video(args)
        if command == "collect":
            return run_collect(args)
        if command == "pretrain":
            return run_pretrain(args)
        if command == "plot":
            return run_plot(args)
        raise UserError(f"Unknown command {command!r}.\n{USAGE}")
    except UserError as error:
        if on_rank_0():  # under torchrun every rank stops; rank 0 says why
            stderr.print(f"[bold red]error:[/] {escape(str(error))}")
        return 2
    except KeyboardInterrupt:
        where = f" with `flowpolicy train --resume {run_dir}`" if run_dir else ""
        stderr.print(f"interrupted; the last checkpoint is kept: resume{where}")
        return 130


if __name__ == "__main__":
    sys.exit(main())
