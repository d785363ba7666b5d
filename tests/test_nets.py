"""Stacked networks: members are independent networks computed in one batched matmul."""

import math

import torch

from algorithms.critic import EnsembleCritic, pessimistic_value
from algorithms.nets import MLP, TanhGaussian


def member(mlp: MLP, index: int, layer_norm: bool) -> torch.nn.Sequential:
    """Member `index` of a stacked MLP as an ordinary torch module."""
    layers = []
    for i, linear in enumerate(mlp.linears):
        torch_linear = torch.nn.Linear(*linear.weight.shape[-2:])
        torch_linear.weight.data = linear.weight[index].T.clone()
        torch_linear.bias.data = linear.bias[index, 0].clone()
        layers.append(torch_linear)
        if i < len(mlp.linears) - 1:
            layers.append(torch.nn.GELU(approximate="tanh"))
            if layer_norm:
                norm = torch.nn.LayerNorm(linear.weight.shape[-1], eps=1e-6)
                norm.weight.data = mlp.norms[i].weight[index, 0].clone()
                norm.bias.data = mlp.norms[i].bias[index, 0].clone()
                layers.append(norm)
    return torch.nn.Sequential(*layers)


def test_ensemble_members_equal_separate_modules():
    torch.manual_seed(0)
    critic = EnsembleCritic(3, 2, (16, 16), num_critics=4)
    for norm in critic.net.norms:  # non-trivial LayerNorm parameters
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.5, 0.5)
    obs, actions = torch.randn(7, 3), torch.randn(7, 2)
    qs = critic(obs, actions)
    assert qs.shape == (4, 7)
    for k in range(4):
        expected = member(critic.net, k, layer_norm=True)(torch.cat([obs, actions], -1)).squeeze(-1)
        torch.testing.assert_close(qs[k], expected)
    assert not torch.allclose(qs[0], qs[1])  # members are initialised independently


def test_xavier_uniform_bounds_and_zero_biases():
    torch.manual_seed(0)
    mlp = MLP(100, 50, (200,), stack=(3,))
    for linear in mlp.linears:
        fan_in, fan_out = linear.weight.shape[-2:]
        bound = math.sqrt(6 / (fan_in + fan_out))
        assert linear.weight.abs().max() <= bound
        assert linear.weight.abs().max() > 0.9 * bound
        assert torch.count_nonzero(linear.bias) == 0


def test_stacked_seeds_equal_member_networks():
    torch.manual_seed(1)
    mlp = MLP(4, 3, (8,), stack=(2,))
    x = torch.randn(2, 5, 4)
    y = mlp(x)
    for s in range(2):
        torch.testing.assert_close(y[s], member(mlp, s, layer_norm=False)(x[s]))
    extra = torch.randn(2, 5, 6, 4)  # more than one batch dimension
    torch.testing.assert_close(mlp(extra)[:, :, 2], mlp(extra[:, :, 2]))


def test_frozen_call_blocks_parameter_gradients_only():
    critic = EnsembleCritic(3, 2, (8,), num_critics=2)
    actions = torch.randn(5, 2, requires_grad=True)
    critic(torch.randn(5, 3), actions, frozen=True).sum().backward()
    assert actions.grad is not None and actions.grad.abs().sum() > 0
    assert all(p.grad is None for p in critic.parameters())


def test_pessimistic_value_uses_population_std():
    qs = torch.tensor([[1.0, 2.0], [3.0, 6.0]])  # (K=2, B=2)
    torch.testing.assert_close(pessimistic_value(qs, 0.5), torch.tensor([2.0 - 0.5, 4.0 - 1.0]))


def test_tanh_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    policy = TanhGaussian(3, 2, (16, 16))
    x, noise = torch.randn(6, 3), torch.randn(6, 2)
    sample, log_prob = policy(x, noise)
    h = policy.trunk(x)
    mean, log_std = policy.mean(h), policy.log_std(h).clamp(-20, 2)
    dist = torch.distributions.TransformedDistribution(
        torch.distributions.Independent(torch.distributions.Normal(mean, log_std.exp()), 1),
        [torch.distributions.TanhTransform()],
    )
    torch.testing.assert_close(sample, torch.tanh(mean + log_std.exp() * noise))
    torch.testing.assert_close(log_prob, dist.log_prob(sample), rtol=1e-4, atol=1e-4)
