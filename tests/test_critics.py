"""Critics: the value net's shape, and the Q ensemble's reductions, Polyak targets, disjoint
member training, bootstrap values and action gradients."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from flowpolicy.critics import QEnsemble, ValueNet, q_network

DO, A, B = 3, 2, 10


def _ensemble(**kw) -> QEnsemble:
    torch.manual_seed(0)
    return QEnsemble(DO, A, **({"num_members": 2, "hidden": (8, 8)} | kw))


def test_value_net_shape() -> None:
    assert ValueNet(DO)(torch.randn(B, DO)).shape == (B,)


def test_q_ensemble_shapes_and_members_differ() -> None:
    critic = _ensemble(num_members=3)
    obs, action = torch.randn(B, DO), torch.randn(B, A)
    values = critic(obs, action)
    assert values.shape == critic.target_values(obs, action).shape == (3, B)
    assert not torch.allclose(values[0], values[1])  # independent initialisations
    # targets start as exact copies and carry no gradient
    assert torch.equal(critic.target_values(obs, action), values.detach())
    assert not any(p.requires_grad for p in critic.targets.parameters())


def test_reductions_by_hand() -> None:
    values = torch.tensor([[1.0, 4.0], [3.0, 0.0], [2.0, 2.0]])  # (E = 3, B = 2)
    assert torch.equal(QEnsemble.reduce(values, "min"), torch.tensor([1.0, 0.0]))
    assert torch.equal(QEnsemble.reduce(values, "mean"), torch.tensor([2.0, 2.0]))
    # unbiased std: column 0 -> 1, column 1 -> 2
    pessimistic = QEnsemble.reduce(values, "pessimistic", pessimism=0.5)
    assert torch.allclose(pessimistic, torch.tensor([1.5, 1.0]))
    single = QEnsemble.reduce(values[:1], "pessimistic")
    assert torch.equal(single, values[0])  # one member: no spread, no penalty


def test_polyak_update_arithmetic() -> None:
    critic = _ensemble(target_decay=0.995)
    with torch.no_grad():
        for p in critic.members.parameters():
            p.fill_(2.0)
        for p in critic.targets.parameters():
            p.fill_(1.0)
    critic.update_targets()
    for p in critic.targets.parameters():
        assert torch.allclose(p, torch.full_like(p, 0.995 * 1.0 + 0.005 * 2.0))
    critic.update_targets()  # a second step moves 0.5% of the remaining gap again
    expected = 2.0 - 0.995**2 * (2.0 - 1.0)
    for p in critic.targets.parameters():
        assert torch.allclose(p, torch.full_like(p, expected))
    for p in critic.members.parameters():
        assert torch.equal(p, torch.full_like(p, 2.0))  # the online nets are untouched


def _member_grads(critic: QEnsemble, obs, action, targets, member_of) -> list[torch.Tensor]:
    critic.zero_grad()
    loss, _ = critic.loss(obs, action, targets, member_of)
    loss.backward()
    return [torch.cat([p.grad.flatten() for p in member.parameters()]) for member in critic.members]


def test_members_train_on_disjoint_rows() -> None:
    critic = _ensemble()
    obs, action, targets = torch.randn(B, DO), torch.randn(B, A), torch.randn(B)
    member_of = torch.arange(B) % 2
    loss, metrics = critic.loss(obs, action, targets, member_of)
    values = critic(obs, action).detach()
    by_hand = sum(
        (values[e, member_of == e] - targets[member_of == e]).square().mean() for e in range(2)
    )
    assert loss.item() == pytest.approx(float(by_hand), rel=1e-6)
    assert set(metrics) == {"critic/q_mean", "critic/td_error"}

    before = _member_grads(critic, obs, action, targets, member_of)
    changed = targets.clone()
    changed[member_of == 1] += 5.0  # only member 1's rows
    after = _member_grads(critic, obs, action, changed, member_of)
    assert torch.equal(before[0], after[0])  # member 0 never sees member 1's data
    assert not torch.allclose(before[1], after[1])
    with pytest.raises(ValueError, match="no data"):
        critic.loss(obs, action, targets, torch.zeros(B, dtype=torch.long))


def test_bootstrap_value_averages_the_reduced_targets_over_actions() -> None:
    critic = _ensemble()
    obs = torch.randn(B, DO)
    actions = torch.randn(3, B, A)  # M = 3 policy actions per state
    expected = torch.stack([critic.target_values(obs, a).min(dim=0).values for a in actions]).mean(
        dim=0
    )
    assert torch.allclose(critic.bootstrap_value(obs, actions, "min"), expected)
    mean = critic.bootstrap_value(obs, actions, "mean")
    assert torch.all(mean >= critic.bootstrap_value(obs, actions, "min") - 1e-6)


def test_action_gradient_is_the_member_mean_and_leaves_parameters_alone() -> None:
    critic = _ensemble()
    obs, action = torch.randn(B, DO), torch.randn(B, A)
    gradient = critic.action_gradient(obs, action)
    assert gradient.shape == (B, A) and not gradient.requires_grad
    eps = 1e-3  # central differences of the member mean, one action coordinate at a time
    for i in range(A):
        shift = torch.zeros(A)
        shift[i] = eps
        with torch.no_grad():
            up = critic(obs, action + shift).mean(0)
            down = critic(obs, action - shift).mean(0)
        assert torch.allclose(gradient[:, i], (up - down) / (2 * eps), atol=1e-3)
    assert all(p.grad is None for p in critic.parameters())


def test_layer_norm_and_normal_init_options() -> None:
    torch.manual_seed(0)
    net = q_network(5, (64, 64), "silu", layer_norm=True, init_std=0.1)
    norms = [m for m in net if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2  # one per hidden layer, none after the head
    assert isinstance(net[-1], nn.Linear) and net[-1].out_features == 1
    linear = [m for m in net if isinstance(m, nn.Linear)]
    assert linear[1].weight.std().item() == pytest.approx(0.1, rel=0.1)
    assert all(torch.equal(m.bias, torch.zeros_like(m.bias)) for m in linear)
    critic = QEnsemble(DO, A, 2, (16,), layer_norm=True)
    assert critic(torch.randn(B, DO), torch.randn(B, A)).shape == (2, B)


def test_invalid_ensembles() -> None:
    with pytest.raises(ValueError, match="num_members"):
        QEnsemble(DO, A, num_members=0)
    with pytest.raises(ValueError, match="target_decay"):
        QEnsemble(DO, A, target_decay=1.0)
