"""Under torch.compile the ops' Triton launches are graph nodes (triton_kernel_wrapper_functional),
which Inductor calls from its generated code: no Python op of ours runs per call but the draw of
the stream position (ops.inductor.expose_kernels, docs/compile.md).

On CPU the launches run through the interpreter with ``backend="aot_eager"`` (the graph Inductor
gets, run op by op; Inductor itself cannot build user Triton kernels for the CPU), under
``ops.kernels_in_cpu_graphs()``. Inductor on CUDA is gpu-marked.
"""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.debugging import aot_eager
from torch._functorch.aot_autograd import make_boxed_func

import torchdist_fast as tdf
from torchdist_fast import ops
from torchdist_fast.ops import inductor


HOP = "triton_kernel_wrapper_functional"
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"  # set by conftest.py without a GPU
TORCH_VERSION = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2])


def _ours(graph) -> list:
    """The torchdist_fast ops still called in ``graph`` (draw_seed_offset sits inside with_effects)."""
    found = []
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        targets = [node.target] + [a for a in node.args if isinstance(a, torch._ops.OpOverload)]
        found += [str(t) for t in targets if str(t).startswith("torchdist_fast.")]
    return found


def _hops(graph) -> int:
    return sum(node.op == "call_function" and str(node.target) == HOP for node in graph.graph.nodes)


class GraphRecorder:
    """aot_eager that keeps the forward and backward graphs it runs."""

    def __init__(self):
        self.graphs = []

    def _keep(self, gm, example_inputs):
        self.graphs.append(gm)
        return make_boxed_func(gm.forward)

    def __call__(self, gm, example_inputs):
        return aot_eager(gm, example_inputs, fw_compiler=self._keep, bw_compiler=self._keep)


def normal_and_log_prob(loc, scale):
    d = tdf.Normal(loc, scale)
    z, lp = d.rsample_and_log_prob((2,))
    return z, lp, d.log_prob(z.detach() + 0.25)


def normal_sample(loc, scale):
    return (tdf.Normal(loc, scale).sample((3,)),)


def kl(loc, scale):
    return (torch.distributions.kl_divergence(tdf.Normal(loc, scale), tdf.Normal(0.5 * loc.detach(), scale.detach() + 0.1)),)


def kl_to_standard(loc, scale):  # the op with absent (None) parameters: q = N(0, 1)
    return (torch.ops.torchdist_fast.normal_kl(loc, scale, None, None),)


def tanh_normal(loc, scale):
    return tdf.TanhNormal(loc, scale, low=-2.0, high=3.0).rsample_and_log_prob()


def independent(loc, scale):
    return tdf.Normal(loc, scale).to_event(1).rsample_and_log_prob()


def randn(loc, scale):
    return (tdf.randn(5, 7),)


CASES = {"normal_and_log_prob": normal_and_log_prob, "sample": normal_sample, "kl": kl, "kl_to_standard": kl_to_standard,
         "tanh_normal": tanh_normal, "independent": independent, "randn": randn}


@pytest.fixture
def cpu_graph_kernels():
    if not INTERPRET:
        pytest.skip("CPU kernels run under TRITON_INTERPRET=1")
    with tdf.cpu_sampling("philox"), tdf.cpu_kernel("triton"), ops.kernels_in_cpu_graphs():
        yield


def _params(shape=(6, 8)):
    loc = torch.randn(shape, requires_grad=True)
    scale = (torch.rand(shape) + 0.5).requires_grad_()
    return loc, scale


def _run(fn, loc, scale, seed):
    """Outputs and parameter gradients of one step from torch.manual_seed(seed)."""
    loc.grad = scale.grad = None
    torch.manual_seed(seed)
    outs = fn(loc, scale)
    loss = sum(o.float().sum() for o in outs if o.requires_grad)
    if torch.is_tensor(loss):
        loss.backward()
    grads = tuple(None if p.grad is None else p.grad.clone() for p in (loc, scale))
    return tuple(o.detach() for o in outs), grads


@pytest.mark.parametrize("case", sorted(CASES))
def test_compiled_graph_launches_the_kernels_and_matches_eager(case, cpu_graph_kernels, no_recompiles):
    fn = CASES[case]
    recorder = GraphRecorder()
    compiled = torch.compile(fn, fullgraph=True, backend=recorder)
    loc, scale = _params()
    first = None
    for seed in (3, 4):
        eager = _run(fn, loc, scale, seed)
        graph = _run(compiled, loc, scale, seed)
        for e, c in zip(eager[0] + eager[1], graph[0] + graph[1]):
            assert (e is None) == (c is None)
            if e is not None:
                assert torch.equal(e, c), f"{case}: compiled differs from eager"
        if first is None:
            first = graph[0][0]
        elif not case.startswith("kl"):
            assert not torch.equal(first, graph[0][0]), "a new seed must draw new noise"
    assert recorder.graphs, "the compiled region never ran"
    for g in recorder.graphs:
        assert _ours(g) in ([], ["torchdist_fast.draw_seed_offset.default"] * len(_ours(g))), g.code
    assert _hops(recorder.graphs[0]) >= 1, recorder.graphs[0].code
    if any(g is not None for g in eager[1]):  # the backward graph launches the backward kernels too
        assert len(recorder.graphs) == 2 and _hops(recorder.graphs[1]) >= 1, recorder.graphs[-1].code


def test_cpu_graphs_keep_the_opaque_ops_by_default(no_recompiles):
    """Without kernels_in_cpu_graphs (Inductor cannot build them for the CPU) and on the reference
    path, the op stays one node."""
    loc, scale = _params()
    for kernel in ("reference", "triton") if INTERPRET else ("reference",):
        torch._dynamo.reset()
        recorder = GraphRecorder()
        with tdf.cpu_sampling("philox"), tdf.cpu_kernel(kernel):
            eager = _run(normal_and_log_prob, loc, scale, 7)
            graph = _run(torch.compile(normal_and_log_prob, fullgraph=True, backend=recorder), loc, scale, 7)
        assert all(torch.equal(e, c) for e, c in zip(eager[0] + eager[1], graph[0] + graph[1]))
        assert _hops(recorder.graphs[0]) == 0
        assert "torchdist_fast.normal_rsample_log_prob.default" in _ours(recorder.graphs[0])


def test_a_kernel_switch_changed_after_compiling_recompiles():
    """The switches are read while dynamo traces the methods, so it guards on them: the graph
    compiled with the kernels in it is not reused once they are switched off."""
    if not INTERPRET:
        pytest.skip("CPU kernels run under TRITON_INTERPRET=1")
    torch._dynamo.reset()
    recorder = GraphRecorder()
    compiled = torch.compile(normal_and_log_prob, fullgraph=True, backend=recorder)
    loc, scale = _params()
    with tdf.cpu_sampling("philox"):
        with tdf.cpu_kernel("triton"), ops.kernels_in_cpu_graphs():
            _run(compiled, loc, scale, 1)
        with tdf.cpu_kernel("reference"):
            eager = _run(normal_and_log_prob, loc, scale, 1)
            graph = _run(compiled, loc, scale, 1)
    assert [_hops(g) > 0 for g in recorder.graphs] == [True, True, False, False]
    assert all(torch.equal(e, c) for e, c in zip(eager[0] + eager[1], graph[0] + graph[1]))
    torch._dynamo.reset()


def test_export_keeps_the_ops_whole(cpu_graph_kernels, tmp_path):
    """torch.export leaves custom ops whole (as it does torch.library.triton_op's): the exported
    program holds the op, and saves."""
    class LogProb(torch.nn.Module):
        def forward(self, value, loc, scale):
            return torch.ops.torchdist_fast.normal_log_prob(value, loc, scale)

    args = (torch.randn(4, 3), torch.randn(3), torch.rand(3) + 0.5)
    program = torch.export.export(LogProb(), args).run_decompositions()
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets == ["torchdist_fast.normal_log_prob.default"], targets
    torch.export.save(program, tmp_path / "log_prob.pt2")
    assert torch.equal(program.module()(*args), LogProb()(*args))


@pytest.mark.parametrize("validate_args", [False, True])
def test_symbolic_shapes_keep_the_opaque_op(validate_args, cpu_graph_kernels, no_recompiles):
    """Launch plans are computed from concrete sizes and strides: with dynamic shapes the op stays
    opaque (and correct) rather than specializing the graph."""
    def step(loc, scale):
        d = tdf.Normal(loc, scale, validate_args=validate_args)
        z, lp = d.rsample_and_log_prob((2,))
        return z, lp, d.log_prob(z.detach() + 0.25)

    recorder = GraphRecorder()
    compiled = torch.compile(step, fullgraph=True, backend=recorder, dynamic=True)
    for rows in (5, 9):
        loc, scale = _params((rows, 8))
        eager = _run(step, loc, scale, rows)
        graph = _run(compiled, loc, scale, rows)
        assert all(torch.equal(e, c) for e, c in zip(eager[0] + eager[1], graph[0] + graph[1]))
    assert _hops(recorder.graphs[0]) == 0
    assert "torchdist_fast.normal_rsample_log_prob.default" in _ours(recorder.graphs[0])


@pytest.mark.parametrize("kernels_in_graph", [False, True])
def test_checkpoint_in_a_compiled_graph_recomputes_the_kernels(kernels_in_graph, no_recompiles):
    """A sampling function under torch.utils.checkpoint inside torch.compile, with
    checkpoint_context (the draws saved, the rest recomputed): eager's numbers and gradients; with
    the kernels in the graph the backward graph launches the forward kernel again."""
    if not INTERPRET:
        pytest.skip("CPU kernels run under TRITON_INTERPRET=1")
    from torch.utils.checkpoint import checkpoint

    def step(loc, scale):
        return checkpoint(lambda a, b: tdf.Normal(a, b).rsample_and_log_prob(), loc, scale, use_reentrant=False,
                          context_fn=tdf.checkpoint_context)

    recorder = GraphRecorder()
    loc, scale = _params()
    with tdf.cpu_sampling("philox"), tdf.cpu_kernel("triton"), ops.kernels_in_cpu_graphs(kernels_in_graph):
        eager = _run(step, loc, scale, 11)
        graph = _run(torch.compile(step, fullgraph=True, backend=recorder), loc, scale, 11)
    assert all(torch.equal(e, c) for e, c in zip(eager[0] + eager[1], graph[0] + graph[1]))
    assert [_hops(g) for g in recorder.graphs] == ([1, 2] if kernels_in_graph else [0, 0])  # forward; recomputed + backward


def test_every_op_keys_the_compile_cache_on_the_kernels_it_may_launch():
    """AOTAutograd's cache key holds the source of the Triton kernels of each op in a graph: every
    op lists its launcher modules, together they are every module of the kernel inventory, and the
    kernels keyed are the inventory's (``triton_kernels/inventory.py``), each keyed by some op."""
    from torch._library.triton import get_triton_kernels_for_op

    from torchdist_fast.triton_kernels import inventory

    assert set().union(*inductor.KERNEL_MODULES.values()) == set(inventory.MODULES)
    assert {op._name for op in ops.EXPOSED_OPS} == set(inductor.KERNEL_MODULES)
    launched = {op._name: {k.fn.__name__ for k in get_triton_kernels_for_op(f"torchdist_fast::{op._name}")}
                for op in ops.EXPOSED_OPS}
    for op, modules in inductor.KERNEL_MODULES.items():
        assert launched[op] == {k for _m, k in inventory.kernels(modules)}, op
    assert set().union(*launched.values()) == {k for _m, k in inventory.kernels()}
    assert "_normal_rsample_fwd_2d_kernel" in launched["normal_rsample_log_prob"]
    assert "_philox_randn_kernel" in launched["tanh_normal_rsample"]  # the unfused path's noise


def _functional_cuda_graph(seed_offset_device):
    """The functionalized graph (what AOTAutograd hands Inductor) of rsample_and_log_prob + log_prob on
    fake CUDA tensors: the CUDA decision rule, traced without a GPU."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch._subclasses.functional_tensor import dispatch_functionalize
    from torch.fx.experimental.proxy_tensor import make_fx

    def step(loc, scale, seed_offset):
        z, lp = torch.ops.torchdist_fast.normal_rsample_log_prob(loc, scale, [2], seed_offset)
        return z, lp, torch.ops.torchdist_fast.normal_log_prob(z, loc, scale)

    with FakeTensorMode():
        loc, scale = torch.empty(6, 8, device="cuda"), torch.empty(6, 8, device="cuda")
        seed_offset = torch.empty(2, dtype=torch.int64, device=seed_offset_device)
    return make_fx(dispatch_functionalize(step), tracing_mode="fake")(loc, scale, seed_offset)


def test_cuda_ops_become_launches_where_the_position_is_on_the_device(monkeypatch):
    """On CUDA (fake tensors here): with the pair on the device (the CUDA backend extension built) both
    ops become launches; with a CPU pair the random op stays opaque (its position is read on the
    host), log_prob (no position) still becomes a launch; under gpu_kernel("cuda") both stay opaque."""
    graph = _functional_cuda_graph("cuda")
    assert _ours(graph) == [] and _hops(graph) == 2, graph.code
    graph = _functional_cuda_graph("cpu")
    assert _ours(graph) == ["torchdist_fast.normal_rsample_log_prob.default"] and _hops(graph) == 1, graph.code
    monkeypatch.setattr(inductor, "get_gpu_kernel", lambda: "cuda")
    graph = _functional_cuda_graph("cuda")
    assert _hops(graph) == 0 and len(_ours(graph)) == 2, graph.code


MUTATION_SCRIPT = r"""
import json, sys, torch, triton
from triton.backends.compiler import GPUTarget

class Sm90:  # Inductor's analysis compiles the kernel to TTIR for the active target: no GPU needed
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

triton.runtime.driver.set_active(Sm90())
from torch._higher_order_ops import triton_kernel_wrap as ktw
if hasattr(ktw, "identify_accessed_tensors"):  # torch >= 2.13 (reads and writes)
    API = "identify_accessed_tensors"
    def written(kernel, kwargs):
        return sorted(d.name for d in ktw.identify_accessed_tensors(kernel, kwargs, {}).read_writes.writes)
else:  # torch 2.11 (the GPU machine's): the same TTIR analysis, writes only
    API = "identify_mutated_tensors"
    def written(kernel, kwargs):
        return sorted(ktw.identify_mutated_tensors(kernel, kwargs, {}))
from torchdist_fast.triton_kernels import normal_event_sum, normal_kl, normal_log_prob, normal_rsample, philox, tanh_normal
from torchdist_fast.triton_kernels.layout import force_fast_math

launches, inputs = [], set()

class Recorder:
    def __init__(self, kernel):
        self.kernel = kernel
    def __getitem__(self, grid):
        def record(*args, **kwargs):
            launches.append((self.kernel, dict(zip(self.kernel.arg_names, args)) | kwargs, frozenset(inputs)))
        return record

for module in (normal_event_sum, normal_kl, normal_log_prob, normal_rsample, philox, tanh_normal):
    module.launcher = lambda kernel, out: Recorder(kernel)

def call(fn, *args, **kwargs):  # the launches of fn, each with the storages of fn's input tensors
    inputs.clear()
    inputs.update(t.data_ptr() for t in (*args, *kwargs.values()) if isinstance(t, torch.Tensor))
    fn(*args, **kwargs)

position = torch.tensor([5, 8], dtype=torch.int64)
T = True
for dtype, fast in ((torch.float32, False), (torch.bfloat16, False), (torch.float32, True)):  # fast: what CUDA runs
    with force_fast_math(fast):
        for shape in ((6, 8), (256, 8), (5, 3)):  # 1-D launch, 2-D tiles, a tail launch
            r = lambda *s: torch.randn(*s, dtype=dtype)
            loc, scale, row = r(shape), torch.rand(shape, dtype=dtype) + 0.5, torch.rand(shape[-1], dtype=dtype) + 0.5
            for pos in (None, position):
                for with_lp in (False, True):
                    call(normal_rsample.normal_rsample_fwd, loc, scale, (2,), 1, 2, with_lp, position=pos)
                    call(tanh_normal.tanh_normal_fwd, loc, scale, shape, 1, 0.5, 1.5, 1, 2, with_lp, True, position=pos)
                call(normal_rsample.normal_rsample_bwd, r(shape), r(shape), row, 1, 2, position=pos)
                call(normal_rsample.normal_rsample_bwd, r(shape), None, row, 1, 2, position=pos)
                call(philox.philox_randn, shape, 1, 2, dtype, torch.device("cpu"), position=pos)
                for grad_lp, mask in ((r(shape[:-1]), [T, T]), (None, [T, False]), (r(shape[:-1]), [False, T])):
                    call(tanh_normal.tanh_normal_bwd, r(shape), grad_lp, loc, scale, shape, 1, 1.5, 1, 2, mask, True,
                         position=pos)
            call(normal_event_sum.normal_log_prob_sum_fwd, r(shape), loc, row, 1)
            call(normal_log_prob.normal_log_prob_fwd, r(shape), loc, row)
            for mask in ([T, T, T], [T, False, T], [False, False, T]):
                call(normal_log_prob.normal_log_prob_bwd, r(shape), r(shape), loc, row, mask)
            call(normal_kl.normal_kl_fwd, shape, dtype, torch.device("cpu"), loc, scale, row, None)
            call(normal_kl.normal_kl_fwd, shape, dtype, torch.device("cpu"), loc, scale, None, None)
            for mask in ([T, T, T, False], [False, T, False, False]):
                call(normal_kl.normal_kl_bwd, r(shape), loc, scale, row, None, mask)

report = []
for kernel, kwargs, input_storages in launches:
    writes = written(kernel, kwargs)
    report.append({"api": API, "kernel": kernel.fn.__name__, "writes": writes, "fast": kwargs.get("FAST_MATH"),
                   "in_memory": kwargs.get("position_in_memory"),
                   "written_inputs": [n for n in writes if kwargs[n].data_ptr() in input_storages],
                   "written_twice": [n for n in writes for m, t in kwargs.items()
                                     if m != n and isinstance(t, torch.Tensor) and t.data_ptr() == kwargs[n].data_ptr()]})
json.dump(report, sys.stdout)
"""


def test_inductor_copies_no_input_of_a_kernel():
    """Inductor's mutation analysis (TTIR compiled for sm_90, no GPU) finds each kernel writing its
    outputs only: a compiled graph neither copies an input nor the stream position around a launch."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JIT kernels
    out = subprocess.run([sys.executable, "-c", MUTATION_SCRIPT], env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads(out.stdout)
    # keyed by torch version: torch 2.13 has identify_accessed_tensors, torch 2.11 identify_mutated_tensors
    # (both analyse the TTIR; both fall back to "every tensor argument is written" on an error, which
    # the checks below reject)
    apis = {r["api"] for r in report}
    if TORCH_VERSION >= (2, 13):
        assert apis == {"identify_accessed_tensors"}
    elif TORCH_VERSION <= (2, 11):
        assert apis == {"identify_mutated_tensors"}
    else:  # torch 2.12, not tested here: whichever it has
        assert len(apis) == 1, apis
    kernels = {r["kernel"] for r in report}
    assert len(kernels) >= 10, kernels
    assert any(r["in_memory"] == 1 for r in report) and any(r["fast"] for r in report)
    for r in report:
        assert r["writes"], r  # the analysis ran (it finds the outputs)
        # by storage: no input of the launcher (parameters, grads, the position, the pointers that
        # stand in for outputs not asked for) is written
        assert not r["written_inputs"], r
        assert not r["written_twice"], r  # an output passed under a second name aliases in a compiled graph
        assert "seed_offset_ptr" not in r["writes"], r


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["normal_and_log_prob", "tanh_normal", "independent"])
def test_inductor_calls_the_kernels_from_its_generated_code(case, no_recompiles):
    """CUDA, Inductor: the generated code launches our Triton kernels itself; of our ops only the
    draw of the stream position is still called. Needs the CUDA backend extension, which puts the
    position on the device (without it the random ops stay opaque: their position is read on the host)."""
    from torch._inductor.utils import run_and_get_code

    from torchdist_fast import cuda_backend

    if not cuda_backend.available():
        pytest.skip(f"needs the CUDA backend extension: {cuda_backend.unavailable_reason()}")

    fn = CASES[case]
    loc = torch.randn(64, 8, device="cuda", requires_grad=True)
    scale = (torch.rand(64, 8, device="cuda") + 0.5).requires_grad_()
    compiled = torch.compile(fn, fullgraph=True)
    codes = []
    for seed in (3, 4):
        eager = _run(fn, loc, scale, seed)
        graph, new_codes = run_and_get_code(lambda: _run(compiled, loc, scale, seed))
        codes += new_codes
        for e, c in zip(eager[0] + eager[1], graph[0] + graph[1]):
            if e is not None:
                torch.testing.assert_close(c, e, rtol=1e-6, atol=1e-6)  # Inductor may fuse the torch ops around them
    code = "\n".join(codes)
    kernel = {"normal_and_log_prob": "_normal_rsample_fwd", "tanh_normal": "_tanh_normal_fwd_kernel",
              "independent": "_tanh_normal_fwd_kernel"}[case]
    assert kernel in code and "triton_kernel_wrapper" not in code, code[-4000:]
    assert "torchdist_fast.normal" not in code and "torchdist_fast.tanh" not in code, code[-4000:]
