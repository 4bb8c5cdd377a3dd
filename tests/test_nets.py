"""nets.py: time features, MLP and residual MLP construction, the time-conditioned networks."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowpolicy.nets import (
    DenoisingMLP,
    ResidualMLP,
    SinusoidalTimeEmbedding,
    VelocityMLP,
    fourier_time_features,
    mlp,
    residual_shape,
    sinusoidal_embedding,
)


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


def test_residual_mlp_layout_and_skip_connection() -> None:
    torch.manual_seed(0)
    net = ResidualMLP(5, 3, width=16, blocks=2, activation="mish", layer_norm=True)
    assert (net.input.in_features, net.input.out_features) == (5, 16)
    assert (net.output.in_features, net.output.out_features) == (16, 3)
    assert len(net.blocks) == 2
    assert sum(isinstance(m, nn.LayerNorm) for m in net.modules()) == 4
    assert sum(isinstance(m, nn.Linear) for m in net.modules()) == 2 + 2 * 2
    x = torch.randn(7, 5)
    assert net(x).shape == (7, 3)
    # with each block's second layer zeroed, every block is the identity: h + 0
    for block in net.blocks:
        nn.init.zeros_(block.linear2.weight)
        nn.init.zeros_(block.linear2.bias)
    assert torch.allclose(net(x), net.output(net.input(x)))


def test_residual_block_is_pre_activation() -> None:
    torch.manual_seed(0)
    net = ResidualMLP(2, 2, width=4, blocks=1, activation="relu")
    block = net.blocks[0]
    h = torch.randn(3, 4)
    expected = h + block.linear2(torch.relu(block.linear1(torch.relu(h))))
    assert torch.allclose(block(h), expected)


def test_residual_shape() -> None:
    assert residual_shape((512, 512, 512)) == (512, 1)
    assert residual_shape((64,) * 5) == (64, 2)
    assert residual_shape((32,)) == (32, 0)
    for bad in [(512, 512), (512, 256, 512), ()]:
        with pytest.raises(ValueError, match="odd number"):
            residual_shape(bad)


def test_sinusoidal_embedding_known_values() -> None:
    # dim 4: frequencies 10000^(-j / 1), j = 0, 1 -> 1 and 1e-4; layout [sin, sin, cos, cos]
    time = torch.tensor([0.0, math.pi / 2, 3.0])
    emb = sinusoidal_embedding(time, 4)
    assert emb.shape == (3, 4)
    assert torch.equal(emb[0], torch.tensor([0.0, 0.0, 1.0, 1.0]))
    expected = torch.tensor([1.0, math.sin(math.pi / 2 * 1e-4), 0.0, math.cos(math.pi / 2 * 1e-4)])
    assert torch.allclose(emb[1], expected, atol=1e-6)
    expected = torch.tensor([math.sin(3.0), math.sin(3e-4), math.cos(3.0), math.cos(3e-4)])
    assert torch.allclose(emb[2], expected, atol=1e-6)
    with pytest.raises(ValueError):
        sinusoidal_embedding(time, 5)


def test_time_embedding_is_16_32_mish_16() -> None:
    embedding = SinusoidalTimeEmbedding(16)
    linears = [m for m in embedding.net if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 32), (32, 16)]
    assert isinstance(embedding.net[1], nn.Mish)
    assert embedding(torch.arange(5.0)).shape == (5, 16)


@pytest.mark.parametrize("residual", [True, False])
def test_denoising_mlp_input_order_and_output_scale(residual: bool) -> None:
    torch.manual_seed(0)
    net = DenoisingMLP(3, 4, hidden=(16, 16, 16), residual=residual, time_dim=8, output_scale=0.5)
    obs, x, time = torch.randn(6, 3), torch.randn(6, 4), torch.rand(6)
    out = net(obs, x, time)
    assert out.shape == (6, 4)
    # DPPO's input layout: [x, time embedding, obs]
    features = torch.cat([x, net.time_embedding(time), obs], dim=-1)
    assert torch.allclose(out, 0.5 * net.net(features))
    assert isinstance(net.net, ResidualMLP) == residual
    assert not torch.allclose(net(obs, x, time), net(obs, x, time + 1.0))
    with pytest.raises(ValueError):
        DenoisingMLP(3, 4, hidden=(16, 16), residual=True)
