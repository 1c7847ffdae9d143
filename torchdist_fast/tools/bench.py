"""The comparison behind ``python -m torchdist_fast`` and ``benchmarks/``.

torch.distributions.Normal eager, the same code under torch.compile, and torchdist_fast.Normal,
for sample / rsample / log_prob / rsample_and_log_prob, forward and forward+backward, over sizes.

Timing: a warm-up call per implementation (for torch.compile, the compile; reported separately
as ``compile_warmup_s``), then ``repeats`` timed calls, interleaved across the implementations
(round r calls each once, in an order rotated every round, so drift in clocks or load falls on
all alike); each call uses the next of ``ROTATE`` input sets (fresh random data, never zeros) so
caches do not flatter; CUDA calls are timed with CUDA events, CPU calls with perf_counter; the
median is reported with min and max. On CUDA each row
also has the wall time per call of ``repeats`` back-to-back calls (``wall_s``), the host time a
call takes to return (``host_s``, no synchronization) and ``host_bound`` (the host, not the GPU,
sets the pace). On CPU a call is synchronous: ``host_s`` is its whole time.

torch.compile column: each (device, dtype, op, mode) gets its own freshly built forward function,
compiled with ``fullgraph=True`` after ``torch._dynamo.reset()``, with
``fail_on_recompile_limit_hit``; the backward is the compiled graph's (AOTAutograd), taken with
``torch.autograd.grad`` outside the compiled function, as in a training step. A compile row is
only reported when dynamo compiled the forward in one graph, compiled nothing new during the
timed calls, and a call was seen running the compiled code (``CompileGuard``); otherwise the row
is refused and listed in ``refused`` with the reason, so the column never shows eager code.
Bytes that must move are counted per element (see ``BYTES_PER_ELEMENT``) and divided by the
median time; on a GPU this is also given as a share of the device-to-device copy rate measured
with a copy kernel (``device_copy``).

``randn`` (opt-in, ``--ops randn`` or ``--op-modes randn:fwd``) is the draw alone: torch.randn
against torchdist_fast.randn, the same shape and dtype.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch

from .timing import time_calls

OPS = ("sample", "rsample", "log_prob", "rsample_and_log_prob")
# The Normal family beyond one distribution (opt-in: ``--ops``): KL(Normal(loc, scale) || N(0, 1)),
# the log_prob of Independent(Normal, 1) over rows of EVENT elements, and SAC's tanh-squashed
# Normal (rsample + log_prob); torch's code is kl_divergence / Independent / TransformedDistribution
FAMILY_OPS = ("kl", "event_log_prob", "tanh_rsample_and_log_prob")
ALL_OPS = ("randn",) + OPS + FAMILY_OPS
EVENT = 8  # event elements per row of the family ops (an action dimension)
DTYPES_CHOICES = ("float32", "float64", "float16", "bfloat16")
MODES = ("fwd", "fwd+bwd")
ROTATE = 3
SCHEMA_VERSION = 2
LATENCY_MAX_SIZE = 2**12  # rows at or below this size are the small-batch (latency) rows

# Tensors of the element count that must cross memory, per element (in units of the dtype size):
#   randn fwd               write z                                                   1
#   sample/rsample fwd      read loc, scale; write z                                  3
#   rsample fwd+bwd         + read grad_z; write grad_loc, grad_scale                 6
#   log_prob fwd            read value, loc, scale; write log_prob                   4
#   log_prob fwd+bwd        + read grad, value, loc, scale; write grad_loc, grad_scale 10
#   rsample_and_log_prob    read loc, scale; write z, log_prob                        4
#     fwd+bwd               + read grad_z, grad_lp, scale; write grad_loc, grad_scale 9
#   kl fwd                  read loc, scale; write kl                                  3
#     fwd+bwd               + read grad, loc, scale; write grad_loc, grad_scale        8
#   event_log_prob fwd      read value, loc, scale; write one sum per row (1/EVENT)   3.125
#     fwd+bwd               + read grad (1/EVENT), value, loc, scale; write 2 grads   8.25
#   tanh_rsample_and_log_prob fwd  read loc, scale; write a, log_prob (1/EVENT)      3.125
#     fwd+bwd               + read grad_a, grad_lp (1/EVENT), loc, scale; write 2     8.25
BYTES_PER_ELEMENT = {
    ("randn", "fwd"): 1,
    ("sample", "fwd"): 3, ("rsample", "fwd"): 3, ("rsample", "fwd+bwd"): 6,
    ("log_prob", "fwd"): 4, ("log_prob", "fwd+bwd"): 10,
    ("rsample_and_log_prob", "fwd"): 4, ("rsample_and_log_prob", "fwd+bwd"): 9,
    ("kl", "fwd"): 3, ("kl", "fwd+bwd"): 8,
    ("event_log_prob", "fwd"): 3.125, ("event_log_prob", "fwd+bwd"): 8.25,
    ("tanh_rsample_and_log_prob", "fwd"): 3.125, ("tanh_rsample_and_log_prob", "fwd+bwd"): 8.25,
}


def combos(ops=OPS, modes=MODES):
    return [(op, mode) for op in ops for mode in modes if (op, mode) in BYTES_PER_ELEMENT]


def parse_op_mode(text: str) -> tuple:
    """"op:mode" (e.g. "log_prob:fwd+bwd") as (op, mode); ValueError when it is not a benchmark row."""
    op, _, mode = text.partition(":")
    if (op, mode) not in BYTES_PER_ELEMENT:
        raise ValueError(f"{text!r} is not one of {', '.join(f'{o}:{m}' for o, m in BYTES_PER_ELEMENT)}")
    return op, mode


# ----------------------------------------------------------------------------- the work
def make_fwd(dist_cls, op: str):
    """A new function of (loc, scale, value) returning op's outputs with ``dist_cls`` (a new code
    object per call of make_fwd: a compiled copy never shares dynamo's cache with another row)."""

    if op in FAMILY_OPS:
        fwd = _family_fwd(dist_cls, op)
        fwd.__code__ = fwd.__code__.replace(co_name=f"fwd_{op}")
        return fwd
    if op == "randn":
        import torchdist_fast

        draw = torchdist_fast.randn if issubclass(dist_cls, torchdist_fast.Normal) else torch.randn

        def fwd(loc, scale, value):
            return (draw(loc.shape, dtype=loc.dtype, device=loc.device),)

        fwd.__code__ = fwd.__code__.replace(co_name=f"fwd_{op}")
        return fwd

    def fwd(loc, scale, value):
        d = dist_cls(loc, scale)
        if op == "sample":
            return (d.sample(),)
        if op == "rsample":
            return (d.rsample(),)
        if op == "log_prob":
            return (d.log_prob(value),)
        if hasattr(d, "rsample_and_log_prob"):
            return tuple(d.rsample_and_log_prob())
        z = d.rsample()
        return (z, d.log_prob(z))

    fwd.__code__ = fwd.__code__.replace(co_name=f"fwd_{op}")
    return fwd


def _family_fwd(dist_cls, op: str):
    """The family ops with ``dist_cls``: torch's classes compose torch's code, ours takes the fused
    paths (the fused KL, ``to_event``, ``TanhNormal``)."""
    import torchdist_fast

    ours = issubclass(dist_cls, torchdist_fast.Normal)

    def rows(t):  # 1-D inputs as rows of EVENT elements (one row per element below EVENT)
        return t.view(-1, EVENT) if t.numel() % EVENT == 0 else t.view(-1, 1)

    def fwd(loc, scale, value):
        if op == "kl":
            prior = dist_cls(loc.new_zeros(()), loc.new_ones(()))
            return (torch.distributions.kl_divergence(dist_cls(loc, scale), prior),)
        loc, scale, value = rows(loc), rows(scale), rows(value)
        if op == "event_log_prob":
            d = dist_cls(loc, scale).to_event(1) if ours else torch.distributions.Independent(dist_cls(loc, scale), 1)
            return (d.log_prob(value),)
        if ours:
            return tuple(torchdist_fast.TanhNormal(loc, scale, event_dims=1).rsample_and_log_prob())
        from torch.distributions import Independent, TransformedDistribution
        from torch.distributions.transforms import TanhTransform

        d = TransformedDistribution(Independent(dist_cls(loc, scale), 1), [TanhTransform(cache_size=1)])
        a = d.rsample()
        return (a, d.log_prob(a))

    return fwd


def with_backward(fwd, op: str, mode: str):
    """(loc, scale, value, grad_a, grad_b) -> fwd's outputs, or the gradients for fwd+bwd."""

    def work(loc, scale, value, grad_a, grad_b):
        outs = fwd(loc, scale, value)
        if mode == "fwd" or op in ("sample", "randn"):
            return outs
        # torch.autograd.grad, not .backward(): no accumulation into .grad to time as well; an
        # output smaller than the inputs (a sum per row) takes the leading part of its grad
        grads = tuple(g if g.shape == o.shape else g[: o.numel()].view(o.shape) for g, o in zip((grad_a, grad_b), outs))
        return torch.autograd.grad(outs, (loc, scale), grads)

    return work


def make_work(dist_cls, op: str, mode: str):
    """A function of (loc, scale, value, grad_a, grad_b) doing op/mode with ``dist_cls`` (eager)."""
    return with_backward(make_fwd(dist_cls, op), op, mode)


# ----------------------------------------------------------------------------- torch.compile, guarded
class CompileRefused(Exception):
    """The compiled function did not run as one compiled graph: the row must not be reported."""


def _compile(fn):
    return torch.compile(fn, fullgraph=True, dynamic=True)


class CompileGuard:
    """One compiled forward for one (device, dtype, op, mode), with fresh compiler state.

    ``call`` runs under ``fail_on_recompile_limit_hit`` (dynamo raises instead of falling back
    to eager); ``check_no_new_graphs`` and ``check_ran_compiled`` are the evidence a row needs.
    """

    RECOMPILE_LIMIT = 4  # size 1 is specialized (0/1), every other size shares one dynamic graph

    def __init__(self, dist_cls, op: str, mode: str):
        from torch._dynamo.utils import counters

        torch._dynamo.reset()
        counters.clear()
        self._counters = counters
        self.compiled_fwd = _compile(make_fwd(dist_cls, op))
        self.work = with_backward(self._guarded_fwd, op, mode)

    def _guarded_fwd(self, *args):
        with torch._dynamo.config.patch(recompile_limit=self.RECOMPILE_LIMIT, fail_on_recompile_limit_hit=True):
            return self.compiled_fwd(*args)

    def graphs(self) -> int:
        return self._counters["stats"]["unique_graphs"]

    def graph_breaks(self) -> int:
        return sum(self._counters["graph_break"].values())

    def check_clean(self) -> None:
        if self.graph_breaks():
            raise CompileRefused(f"graph breaks: {dict(self._counters['graph_break'])}")
        if self.graphs() == 0:
            raise CompileRefused("dynamo compiled no graph (the call ran eager code)")

    def check_ran_compiled(self, args) -> None:
        """Run one call and see dynamo find compiled code for it: its guard check must end in a
        cache hit (dynamo's guard-complete hook; no profiler, which prints on stderr)."""
        from torch._C._dynamo.eval_frame import set_guard_complete_hook

        cache_hits = []

        def on_guards_checked(cache_hit: bool) -> bool:
            cache_hits.append(cache_hit)
            return cache_hit  # True: run the cached compiled code (dynamo's own choice, unchanged)

        previous = set_guard_complete_hook(on_guards_checked)
        try:
            self.work(*args)
        finally:
            set_guard_complete_hook(previous)
        if not any(cache_hits):
            raise CompileRefused("dynamo ran no compiled code for the call (eager code)")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _runs(impl: str, op: str) -> bool:
    """Whether ``impl`` has ``op``: the CUDA C++ backend has no KL, event-sum or TanhNormal kernels
    (under gpu_kernel("cuda") those ops raise NotImplementedError: ops/launch.py)."""
    return not (impl == "torchdist_fast[cuda]" and op in FAMILY_OPS)


def implementations(device: str):
    """name -> (distribution class, compiled?, context manager factory)."""
    import contextlib

    import torchdist_fast

    impls = {
        "eager": (torch.distributions.Normal, False, contextlib.nullcontext),
        "compile": (torch.distributions.Normal, True, contextlib.nullcontext),
        "torchdist_fast": (torchdist_fast.Normal, False, contextlib.nullcontext),
    }
    if device == "cuda":
        from .. import cuda_backend

        if cuda_backend.available():  # the hand-written CUDA C++ backend, when built
            impls["torchdist_fast[cuda]"] = (torchdist_fast.Normal, False, lambda: torchdist_fast.gpu_kernel("cuda"))
    if device == "cpu":
        # the default CPU sampling is torch's own; this column shows the Philox stream on CPU
        impls["torchdist_fast[philox]"] = (torchdist_fast.Normal, False, lambda: torchdist_fast.cpu_sampling("philox"))
    return impls


def make_inputs(n: int, device: str, dtype: torch.dtype, mode: str, seed: int):
    # drawn on the device itself: 2^28-element inputs made on the CPU take minutes
    g = torch.Generator(device=device).manual_seed(seed)

    def rnd(*, positive=False):
        kw = dict(generator=g, device=device)
        t = torch.rand(n, **kw) + 0.5 if positive else torch.randn(n, **kw)
        return t.to(dtype=dtype)

    needs_grad = mode == "fwd+bwd"
    loc = rnd().requires_grad_(needs_grad)
    scale = rnd(positive=True).requires_grad_(needs_grad)
    return (loc, scale, rnd(), rnd(), rnd())


# ----------------------------------------------------------------------------- measuring
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def wall_and_host(fn, input_sets, device: str, repeats: int):
    """(wall time per call of ``repeats`` back-to-back calls ending in one sync, median host time
    a call takes to return). On CUDA the second is the Python + dispatch + launch cost alone."""
    _sync(device)
    host = []
    t0 = time.perf_counter()
    for i in range(repeats):
        args = input_sets[i % len(input_sets)]
        t = time.perf_counter()
        fn(*args)
        host.append(time.perf_counter() - t)
    _sync(device)
    return (time.perf_counter() - t0) / repeats, statistics.median(host)


def seed_offset_draw_s(device: str, n: int, repeats: int = 200) -> float:
    """Median host time of torchdist_fast's stream-position draw for n elements (one part of our
    per-call host cost; op dispatch and launch preparation are the rest)."""
    from ..functional import draw_seed_offset

    dev = torch.device(device)
    draw_seed_offset(dev, n)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        draw_seed_offset(dev, n)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def saved_bytes_per_element(fn, args, n: int) -> float:
    """Bytes autograd saves beyond the inputs' own storage, per element."""
    storages = {t.untyped_storage().data_ptr() for t in args}
    extra = []

    def pack(t):
        if t.untyped_storage().data_ptr() not in storages:
            extra.append(t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(*args)
    return sum(extra) / n


def ops_per_call(fn, args, device: str):
    """CUDA: kernels launched (the profiler's CUDA activity). CPU: aten/custom ops dispatched
    (a TorchDispatchMode; not for compiled code)."""
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

        # kineto logs every profiler start and stop on stderr at its USDT level (5, above ERROR);
        # level 6 silences it (read when the profiler first starts; a level the user set wins)
        os.environ.setdefault("KINETO_LOG_LEVEL", "6")
        _sync(device)
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            fn(*args)
            _sync(device)
        return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn(*args)
    return Count.n


def host_syncs_per_call(fn, args, device: str):
    if device != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum(1 for w in caught if "synchroniz" in str(w.message))


def copy_bandwidth_gbps(device: str, nbytes: int | None = None) -> float:
    """Measured device-to-device copy rate of a copy kernel (bytes read + written per second), in
    GB/s: ``device_copy.bandwidth``, the reference of every "% of copy"."""
    from . import device_copy

    return device_copy.bandwidth(device, nbytes or device_copy.COPY_BYTES)["kernel_gbps"]


@dataclass
class Result:
    device: str
    dtype: str
    op: str
    mode: str
    size: int
    impl: str
    median_s: float
    min_s: float
    max_s: float
    repeats: int
    gbps: float
    compile_warmup_s: float | None = None
    ratio_vs_eager: float | None = None
    ratio_vs_compile: float | None = None
    pct_copy_bandwidth: float | None = None
    saved_bytes_per_element: float | None = None
    ops_per_call: int | None = None
    ops_per_call_kind: str = ""
    host_syncs: int | None = None
    host_s: float | None = None
    wall_s: float | None = None
    host_bound: bool | None = None
    host_ratio_vs_eager: float | None = None
    extra: dict = field(default_factory=dict)


def environment(devices) -> dict:
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "devices": {},
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    import torchdist_fast

    env["torchdist_fast"] = torchdist_fast.__version__
    for d in devices:
        env["devices"][d] = torch.cuda.get_device_name() if d == "cuda" else cpu_name()
    return env


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "CPU"


def run(devices, dtypes, sizes_by_device, ops=OPS, modes=MODES, repeats=None, progress=None, op_modes=None) -> dict:
    """Run every combination (of ``ops`` x ``modes``, or the (op, mode) pairs ``op_modes``);
    returns {"schema_version", "environment", "copy_bandwidth_gbps", "bytes_per_element",
    "results", "refused"} ("refused": compile rows not reported, and why)."""
    results: list[Result] = []
    refused: list[dict] = []
    copy_bw = {d: copy_bandwidth_gbps(d) for d in devices if d == "cuda"}
    pairs = list(op_modes) if op_modes is not None else combos(ops, modes)
    plan = [(d, dt, op, mode) for d in devices for dt in dtypes for op, mode in pairs]
    total = sum(len(sizes_by_device[d]) * sum(_runs(impl, op) for impl in implementations(d)) for d, _, op, _ in plan)
    bar = progress(total) if progress else None
    draw_cost = {}
    for device, dtype_name, op, mode in plan:
        dtype = getattr(torch, dtype_name)
        guard = None  # the compiled function of this (device, dtype, op, mode), built at its first size
        guard_error = None
        for size in sizes_by_device[device]:
            n_rep = repeats or _default_repeats(device, size)
            input_sets = [make_inputs(size, device, dtype, mode, seed) for seed in range(ROTATE)]
            labels = {impl: f"{device} {dtype_name} {op} {mode} 2^{int(math.log2(size))} {impl}" for impl in implementations(device)}

            def refuse(impl, reason):
                refused.append(dict(device=device, dtype=dtype_name, op=op, mode=mode, size=size, reason=reason))
                if bar:
                    bar(labels[impl] + " (refused)")

            # 1. every implementation warmed up (compiled), 2. the timed calls interleaved, 3. the rest of each row
            ready = {}  # impl -> (fn, context factory, compiled warm-up record or None)
            for impl, (cls, compiled, ctx) in implementations(device).items():
                if not _runs(impl, op):
                    continue
                if compiled:
                    if guard is None and guard_error is None:
                        try:
                            guard = CompileGuard(cls, op, mode)
                        except Exception as exc:  # noqa: BLE001 - reported as a refused row
                            guard_error = _first_line(exc)
                    if guard_error is not None:
                        refuse(impl, guard_error)
                        continue
                    try:
                        ready[impl] = (guard.work, ctx, _warm_up_compiled(guard, device, input_sets))
                    except Exception as exc:  # noqa: BLE001 - a fallback, a break or a recompile: refuse the row
                        refuse(impl, _first_line(exc))
                else:
                    work = make_work(cls, op, mode)
                    with ctx():
                        _warm_up(work, device, input_sets)
                    ready[impl] = (work, ctx, None)
            times = time_interleaved({impl: (fn, ctx) for impl, (fn, ctx, _) in ready.items()}, input_sets, device, n_rep)
            row = {}
            for impl, (fn, ctx, warmed) in ready.items():
                cls = implementations(device)[impl][0]
                if warmed is not None:
                    try:
                        res = _measure_compiled(guard, cls, op, mode, size, device, dtype, input_sets, n_rep, copy_bw,
                                                warmed=warmed, times=times[impl])
                    except Exception as exc:  # noqa: BLE001 - a fallback, a break or a recompile: refuse the row
                        refuse(impl, _first_line(exc))
                        continue
                else:
                    with ctx():
                        res = _measure(fn, cls, op, mode, size, device, dtype, input_sets, n_rep, copy_bw, times=times[impl])
                    if impl.startswith("torchdist_fast") and size <= LATENCY_MAX_SIZE:
                        if (device, size) not in draw_cost:
                            draw_cost[(device, size)] = seed_offset_draw_s(device, size)
                        res.extra["seed_offset_draw_s"] = draw_cost[(device, size)]
                res.device, res.dtype, res.impl = device, dtype_name, impl
                row[impl] = res
                if bar:
                    bar(labels[impl])
            for res in row.values():
                res.ratio_vs_eager = speedup(row["eager"].median_s, res.median_s)
                res.ratio_vs_compile = speedup(row["compile"].median_s, res.median_s) if "compile" in row else None
                res.host_ratio_vs_eager = res.host_s / row["eager"].host_s
                results.append(res)
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(devices),
        "copy_bandwidth_gbps": copy_bw,
        "bytes_per_element": {f"{op}/{mode}": v for (op, mode), v in BYTES_PER_ELEMENT.items()},
        "results": [asdict(r) for r in results],
        "refused": refused,
    }


def time_interleaved(fns: dict, input_sets, device: str, repeats: int) -> dict:
    """{name: ``repeats`` call times} of each (fn, context factory) in ``fns``, the calls
    interleaved: round r calls every function once, starting one further along each round; each
    call runs inside its context (entered outside the timed region) on input set r % ROTATE."""
    names = list(fns)
    times = {name: [] for name in names}
    for r in range(repeats):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            fn, ctx = fns[name]
            with ctx():
                times[name] += time_calls(fn, [input_sets[r % len(input_sets)]], device, 1)
    return times


def _timings(fn, op, mode, size, device, dtype, input_sets, n_rep, copy_bw, warm=None, times=None) -> "Result":
    times = times if times is not None else time_calls(fn, input_sets, device, n_rep)
    med = statistics.median(times)
    nbytes = BYTES_PER_ELEMENT[(op, mode)] * size * dtype.itemsize
    res = Result(device=device, dtype="", op=op, mode=mode, size=size, impl="", median_s=med, min_s=min(times),
                 max_s=max(times), repeats=len(times), gbps=nbytes / med / 1e9, compile_warmup_s=warm)
    if device in copy_bw:
        res.pct_copy_bandwidth = 100 * res.gbps / copy_bw[device]
    if device == "cuda":
        res.wall_s, res.host_s = wall_and_host(fn, input_sets, device, n_rep)
        # the host sets the pace when a call takes (almost) as long to issue as to run back to back
        res.host_bound = res.host_s >= 0.8 * res.wall_s
    else:
        res.host_s = res.wall_s = med  # a CPU call is synchronous: all of it is host time
    return res


def _warm_up(fn, device, input_sets) -> None:
    fn(*input_sets[0])
    _sync(device)
    fn(*input_sets[1 % ROTATE])


def _measure(fn, cls, op, mode, size, device, dtype, input_sets, n_rep, copy_bw, times) -> "Result":
    """One row of an eager implementation, from its ``times`` (taken warmed up, interleaved with the other columns)."""
    res = _timings(fn, op, mode, size, device, dtype, input_sets, n_rep, copy_bw, times=times)
    if mode == "fwd+bwd":
        res.saved_bytes_per_element = saved_bytes_per_element(make_fwd(cls, op), input_sets[0][:3], size)
    res.ops_per_call = ops_per_call(fn, input_sets[0], device)
    res.ops_per_call_kind = "kernels" if device == "cuda" else "aten ops"
    res.host_syncs = host_syncs_per_call(fn, input_sets[0], device)
    return res


def _warm_up_compiled(guard: CompileGuard, device, input_sets) -> dict:
    """The compiled function's warm-up (it compiles when this size needs a graph: the first size,
    size 1): {"warm_s" (None when nothing was compiled), "compiled_now", "graphs_after_warmup"}."""
    fn = guard.work
    graphs_before = guard.graphs()
    t0 = time.perf_counter()
    fn(*input_sets[0])
    _sync(device)
    warm = time.perf_counter() - t0
    guard.check_clean()
    compiled_now = guard.graphs() - graphs_before
    graphs_after_warmup = guard.graphs()
    fn(*input_sets[1 % ROTATE])
    return {"warm_s": warm if compiled_now else None, "compiled_now": compiled_now, "graphs_after_warmup": graphs_after_warmup}


def _measure_compiled(guard: CompileGuard, cls, op, mode, size, device, dtype, input_sets, n_rep, copy_bw,
                      warmed, times) -> "Result":
    """One row of the compiled column, from its warm-up (``_warm_up_compiled``) and its ``times``."""
    fn = guard.work
    res = _timings(fn, op, mode, size, device, dtype, input_sets, n_rep, copy_bw, warm=warmed["warm_s"], times=times)
    if mode == "fwd+bwd":
        res.saved_bytes_per_element = saved_bytes_per_element(guard._guarded_fwd, input_sets[0][:3], size)
    guard.check_ran_compiled(input_sets[0])
    if device == "cuda":
        res.ops_per_call = ops_per_call(fn, input_sets[0], device)
        res.ops_per_call_kind = "kernels"
    res.host_syncs = host_syncs_per_call(fn, input_sets[0], device)
    guard.check_clean()
    if guard.graphs() != warmed["graphs_after_warmup"]:
        raise CompileRefused(f"dynamo recompiled during the timed calls ({guard.graphs() - warmed['graphs_after_warmup']} new graphs)")
    res.extra["compile"] = {"graphs_total": guard.graphs(), "graphs_compiled_at_this_size": warmed["compiled_now"],
                            "graph_breaks": guard.graph_breaks(), "recompiles_while_timed": 0, "compiled_region_ran": True}
    return res


def _default_repeats(device, size):
    if device == "cuda":
        return 50
    return max(5, min(50, int(2**22 // max(size, 1))))


# ----------------------------------------------------------------------------- reporting
def _fmt_time(s: float) -> str:
    if s < 1e-3:
        return f"{s * 1e6:.1f} us"
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _pow2(n: int) -> str:
    return f"2^{n.bit_length() - 1}" if n > 0 and n & (n - 1) == 0 else str(n)


def speedup(baseline_s: float, ours_s: float) -> float:
    """How many times faster than the baseline (> 1: faster): the "x eager" / "x compile" of every
    table, the JSON's ``ratio_vs_eager`` / ``ratio_vs_compile`` and the plot."""
    return baseline_s / ours_s


def _aligned(header: list, rows: list) -> list:
    """A plain-text table for the terminal: columns padded to their widest cell."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    return ["  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip() for r in [header, *rows]]


def _markdown(header: list, rows: list) -> list:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


TABLE_COLUMNS = ["device", "dtype", "op", "mode", "size", "impl", "median", "x eager", "x compile", "GB/s", "% copy",
                 "host/call", "wall/call", "host-bound", "saved B/el", "ops/call", "syncs", "compile warm-up"]


def format_table(data: dict) -> str:
    """Every row of a run (and every refused compile row) as a Markdown table; the columns are
    explained in benchmarks/README.md."""
    rows = []
    for r in data["results"]:
        rows.append([
            r["device"], r["dtype"], r["op"], r["mode"], _pow2(r["size"]), r["impl"],
            _fmt_time(r["median_s"]), _fmt_ratio(r["ratio_vs_eager"]), _fmt_ratio(r["ratio_vs_compile"]), f"{r['gbps']:.2f}",
            "-" if r["pct_copy_bandwidth"] is None else f"{r['pct_copy_bandwidth']:.0f}%",
            "-" if r.get("host_s") is None else _fmt_time(r["host_s"]),
            "-" if r.get("wall_s") is None else _fmt_time(r["wall_s"]),
            "-" if r.get("host_bound") is None else ("HOST" if r["host_bound"] else "no"),
            "-" if r["saved_bytes_per_element"] is None else f"{r['saved_bytes_per_element']:.2f}",
            "-" if r["ops_per_call"] is None else f"{r['ops_per_call']} {r['ops_per_call_kind']}",
            "-" if r["host_syncs"] is None else str(r["host_syncs"]),
            "-" if r["compile_warmup_s"] is None else f"{r['compile_warmup_s']:.1f} s",
        ])
    for r in data.get("refused", []):
        rows.append([r["device"], r["dtype"], r["op"], r["mode"], _pow2(r["size"]), "compile",
                     "REFUSED: " + r["reason"].replace("|", "/")] + ["-"] * (len(TABLE_COLUMNS) - 7))
    return "\n".join(_markdown(TABLE_COLUMNS, rows))


def small_batch_sizes(sizes) -> list:
    """The small-batch sizes a summary shows: the run's sizes up to LATENCY_MAX_SIZE, thinned to
    the smallest, the middle and the largest when there are more than three."""
    small = sorted(s for s in set(sizes) if s <= LATENCY_MAX_SIZE)
    return small if len(small) <= 3 else [small[0], small[len(small) // 2], small[-1]]


def _groups(data: dict):
    """(device, dtype, its rows) in the order of the run."""
    for device, dtype in dict.fromkeys((r["device"], r["dtype"]) for r in data["results"]):
        yield device, dtype, [r for r in data["results"] if (r["device"], r["dtype"]) == (device, dtype)]


def _by_impl(rows, op, mode, size) -> dict:
    return {r["impl"]: r for r in rows if (r["op"], r["mode"], r["size"]) == (op, mode, size)}


# the other columns of ours (``implementations``), for the summary's footnote
OTHER_COLUMNS = {
    "torchdist_fast[philox]": 'torchdist_fast with cpu_sampling("philox"): the GPU\'s Philox stream, computed by the CPU reference',
    "torchdist_fast[cuda]": 'torchdist_fast with gpu_kernel("cuda"): the hand-written CUDA C++ backend',
}


def _variant(impl: str) -> str:
    """"torchdist_fast[philox]" -> "[philox]"."""
    return impl[len("torchdist_fast"):]


def summary_text(data: dict) -> str:
    """The answer of a run, for the terminal: per device and dtype, each op and mode at the
    largest size (median time per call of eager, torch.compile and ours, and how many times faster
    ours is), then the host time per call of ours at the small sizes against eager's and compile's."""
    refused = {(r["device"], r["dtype"], r["op"], r["mode"], r["size"]) for r in data.get("refused", [])}
    out = []
    for device, dtype, rows in _groups(data):
        pairs = list(dict.fromkeys((r["op"], r["mode"]) for r in rows))
        other_columns = [i for i in dict.fromkeys(r["impl"] for r in rows) if i.startswith("torchdist_fast[")]
        size = max(r["size"] for r in rows)

        def x_compile(o, c, key):  # ours against the compile row, or why there is none
            if c is not None:
                return _fmt_ratio(speedup(c[key], o[key]))
            return "refused" if (device, dtype, o["op"], o["mode"], o["size"]) in refused else "-"

        big = []
        for op, mode in pairs:
            by = _by_impl(rows, op, mode, size)
            if "torchdist_fast" not in by:
                continue
            e, c, o = by["eager"], by.get("compile"), by["torchdist_fast"]
            big.append([op, mode, _fmt_time(e["median_s"]), _fmt_time(c["median_s"]) if c else "-", _fmt_time(o["median_s"]),
                         _fmt_ratio(o["ratio_vs_eager"]), x_compile(o, c, "median_s")]
                        + [_fmt_ratio(by[i]["ratio_vs_eager"]) if i in by else "-" for i in other_columns])
        out.append(f"{device}, {dtype}, N = {_pow2(size)}: median time per call; x eager, x compile: "
                   "how many times faster torchdist_fast is (> 1: faster)")
        out += _aligned(["op", "mode", "eager", "compile", "torchdist_fast", "x eager", "x compile"]
                        + [f"{_variant(i)} x eager" for i in other_columns], big)
        small = small_batch_sizes(r["size"] for r in rows)
        if small:
            head, table = ["op", "mode"], []
            for s in small:
                head += [f"{_pow2(s)}: ours", "x eager", "x compile"]
            for op, mode in pairs:
                line = [op, mode]
                for s in small:
                    by = _by_impl(rows, op, mode, s)
                    o, c = by.get("torchdist_fast"), by.get("compile")
                    line += ["-"] * 3 if o is None else [_fmt_time(o["host_s"]), _fmt_ratio(speedup(by["eager"]["host_s"], o["host_s"])),
                                                         x_compile(o, c, "host_s")]
                table.append(line)
            out.append("")
            out.append(f"{device}, {dtype}, small batches: host time per call of torchdist_fast"
                       + (" (a CPU call is synchronous: its whole time)" if device == "cpu" else " (the time a call takes to return)")
                       + ", x eager, x compile")
            out += _aligned(head, table)
        for impl in other_columns:
            out.append(f"{_variant(impl)}: {OTHER_COLUMNS.get(impl, impl)}")
        out.append("")
    return "\n".join(out).rstrip() + "\n"


def plot(data: dict, path: str) -> None:
    """Speedup of torchdist_fast over eager and over torch.compile against size: one panel per
    device, dtype, op and mode; the other columns of ours (philox, cuda) against eager, dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    keys = list(dict.fromkeys((r["device"], r["dtype"], r["op"], r["mode"]) for r in data["results"]))
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.1 * nrows + 1.0), squeeze=False, layout="constrained")
    for ax, key in zip(axes.flat, keys):
        rows = [r for r in data["results"] if (r["device"], r["dtype"], r["op"], r["mode"]) == key]
        for impl in dict.fromkeys(r["impl"] for r in rows if r["impl"].startswith("torchdist_fast")):
            mine = sorted((r for r in rows if r["impl"] == impl), key=lambda r: r["size"])
            style = dict(marker="o", ms=3) if impl == "torchdist_fast" else dict(ls="--", lw=1, alpha=0.7)
            ax.plot([r["size"] for r in mine], [r["ratio_vs_eager"] for r in mine], label=f"{impl} vs eager", **style)
            if impl == "torchdist_fast":
                compiled = [r for r in mine if r["ratio_vs_compile"] is not None]
                ax.plot([r["size"] for r in compiled], [r["ratio_vs_compile"] for r in compiled], marker="s", ms=3,
                        label=f"{impl} vs torch.compile")
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{key[2]} {key[3]} ({key[0]}, {key[1]})", fontsize=9)
        ax.set_xlabel("N (elements)", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    legend = {}  # label -> line, over every panel (a panel may lack a line, e.g. all its compile rows refused)
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=len(legend), fontsize=8, frameon=False)
    fig.supylabel("speedup: baseline time / ours (> 1: ours faster)", fontsize=9)
    env = data["environment"]
    fig.suptitle(f"torchdist_fast speedup over torch.distributions eager and torch.compile — "
                 f"{', '.join(f'{d}: {name}' for d, name in env['devices'].items())}\n"
                 f"torch {env['torch']}, triton {env['triton']}, torchdist_fast {env.get('torchdist_fast', '?')}, "
                 f"{env['date'][:10]}", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def full_report_markdown(data: dict, json_name: str) -> str:
    """The Markdown file beside the JSON: the summary (as in the README), then every row."""
    env = data["environment"]
    return (f"# torchdist_fast benchmark, {env['date']}\n\n"
            f"torchdist_fast {env.get('torchdist_fast', '?')}, torch {env['torch']}, triton {env['triton']}, "
            f"python {env['python']}; {', '.join(f'{d}: {name}' for d, name in env['devices'].items())}. "
            f"Data: `{json_name}`; columns: benchmarks/README.md.\n\n## Summary\n\n"
            + summary_markdown(data, json_name) + "\n## Every row\n\n" + format_table(data) + "\n")


def write_outputs(data: dict, out_dir: str, stem: str) -> dict:
    """{"table", "json", "plot"}: the paths of ``stem``.md (the full table), .json and .png in ``out_dir``."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"{stem}.{ext}") for kind, ext in (("table", "md"), ("json", "json"), ("plot", "png"))}
    with open(paths["json"], "w") as f:
        json.dump(data, f, indent=1)
    with open(paths["table"], "w") as f:
        f.write(full_report_markdown(data, os.path.basename(paths["json"])))
    plot(data, paths["plot"])
    return paths


def print_and_save(text: str, result: dict, json_path: str | None) -> int:
    """The host_overhead and step_rate CLIs' epilogue: the table on stdout, the result as JSON
    where asked. Returns the exit status (0)."""
    print(text)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(result, f, indent=1)
    return 0


def summary_markdown(data: dict, path_label: str) -> str:
    """The benchmarks page's summary (docs/benchmarks.md): per device and dtype, the largest size of each op/mode (our column
    against eager and torch.compile), then the small-batch rows (host time per call).
    Regenerated from a results file; a test keeps the page and the file equal."""
    env = data["environment"]
    refused = {(r["device"], r["dtype"], r["op"], r["mode"], r["size"]): r["reason"] for r in data.get("refused", [])}
    lines = []
    for device in sorted({r["device"] for r in data["results"]}):
        for dtype in dict.fromkeys(r["dtype"] for r in data["results"] if r["device"] == device):
            rows = [r for r in data["results"] if r["device"] == device and r["dtype"] == dtype]
            size = max(r["size"] for r in rows)
            lines.append(f"{env['devices'][device]} ({device}), {dtype}, N = {_pow2(size)}, {env['date'][:10]}, "
                         f"torch {env['torch']}, triton {env['triton']} — `{path_label}`")
            lines.append("")
            lines.append("| op | mode | eager | torch.compile | torchdist_fast | x eager | x compile | "
                         "saved B/el (eager / compile / ours) | Philox on CPU, x eager |")
            lines.append("|---|---|---|---|---|---|---|---|---|")
            for op, mode in combos(ALL_OPS):
                by_impl = _by_impl(rows, op, mode, size)
                if not {"eager", "torchdist_fast"} <= set(by_impl):
                    continue
                e, o = by_impl["eager"], by_impl["torchdist_fast"]
                c = by_impl.get("compile")
                p = by_impl.get("torchdist_fast[philox]")
                philox = "-" if p is None else f"{p['ratio_vs_eager']:.2f}"
                saved = "-" if o["saved_bytes_per_element"] is None else " / ".join(
                    "-" if r is None else f"{r['saved_bytes_per_element']:.1f}" for r in (e, c, o))
                ctime = _fmt_time(c["median_s"]) if c else "refused" if (device, dtype, op, mode, size) in refused else "-"
                lines.append(f"| {op} | {mode} | {_fmt_time(e['median_s'])} | {ctime} | "
                             f"{_fmt_time(o['median_s'])} | {o['ratio_vs_eager']:.2f} | {_fmt_ratio(o['ratio_vs_compile'])} | "
                             f"{saved} | {philox} |")
            lines.append("")
            small = small_batch_sizes(r["size"] for r in rows)
            if small:
                gpu = device == "cuda"
                lines.append(f"Small batches ({device}, {dtype}): host time per call"
                             + (" (time for a call to return; wall = back-to-back calls incl. the GPU)" if gpu else
                                " (a CPU call is synchronous: its whole time)") + ", torchdist_fast against eager and compile")
                lines.append("")
                head = "| op | mode | N | eager | torch.compile | torchdist_fast | ours / eager | ours / compile |"
                if gpu:
                    head += " wall eager / compile / ours | host-bound (eager / compile / ours) |"
                lines.append(head)
                lines.append("|" + "---|" * (head.count("|") - 1))
                for op, mode in combos(ALL_OPS):
                    for s in small:
                        by_impl = _by_impl(rows, op, mode, s)
                        if not {"eager", "torchdist_fast"} <= set(by_impl):
                            continue
                        e, o, c = by_impl["eager"], by_impl["torchdist_fast"], by_impl.get("compile")
                        line = (f"| {op} | {mode} | {_pow2(s)} | {_fmt_time(e['host_s'])} | "
                                f"{_fmt_time(c['host_s']) if c else 'refused'} | {_fmt_time(o['host_s'])} | "
                                f"{o['host_s'] / e['host_s']:.2f} | {_fmt_ratio(o['host_s'] / c['host_s'] if c else None)} |")
                        if gpu:
                            walls = " / ".join("-" if r is None else _fmt_time(r["wall_s"]) for r in (e, c, o))
                            hb = " / ".join("-" if r is None else ("host" if r["host_bound"] else "GPU") for r in (e, c, o))
                            line += f" {walls} | {hb} |"
                        lines.append(line)
                lines.append("")
    if refused:
        lines.append(f"torch.compile rows refused (dynamo fell back, broke the graph or recompiled): {len(refused)}; "
                     "see `refused` in the file.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    # python -m torchdist_fast.tools.bench RESULTS.json: the benchmarks page's summary of a recorded run
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m torchdist_fast.tools.bench RESULTS.json")
    with open(sys.argv[1]) as f:
        print(summary_markdown(json.load(f), sys.argv[1]), end="")
