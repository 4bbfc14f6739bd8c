"""network.build: depth semantics, widths found by running blocks, stem/head options, faults, inits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from skipbench import network
from skipbench.inits import init_linear, linear
from skipbench.layers import Linear
from skipbench.network import BlockFault, block_count
from skipbench.registry import Registry
from skipbench.specs import BlockBuilder, Param, SpecError, UsageError, Variant


def build(registry, builder, depth, width=8, seed=0, params=None, **net):
    """Build a throw-away variant of `builder` with the given network options."""
    torch.manual_seed(seed)
    return network.build(registry, Variant("t", builder, params or {}, net), depth, width)


def with_builder(registry, builder: BlockBuilder) -> Registry:
    """A copy of the built-in registry with one more builder."""
    return Registry(builders={**registry.builders, builder.name: builder}, variants=dict(registry.variants),
                    measurements=dict(registry.measurements))


def linears(module: nn.Module) -> list[nn.Linear]:
    return [m for m in module.modules() if isinstance(m, nn.Linear)]


# -- depth --------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder, depth, blocks, main_layers_per_block", [
    ("plain", 5, 5, 1), ("plain", 1, 1, 1),
    ("residual", 4, 2, 2), ("residual", 5, 2, 2), ("residual", 2, 1, 2),
    ("dense", 5, 5, 1),
    ("highway", 3, 3, 1),
])
def test_depth_counts_weight_layers_on_the_main_path(registry, builder, depth, blocks, main_layers_per_block):
    """plain D -> D blocks, residual D -> D // 2, dense D -> D layers, highway D -> D."""
    net = build(registry, builder, depth, head="none")
    assert len(net.blocks) == blocks
    assert len(net.widths) == blocks + 1
    main = [m for block in net.blocks for name, m in block.named_modules()
            if isinstance(m, nn.Linear) and name != "gate"]
    assert len(main) == blocks * main_layers_per_block


@pytest.mark.parametrize("depth", [0, -3])
def test_block_count_rejects_depth_below_one(depth):
    with pytest.raises(UsageError, match="depth must be >= 1"):
        block_count(1, depth)


def test_block_count_rejects_depth_below_layers_per_block(registry):
    with pytest.raises(UsageError, match=r"impossible for variant 'res'.*minimum depth is 2"):
        block_count(2, 1, "res")
    with pytest.raises(UsageError):
        build(registry, "residual", 1)
    assert block_count(2, 7) == 3


def test_build_rejects_width_below_one(registry):
    with pytest.raises(UsageError, match="width"):
        build(registry, "plain", 2, width=0)


# -- widths -------------------------------------------------------------------------------------
@pytest.mark.parametrize("growth", [16, 5])
def test_dense_widths_grow_by_growth_rate(registry, growth):
    w, depth = 12, 4
    net = build(registry, "dense", depth, width=w, params={"growth_rate": growth}, head="none")
    assert net.widths == [w + i * growth for i in range(depth + 1)]
    assert net.out_width == w + depth * growth
    x, widths = torch.randn(3, w), []
    for block in net.blocks:
        x = block(x)
        widths.append(x.shape[1])
    assert widths == net.widths[1:]


@pytest.mark.parametrize("builder", ["plain", "residual", "highway"])
def test_equal_width_builders_keep_the_width(registry, builder):
    net = build(registry, builder, 4, width=10, head="none")
    assert net.widths == [10] * (len(net.blocks) + 1)
    assert net(torch.randn(3, 10)).shape == (3, 10)


def test_widths_come_from_running_the_block(registry):
    """A builder whose output width is unpredictable from its parameters: the network measures it."""

    class Doubler(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, 2 * dim)

        def forward(self, x):
            return self.fc(x)

    reg = with_builder(registry, BlockBuilder("doubler", Doubler))
    net = build(reg, "doubler", 3, width=3)
    assert net.widths == [3, 6, 12, 24]
    assert isinstance(net.head, nn.Linear) and (net.head.in_features, net.head.out_features) == (24, 3)
    assert net(torch.randn(2, 3)).shape == (2, 3)


# -- head and stem ------------------------------------------------------------------------------
def test_head_auto_adds_linear_only_when_widths_differ(registry):
    plain = build(registry, "plain", 3, width=8, head="auto")
    assert isinstance(plain.head, nn.Identity)
    dense = build(registry, "dense", 3, width=8, head="auto")
    assert isinstance(dense.head, nn.Linear)
    assert (dense.head.in_features, dense.head.out_features) == (8 + 3 * 16, 8)
    assert dense(torch.randn(2, 8)).shape == (2, 8)


def test_head_none_and_linear_are_respected(registry):
    dense = build(registry, "dense", 2, width=8, head="none")
    assert isinstance(dense.head, nn.Identity)
    assert dense(torch.randn(2, 8)).shape == (2, 8 + 2 * 16)
    plain = build(registry, "plain", 2, width=8, head="linear", head_init="zeros")
    assert isinstance(plain.head, nn.Linear) and (plain.head.in_features, plain.head.out_features) == (8, 8)
    assert torch.count_nonzero(plain.head.weight) == 0
    assert torch.count_nonzero(plain(torch.randn(4, 8))) == 0  # a zero head zeroes the output


@pytest.mark.parametrize("stem, types", [("none", [nn.Identity]), ("linear", [nn.Linear]),
                                         ("linear-relu", [nn.Sequential, nn.Linear, nn.ReLU])])
def test_stem_options(registry, stem, types):
    net = build(registry, "plain", 2, width=8, stem=stem)
    assert [next(t for t in types if isinstance(m, t)) for m in net.stem.modules()] == types
    assert all(isinstance(m, Linear) for m in net.stem.modules() if isinstance(m, nn.Linear))  # runs stacked seeds
    x = torch.randn(5, 8)
    first_input = net.stem(x)
    assert torch.equal(net(x), net.head(nn.Sequential(*net.blocks)(first_input)))
    if stem == "linear-relu":
        assert (first_input >= 0).all()


def test_stem_init_is_used(registry):
    net = build(registry, "plain", 2, width=64, stem="linear", stem_init="zeros")
    assert torch.count_nonzero(net.stem.weight) == 0
    net = build(registry, "plain", 2, width=256, stem="linear", stem_init="he-normal")
    assert net.stem.weight.var().item() == pytest.approx(2 / 256, rel=0.05)


# -- faults -------------------------------------------------------------------------------------
class Raises(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        raise RuntimeError("kaboom in forward")


class WrongShape(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x):
        return self.fc(x).unsqueeze(-1)


class Tuple(WrongShape):
    def forward(self, x):
        return x, x


class DropsBatch(WrongShape):
    def forward(self, x):
        return x[:1]


def _raising_factory(dim):
    raise ValueError("cannot build")


@pytest.mark.parametrize("factory, message", [
    (Raises, r"raised on a \(2, 8\) input: RuntimeError: kaboom in forward"),
    (WrongShape, r"must map \(batch, 8\) to \(batch, width\); it returned \(2, 8, 1\)"),
    (Tuple, r"it returned tuple"),
    (DropsBatch, r"it returned \(1, 8\)"),
    (_raising_factory, r"raised building block 0: ValueError: cannot build"),
    (lambda dim: "not a module", r"returned str, not a torch.nn.Module"),
])
def test_faulty_blocks_raise_blockfault(registry, factory, message):
    reg = with_builder(registry, BlockBuilder("faulty", factory))
    with pytest.raises(BlockFault, match=message):
        build(reg, "faulty", 2, width=8)


def test_probe_pass_does_not_consume_the_random_stream(registry):
    """Running a block to find its width must not shift later blocks' weight draws."""

    class Noisy(nn.Module):
        def __init__(self, dim):
            super().__init__()
            self.fc = nn.Linear(dim, dim)

        def forward(self, x):
            return self.fc(x) + 0 * torch.randn_like(x)

    class Quiet(Noisy):
        def forward(self, x):
            return self.fc(x)

    reg = with_builder(with_builder(registry, BlockBuilder("noisy", Noisy)), BlockBuilder("quiet", Quiet))
    noisy, quiet = build(reg, "noisy", 3, seed=4), build(reg, "quiet", 3, seed=4)
    for a, b in zip(noisy.parameters(), quiet.parameters(), strict=True):
        assert torch.equal(a, b)


# -- seeds --------------------------------------------------------------------------------------
@pytest.mark.parametrize("builder", ["plain", "residual", "dense", "highway"])
def test_same_seed_gives_identical_weights(registry, builder):
    opts = dict(stem="linear", head="linear")
    a, b = build(registry, builder, 4, seed=11, **opts), build(registry, builder, 4, seed=11, **opts)
    c = build(registry, builder, 4, seed=12, **opts)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert list(sa) == list(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if sa[k].dim() >= 2)


# -- initializations ----------------------------------------------------------------------------
def _big(in_dim=512, out_dim=512, scheme="he-normal", seed=0):
    torch.manual_seed(seed)
    layer = nn.Linear(in_dim, out_dim)
    with torch.no_grad():
        layer.bias.fill_(3.0)  # init must reset it
    return init_linear(layer, scheme)


@pytest.mark.parametrize("scheme, variance", [
    ("he-normal", lambda fi, fo: 2 / fi),
    ("xavier-seed", lambda fi, fo: 1 / fi),
    ("xavier-normal", lambda fi, fo: 2 / (fi + fo)),
])
@pytest.mark.parametrize("fan_in, fan_out", [(512, 512), (256, 1024)])
def test_normal_inits_have_the_stated_variance(scheme, variance, fan_in, fan_out):
    """Sample variance of ~260k draws is within 3% (about 10 standard errors) of the stated one."""
    layer = _big(fan_in, fan_out, scheme)
    w = layer.weight.double()
    assert w.mean().item() == pytest.approx(0.0, abs=6 * math.sqrt(variance(fan_in, fan_out) / w.numel()))
    assert w.var().item() == pytest.approx(variance(fan_in, fan_out), rel=0.03)
    assert torch.count_nonzero(layer.bias) == 0


def test_he_and_xavier_seed_differ_by_factor_two():
    ratio = _big(scheme="he-normal").weight.var() / _big(scheme="xavier-seed").weight.var()
    assert ratio.item() == pytest.approx(2.0, rel=0.03)


def test_zeros_and_orthogonal_inits():
    zero = _big(64, 32, "zeros")
    assert torch.count_nonzero(zero.weight) == 0 and torch.count_nonzero(zero.bias) == 0
    orth = _big(64, 64, "orthogonal")
    assert torch.allclose(orth.weight @ orth.weight.T, torch.eye(64), atol=1e-5)
    assert torch.count_nonzero(orth.bias) == 0


def test_torch_default_keeps_torchs_own_init():
    torch.manual_seed(5)
    reference = nn.Linear(16, 16)
    torch.manual_seed(5)
    layer = init_linear(nn.Linear(16, 16), "torch-default")
    assert torch.equal(layer.weight, reference.weight) and torch.equal(layer.bias, reference.bias)
    assert torch.count_nonzero(layer.bias) > 0


def test_bias_value_and_unknown_scheme():
    assert torch.all(linear(4, 3, "he-normal", bias_value=-2.0).bias == -2.0)
    assert linear(4, 3, "he-normal", bias=False).bias is None
    with pytest.raises(ValueError, match="unknown initialization"):
        linear(4, 3, "lecun")


@pytest.mark.parametrize("builder", ["plain", "residual", "dense", "highway"])
def test_builtin_blocks_start_with_zero_biases_and_he_weights(registry, builder):
    width = 128
    net = build(registry, builder, 2, width=width, head="none")
    main = [m for block in net.blocks for name, m in block.named_modules()
            if isinstance(m, nn.Linear) and name != "gate"]
    for layer in main:
        assert torch.count_nonzero(layer.bias) == 0
        assert layer.weight.var().item() == pytest.approx(2 / layer.in_features, rel=0.1)


def test_highway_gate_bias_and_init(registry):
    net = build(registry, "highway", 2, width=256, params={"gate_bias": -3.0}, head="none")
    for block in net.blocks:
        assert torch.all(block.gate.bias == -3.0)
        assert block.gate.weight.var().item() == pytest.approx(1 / 256, rel=0.05)  # xavier-seed


def test_zero_init_last_residual_branch(registry):
    net = build(registry, "residual", 4, width=16, params={"zero_init_last": True}, head="none")
    for block in net.blocks:
        assert torch.count_nonzero(block.fc2.weight) == 0
        assert torch.count_nonzero(block.fc1.weight) > 0
    x = torch.randn(3, 16)
    assert torch.equal(net(x), x)


# -- position-aware builders ----------------------------------------------------------------------
class _Positioned(nn.Module):
    """Remembers where the network put it."""

    def __init__(self, dim, block_index, n_blocks, scale=1.0):
        super().__init__()
        self.fc = Linear(dim, dim)
        self.where = (block_index, n_blocks)

    def forward(self, x):
        return x + self.fc(x)


def test_a_position_aware_builder_gets_its_block_index_and_the_block_count(registry):
    reg = with_builder(registry, BlockBuilder("positioned", _Positioned, position=True))
    net = build(reg, "positioned", 5)
    assert [b.where for b in net.blocks] == [(i, 5) for i in range(5)]


def test_a_builder_that_does_not_declare_position_gets_none(registry):
    seen = []

    def block(dim, **kwargs):
        seen.append(kwargs)
        return nn.Linear(dim, dim)

    build(with_builder(registry, BlockBuilder("unpositioned", block)), "unpositioned", 3)
    assert seen and all("block_index" not in k and "n_blocks" not in k for k in seen)


@pytest.mark.parametrize("kwargs, message", [
    (dict(build=_Positioned), "requires block_index and n_blocks"),
    (dict(build=lambda dim: nn.Linear(dim, dim), position=True), "does not accept block_index and n_blocks"),
    (dict(build=_Positioned, position=True, params=(Param("n_blocks", "int", 3),)), "cannot be a declared parameter"),
])
def test_position_declarations_that_cannot_hold_are_rejected(kwargs, message):
    with pytest.raises(SpecError, match=message):
        BlockBuilder("bad", **kwargs)


def test_a_variant_cannot_set_a_position_by_hand(registry):
    reg = with_builder(registry, BlockBuilder("positioned", _Positioned, (Param("scale", "float", 1.0),), position=True))
    with pytest.raises(SpecError, match="block_index is the block's position"):
        reg.add_variant(Variant("by-hand", "positioned", {"block_index": 2}))
