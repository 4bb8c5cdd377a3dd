"""nets.py: time features, MLP construction, the velocity network's interface."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowpolicy.nets import VelocityMLP, fourier_time_features, mlp


def test_fourier_time_features_shape_and_known_values() -> None:
    tau = torch.tensor([0.0, 0.5, 0.25])
    features = fourier_time_features(tau, 8)
    assert features.shape == (3, 8)
    # tau = 0: cos = 1, sin = 0 at every frequency
    assert torch.equal(features[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    # tau = 1/2, frequencies pi * 2^j: angles pi/2, pi, 2 pi, 4 pi
    expected = torch.tensor([0.0, -1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    assert torch.allclose(features[1], expected, atol=1e-6)
    # tau = 1/4: angles pi/4, pi/2, pi, 2 pi
    r = math.sqrt(0.5)
    expected = torch.tensor([r, 0.0, -1.0, 1.0, r, 1.0, 0.0, 0.0])
    assert torch.allclose(features[2], expected, atol=1e-6)


def test_fourier_time_features_rejects_odd_size() -> None:
    with pytest.raises(ValueError, match="even"):
        fourier_time_features(torch.zeros(2), 5)


def test_mlp_layout_and_init() -> None:
    torch.manual_seed(0)
    net = mlp(3, 2, (16, 8), activation="tanh", output_gain=0.01)
    linears = [m for m in net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 16), (16, 8), (8, 2)]
    assert sum(isinstance(m, nn.Tanh) for m in net) == 2
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)
    # orthogonal init with gain g: W W^T = g^2 I for a wide-to-narrow head
    head = linears[-1].weight
    assert torch.allclose(head @ head.T, 0.01**2 * torch.eye(2), atol=1e-7)
    assert net(torch.randn(5, 3)).shape == (5, 2)


def test_velocity_mlp_shape_and_output_scale() -> None:
    torch.manual_seed(0)
    obs, x, tau = torch.randn(6, 3), torch.randn(6, 4), torch.rand(6)
    net = VelocityMLP(3, 4, hidden=(8, 8), time_dim=4, output_scale=0.25)
    out = net(obs, x, tau)
    assert out.shape == (6, 4)
    raw = net.net(torch.cat([obs, x, fourier_time_features(tau, 4)], dim=-1))
    assert torch.allclose(out, 0.25 * raw)
    # the velocity depends on time
    assert not torch.allclose(net(obs, x, tau), net(obs, x, 1.0 - tau))
