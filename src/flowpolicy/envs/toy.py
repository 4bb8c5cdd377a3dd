"""Small multimodal tasks where a unimodal Gaussian policy must pick one mode.

Both step in pure numpy, take microseconds per step and are deterministic given the seed, so tests
can check that a flow policy covers several modes (`optimum_coverage`, `route_of`).

- `BanditEnv` ("toy/bandit"): one-step 2-D bandit with four equal optima.
- `NavEnv` ("toy/nav"): 2-D point navigation around a disc obstacle with two mirror-symmetric,
  equally good routes; the start sits on the saddle between them, as in the FPO gridworld.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
import torch
from gymnasium import spaces
from torch import Tensor

_CORNERS = np.array([[0.5, 0.5], [0.5, -0.5], [-0.5, 0.5], [-0.5, -0.5]])


def optimum_coverage(actions: np.ndarray, optima: np.ndarray, radius: float = 0.25) -> np.ndarray:
    """Fraction of actions within `radius` of each optimum.

    Args:
        actions: Sampled actions, shape `(n, D)`.
        optima: Optima, shape `(k, D)`.
        radius: Euclidean distance that counts as hitting an optimum.

    Returns:
        Shape `(k,)`: entry k is the fraction of the n actions within `radius` of optimum k
        (zeros when n == 0). A mode is "covered" when its entry is clearly above zero.
    """
    actions = np.asarray(actions, dtype=np.float64).reshape(-1, np.shape(optima)[-1])
    optima = np.asarray(optima, dtype=np.float64)
    if len(actions) == 0:
        return np.zeros(len(optima))
    distances = np.linalg.norm(actions[:, None, :] - optima[None, :, :], axis=-1)  # (n, k)
    return (distances <= radius).mean(axis=0)


class BanditEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """One-step bandit in [-1, 1]^2 with several equally good Gaussian-bump optima.

    The observation is a constant vector of ones, every step terminates, and the reward is
    `max_k exp(-||a - c_k||^2 / (2 width^2))`: 1 at each optimum, ~0 between them.

    Attributes:
        optima: Optimal actions, shape `(k, 2)`.
        width: Standard deviation of each reward bump.
    """

    metadata = {"render_modes": []}

    def __init__(self, width: float = 0.15, optima: np.ndarray | None = None) -> None:
        """Build the bandit.

        Args:
            width: Width of each reward bump, > 0.
            optima: Optimal actions, shape `(k, 2)`, inside [-1, 1]^2; default the four points
                `(+-0.5, +-0.5)`.

        Raises:
            ValueError: On a non-positive width or optima of the wrong shape or out of bounds.
        """
        if width <= 0:
            raise ValueError(f"width must be > 0, got {width}.")
        optima = _CORNERS if optima is None else np.asarray(optima, dtype=np.float64)
        if optima.ndim != 2 or optima.shape[1] != 2 or np.abs(optima).max() > 1:
            raise ValueError(f"optima must have shape (k, 2) inside [-1, 1]^2, got {optima}.")
        self.width = float(width)
        self.optima = optima.copy()
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def reward(self, actions: np.ndarray) -> np.ndarray:
        """Reward of (unclipped) actions of shape `(..., 2)`; returns shape `(...)`."""
        diff = np.asarray(actions, dtype=np.float64)[..., None, :] - self.optima  # (..., k, 2)
        bumps = np.exp(-np.sum(diff**2, axis=-1) / (2 * self.width**2))  # (..., k)
        return bumps.max(axis=-1)

    def differentiable_reward(self, actions: Tensor) -> Tensor:
        """:meth:`reward` in torch, so it has a gradient: (..., 2) -> (...), float32.

        Tests and benchmarks use ``scale * differentiable_reward`` as a known Q.
        """
        optima = torch.as_tensor(self.optima, dtype=actions.dtype, device=actions.device)
        sq_distance = (actions.unsqueeze(-2) - optima).square().sum(-1)  # (..., k)
        return torch.exp(-sq_distance / (2 * self.width**2)).max(-1).values

    def reward_gradient(self, actions: Tensor) -> Tensor:
        """``grad_a reward(a)`` (..., 2), without a graph; zero at each optimum."""
        with torch.enable_grad():
            actions = actions.detach().requires_grad_(True)
            (gradient,) = torch.autograd.grad(self.differentiable_reward(actions).sum(), actions)
        return gradient

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start the (one-step) episode."""
        super().reset(seed=seed)
        return np.ones(2, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Score the action; every step terminates."""
        action = np.clip(action, self.action_space.low, self.action_space.high)
        nearest = int(np.argmin(np.linalg.norm(self.optima - action, axis=-1)))
        info = {"nearest_optimum": nearest}
        return np.ones(2, dtype=np.float32), float(self.reward(action)), True, False, info


def route_of(trajectory_xs: np.ndarray, threshold: float = 0.2) -> int:
    """Which way round the obstacle a `NavEnv` trajectory went.

    Args:
        trajectory_xs: x-coordinates visited, shape `(T,)`, or positions/observations `(T, 2)`.
        threshold: How far from the centre line (|x|) the trajectory must swing to count as a
            route; the obstacle has radius 0.3, so passing it needs |x| >= 0.3.

    Returns:
        -1 for the left route, +1 for the right one, 0 if it never left the centre line.
    """
    xs = np.asarray(trajectory_xs, dtype=np.float64)
    if xs.ndim == 2:
        xs = xs[:, 0]
    if xs.size == 0:
        return 0
    # The farthest swing decides: jitter and wobble near x = 0 must not flip the answer.
    widest = xs[np.argmax(np.abs(xs))]
    return 0 if abs(widest) < threshold else int(np.sign(widest))


def _geodesic_distance(p: np.ndarray, q: np.ndarray, radius: float) -> float:
    """Shortest path length from p to q (both outside the disc) that avoids a disc at the origin.

    If q is visible from p the path is straight; otherwise it is tangent segment + arc + tangent
    segment. Using it as the progress potential removes the local optimum of plain Euclidean
    progress (pushing into the obstacle) while keeping the saddle on the symmetry axis.
    """
    norm_p, norm_q = float(np.linalg.norm(p)), float(np.linalg.norm(q))
    theta = np.arccos(np.clip(np.dot(p, q) / (norm_p * norm_q), -1.0, 1.0))
    # Angles at the origin between each point and its tangent point on the circle.
    alpha = np.arccos(min(1.0, radius / norm_p))
    beta = np.arccos(min(1.0, radius / norm_q))
    if theta <= alpha + beta:
        return float(np.linalg.norm(p - q))
    tangents = np.sqrt(max(norm_p**2 - radius**2, 0.0)) + np.sqrt(norm_q**2 - radius**2)
    return float(tangents + radius * (theta - alpha - beta))


class NavEnv(gymnasium.Env[np.ndarray, np.ndarray]):
    """Point navigation in [-1, 1]^2 around a disc obstacle, with two equally good routes.

    The agent starts near (0, -0.8) and must reach the goal at (0, 0.8); a disc at the origin
    blocks the straight line, so passing it on the left or the right is equally good by mirror
    symmetry x -> -x. Action: velocity in [-1, 1]^2, moved `STEP_SIZE` per unit per step.
    Observation: the position (x, y) as float32.

    Reward per step: decrease of the obstacle-avoiding (geodesic) distance to the goal, minus
    `STEP_COST`, minus `COLLISION_PENALTY` when the move ran into the obstacle (the agent is then
    stopped on the obstacle's edge), plus `GOAL_BONUS` on reaching the goal (terminated). The
    episode is truncated after `max_episode_steps` steps.
    """

    metadata = {"render_modes": []}

    START = (0.0, -0.8)
    GOAL = (0.0, 0.8)
    STEP_SIZE = 0.1
    GOAL_RADIUS = 0.1
    STEP_COST = 0.01
    COLLISION_PENALTY = 0.05
    GOAL_BONUS = 1.0

    def __init__(
        self,
        max_episode_steps: int = 50,
        obstacle_radius: float = 0.3,
        start_jitter: float = 0.05,
    ) -> None:
        """Build the task.

        Args:
            max_episode_steps: Time limit; the step that reaches it returns `truncated=True`.
            obstacle_radius: Radius of the disc at the origin; larger than one step's length
                (0.1 * sqrt 2) so that no step can jump across it.
            start_jitter: Start position is START + uniform(-jitter, jitter) per coordinate.

        Raises:
            ValueError: On a non-positive time limit or an obstacle that is too small or
                covers the start or the goal.
        """
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}.")
        if not self.STEP_SIZE * np.sqrt(2) < obstacle_radius < 0.6:
            raise ValueError(
                f"obstacle_radius must be in (0.142, 0.6) (longer than one diagonal step, clear of start and goal), got {obstacle_radius}."
            )
        self.max_episode_steps = max_episode_steps
        self.obstacle_radius = float(obstacle_radius)
        self.start_jitter = float(start_jitter)
        self.goal = np.array(self.GOAL)
        self.observation_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._pos = np.array(self.START)
        self._steps = 0

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode.

        Args:
            seed: Seeds `np_random` (start jitter).
            options: `{"start": (x, y)}` places the agent exactly there (no jitter); the point
                must lie in [-1, 1]^2 outside the obstacle.
        """
        super().reset(seed=seed)
        if options and "start" in options:
            start = np.asarray(options["start"], dtype=np.float64)
            if np.abs(start).max() > 1 or np.linalg.norm(start) < self.obstacle_radius:
                raise ValueError(f"start {start} must be in [-1, 1]^2 outside the obstacle.")
        else:
            jitter = self.np_random.uniform(-self.start_jitter, self.start_jitter, size=2)
            start = np.array(self.START) + jitter
        self._pos = start
        self._steps = 0
        return self._pos.astype(np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Move by `STEP_SIZE * action` (clipped), stopping at walls and the obstacle's edge."""
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        old = self._pos
        new = np.clip(old + self.STEP_SIZE * action, -1.0, 1.0)
        dist = float(np.linalg.norm(new))
        # The tolerance keeps a point projected onto the edge (rounding may put it 1 ulp inside)
        # from counting as a collision when it stands still or slides along the edge.
        collided = dist < self.obstacle_radius - 1e-9
        if collided:
            new = new * (self.obstacle_radius / dist)  # dist > 0: a step is shorter than radius
        self._pos = new
        self._steps += 1

        progress = _geodesic_distance(old, self.goal, self.obstacle_radius) - _geodesic_distance(
            new, self.goal, self.obstacle_radius
        )
        reached = bool(np.linalg.norm(new - self.goal) < self.GOAL_RADIUS)
        reward = progress - self.STEP_COST - self.COLLISION_PENALTY * collided
        reward += self.GOAL_BONUS * reached
        truncated = not reached and self._steps >= self.max_episode_steps
        info = {"collided": collided, "is_success": reached}
        return new.astype(np.float32), float(reward), reached, truncated, info
