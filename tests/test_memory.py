"""Peak memory (measurements/memory.py) on hand-made passes, the memory-efficient dense block, and
the peak-memory figure."""

from __future__ import annotations

import matplotlib.image
import pyarrow.compute as pc
import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from conftest import make_cell
from skipbench import grid, harness, network, report, results
from skipbench.results import expand
from skipbench.engine import stack
from skipbench.engine.memory import allocation_events, peak_memory, running_peak, storage_bytes
from skipbench.measurements import gradient_flow
from skipbench.specs import resolve_params

F32 = 4
SCALARS = 2 * F32  # the float32 loss net(x).sum() and backward's seed, ones_like(loss)
CUDA = pytest.mark.skipif(not torch.cuda.is_available(),
                          reason="needs a CUDA device (torch.cuda.is_available() is False)")


class _Known(torch.autograd.Function):
    """y = x.clone(), allocating `fwd` bytes transiently in forward (while y is alive) and `bwd`
    bytes transiently in backward (before the parameter's gradient)."""

    @staticmethod
    def forward(ctx, x, p, fwd, bwd):
        transient = torch.empty(fwd // F32, device=x.device)
        y = x.clone()
        del transient
        ctx.bwd, ctx.p_shape = bwd, p.shape
        return y

    @staticmethod
    def backward(ctx, grad):
        transient = torch.empty(ctx.bwd // F32, device=grad.device)
        del transient
        return None, torch.ones(ctx.p_shape, device=grad.device), None, None


class Known(nn.Module):
    """A pass whose every allocation is known (see _Known)."""

    def __init__(self, fwd: int, bwd: int, n_params: int = 4):
        super().__init__()
        self.p = nn.Parameter(torch.zeros(n_params))
        self.fwd, self.bwd = fwd, bwd

    def forward(self, x):
        return _Known.apply(x, self.p, self.fwd, self.bwd)


class KeepsState(nn.Module):
    """y = x * w, keeping a `state` tensor of `nbytes` from each call until the next one."""

    def __init__(self, width: int, nbytes: int):
        super().__init__()
        self.w = nn.Parameter(torch.ones(width))
        self.nbytes, self.state = nbytes, None

    def forward(self, x):
        self.state = torch.empty(self.nbytes // F32)
        return x * self.w


# -- CPU peak on hand-made passes ------------------------------------------------------------------
X = torch.zeros(100, 10)  # 4,000 bytes
P = 4 * F32


def test_cpu_peak_of_a_forward_transient_is_exact():
    """Peak: while the 1 MiB transient and the output are both alive in forward."""
    assert peak_memory(Known(1 << 20, 0), X) == P + X.nbytes + (1 << 20) + X.nbytes


def test_cpu_peak_of_a_backward_transient_is_exact():
    """Peak: in backward, the transient beside the loss and the seed (the output is freed by then)."""
    assert peak_memory(Known(0, 1 << 20), X) == P + X.nbytes + SCALARS + (1 << 20)


def test_cpu_peak_counts_the_gradients():
    """Without transients the peak is the output in forward or, with a large parameter, its gradient."""
    assert peak_memory(Known(0, 0), X) == P + X.nbytes + X.nbytes + F32
    big = Known(0, 0, n_params=10_000)
    assert peak_memory(big, X) == 2 * 10_000 * F32 + X.nbytes + SCALARS


def test_cpu_peak_is_the_same_on_every_call_and_ignores_older_tensors():
    """A module that frees state from its previous call: the old state is neither counted nor
    subtracted, whether it was made under the profiler or not, and the reading does not drift."""
    net, x = KeepsState(10, 1 << 20), torch.ones(100, 10)
    # peak in backward: the new state, the loss and seed, grad * x and its sum, w's gradient
    expected = storage_bytes([net.w, x]) + (1 << 20) + SCALARS + x.nbytes + 10 * F32
    readings = [peak_memory(net, x) for _ in range(3)]
    net(x)  # state made outside the profiler
    readings.append(peak_memory(net, x))
    assert readings == [expected] * 4


def test_cpu_peak_sees_checkpoint_recomputation():
    """A checkpointed MLP keeps no hidden activation in forward but recomputes it in backward:
    the reading holds the recomputed hidden layer beside the weight gradients, which an accounting
    of saved tensors cannot see."""
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 64))

    class Checkpointed(nn.Module):
        def __init__(self):
            super().__init__()
            self.mlp = mlp

        def forward(self, x):
            return checkpoint(self.mlp, x, use_reentrant=False)

    x = torch.randn(64, 64)
    net = Checkpointed()
    hidden = 64 * 4096 * F32
    params = storage_bytes(net.parameters())
    peak = peak_memory(net, x)
    # parameters and input, the recomputed hidden activation, the second layer's weight gradient
    assert peak >= params + x.nbytes + hidden + 64 * 4096 * F32
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        net(x).sum().backward()
    accounting = storage_bytes([*net.parameters(), *(p.grad for p in net.parameters()), x, *saved])
    assert peak >= accounting + hidden


def test_allocation_events_balance_and_are_ordered():
    net = Known(1000, 2000)
    events = allocation_events(lambda: net(X).sum().backward())
    times = [t for t, _ in events]
    assert times == sorted(times)
    # everything allocated during the pass is freed by its end, except the parameter's gradient
    assert sum(n for _, n in events) == P
    # every allocation: the transients, the output, the loss, the seed, the gradient
    assert sorted(n for _, n in events if n > 0) == sorted([1000, X.nbytes, F32, F32, 2000, P])


# -- the memory-efficient dense block --------------------------------------------------------------
WIDTH, BATCH = 64, 64


def _dense(registry, depth: int, efficient: bool, seed: int = 0) -> network.SkipNet:
    variant = registry.variants["dense-efficient" if efficient else "dense"]
    torch.manual_seed(seed)
    return network.build(registry, variant, depth, WIDTH)


def test_dense_efficient_variant_is_packaged(registry):
    variant = registry.variants["dense-efficient"]
    assert variant.builder == "dense" and registry.params_of(variant)["memory_efficient"] is True
    assert registry.params_of(registry.variants["dense"])["memory_efficient"] is False


def test_efficient_dense_has_the_same_weights_outputs_and_gradients(registry):
    plain, efficient = _dense(registry, 64, False), _dense(registry, 64, True)
    for p, q in zip(plain.parameters(), efficient.parameters(), strict=True):
        assert torch.equal(p, q)
    x = torch.randn(BATCH, WIDTH, generator=torch.Generator().manual_seed(1))
    inputs = [x.clone().requires_grad_(True) for _ in range(2)]
    outputs = [net(inp) for net, inp in zip((plain, efficient), inputs)]
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    target = torch.randn_like(outputs[0])
    for out in outputs:
        ((out - target) ** 2).sum().backward()
    torch.testing.assert_close(inputs[1].grad, inputs[0].grad, rtol=0, atol=0)
    for (name, p), q in zip(plain.named_parameters(), efficient.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0, msg=name)


def test_efficient_dense_at_64_layers_needs_at_most_half_the_peak_memory(registry):
    x = torch.randn(BATCH, WIDTH)
    plain, efficient = (peak_memory(_dense(registry, 64, e), x) for e in (False, True))
    assert efficient <= 0.5 * plain, (efficient, plain)


def test_efficient_dense_memory_grows_linearly_with_depth(registry):
    """The peak beyond the parameters and their gradients (which grow quadratically in any dense
    block: layer i reads i * growth features) at depths 16, 32, 64: doubling the depth at most
    about doubles it for the efficient block, and more than nearly triples it for the plain one."""
    x = torch.randn(512, WIDTH)  # a batch large enough for activations to dominate

    def beyond_parameters(net):
        return peak_memory(net, x) - 2 * storage_bytes(net.parameters())

    for efficient, check in ((True, lambda g: g <= 2.2), (False, lambda g: g >= 2.8)):
        excess = [beyond_parameters(_dense(registry, depth, efficient)) for depth in (16, 32, 64)]
        growth = [b / a for a, b in zip(excess, excess[1:])]
        assert all(map(check, growth)), (efficient, excess, growth)


def test_efficient_dense_is_correct_when_an_output_is_changed_in_place(registry):
    """An output changed in place no longer equals its pieces: the next layer then keeps it whole."""
    nets = [_dense(registry, 3, e) for e in (False, True)]
    x = torch.randn(8, WIDTH)
    outs = []
    for net in nets:
        h = net.blocks[0](x)
        h.mul_(-2.0)
        outs.append(net.head(net.blocks[2](net.blocks[1](h))))
        outs[-1].square().sum().backward()
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=0)
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["gradient-flow", "identity"])
def test_efficient_dense_runs_stacked_and_under_vmap_with_the_records_of_plain_dense(registry, name):
    """Several seeds: the efficient block runs stacked and under vmap (its autograd Function
    handles stacked weights and has a vmap rule), and its records equal the plain dense
    block's on every path."""
    measurement = registry.measurements[name]
    options = {"steps": 10, "eval_every": 5, "eval_batch": 12} if name == "identity" else {}

    def cell(variant):
        return make_cell(registry, name, variant, 8, 16, 8, (0, 1, 2), **options)

    def records(variant, path=None):
        return expand(measurement.run(cell(variant), path))

    got = records("dense-efficient")
    assert {r["seeds_path"] for r in got} == {"stacked"}
    plain_loop = records("dense", "loop")
    assert len(got) == len(plain_loop) > 0
    assert records("dense-efficient", "loop") == plain_loop  # seed by seed: the same bits
    assert [r["seeds_path"] for r in records("dense-efficient", "vmap")] == ["vmap"] * len(got)
    for r, s in zip(got, records("dense"), strict=True):
        assert {**r, "value": None} == {**s, "value": None}  # the same metric, seed, status and reason
        if s.get("status") == "undefined":  # no value on either side (a threshold never reached)
            assert r["value"] is None and s["value"] is None
        else:
            assert r["value"] == pytest.approx(s["value"], rel=1e-5)


# -- CUDA ------------------------------------------------------------------------------------------
def _round512(nbytes: int) -> int:
    return -(-nbytes // 512) * 512


@CUDA
def test_cuda_peak_of_a_forward_transient():
    """max_memory_allocated counts blocks rounded up to 512 bytes: parameter, input, transient,
    output, and at most a few small blocks (the loss, the seed) of slack."""
    x = X.cuda()
    net = Known(1 << 20, 0).cuda()
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()  # the parameter and input, and whatever else is live
    expected = before + (1 << 20) + _round512(x.nbytes)
    assert expected <= peak_memory(net, x) <= expected + 4 * 512


@CUDA
def test_cuda_efficient_dense_needs_at_most_half_the_peak_memory(registry):
    """Compared on what each pass adds to the memory allocated before it: max_memory_allocated
    also counts whatever else is live on the device (the other network, cuBLAS workspaces made
    by a first pass)."""
    x = torch.randn(BATCH, WIDTH, device="cuda")
    added = []
    for efficient in (False, True):
        net = _dense(registry, 64, efficient).cuda()
        net(x).sum().backward()  # a first pass makes the library's workspaces
        net.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        added.append(peak_memory(net, x) - before)
    assert added[1] <= 0.5 * added[0], added


@CUDA
def test_cuda_efficient_dense_has_the_same_gradients(registry):
    nets = [_dense(registry, 16, e).cuda() for e in (False, True)]
    x = torch.randn(BATCH, WIDTH, device="cuda")
    for net in nets:
        net(x).square().sum().backward()
    for p, q in zip(nets[0].parameters(), nets[1].parameters()):
        torch.testing.assert_close(q.grad, p.grad)


# -- the figure ------------------------------------------------------------------------------------
def test_peak_memory_figure_from_real_records(registry, tmp_path):
    plan = grid.make_plan(registry, "quick", variants=["plain", "dense", "dense-efficient"],
                          measurements=["throughput"], depths=[2, 8, 32], width=32, batch=64)
    table = results.concat(harness.run_task(registry, plan, task) for task in plan.tasks(registry))
    peaks = {(r["variant"], r["depth"]): r["value"] for r in table.to_pylist() if r["metric"] == "peak_mem_bytes"}
    assert len(peaks) == 9 and peaks[("dense-efficient", 32)] < peaks[("dense", 32)]
    [spec] = [f for f in grid.DEFAULT_FIGURES if f["metric"] == "peak_mem_bytes"]
    figure = resolve_params(grid.FIGURE_PARAMS, spec, "figure")
    paths = report.draw([figure], table, tmp_path)
    assert [p.name for p in paths] == ["throughput-peak-memory.png", "throughput-peak-memory.svg"]
    image = matplotlib.image.imread(paths[0])
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
    assert image[..., :3].std() > 0  # something is drawn
    assert "dense-efficient" in paths[1].read_text()  # the legend names every variant
    others = table.filter(pc.not_equal(table["metric"], "peak_mem_bytes"))
    assert report.draw([figure], others, tmp_path / "none") == []


def test_efficient_dense_block_keeps_its_features_in_one_buffer_of_the_blocks_width(registry):
    """The dense builder is position-aware: the first layer allocates one buffer as wide as the
    whole block, every layer's output is a prefix of it, and no layer copies the features into
    a wider buffer."""
    depth = 10
    net = _dense(registry, depth, True)
    x = torch.randn(BATCH, WIDTH)
    outputs, h = [], x
    for block in net.blocks:
        h = block(h)
        outputs.append(h)
    storages = {o.untyped_storage().data_ptr() for o in outputs}
    growth = outputs[0].shape[-1] - WIDTH
    assert len(storages) == 1
    assert outputs[-1].untyped_storage().nbytes() == BATCH * (WIDTH + depth * growth) * F32
    assert outputs[-1].is_contiguous()


def test_held_width_counts_a_buffer_the_blocks_share_once(registry):
    """What sizes the chunks: the efficient dense block holds the trunk input and one buffer
    of the block's width; the plain one a concatenation per layer, as every other block holds
    its own output (the sum of the widths)."""
    depth = 10
    efficient, plain = _dense(registry, depth, True), _dense(registry, depth, False)
    assert network.held_width(efficient) == WIDTH + efficient.out_width
    assert network.held_width(plain) == sum(plain.widths)
    torch.manual_seed(0)
    residual = network.build(registry, registry.variants["residual"], depth, WIDTH)
    assert network.held_width(residual) == sum(residual.widths)
    state = {n: t.clone() for n, t in efficient.state_dict().items()}
    network.held_width(efficient)  # a probe: no weight, buffer or mode changes
    assert efficient.training and all(torch.equal(t, state[n]) for n, t in efficient.state_dict().items())
    per_seed = {e: stack.seed_bytes(stack.SeedNets(make_cell(registry, "gradient-flow", v, 40, width=WIDTH, batch=BATCH)),
                                    BATCH, gradient_flow.KEPT_PER_WIDTH, 3)
                for e, v in ((True, "dense-efficient"), (False, "dense"))}
    assert per_seed[True] < per_seed[False] / 3, per_seed


def test_gradient_flow_norms_each_block_inputs_gradient_as_backward_makes_it(registry):
    """dL/dx at every block input of an efficient dense stack: bit for bit the norms of the
    gradients autograd gives when asked for all of them, at a backward peak that grows about
    linearly with depth; kept whole, those gradients grow quadratically (each input is wider
    than the last). Depths 16, 32, 64."""
    zeros = torch.zeros(2)

    def traced(depth):
        cell = make_cell(registry, "gradient-flow", "dense-efficient", depth, width=WIDTH, batch=256, seeds=(0, 1))
        output, inputs, _ = stack.SeedNets(cell).stack(cell.seeds).trace(cell.normals(cell.seeds, 1, cell.batch))
        return (output ** 2).sum(), inputs

    def backward_peak(depth, whole):
        loss, inputs = traced(depth)  # the forward pass outside the measured window
        if whole:
            return running_peak(allocation_events(lambda: torch.autograd.grad(loss, inputs)))
        return running_peak(allocation_events(lambda: gradient_flow._gradients(loss, [], inputs, zeros)))

    loss, inputs = traced(16)
    _, hooked = gradient_flow._gradients(loss, [], inputs, zeros)
    loss, inputs = traced(16)
    assert all(torch.equal(a, gradient_flow._norm(g)) for a, g in zip(hooked, torch.autograd.grad(loss, inputs), strict=True))
    for whole, check in ((False, lambda g: g <= 2.2), (True, lambda g: g >= 2.8)):
        peak = [backward_peak(depth, whole) for depth in (16, 32, 64)]
        growth = [b / a for a, b in zip(peak, peak[1:])]
        assert all(map(check, growth)), (whole, peak, growth)
