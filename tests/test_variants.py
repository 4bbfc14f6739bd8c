"""The built-in variants of the last decade: the fact that defines each at initialization, the
seed-aware normalization layers they use, and the contract every variant keeps (shapes,
gradients, stacked seeds)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from skipbench.layers import BatchNorm, LayerNorm
from skipbench.network import build

NEW_VARIANTS = ("rezero", "skipinit", "fixup", "layerscale", "preln", "postln", "deepnorm", "bn-residual",
                "nf-residual", "stochastic-depth", "diracnet", "residual-linear")
SEEDS = range(200)


def mean_and_error(samples) -> tuple[float, float]:
    """The sample mean and its standard error."""
    t = torch.as_tensor(list(samples), dtype=torch.float64)
    return t.mean().item(), (t.std(unbiased=True) / math.sqrt(len(t))).item()


def assert_within_3se(samples, expected: float) -> None:
    mean, se = mean_and_error(samples)
    assert abs(mean - expected) <= 3 * se, f"mean {mean:.5f} +- {se:.5f} (1 SE), expected {expected:.5f}"


def net(registry, variant: str, depth: int, width: int, seed: int = 0):
    torch.manual_seed(seed)
    return build(registry, registry.variants[variant], depth, width)


def block(registry, variant: str, width: int, seed: int = 0, block_index: int = 0, n_blocks: int = 4):
    """One block of `variant`, given its position when the builder asks for it."""
    v = registry.variants[variant]
    builder = registry.builders[v.builder]
    position = {"block_index": block_index, "n_blocks": n_blocks} if builder.position else {}
    torch.manual_seed(seed)
    return builder.build(width, **registry.params_of(v), **position)


def trunk(network) -> nn.Module:
    return nn.Sequential(*network.blocks)


def stacked(modules: list[nn.Module]) -> nn.Module:
    """One module holding every module's parameters and buffers stacked along a leading seed
    dimension (as the engine stacks seeds)."""
    out = copy.deepcopy(modules[0])
    for name, _ in [*out.named_parameters(), *out.named_buffers()]:
        owner, _, leaf = name.rpartition(".")
        sub = out.get_submodule(owner)
        values = torch.stack([dict([*m.named_parameters(), *m.named_buffers()])[name].detach() for m in modules])
        if leaf in sub._parameters:
            sub._parameters[leaf] = nn.Parameter(values)
        else:
            sub._buffers[leaf] = values
    return out


# -- seed-aware LayerNorm and BatchNorm ----------------------------------------------------------
def _randomize_affine(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        module.weight.copy_(1 + torch.randn(module.weight.shape, generator=gen))
        module.bias.copy_(torch.randn(module.bias.shape, generator=gen))


def test_layernorm_matches_torch_for_one_seed():
    ours, theirs = LayerNorm(12), nn.LayerNorm(12)
    assert {n: p.shape for n, p in ours.named_parameters()} == {n: p.shape for n, p in theirs.named_parameters()}
    assert torch.equal(ours.weight, theirs.weight) and torch.equal(ours.bias, theirs.bias)
    _randomize_affine(ours, 1)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(7, 12) * 3 + 1
    assert torch.equal(ours(x), theirs(x))


def test_layernorm_stack_equals_seeds_one_by_one():
    layers = [LayerNorm(10) for _ in range(3)]
    for s, layer in enumerate(layers):
        _randomize_affine(layer, s)
    x = torch.randn(3, 6, 10) * 2 - 1
    alone = torch.stack([layer(x[j]) for j, layer in enumerate(layers)])
    torch.testing.assert_close(stacked(layers)(x), alone)


@pytest.mark.parametrize("momentum", [0.1, 0.5])
def test_batchnorm_matches_torch_for_one_seed(momentum):
    ours, theirs = BatchNorm(8, momentum=momentum), nn.BatchNorm1d(8, momentum=momentum)
    assert set(dict(ours.named_buffers())) == {"running_mean", "running_var", "num_batches_tracked"}
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()))
    _randomize_affine(ours, 2)
    theirs.load_state_dict(ours.state_dict())
    for step in range(3):  # training: batch statistics, running statistics updated in place
        x = torch.randn(16, 8) * (step + 1) + step
        assert torch.equal(ours(x), theirs(x))
    for name, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[name], value), name
    ours.eval(), theirs.eval()
    x = torch.randn(5, 8)
    assert torch.equal(ours(x), theirs(x))
    assert ours.num_batches_tracked.item() == 3


def test_batchnorm_stack_equals_seeds_one_by_one():
    layers = [BatchNorm(6) for _ in range(4)]
    for s, layer in enumerate(layers):
        _randomize_affine(layer, 10 + s)
    stack = stacked(layers)
    for step in range(3):
        x = torch.randn(4, 9, 6) * torch.arange(1.0, 5.0).view(4, 1, 1) + step
        alone = torch.stack([layer(x[j]) for j, layer in enumerate(layers)])
        torch.testing.assert_close(stack(x), alone)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        expected = torch.stack([getattr(layer, name) for layer in layers])
        torch.testing.assert_close(getattr(stack, name), expected, msg=name)
    stack.eval()
    for layer in layers:
        layer.eval()
    x = torch.randn(4, 3, 6)
    before = stack.running_mean.clone()
    torch.testing.assert_close(stack(x), torch.stack([layer(x[j]) for j, layer in enumerate(layers)]))
    assert torch.equal(stack.running_mean, before)  # eval mode reads the running statistics only


# -- identity at initialization ------------------------------------------------------------------
@pytest.mark.parametrize("variant", ["rezero", "skipinit", "fixup"])
@pytest.mark.parametrize("depth,width", [(2, 8), (12, 32)])
def test_trunk_is_exactly_the_identity_at_init(registry, variant, depth, width):
    x = torch.randn(10, width) * 5
    assert torch.equal(trunk(net(registry, variant, depth, width))(x), x)


@pytest.mark.parametrize("variant", ["rezero", "skipinit"])
def test_zero_scale_blocks_every_branch_gradient_but_not_the_scale_s(registry, variant):
    network = net(registry, variant, depth=8, width=16)
    x = torch.randn(12, 16)
    (trunk(network)(x) * torch.randn(12, 16)).sum().backward()
    for i, b in enumerate(network.blocks):
        assert b.alpha.item() == 0.0
        assert b.alpha.grad.abs().item() > 0, f"block {i}: alpha gets no gradient"
        for name, p in b.branch.named_parameters():
            assert torch.equal(p.grad, torch.zeros_like(p)), f"block {i}: {name} gets gradient"


def test_fixup_only_the_zero_last_layer_and_last_bias_get_gradient_at_init(registry):
    network = net(registry, "fixup", depth=8, width=16)
    x = torch.randn(12, 16)
    (trunk(network)(x) * torch.randn(12, 16)).sum().backward()
    for i, b in enumerate(network.blocks):
        assert torch.equal(b.fc2.weight, torch.zeros_like(b.fc2.weight))
        assert b.fc2.weight.grad.abs().sum() > 0 and b.bias2b.grad.abs().sum() > 0, f"block {i}"
        # everything before the zero layer, and the multiplier of its zero output, gets exactly zero
        for name in ("fc1.weight", "bias1a", "bias1b", "bias2a", "scale"):
            p = b.get_parameter(name)
            assert torch.equal(p.grad, torch.zeros_like(p)), f"block {i}: {name} gets gradient"


@pytest.mark.parametrize("n_blocks", [4, 25])
def test_fixup_first_layer_std_is_he_times_l_to_the_minus_1_over_2m_minus_2(registry, n_blocks):
    width, m = 16, 2
    expected_var = (math.sqrt(2 / width) * n_blocks ** (-1 / (2 * m - 2))) ** 2
    # mean square of each seed's weights (the weights are centred by construction)
    samples = [block(registry, "fixup", width, seed=s, n_blocks=n_blocks).fc1.weight.pow(2).mean().item()
               for s in SEEDS]
    assert_within_3se(samples, expected_var)
    assert expected_var < 2 / width  # the exponent's minus sign: the layer shrinks with depth


# -- growth laws ---------------------------------------------------------------------------------
def test_residual_linear_growth_per_block_is_1_plus_2a_squared(registry):
    a = registry.variants["residual-linear"].params["branch_scale"]
    samples = []
    for s in SEEDS:
        network = net(registry, "residual-linear", depth=8, width=32, seed=s)
        h = torch.randn(4, 32, generator=torch.Generator().manual_seed(10_000 + s))
        ratios = []
        with torch.no_grad():
            for b in network.blocks:
                out = b(h)
                ratios.append(out.pow(2).sum(1) / h.pow(2).sum(1))
                h = out
        samples.append(torch.cat(ratios).mean().item())
    assert_within_3se(samples, 1 + 2 * a**2)


def test_nf_residual_expected_squared_activation_is_1_plus_l_alpha_squared(registry):
    alpha = registry.params_of(registry.variants["nf-residual"])["alpha"]
    n_blocks = 6
    per_block = [[] for _ in range(n_blocks + 1)]
    for s in SEEDS:
        network = net(registry, "nf-residual", depth=2 * n_blocks, width=32, seed=s)
        h = torch.randn(8, 32, generator=torch.Generator().manual_seed(10_000 + s))
        with torch.no_grad():
            for l, b in enumerate([*network.blocks, None]):
                per_block[l].append(h.pow(2).mean().item())
                h = b(h) if b is not None else h
    for l, samples in enumerate(per_block):
        assert_within_3se(samples, 1 + l * alpha**2)


def test_stochastic_depth_keeps_3l_minus_1_over_4_blocks_in_training(registry):
    n_blocks = 8
    network = net(registry, "stochastic-depth", depth=2 * n_blocks, width=8)
    network.train()
    x = torch.randn(4, 8)
    counts = []
    for s in range(400):
        torch.manual_seed(s)
        network(x)
        counts.append(sum(b.skipbench_probes()["kept"].item() for b in network.blocks))
    assert_within_3se(counts, (3 * n_blocks - 1) / 4)


def test_stochastic_depth_drops_nothing_in_eval_and_scales_by_survival(registry):
    n_blocks = 4
    network = net(registry, "stochastic-depth", depth=2 * n_blocks, width=8)
    network.eval()
    p_last = registry.params_of(registry.variants["stochastic-depth"])["p_last"]
    h = torch.randn(5, 8)
    with torch.no_grad():
        for l, b in enumerate(network.blocks, start=1):
            out = b(h)
            assert b.skipbench_probes()["kept"].item() == 1
            torch.testing.assert_close(out, h + (1 - l / n_blocks * (1 - p_last)) * b.branch(h))
            h = out


# -- the papers' constants -----------------------------------------------------------------------
@pytest.mark.parametrize("n_blocks", [1, 6, 50, 500])
def test_deepnorm_constants_and_scaled_init(registry, n_blocks):
    alpha, beta = (2 * n_blocks) ** 0.25, (8 * n_blocks) ** -0.25
    b = block(registry, "deepnorm", 16, seed=3, n_blocks=n_blocks)
    assert b.alpha == pytest.approx(alpha, rel=1e-12) and b.beta == pytest.approx(beta, rel=1e-12)
    # the same seed's Xavier-normal post-LN block, unscaled: the DeepNorm weights are beta times it
    torch.manual_seed(3)
    plain = registry.builders["ln-residual"].build(16, activation="relu", bias=True, init="xavier-normal",
                                                   placement="post")
    for name in ("fc1.weight", "fc2.weight"):
        torch.testing.assert_close(b.branch.get_parameter(name), beta * plain.branch.get_parameter(name))
    x = torch.randn(6, 16)
    expected = F.layer_norm(alpha * x + b.branch(x), (16,))
    torch.testing.assert_close(b(x), expected)


@pytest.mark.parametrize("n_blocks,epsilon", [(1, 0.1), (18, 0.1), (19, 1e-5), (24, 1e-5), (25, 1e-6), (200, 1e-6)])
def test_layerscale_epsilon_by_depth_as_cait(registry, n_blocks, epsilon):
    b = block(registry, "layerscale", 12, n_blocks=n_blocks, block_index=n_blocks - 1)
    assert b.lam.shape == (12,)
    assert torch.equal(b.lam, torch.full((12,), epsilon))


def test_layerscale_epsilon_can_be_set(registry):
    builder = registry.builders["layerscale"]
    b = builder.build(12, activation="relu", bias=True, init="he-normal", epsilon=0.3, norm=True,
                      block_index=0, n_blocks=100)
    assert torch.equal(b.lam, torch.full((12,), 0.3))


# -- the contract every new variant keeps --------------------------------------------------------
# parameters whose gradient the defining fact makes exactly zero at initialization
ZERO_GRAD_AT_INIT = {
    "rezero": ("branch.",),
    "skipinit": ("branch.",),
    "fixup": ("fc1.", "bias1a", "bias1b", "bias2a", "scale"),
}


@pytest.mark.parametrize("variant", NEW_VARIANTS)
@pytest.mark.parametrize("depth,width", [(2, 8), (6, 24)])
def test_variant_maps_shapes_and_gradients_reach_every_parameter(registry, variant, depth, width):
    network = net(registry, variant, depth, width)
    if variant == "stochastic-depth":
        network.eval()  # in training a dropped branch's weights rightly get no gradient
    x = torch.randn(5, width, requires_grad=True)
    y = network(x)
    assert y.shape == (5, width)
    (y * torch.randn(5, width)).sum().backward()
    assert x.grad.abs().sum() > 0
    exempt = ZERO_GRAD_AT_INIT.get(variant, ())
    for name, p in network.named_parameters():
        assert p.grad is not None, name
        local = name.partition("blocks.")[2].partition(".")[2]
        if name.startswith("blocks.") and local.startswith(exempt):
            assert torch.equal(p.grad, torch.zeros_like(p)), name
        else:
            assert p.grad.abs().sum() > 0, f"{name} gets no gradient"


@pytest.mark.parametrize("variant", NEW_VARIANTS)
def test_seed_batched_blocks_run_a_stack_as_each_seed_alone(registry, variant):
    v = registry.variants[variant]
    if not registry.builders[v.builder].seed_batched:
        pytest.skip("not declared seed_batched")
    blocks = [block(registry, variant, 10, seed=s, block_index=1, n_blocks=3) for s in range(3)]
    for b in blocks:  # nudge the zero-initialized scales so that every parameter matters
        with torch.no_grad():
            for p in b.parameters():
                p.add_(0.1 * torch.randn(p.shape))
    stack = stacked(blocks)
    modes = ("eval",) if variant == "stochastic-depth" else ("train", "eval")  # draws: see the engine's tests
    x = torch.randn(3, 7, 10)
    for mode in modes:
        for m in (stack, *blocks):
            m.train(mode == "train")
        torch.testing.assert_close(stack(x), torch.stack([b(x[j]) for j, b in enumerate(blocks)]), msg=mode)


@pytest.mark.parametrize("variant", ["rezero", "skipinit", "fixup"])
def test_identity_variants_measure_mse_init_0_and_undefined_ratios(registry, variant):
    """Measured as a user runs them (the packaged variants, several seeds, stacked): the whole
    network is the identity at init, so mse_init is exactly 0. With alpha = 0 no branch weight
    gets gradient, so grad_ratio's ends are both zero: undefined with the 0/0 reason, never a
    number; Fixup's last branch layers do get gradient, so its ratio is a number. The scalar
    that starts training has its own non-zero gradient record, and alpha is recorded at init."""
    from conftest import make_cell
    from skipbench.results import expand

    def records(name, **options):
        cell = make_cell(registry, name, variant, 8, 16, 8, (0, 1, 2), **options)
        return expand(registry.measurements[name].run(cell))

    identity = records("identity", steps=5, eval_every=5, eval_batch=16)
    assert [r["value"] for r in identity if r["metric"] == "mse_init"] == [0.0, 0.0, 0.0]
    assert {r["seeds_path"] for r in identity} == {"stacked"}
    flow = records("gradient-flow")
    ratios = [r for r in flow if r["metric"] == "grad_ratio"]
    assert len(ratios) == 3
    if variant == "fixup":
        assert all(r.get("status", "ok") == "ok" and 0 < r["value"] < math.inf for r in ratios)
    else:
        assert all(r["status"] == "undefined" and r["value"] is None and "0/0" in r["error"] for r in ratios)
    grads = [r for r in flow if r["metric"] == "param_grad_norm"]
    scalars = {"rezero": "alpha", "skipinit": "alpha", "fixup": "bias2b"}[variant]
    assert any(r["param"] == scalars and r["value"] > 0 for r in grads)  # the scalar that starts training
    if variant != "fixup":
        inits = [r for r in identity if r["metric"] == "scalar_init"]
        assert inits and all(r["param"] == "alpha" and r["value"] == 0.0 for r in inits)
