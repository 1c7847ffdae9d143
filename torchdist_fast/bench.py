"""The comparison behind ``python -m torchdist_fast`` and ``benchmarks/``.

torch.distributions.Normal eager, the same code under torch.compile, and torchdist_fast.Normal,
for sample / rsample / log_prob / rsample_and_log_prob, forward and forward+backward, over sizes.

Timing: a warm-up call (for torch.compile, the compile; reported separately as
``compile_warmup_s``), then ``repeats`` timed calls; each call uses the next of ``ROTATE`` input
sets (fresh random data, never zeros) so caches do not flatter; CUDA calls are timed with CUDA
events, CPU calls with perf_counter; the median is reported with min and max.
Bytes that must move are counted per element (see ``BYTES_PER_ELEMENT``) and divided by the
median time; on a GPU this is also given as a share of the measured device-to-device copy rate.
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

OPS = ("sample", "rsample", "log_prob", "rsample_and_log_prob")
DTYPES_CHOICES = ("float32", "float64", "float16", "bfloat16")
MODES = ("fwd", "fwd+bwd")
ROTATE = 3
SCHEMA_VERSION = 1

# Tensors of the element count that must cross memory, per element (in units of the dtype size):
#   sample/rsample fwd      read loc, scale; write z                                  3
#   rsample fwd+bwd         + read grad_z; write grad_loc, grad_scale                 6
#   log_prob fwd            read value, loc, scale; write log_prob                   4
#   log_prob fwd+bwd        + read grad, value, loc, scale; write grad_loc, grad_scale 10
#   rsample_and_log_prob    read loc, scale; write z, log_prob                        4
#     fwd+bwd               + read grad_z, grad_lp, scale; write grad_loc, grad_scale 9
BYTES_PER_ELEMENT = {
    ("sample", "fwd"): 3, ("rsample", "fwd"): 3, ("rsample", "fwd+bwd"): 6,
    ("log_prob", "fwd"): 4, ("log_prob", "fwd+bwd"): 10,
    ("rsample_and_log_prob", "fwd"): 4, ("rsample_and_log_prob", "fwd+bwd"): 9,
}


def combos(ops=OPS, modes=MODES):
    return [(op, mode) for op in ops for mode in modes if (op, mode) in BYTES_PER_ELEMENT]


# ----------------------------------------------------------------------------- the work
def make_work(dist_cls, op: str, mode: str):
    """A function of (loc, scale, value, grad_a, grad_b) doing op/mode with ``dist_cls``."""

    def work(loc, scale, value, grad_a, grad_b):
        d = dist_cls(loc, scale)
        if op == "sample":
            return (d.sample(),)
        if op == "rsample":
            outs, grads = (d.rsample(),), (grad_a,)
        elif op == "log_prob":
            outs, grads = (d.log_prob(value),), (grad_a,)
        else:
            if hasattr(d, "rsample_and_log_prob"):
                z, lp = d.rsample_and_log_prob()
            else:
                z = d.rsample()
                lp = d.log_prob(z)
            outs, grads = (z, lp), (grad_a, grad_b)
        if mode == "fwd":
            return outs
        # torch.autograd.grad, not .backward(): no accumulation into .grad to time as well
        return torch.autograd.grad(outs, (loc, scale), grads)

    return work


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
        from . import cuda_backend

        if cuda_backend.available():  # the hand-written CUDA C++ backend, when built
            impls["torchdist_fast[cuda]"] = (torchdist_fast.Normal, False, lambda: torchdist_fast.gpu_kernel("cuda"))
    if device == "cpu":
        # the default CPU sampling is torch's own; this column shows the Philox stream on CPU
        impls["torchdist_fast[philox]"] = (torchdist_fast.Normal, False, lambda: torchdist_fast.cpu_sampling("philox"))
    return impls


def make_inputs(n: int, device: str, dtype: torch.dtype, mode: str, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rnd(*, positive=False):
        t = torch.rand(n, generator=g) + 0.5 if positive else torch.randn(n, generator=g)
        return t.to(device=device, dtype=dtype)

    needs_grad = mode == "fwd+bwd"
    loc = rnd().requires_grad_(needs_grad)
    scale = rnd(positive=True).requires_grad_(needs_grad)
    return (loc, scale, rnd(), rnd(), rnd())


# ----------------------------------------------------------------------------- measuring
def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def time_calls(fn, input_sets, device: str, repeats: int):
    times = []
    for i in range(repeats):
        args = input_sets[i % len(input_sets)]
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return times


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
    """CUDA: kernels launched (profiler). CPU: aten/custom ops dispatched (not for compiled code)."""
    if device == "cuda":
        from torch.profiler import ProfilerActivity, profile

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


def copy_bandwidth_gbps(device: str, nbytes: int = 1 << 28) -> float:
    """Measured device-to-device copy rate (bytes read + written per second), in GB/s."""
    n = nbytes // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    times = time_calls(lambda: dst.copy_(src), [()], device, 10)
    return 2 * nbytes / statistics.median(times[2:]) / 1e9


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


def run(devices, dtypes, sizes_by_device, ops=OPS, modes=MODES, repeats=None, progress=None) -> dict:
    """Run every combination; returns {"schema_version", "environment", "copy_bandwidth_gbps", "results"}."""
    results: list[Result] = []
    copy_bw = {d: copy_bandwidth_gbps(d) for d in devices if d == "cuda"}
    plan = [(d, dt, op, mode) for d in devices for dt in dtypes for op, mode in combos(ops, modes)]
    total = sum(len(sizes_by_device[d]) * len(implementations(d)) for d, *_ in plan)
    bar = progress(total) if progress else None
    for device, dtype_name, op, mode in plan:
        dtype = getattr(torch, dtype_name)
        compiled_cache = {}
        for size in sizes_by_device[device]:
            n_rep = repeats or _default_repeats(device, size)
            input_sets = [make_inputs(size, device, dtype, mode, seed) for seed in range(ROTATE)]
            row = {}
            for impl, (cls, compiled, ctx) in implementations(device).items():
                work = make_work(cls, op, mode)
                warm = None
                if compiled:
                    if op not in compiled_cache:
                        # dynamic shapes: one compile per op/mode serves every size
                        compiled_cache[op] = torch.compile(work, dynamic=True)
                    fn = compiled_cache[op]
                else:
                    fn = work
                with ctx():
                    t0 = time.perf_counter()
                    fn(*input_sets[0])
                    _sync(device)
                    if compiled:
                        warm = time.perf_counter() - t0
                    fn(*input_sets[1 % ROTATE])
                    times = time_calls(fn, input_sets, device, n_rep)
                    med = statistics.median(times)
                    nbytes = BYTES_PER_ELEMENT[(op, mode)] * size * dtype.itemsize
                    res = Result(
                        device=device, dtype=dtype_name, op=op, mode=mode, size=size, impl=impl,
                        median_s=med, min_s=min(times), max_s=max(times), repeats=n_rep,
                        gbps=nbytes / med / 1e9, compile_warmup_s=warm,
                    )
                    if device in copy_bw:
                        res.pct_copy_bandwidth = 100 * res.gbps / copy_bw[device]
                    if mode == "fwd+bwd":
                        res.saved_bytes_per_element = _saved(cls, op, compiled, input_sets[0], size)
                    if not (compiled and device != "cuda"):
                        res.ops_per_call = ops_per_call(fn, input_sets[0], device)
                        res.ops_per_call_kind = "kernels" if device == "cuda" else "aten ops"
                    res.host_syncs = host_syncs_per_call(fn, input_sets[0], device)
                row[impl] = res
                if bar:
                    bar(f"{device} {dtype_name} {op} {mode} 2^{int(math.log2(size))} {impl}")
            for res in row.values():
                res.ratio_vs_eager = row["eager"].median_s / res.median_s
                res.ratio_vs_compile = row["compile"].median_s / res.median_s
                results.append(res)
    return {
        "schema_version": SCHEMA_VERSION,
        "environment": environment(devices),
        "copy_bandwidth_gbps": copy_bw,
        "bytes_per_element": {f"{op}/{mode}": v for (op, mode), v in BYTES_PER_ELEMENT.items()},
        "results": [asdict(r) for r in results],
    }


_SAVED_CACHE: dict = {}


def _saved(cls, op, compiled, args, size):
    """Saved bytes of the forward pass of op (what fwd+bwd keeps between the two)."""
    key = (cls, op, compiled)
    if key not in _SAVED_CACHE:
        fwd = make_work(cls, op, "fwd")
        _SAVED_CACHE[key] = torch.compile(fwd, dynamic=True) if compiled else fwd
    return saved_bytes_per_element(_SAVED_CACHE[key], args, size)


def _default_repeats(device, size):
    if device == "cuda":
        return 50
    return max(5, min(50, int(2**22 // max(size, 1))))


# ----------------------------------------------------------------------------- reporting
def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.3f} ms" if s < 1 else f"{s:.2f} s"


def format_table(data: dict) -> str:
    cols = ["device", "dtype", "op", "mode", "size", "impl", "median", "x eager", "x compile", "GB/s",
            "% copy", "saved B/el", "ops/call", "syncs", "compile warm-up"]
    rows = []
    for r in data["results"]:
        rows.append([
            r["device"], r["dtype"], r["op"], r["mode"], f"2^{int(math.log2(r['size']))}", r["impl"],
            _fmt_time(r["median_s"]), f"{r['ratio_vs_eager']:.2f}", f"{r['ratio_vs_compile']:.2f}", f"{r['gbps']:.2f}",
            "-" if r["pct_copy_bandwidth"] is None else f"{r['pct_copy_bandwidth']:.0f}%",
            "-" if r["saved_bytes_per_element"] is None else f"{r['saved_bytes_per_element']:.2f}",
            "-" if r["ops_per_call"] is None else f"{r['ops_per_call']} {r['ops_per_call_kind']}",
            "-" if r["host_syncs"] is None else str(r["host_syncs"]),
            "-" if r["compile_warmup_s"] is None else f"{r['compile_warmup_s']:.1f} s",
        ])
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c) for i, c in enumerate(cols)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plot(data: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["device"], r["dtype"], r["op"], r["mode"]) for r in data["results"]})
    ncols = min(4, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        rows = [r for r in data["results"] if (r["device"], r["dtype"], r["op"], r["mode"]) == key]
        for impl in dict.fromkeys(r["impl"] for r in rows):
            pts = sorted((r["size"], r["median_s"]) for r in rows if r["impl"] == impl)
            ax.loglog([p[0] for p in pts], [p[1] * 1e3 for p in pts], marker="o", ms=3, label=impl)
        ax.set_title(" ".join(key), fontsize=9)
        ax.set_xlabel("elements", fontsize=8)
        ax.set_ylabel("median ms", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    env = data["environment"]
    fig.suptitle(f"torchdist_fast vs torch.distributions — {', '.join(env['devices'].values())} — "
                 f"torch {env['torch']}, triton {env['triton']}, {env['date'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_outputs(data: dict, out_dir: str, stem: str) -> tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, f"{stem}.json")
    png_path = os.path.join(out_dir, f"{stem}.png")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1)
    plot(data, png_path)
    return json_path, png_path


def summary_markdown(data: dict, path_label: str) -> str:
    """The README's summary: per device, the largest size of each op/mode, our column against
    eager and torch.compile. Regenerated from a results file; a test keeps README and file equal."""
    env = data["environment"]
    lines = []
    for device in sorted({r["device"] for r in data["results"]}):
        rows = [r for r in data["results"] if r["device"] == device]
        size = max(r["size"] for r in rows)
        dtype = rows[0]["dtype"]
        lines.append(f"{env['devices'][device]} ({device}), {dtype}, N = 2^{size.bit_length() - 1}, {env['date'][:10]}, "
                     f"torch {env['torch']}, triton {env['triton']} — `{path_label}`")
        lines.append("")
        lines.append("| op | mode | eager | torch.compile | torchdist_fast | x eager | x compile | "
                     "saved B/el (eager / compile / ours) | Philox on CPU, x eager |")
        lines.append("|---|---|---|---|---|---|---|---|---|")
        for op, mode in combos():
            by_impl = {r["impl"]: r for r in rows if r["size"] == size and r["op"] == op and r["mode"] == mode}
            if not {"eager", "compile", "torchdist_fast"} <= set(by_impl):
                continue
            e, c, o = by_impl["eager"], by_impl["compile"], by_impl["torchdist_fast"]
            p = by_impl.get("torchdist_fast[philox]")
            philox = "-" if p is None else f"{p['ratio_vs_eager']:.2f}"
            saved = "-" if o["saved_bytes_per_element"] is None else " / ".join(
                f"{r['saved_bytes_per_element']:.1f}" for r in (e, c, o))
            lines.append(f"| {op} | {mode} | {_fmt_time(e['median_s'])} | {_fmt_time(c['median_s'])} | "
                         f"{_fmt_time(o['median_s'])} | {o['ratio_vs_eager']:.2f} | {o['ratio_vs_compile']:.2f} | {saved} | "
                         f"{philox} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    # python -m torchdist_fast.bench RESULTS.json: the README summary of a recorded run
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m torchdist_fast.bench RESULTS.json")
    with open(sys.argv[1]) as f:
        print(summary_markdown(json.load(f), sys.argv[1]), end="")
