"""How long QAM's critic and actor steps take on one CPU thread (or a GPU), and where the
time goes.

QAM is built the way ``flowpolicy train qam --preset qam-cpu --init INIT`` builds it: the
pretrained flow policy of ``--init`` (its chunk and flow steps win over the preset's, as in
training) under ``--preset`` (default qam-cpu; ``qam`` is the authors' sizes) on ``--device``
(on a GPU every timing waits for the queued kernels). The env is not needed: the policy
carries the observation size and the action bounds. The replay is filled with ``--replay-iterations``
iterations of random transitions of the right shapes (4 envs x 50 chunk steps each; 625 is
what a 500k-env-step run holds at its end).

One *gradient step* is what ``QAM.update`` runs ``utd_ratio`` times per env step: a draw of
``batch_size`` replay transitions, one critic step (``critic_round``: K Euler steps of the
fine-tuned field for the bootstrap actions, the TD target, the ensemble's loss, backward,
clipped AdamW, Polyak) and one actor step (``actor_step``: the memoryless SDE, the terminal
adjoint, the lean adjoint, the adjoint-matching and bc losses, backward, clipped Adam, the
base's Polyak step). Each is timed on its own over ``--steps`` steps, ``--repeats`` times;
the medians of the per-step means are printed.

The breakdown (``--breakdown``) wraps the pieces those steps call (QAM's methods and
helpers, the fields' forwards, ``Tensor.backward``, ``torch.autograd.grad``, the optimisers'
``step``, ``clip_grad_norm_``, the Polyak updates) and prints each one's exclusive wall time
per step as a tree; ``(self)`` is what no wrapped piece claims (glue, small tensor ops,
Python). ``--torch-profile`` prints torch.profiler's table of operators instead.

Examples::

    python benchmarks/qam_update_speed.py                       # timings only
    python benchmarks/qam_update_speed.py --breakdown           # and where the time goes
    python benchmarks/qam_update_speed.py --torch-profile --steps 5
    # the same numbers for another copy of the library (before/after a change)
    PYTHONPATH=/tmp/old/src python benchmarks/qam_update_speed.py

Everything runs on ``--threads`` torch threads (1, like every benchmark run) and is seeded.

Measured on the 2-core CPU shared with two benchmark runs (medians of 5 runs of the default
command, before and after interleaved): the SDE pass handing the loss both fields and the
fused Adam/AdamW took the critic step from 0.084 to 0.077 s and the actor step from 0.38 to
0.29 s. About 80% of both steps' CPU time is matrix products (``--torch-profile``).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import tyro

import flowpolicy
from flowpolicy.algos import offpolicy, qam
from flowpolicy.algos.presets import find_preset
from flowpolicy.algos.qam import QAM
from flowpolicy.buffers import TrajectoryBatch
from flowpolicy.critics import QEnsemble
from flowpolicy.device import resolve_device
from flowpolicy.policies import FlowPolicy
from flowpolicy.policy_io import load_policy_from

REPO = Path(__file__).resolve().parents[1]
ENVS, STEPS = 4, 50  # qam_cpu's num_envs x num_steps: the shape of one stored iteration


@dataclass(frozen=True)
class Args:
    """Time QAM's critic and actor steps at benchmark sizes."""

    init: Path = REPO / "runs/reference/Hopper-v5/bc-flow"
    """the pretrained flow policy (a file or a pretrain run directory), as for ``--init``."""
    steps: int = 10
    """critic and actor steps per timing."""
    repeats: int = 3
    """timings of each kind; the medians are printed."""
    warmup: int = 2
    """untimed steps of each kind first (allocator, lazy init)."""
    replay_iterations: int = 625
    """iterations of random transitions in the replay (625: the end of a 500k-step run)."""
    breakdown: bool = False
    """also print where the time of each step goes (exclusive wall time per piece)."""
    torch_profile: bool = False
    """also print torch.profiler's operator table over ``steps`` gradient steps."""
    threads: int = 1
    """torch threads."""
    device: str = "cpu"
    """where QAM and its replay live: cpu, cuda or cuda:N (timings wait for the GPU)."""
    preset: str = "qam-cpu"
    """QAM preset to build: qam-cpu (the CPU sizes, default) or qam (the authors')."""
    seed: int = 0
    """seed of the replay's contents and of every draw."""


def build(args: Args) -> QAM:
    """QAM with the chosen preset on the pretrained policy, and a filled replay, on the device
    (built inside ``torch.device``, as the training runner builds it)."""
    device = resolve_device(args.device)
    policy = load_policy_from(args.init)
    if not isinstance(policy, FlowPolicy):
        raise SystemExit(f"{args.init} holds a {type(policy).__name__}, not a FlowPolicy")
    # What `with_policy_settings` does in training: the policy's chunking and steps win.
    settings = dict(chunk=policy.chunk, chunk_exec=policy.chunk_exec, flow_steps=policy.flow_steps)
    config = dataclasses.replace(find_preset("qam", args.preset).config(), **settings)
    policy.to(device)
    with device:
        algo = QAM(policy.obs_dim, policy.action_low, policy.action_high, config, policy=policy)
    generator = torch.Generator().manual_seed(args.seed)
    shape = (ENVS, STEPS)
    for _ in range(args.replay_iterations):
        obs = torch.randn(*shape, policy.obs_dim, generator=generator)
        segments = TrajectoryBatch(
            obs=obs,
            actions=2.0 * torch.rand(*shape, policy.flat_action_dim, generator=generator) - 1,
            rewards=torch.randn(*shape, generator=generator),
            next_obs=obs + 0.1 * torch.randn(*shape, policy.obs_dim, generator=generator),
            terminated=(torch.rand(*shape, generator=generator) < 0.01).float(),
            dones=(torch.rand(*shape, generator=generator) < 0.02).float(),
        )
        algo.replay.add(TrajectoryBatch(*(t.to(device) for t in dataclasses.astuple(segments))))
    algo.iterations = 1  # past the critic warm-up
    return algo


def synchronize(algo: QAM) -> None:
    """Wait for the GPU's queued work, so that a timing covers it (nothing on the CPU)."""
    device = next(algo.policy.parameters()).device
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def critic_step(algo: QAM, data: TrajectoryBatch) -> None:
    algo.critic_round(data, algo.config.reward_scale, 1)


def actor_step(algo: QAM, data: TrajectoryBatch) -> None:
    algo.actor_step(data.obs[:, 0], data.actions[:, 0])


def sample(algo: QAM) -> TrajectoryBatch:
    return algo.replay.sample_transitions(algo.config.batch_size)


def time_steps(algo: QAM, args: Args) -> dict[str, list[float]]:
    """Seconds per step of each kind, one mean over ``args.steps`` steps per repeat."""
    batches = [sample(algo) for _ in range(args.steps)]
    kinds: dict[str, Callable[[TrajectoryBatch], Any]] = {
        "replay draw": lambda _: sample(algo),
        "critic step": lambda data: critic_step(algo, data),
        "actor step": lambda data: actor_step(algo, data),
    }
    for run in kinds.values():
        for data in batches[: args.warmup]:
            run(data)
    seconds: dict[str, list[float]] = defaultdict(list)
    for _ in range(args.repeats):
        for kind, run in kinds.items():  # interleaved, so a busy spell hits every kind
            synchronize(algo)
            start = time.perf_counter()
            for data in batches:
                run(data)
            synchronize(algo)
            seconds[kind].append((time.perf_counter() - start) / args.steps)
    return seconds


# ----------------------------------------------------------------------------- breakdown


class Timer:
    """Exclusive wall time of nested labelled calls, keyed by their path of labels."""

    def __init__(self) -> None:
        self.totals: dict[tuple[str, ...], float] = defaultdict(float)
        self.stack: list[str] = []
        self.child_time: list[float] = []

    @contextmanager
    def section(self, label: str) -> Iterator[None]:
        self.stack.append(label)
        self.child_time.append(0.0)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            path = tuple(self.stack)
            self.totals[path] += elapsed - self.child_time.pop()
            self.stack.pop()
            if self.child_time:
                self.child_time[-1] += elapsed

    def wrap(self, owner: Any, name: str, label: str | Callable[[Any], str]) -> Callable[[], None]:
        """Replace the function or method ``owner.name`` by a timed version; returns the undo.
        A callable ``label`` names a method call by its ``self`` (which field a ``velocity``
        call is)."""
        original = getattr(owner, name)

        def timed(*a: Any, **kw: Any) -> Any:
            with self.section(label(a[0]) if callable(label) else label):
                return original(*a, **kw)

        setattr(owner, name, timed)
        return lambda: setattr(owner, name, original)


def field_name(algo: QAM) -> Callable[[FlowPolicy], str]:
    def name(policy: FlowPolicy) -> str:
        if policy is algo.policy:
            return "f_theta forward"
        if policy is algo.base:
            return "f_beta forward"
        return "bc flow forward"

    return name


def instrument(timer: Timer, algo: QAM) -> list[Callable[[], None]]:
    """Wrap the pieces of the two steps; returns the undos."""
    targets: list[tuple[Any, str, str | Callable[[Any], str]]] = [
        # _sample lives in the shared off-policy head (offpolicy.py) since it was written once.
        (
            getattr(offpolicy, "OffPolicyAlgorithm", QAM),
            "_sample",
            "bootstrap actions (K Euler steps)",
        ),
        (qam, "memoryless_sde", "memoryless SDE"),
        (QAM, "terminal_adjoint", "terminal adjoint"),
        (qam, "lean_adjoint", "lean adjoint (K base VJPs)"),
        (qam, "adjoint_matching_loss", "adjoint-matching loss"),
        (QAM, "bc_loss", "bc loss"),
        (qam, "polyak_", "Polyak (base)"),
        (offpolicy, "td_targets", "TD targets"),
        (QEnsemble, "action_gradient", "critic action gradient"),
        (QEnsemble, "loss", "ensemble forward + loss"),
        (QEnsemble, "update_targets", "Polyak (critic targets)"),
        (FlowPolicy, "velocity", field_name(algo)),
        (torch.Tensor, "backward", "backward"),
        (torch.autograd, "grad", "autograd.grad"),
        (torch.nn.utils, "clip_grad_norm_", "clip_grad_norm_"),
        (type(algo.critic_optimizer), "step", "optimizer step"),
        (type(algo.actor_optimizer), "step", "optimizer step"),
    ]
    undos, done = [], set()
    for owner, name, label in targets:
        # A class is patched only where it defines the method (AdamW inherits Adam's step),
        # and a piece this version of the library lacks is left out.
        defined = name in vars(owner) if isinstance(owner, type) else hasattr(owner, name)
        if defined and (id(owner), name) not in done:
            done.add((id(owner), name))
            undos.append(timer.wrap(owner, name, label))
    return undos


def breakdown(algo: QAM, args: Args) -> None:
    """Print each piece's exclusive time per step, as a tree under each kind of step."""
    timer = Timer()
    batches = [sample(algo) for _ in range(args.steps)]
    undos = instrument(timer, algo)
    try:
        for _ in range(args.repeats):
            for data in batches:
                with timer.section("critic step"):
                    critic_step(algo, data)
                with timer.section("actor step"):
                    actor_step(algo, data)
    finally:
        for undo in reversed(undos):
            undo()
    count = args.steps * args.repeats
    inclusive: dict[tuple[str, ...], float] = defaultdict(float)
    for path, seconds in timer.totals.items():
        for depth in range(1, len(path) + 1):
            inclusive[path[:depth]] += seconds

    def show(path: tuple[str, ...]) -> None:
        children = sorted(
            (p for p in inclusive if len(p) == len(path) + 1 and p[:-1] == path),
            key=lambda p: -inclusive[p],
        )
        own = timer.totals.get(path, 0.0)
        indent = "  " * len(path)
        share = 100.0 * inclusive[path] / inclusive[path[:1]]
        print(
            f"{indent}{path[-1]:<{44 - len(indent)}} {1e3 * inclusive[path] / count:9.2f} ms"
            f"  {share:5.1f}%"
        )
        if children:
            print(f"{indent}  {'(self)':<{42 - len(indent)}} {1e3 * own / count:9.2f} ms")
        for child in children:
            show(child)

    print(f"\nbreakdown: exclusive wall time per step, mean over {count} steps of each kind")
    for root in ("critic step", "actor step"):
        show((root,))


def torch_profile(algo: QAM, args: Args) -> None:
    from torch.profiler import ProfilerActivity, profile

    batches = [sample(algo) for _ in range(args.steps)]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for data in batches:
            critic_step(algo, data)
            actor_step(algo, data)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30))


def main(args: Args) -> None:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    algo = build(args)
    cfg = algo.config
    nets = {
        "actor": sum(p.numel() for p in algo.policy.parameters()),
        "critic (online)": sum(p.numel() for p in algo.critic.members.parameters()),
    }
    print(f"flowpolicy from {Path(flowpolicy.__file__).parent}")
    print(
        f"QAM {args.preset} on {args.init}: K={cfg.flow_steps}, chunk {cfg.chunk}, batch "
        f"{cfg.batch_size}, {cfg.critic_members} critic members {cfg.critic_hidden}, "
        f"parameters {nets}; replay {len(algo.replay)} segments; {args.threads} thread(s), "
        f"device {args.device}"
    )
    seconds = time_steps(algo, args)
    print(f"\nseconds per step, median of {args.repeats} means over {args.steps} steps:")
    medians = {kind: statistics.median(values) for kind, values in seconds.items()}
    for kind, values in seconds.items():
        runs = " ".join(f"{v:.4f}" for v in values)
        print(f"  {kind:<14} {medians[kind]:.4f}   ({runs})")
    step = sum(medians.values())
    # utd_ratio gradient steps per env step (qam-cpu: one per chunk).
    hours = step * cfg.utd_ratio * 100_000 / 3600
    print(f"  {'gradient step':<14} {step:.4f}   -> {hours:.2f} h of updates per 100k env steps")
    if args.breakdown:
        breakdown(algo, args)
    if args.torch_profile:
        torch_profile(algo, args)


if __name__ == "__main__":
    main(tyro.cli(Args))
