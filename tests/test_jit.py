"""torch.jit.trace and torch.jit.script with torchdist_fast.Normal.

Tracing works on every path: the trace records the ``draw_seed_offset`` op, so each replay
draws fresh noise from the default generator and advances it as eager code does. Scripting:
torch's Normal cannot be scripted and neither can ours (same exception type); scripted code
can call the ops directly."""
import textwrap
import types

import pytest
import torch

import torchdist_fast
from normal_modes import MODES, sampling_mode
from torchdist_fast.routing import TorchNormal

# tracing random code warns by design (the trace checker cannot compare random outputs)
pytestmark = [
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
    pytest.mark.filterwarnings("ignore:`torch.jit.trace` is deprecated:DeprecationWarning"),
]

METHODS = {
    "rsample": lambda d: d.rsample((2,)),
    "sample": lambda d: d.sample((2,)),
    "rsample_and_log_prob": lambda d: d.rsample_and_log_prob((2,)),
    "sample_and_log_prob": lambda d: d.sample_and_log_prob((2,)),
    "log_prob": lambda d: d.log_prob(d.loc + 0.5 * d.scale),
}


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(3, generator=g), torch.rand(3, generator=g) + 0.5


def as_tuple(out):
    return out if isinstance(out, tuple) else (out,)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("method", METHODS)
def test_trace_replays_like_eager(mode, method):
    loc, scale = inputs()

    def fn(loc, scale):
        return METHODS[method](torchdist_fast.Normal(loc, scale))

    with sampling_mode(mode):
        traced = torch.jit.trace(fn, (loc, scale), check_trace=False)
        torch.manual_seed(4)
        eager = [as_tuple(fn(loc, scale)) for _ in range(2)]
        torch.manual_seed(4)
        replay = [as_tuple(traced(loc, scale)) for _ in range(2)]
    for e, r in zip(eager, replay):
        for a, b in zip(e, r):
            assert torch.equal(a, b), "a replay must draw what eager code draws from the same generator state"
    if method != "log_prob":
        assert not torch.equal(replay[0][0], replay[1][0]), "each replay draws fresh noise"


@pytest.mark.parametrize("mode", MODES)
def test_two_draws_in_one_trace_differ(mode):
    loc, scale = inputs()

    def fn(loc, scale):
        d = torchdist_fast.Normal(loc, scale)
        return d.rsample((4,)), d.rsample((4,))

    with sampling_mode(mode):
        a, b = torch.jit.trace(fn, (loc, scale), check_trace=False)(loc, scale)
    assert not torch.equal(a, b)


def test_trace_gradients_match_eager():
    loc, scale = (t.requires_grad_() for t in inputs())

    def fn(loc, scale):
        z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob((5,))
        return (z * z).sum() + lp.sum()

    with sampling_mode("philox"):
        traced = torch.jit.trace(fn, (loc, scale), check_trace=False)
        torch.manual_seed(1)
        g_eager = torch.autograd.grad(fn(loc, scale), (loc, scale))
        torch.manual_seed(1)
        g_trace = torch.autograd.grad(traced(loc, scale), (loc, scale))
    for a, b in zip(g_eager, g_trace):
        assert torch.equal(a, b)


def test_trace_with_generator_says_what_to_use():
    loc, scale = inputs()
    g = torch.Generator().manual_seed(0)
    with sampling_mode("philox"), pytest.raises(RuntimeError, match="generator=.*torch.compile"):
        torch.jit.trace(lambda l, s: torchdist_fast.Normal(l, s).rsample(generator=g), (loc, scale), check_trace=False)


def test_script_fails_as_for_torchs_normal_and_the_ops_script():
    def build(cls):
        def fn(loc, scale):
            return cls(loc, scale).rsample()
        return fn

    with pytest.raises(Exception) as torch_error:
        torch.jit.script(build(TorchNormal))
    with pytest.raises(Exception) as our_error:
        torch.jit.script(build(torchdist_fast.Normal))
    assert type(our_error.value) is type(torch_error.value)

    # scripted code calls the ops (TorchScript needs the source in a module file: load one)
    module = types.ModuleType("scripted_normal")
    source = textwrap.dedent(
        """
        import torch

        def rsample_and_log_prob(loc, scale, n: int):
            seed_offset = torch.ops.torchdist_fast.draw_seed_offset(str(loc.device), (n * loc.numel() + 3) // 4, None)
            return torch.ops.torchdist_fast.normal_rsample_log_prob(loc, scale, [n], seed_offset)
        """
    )
    path = pytest.importorskip("pathlib").Path(__file__).parent / ".scripted_normal_tmp.py"
    try:
        path.write_text(source)
        code = compile(source, str(path), "exec")
        exec(code, module.__dict__)
        import linecache

        linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
        scripted = torch.jit.script(module.rsample_and_log_prob)
    finally:
        path.unlink(missing_ok=True)
    loc, scale = inputs()
    with sampling_mode("philox"):
        torch.manual_seed(2)
        z, lp = scripted(loc, scale, 4)
        torch.manual_seed(2)
        z_ref, lp_ref = torchdist_fast.Normal(loc, scale).rsample_and_log_prob((4,))
    assert torch.equal(z, z_ref) and torch.equal(lp, lp_ref)
