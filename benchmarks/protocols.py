"""The benchmark protocols that ``benchmarks/bench.py`` runs, declared as plain Python data.

A protocol is a set of methods, a budget per env and default seeds. A method is the argument
list of ``flowpolicy train`` (algorithm, preset, overrides) that follows the word ``train``, plus
the pretrained policy it starts from (``--init``), if any. ``bench.py`` adds the per-run flags to
every command, in this order::

    python -m flowpolicy train <Method.train> --env ENV --seed SEED --total-steps N \
        --run-dir DIR --eval-every E --eval-episodes M --torch-threads 1 [--init POLICY]

(the from-scratch protocol's command lines are exactly those of ``benchmarks/from_scratch.py``
before the harness existed, so its runs on disk are reused as they are).

To add a method, add a :class:`Method` to a protocol's ``methods``; to add an env, add a
:class:`Budget` to its ``budgets`` (an env that is not listed can still be selected with
``--envs`` and gets the protocol's ``default_budget``). Where the settings come from is said in
each method's ``source``; docs/benchmarks/README.md lists the protocols and their commands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Budget:
    """How long to train on one env and how often to evaluate."""

    total_steps: int
    """env steps per run (a run stops at the first whole iteration at or past it)."""
    eval_every: int
    """env steps between evaluations (also at step 0 and at the end)."""
    eval_episodes: int
    """episodes per evaluation and sampling mode (zero, random)."""

    def __post_init__(self) -> None:
        if min(self.total_steps, self.eval_every, self.eval_episodes) <= 0:
            raise ValueError(f"budget values must be positive, got {self}.")


@dataclass(frozen=True)
class Prerequisite:
    """A pretrained policy that a fine-tuning method starts from (``--init``)."""

    path: str
    """pretraining run directory (or policy file); ``{env}`` is replaced by the env id, and a
    relative path is relative to the repository root. A directory counts as ready once it holds
    ``done.json`` (the pretraining finished)."""
    make: str
    """the command that makes it, ``{env}`` replaced as above (shown when it is missing)."""


@dataclass(frozen=True)
class Method:
    """One benchmarked method: its ``flowpolicy train`` arguments and starting point."""

    name: str
    """name of the method in run directories, tables and plots (``--methods``)."""
    train: tuple[str, ...] = ()
    """arguments after ``flowpolicy train``: the algorithm, ``--preset``, then overrides."""
    init: Prerequisite | None = None
    """the pretrained policy to fine-tune; None trains from scratch."""
    dataset: Prerequisite | None = None
    """an offline dataset (``--dataset``) for offline-to-online methods (FQL); its ``path`` is a
    file."""
    script: str | None = None
    """a script (relative to the repository) run instead of ``python -m flowpolicy train``;
    it takes the same per-run flags, and its runs cannot be resumed (they restart)."""
    source: str = ""
    """where the settings come from (shown in the results page)."""
    envs: tuple[str, ...] | None = None
    """the only envs this method runs on (None: every env of the protocol)."""

    def __post_init__(self) -> None:
        if bool(self.train) == bool(self.script):
            raise ValueError(f"method {self.name!r}: give either train arguments or a script.")


@dataclass(frozen=True)
class Protocol:
    """A set of methods run on a set of envs and seeds, collected into one results page."""

    name: str
    """protocol name: ``bench.py NAME``, the runs' folder and the results files' stem."""
    title: str
    """heading of the results page."""
    summary: str
    """what the protocol measures, the first paragraph of the results page."""
    methods: tuple[Method, ...]
    budgets: Mapping[str, Budget]
    """default envs and their budgets."""
    default_budget: Budget
    """budget of an env selected with ``--envs`` that ``budgets`` does not list."""
    seeds: tuple[int, ...]
    """default seeds."""
    coverage: bool = False
    """also count the optima / routes the final policies cover (the toy tasks)."""
    notes: tuple[str, ...] = field(default_factory=tuple)
    """extra paragraphs for the results page."""

    def method(self, name: str) -> Method:
        """The method called ``name``; KeyError if the protocol has none."""
        for method in self.methods:
            if method.name == name:
                return method
        raise KeyError(name)

    def budget(self, env: str) -> Budget:
        """The budget of ``env``: its own, or the default for an env the protocol does not list."""
        return self.budgets.get(env, self.default_budget)


# --------------------------------------------------------------------------------------------
# From scratch
# --------------------------------------------------------------------------------------------

FROM_SCRATCH = Protocol(
    name="from_scratch",
    title="From-scratch comparison",
    summary=(
        "FPO, FPO++ and Gaussian PPO trained from scratch with their presets: CleanRL's PPO "
        "(ppo) and the FPO paper's comparison (ppo-fpo-paper: FPO's settings and actor, so that "
        "it differs from FPO only in the policy class), against stable-baselines3 PPO with its "
        "defaults as an outside reference."
    ),
    methods=(
        Method("fpo", ("fpo",), source="FPOConfig defaults (docs/fpo.md)"),
        Method(
            "fpo++",
            ("fpo", "--preset", "fpo++"),
            source="fpo_plus_plus(): FPO++'s released networks, EMA and update (docs/fpo.md)",
        ),
        Method("ppo", ("ppo",), source="PPOConfig defaults, CleanRL's (docs/ppo.md)"),
        Method(
            "ppo-fpo-paper",
            ("ppo", "--preset", "ppo-fpo-paper"),
            source="ppo_fpo_paper(): FPO's settings and actor, the paper's lr 3e-4 and clip 0.1 "
            "(docs/ppo.md)",
            envs=("Hopper-v5",),
        ),
        Method(
            "sb3-ppo",
            script="benchmarks/sb3_ppo.py",
            source="stable-baselines3 PPO, its defaults (benchmarks/sb3_ppo.py)",
            envs=("Hopper-v5",),  # the outside reference the core issue asks for, on Hopper
        ),
    ),
    # Hopper at the CleanRL / SB3 budget; two DMC tasks from the FPO paper's list (its budget was
    # 60M steps on GPU; these are CPU-sized). DMC episodes always last 1000 steps: 5 episodes.
    budgets={
        "Hopper-v5": Budget(1_000_000, 50_000, 10),
        "dmc/cartpole-balance": Budget(500_000, 25_000, 5),
        "dmc/cheetah-run": Budget(500_000, 25_000, 5),
    },
    default_budget=Budget(1_000_000, 50_000, 10),
    seeds=(0, 1),
)


# --------------------------------------------------------------------------------------------
# Fine-tuning
# --------------------------------------------------------------------------------------------

MAKE_REFERENCE = "bash benchmarks/reference_policies.sh {env}"
BC_FLOW = Prerequisite("runs/reference/{env}/bc-flow", MAKE_REFERENCE)
"""FlowPolicy, chunk 4, K = 10, residual 3x512 (docs/reference_policies.md)."""
BC_DIFFUSION = Prerequisite("runs/reference/{env}/bc-diffusion", MAKE_REFERENCE)
"""DDPM DiffusionPolicy, chunk 4, K = 20, residual 3x512."""
BC_DATA = Prerequisite("runs/reference/{env}/data/dataset.hdf5", MAKE_REFERENCE)
"""The 200k medium transitions the BC policies learned from (FQL's offline data)."""
BC_GAUSSIAN = Prerequisite("runs/reference/{env}/bc-gaussian", MAKE_REFERENCE)
"""GaussianPolicy, chunk 1."""

FINETUNE = Protocol(
    name="finetune",
    title="Fine-tuning behaviour-cloned policies",
    summary=(
        "Every method starts from a policy behaviour-cloned on the same medium-level dataset "
        "(docs/reference_policies.md) and gets the same env-step budget. The flow methods "
        "fine-tune the BC flow policy, DPPO the BC DDPM policy (and, as dppo-flow, the BC flow "
        "policy), Gaussian PPO the BC Gaussian policy. Each method runs with its authors' "
        "defaults as implemented here (the per-method pages in docs/), with CPU-sized data "
        "regimes where a preset exists; the policy's chunk and flow/denoising steps come from "
        "the pretrained file."
    ),
    methods=(
        Method(
            "rldt",
            ("rldt",),
            BC_FLOW,
            # rldt-gym collects 200k env steps per iteration: 500k would be two critic warm-up
            # iterations and one actor iteration. The CPU defaults take 10k per iteration (50).
            source="RLDTConfig defaults: the authors' Gym settings, 10k env steps per iteration, "
            "TD(0.95) targets (docs/rldt.md)",
        ),
        Method("fpo", ("fpo",), BC_FLOW, source="FPOConfig defaults (docs/fpo.md)"),
        Method(
            "fpo-finetune",
            ("fpo", "--preset", "fpo-finetune"),
            BC_FLOW,
            # Until 2026-12 this name ran ours: FPOConfig with lr 1e-4 and gradient clip 1.0
            # (docs/benchmarks/superseded/finetune.json keeps those runs).
            source="fpo_finetune(): vanilla FPO as fpo-control's sweeps fine-tune it (actor lr "
            "1e-5, critic lr 1e-4, clip 0.01, gradient clip 5; docs/fpo.md)",
        ),
        Method(
            "fpo++",
            ("fpo", "--preset", "fpo++"),
            BC_FLOW,
            source="fpo_plus_plus(): FPO++'s released settings, EMA once per iteration (docs/fpo.md)",
        ),
        Method(
            "dppo",
            ("dppo",),
            BC_DIFFUSION,
            source="DPPOConfig: DPPO's Gym defaults, K' = 10 of 20 DDPM steps (docs/dppo.md)",
        ),
        Method(
            "dppo-flow",
            ("dppo",),
            BC_FLOW,
            source="DPPO's flow variant (sigma 0.05, clip 0.2), all 10 Euler steps (docs/dppo.md)",
        ),
        Method(
            "reinflow",
            ("reinflow",),
            BC_FLOW,
            source="ReinFlowConfig: the authors' Hopper settings (docs/reinflow.md)",
        ),
        Method(
            "qam",
            ("qam", "--preset", "qam-cpu"),
            BC_FLOW,
            source="qam_cpu(): QAM sized for a 2-core CPU (src/flowpolicy/algos/offpolicy_presets.py)",
        ),
        Method(
            "ppo",
            ("ppo",),
            BC_GAUSSIAN,
            source="PPOConfig defaults on the BC Gaussian policy (docs/ppo.md)",
        ),
        Method(
            "dsrl",
            ("dsrl", "--preset", "dsrl-cpu"),
            BC_FLOW,
            source="dsrl_cpu(): DSRL-NA with the released Hopper networks, utd 0.5 (docs/dsrl.md)",
        ),
        Method(
            "fql",
            ("fql", "--preset", "fql-cpu", "--offline-steps", "20000"),
            dataset=BC_DATA,
            source="fql_cpu() with 20k offline steps on the BC policies' dataset, then online "
            "(docs/fql.md); it learns its own flow, so it takes no --init",
        ),
    ),
    # 500k env steps: the minimum, and what a 2-core CPU can give eight methods.
    budgets={
        "Hopper-v5": Budget(500_000, 25_000, 10),
        "Walker2d-v5": Budget(500_000, 25_000, 10),
        "HalfCheetah-v5": Budget(500_000, 25_000, 10),
    },
    default_budget=Budget(500_000, 25_000, 10),
    seeds=(0, 1, 2),
    notes=(
        "BC → final: the return of the pretrained policy (each run's step-0 evaluation) and the "
        "final return, means over seeds.",
    ),
)


# --------------------------------------------------------------------------------------------
# Multimodality (toy tasks)
# --------------------------------------------------------------------------------------------

# The toy regime of tests/test_learning.py: 64 envs x 16 steps = 1024 env steps per iteration
# (1024 one-step episodes on the bandit), actions of one step (chunk 1), lr 1e-3 for a short
# budget. The on-policy methods also take its 4 minibatches x 10 epochs and constant lr.
TOY_BATCH = ("--num-envs", "64", "--num-steps", "16")
TOY_CHUNK = ("--chunk", "1", "--chunk-exec", "1")
TOY_PPO = (*TOY_BATCH, "--num-minibatches", "4", "--update-epochs", "10", "--anneal-lr", "False")
TOY_ACTOR = ("--actor-hidden", "64", "64", "64")  # the broad BC policies' residual 3x64
TOY_RLDT = ("rldt", *TOY_BATCH, *TOY_CHUNK, *TOY_ACTOR, "--actor-lr", "1e-3")  # its bandit toy
# DSRL steers a pretrained policy: the broad BC flow policy (actions uniform over the box).
BROAD_BANDIT = Prerequisite(
    "runs/reference/toy/bandit/bc-broad", "python benchmarks/broad_bandit_policy.py"
)
TOY_DSRL = ("--reward-scale", "10", "--initial-temperature", "0.1", "--critic-lr", "1e-3")
TOY_DSRL += ("--hidden", "64", "64", "--warmup-steps", "16")
TOY_FQL = ("--actor-hidden", "64", "64", "--critic-hidden", "64", "64", "--learning-rate", "1e-3")
TOY_FQL += ("--alpha", "1", "--normalize-q-loss", "True")
LATE_TAU = ("--tau-sampling", "uniform", "--tau-min", "0.8", "--output-scale", "0.05")

MULTIMODALITY = Protocol(
    name="multimodality",
    title="Multimodality on toy tasks",
    summary=(
        "Every method trains from scratch on the toy tasks (docs in src/flowpolicy/envs/toy.py) "
        "for a short budget; then 4000 random-sampling actions of the final policy on the bandit "
        "(four equal optima) and 100 random-sampling episodes on the navigation task (two equal "
        "routes round an obstacle) are counted: an optimum is covered when at least 10% of the "
        "actions are within 0.25 of it (flowpolicy.envs.optimum_coverage), a route when at least "
        "10% of the episodes reach the goal along it (flowpolicy.envs.route_of)."
    ),
    methods=(
        Method(
            "ppo",
            ("ppo", *TOY_PPO, "--learning-rate", "1e-3"),
            source="tests/test_learning.py's Gaussian PPO toy setting",
        ),
        Method(
            "fpo",
            ("fpo", *TOY_PPO, "--learning-rate", "1e-3"),
            source="docs/fpo.md: default FPO (CFM ratio over the whole flow) on the bandit",
        ),
        Method(
            "fpo-late-tau",
            ("fpo", *TOY_PPO, "--learning-rate", "1e-3", *LATE_TAU),
            source="docs/fpo.md: the CFM ratio on the late flow (tau ~ U[0.8, 1]), output scale 0.05",
        ),
        Method(
            "fpo++",
            ("fpo", "--preset", "fpo++", *TOY_PPO, "--learning-rate", "1e-3"),
            source="fpo_plus_plus() in the toy regime with lr 1e-3 (the preset's is 1e-4; not "
            "tuned on the toys)",
        ),
        Method(
            "dppo",
            (
                "dppo",
                *TOY_BATCH,
                *TOY_CHUNK,
                *TOY_ACTOR,
                "--denoising-steps",
                "10",
                "--ft-denoising-steps",
                "10",
                "--clip-coef",
                "0.2",
                "--clip-coef-base",
                "0.2",
                "--actor-lr",
                "3e-3",
                "--critic-hidden",
                "32",
                "32",
                "32",
            ),  # fmt: skip
            source="docs/dppo.md's bandit toy (DDPM K 10, clip 0.2, lr 3e-3), every step trained",
        ),
        Method(
            "dppo-flow",
            (
                "dppo",
                "--policy-class",
                "FlowPolicy",
                *TOY_BATCH,
                *TOY_CHUNK,
                *TOY_ACTOR,
                "--flow-steps",
                "4",
                "--ft-denoising-steps",
                "4",
                "--actor-lr",
                "3e-3",
                "--critic-hidden",
                "32",
                "32",
                "32",
            ),  # fmt: skip
            source="docs/dppo.md's bandit toy, flow variant (K 4, sigma 0.05, clip 0.2)",
        ),
        Method(
            "reinflow",
            (
                "reinflow",
                "--num-envs",
                "128",
                "--num-steps",
                "8",
                *TOY_CHUNK,
                *TOY_ACTOR,
                "--clip-coef",
                "0.05",
                "--actor-lr",
                "1e-3",
                "--lr-schedule",
                "constant",
            ),  # fmt: skip
            source="docs/reinflow.md's bandit toy (128 envs, clip 0.05, lr 1e-3, constant lr)",
        ),
        Method(
            "rldt",
            TOY_RLDT,
            source="docs/rldt.md's bandit toy (defaults, actor lr 1e-3, residual 3x64 actor)",
        ),
        Method(
            "rldt-initial-ref",
            (*TOY_RLDT, "--reference", "initial"),
            source="the same with the paper's constraint reference: the frozen initial policy",
        ),
        Method(
            "rldt-td0",
            (*TOY_RLDT, "--td-lambda", "0"),
            source="rldt with the authors' 1-step TD critic targets instead of the CPU default "
            "TD(0.95); toy/nav only (on the bandit every episode is one step, so both targets "
            "are the reward and the runs would repeat rldt's)",
            envs=("toy/nav",),
        ),
        Method(
            "qam",
            ("qam", "--preset", "qam-cpu", *TOY_BATCH, *TOY_CHUNK, *TOY_ACTOR),
            source="qam_cpu() in the toy regime (not tuned on the toys)",
        ),
        Method(
            "dsrl",
            ("dsrl", "--preset", "dsrl-cpu", *TOY_BATCH, *TOY_DSRL),
            BROAD_BANDIT,
            source="dsrl_cpu() steering the broad BC flow policy with tests/algos/test_dsrl.py's "
            "bandit settings (rewards x10, alpha from 0.1, critic lr 1e-3), one warm-up iteration",
            envs=("toy/bandit",),
        ),
        Method(
            "dsrl-sac",
            ("dsrl", "--preset", "dsrl-cpu", "--variant", "sac", *TOY_BATCH, *TOY_DSRL),
            BROAD_BANDIT,
            source="the same with DSRL-SAC (Q on the noise) instead of noise aliasing",
            envs=("toy/bandit",),
        ),
        Method(
            "fql",
            ("fql", "--preset", "fql-cpu", *TOY_BATCH, *TOY_CHUNK, *TOY_FQL),
            source="fql_cpu() online from scratch with tests/test_learning.py's bandit settings "
            "(2x64 networks, lr 1e-3, normalised Q loss, alpha 1)",
        ),
    ),
    budgets={
        "toy/bandit": Budget(20_480, 2_048, 100),
        "toy/nav": Budget(102_400, 10_240, 20),
    },
    default_budget=Budget(102_400, 10_240, 20),
    seeds=(0, 1, 2),
    coverage=True,
    notes=(
        "Settings: the toy regime of tests/test_learning.py (64 envs x 16 steps = 1024 env steps "
        "per iteration, one action per step, lr 1e-3) and, where a method's page documents a "
        "bandit setting, that setting. The documented DPPO, ReinFlow and RLDT bandit settings "
        "were measured from a broad behaviour-cloned policy; here these methods start from "
        "scratch, and nothing was tuned on toy/nav.",
    ),
)


# --------------------------------------------------------------------------------------------
# FPO's own DMC protocol (MuJoCo Playground)
# --------------------------------------------------------------------------------------------

FPO_DMC_TASKS = (
    "BallInCup",
    "CartpoleBalance",
    "CheetahRun",
    "FingerSpin",
    "FingerTurnEasy",
    "FingerTurnHard",
    "FishSwim",
    "PointMass",
    "ReacherEasy",
    "ReacherHard",
)
"""The FPO paper's 10 DeepMind Control tasks (Playground names)."""
CPU_REGIME = ("--num-envs", "256", "--num-steps", "60")
"""The CPU campaign's data regime: the paper's settings with 256 envs x 60 steps per iteration
(15,360 env steps, 32 minibatches of 480, 16 epochs) instead of 2048 x 480 (983,040). On this
2-core CPU the paper's iteration alone takes minutes, so an hour would hold a few iterations of
one task; with a batch 64x smaller the same hour holds about 30 iterations per run on several
tasks. It takes 64x more Adam steps per env step than the paper."""

FPO_DMC = Protocol(
    name="fpo-dmc",
    title="FPO's DeepMind Control protocol (MuJoCo Playground)",
    summary=(
        "FPO against Gaussian PPO on the FPO paper's 10 DMC tasks of MuJoCo Playground, in the "
        "paper's regime (presets fpo-playground and ppo-playground: 2048 envs, batches of "
        "983,040 env steps, 32 minibatches, 16 epochs, gamma 0.995, reward scale 10, critic "
        "5x256; FPO clip 0.05 with 8 (tau, eps) pairs and eps-MSE; PPO lr 3e-4, clip 0.1, "
        "the same 4x32 SiLU actor). The paper's figures, 5 seeds at 60M env steps, averaged "
        "over the 10 tasks: FPO 759.3 +- 45.3, Gaussian PPO 667.8 +- 66.0. Runs on a CPU use "
        "the -cpu methods (256 envs x 60 steps per iteration) at a reduced budget."
    ),
    methods=(
        Method(
            "fpo",
            ("fpo", "--preset", "fpo-playground"),
            source="fpo_playground(): the paper's Playground settings (algos/playground_regime.py)",
        ),
        Method(
            "ppo",
            ("ppo", "--preset", "ppo-playground"),
            source="ppo_playground(): Gaussian PPO as the paper tuned it, FPO's actor and regime",
        ),
        Method(
            "fpo-cpu",
            ("fpo", "--preset", "fpo-playground", *CPU_REGIME),
            source="fpo_playground() with 256 envs x 60 steps per iteration (protocols.CPU_REGIME)",
        ),
        Method(
            "ppo-cpu",
            ("ppo", "--preset", "ppo-playground", *CPU_REGIME),
            source="ppo_playground() with 256 envs x 60 steps per iteration (protocols.CPU_REGIME)",
        ),
    ),
    # The paper: 60M env steps, 10 evaluations. Brax evaluates 128 envs; 10 episodes here.
    budgets={f"playground/{task}": Budget(60_000_000, 6_000_000, 10) for task in FPO_DMC_TASKS},
    default_budget=Budget(60_000_000, 6_000_000, 10),
    seeds=(0, 1, 2, 3, 4),
)


# --------------------------------------------------------------------------------------------
# Humanoid locomotion from joystick commands (FPO's and FPO++'s headline use)
# --------------------------------------------------------------------------------------------

HUMANOID_CPU = ("--num-envs", "32", "--num-steps", "24")
"""The CPU runs' data regime: 32 envs x 24 steps per iteration (768 env steps) instead of
4096 x 24 (FPO++, PPO) or 2048 x 480 (FPO's Playground regime), so that a 2-core CPU makes
tens of iterations of each method in minutes: enough to see the pipeline and the first
learning, not the papers' results."""
HUMANOID_CPU_FPO_PLUS_PLUS = ("--update-epochs", "8", "--mc-samples", "8", "--flow-steps", "16")
"""FPO++'s humanoid update (32 epochs x 32 samples, 64 flow steps) cut for the CPU runs."""

HUMANOID_JOYSTICK = Protocol(
    name="humanoid-joystick",
    title="Humanoid locomotion from joystick commands (MuJoCo Playground, DMC humanoid)",
    summary=(
        "FPO, FPO++ and Gaussian PPO on playground/HumanoidJoystick: the DeepMind Control "
        "humanoid tracking a sampled (forward, lateral, yaw-rate) velocity command, the "
        "policy seeing proprioception and the command only (docs/humanoid_joystick.md). "
        "FPO++ and PPO share FPO++'s released humanoid networks and data regime (presets "
        "fpo++-humanoid and ppo-humanoid: 4096 envs x 24 steps, actor 3x256 ELU, critic "
        "3x768 ELU); FPO runs the FPO paper's Playground settings (fpo-playground). The "
        "return is the tracking reward; benchmarks/joystick_eval.py adds the tracking error "
        "per command type and the falls per episode of the final policies. Runs on a CPU use "
        "the -cpu methods (32 envs x 24 steps per iteration) at a reduced budget."
    ),
    methods=(
        Method(
            "fpo++",
            ("fpo", "--preset", "fpo++-humanoid"),
            source="fpo_plus_plus_humanoid(): FPO++'s released H1/G1 settings "
            "(algos/locomotion_regime.py)",
        ),
        Method(
            "fpo",
            ("fpo", "--preset", "fpo-playground"),
            source="fpo_playground(): the FPO paper's Playground settings",
        ),
        Method(
            "ppo",
            ("ppo", "--preset", "ppo-humanoid"),
            source="ppo_humanoid(): rsl_rl's locomotion PPO with FPO++'s networks and data",
        ),
        Method(
            "fpo++-cpu",
            ("fpo", "--preset", "fpo++-humanoid", *HUMANOID_CPU, *HUMANOID_CPU_FPO_PLUS_PLUS),
            source="fpo_plus_plus_humanoid() with 32 envs x 24 steps, 8 epochs, 8 samples, "
            "16 flow steps (protocols.HUMANOID_CPU)",
        ),
        Method(
            "fpo-cpu",
            ("fpo", "--preset", "fpo-playground", *HUMANOID_CPU),
            source="fpo_playground() with 32 envs x 24 steps (protocols.HUMANOID_CPU)",
        ),
        Method(
            "ppo-cpu",
            ("ppo", "--preset", "ppo-humanoid", *HUMANOID_CPU),
            source="ppo_humanoid() with 32 envs x 24 steps (protocols.HUMANOID_CPU)",
        ),
    ),
    # FPO++ trains H1/G1 for 2000 iterations of 98,304 env steps (197M).
    budgets={"playground/HumanoidJoystick": Budget(200_000_000, 10_000_000, 10)},
    default_budget=Budget(200_000_000, 10_000_000, 10),
    seeds=(0, 1, 2),
)


PROTOCOLS: dict[str, Protocol] = {
    p.name: p for p in (FROM_SCRATCH, FINETUNE, MULTIMODALITY, FPO_DMC, HUMANOID_JOYSTICK)
}
"""Every protocol by name."""
