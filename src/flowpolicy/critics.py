"""Critics: a state-value network for the on-policy methods."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from flowpolicy.nets import Activation, mlp


class ValueNet(nn.Module):
    """``V_phi(s)``: an MLP on the (already normalised) observation; (B, Do) -> (B,)."""

    def __init__(
        self, obs_dim: int, hidden: Sequence[int] = (64, 64), activation: Activation = "tanh"
    ) -> None:
        super().__init__()
        self.net = mlp(obs_dim, 1, hidden, activation, output_gain=1.0)

    def forward(self, obs_normalised: Tensor) -> Tensor:
        return self.net(obs_normalised).squeeze(-1)
