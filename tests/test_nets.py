"""Stacked networks: members are independent networks computed in one batched matmul."""

import math

import torch

from algorithms.critic import EnsembleCritic, pessimistic_value
from algorithms.nets import MLP, StackedLinear, TanhGaussian


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


def test_one_output_head_equals_batched_product_with_gradients():
    """The one-column head is computed as a product and sum: values and gradients equal the
    batched matrix product's, for one or two stack dimensions and an input shared by members."""
    torch.manual_seed(0)
    for stack, x_shape in (((4,), (4, 7, 5)), ((2, 3), (2, 3, 7, 5)), ((4,), (7, 5))):
        head = StackedLinear(5, 1, stack).double()
        head.bias.data.normal_()
        x = torch.randn(x_shape, dtype=torch.float64, requires_grad=True)
        got = head(x)
        want = torch.matmul(x, head.weight) + head.bias
        assert got.shape == want.shape == (*stack, 7, 1)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        upstream = torch.randn_like(got)
        grads_got = torch.autograd.grad(got, (x, head.weight, head.bias), upstream)
        grads_want = torch.autograd.grad(want, (x, head.weight, head.bias), upstream)
        for a, b in zip(grads_got, grads_want):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


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
