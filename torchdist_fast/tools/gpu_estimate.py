"""Time estimates of the GPU check's steps: kernel variants counted on CPU x compile time measured on CPU.

On a GPU machine with cold caches a step's time is mostly compiling: every distinct Triton
specialization it launches compiles once (Triton's passes and ptxas: CPU seconds each), and
every graph torch.compile builds costs Inductor's codegen and compiles. ``gpu_check_data.json``
(committed) holds what the estimates are made of:

* ``counts``: per step, the distinct launch specializations for ``cuda:90`` (Triton's own
  launch-time binder: ``gpu_check_pytest.VariantRecorder``), counted by running the step's tests
  or a CPU twin of its workload under ``TRITON_INTERPRET=1``; per test file for the pytest-xdist
  steps; the torch.compile graphs each step builds, counted from the plan.
* ``compile``: per Triton version (``triton 3.9``, ``triton 3.6``: the GPU machine's), CPU seconds
  (the process and its ptxas children) of ``triton.compile`` for sm_90 with a cold cache, measured
  here on the variants of the headline step, the first one apart; the estimates take the slowest.
* ``assumed``: what cannot be measured without a GPU (CUDA start, Inductor's compile of a graph,
  the timed calls, the tools' overheads), each with its reason.
* ``fingerprint``: of the kernel sources, the silicon step's candidate tests (their collected
  ids) and the counting workloads; ``tests/test_gpu_estimate.py`` fails when it changed, so the
  counts cannot go stale silently.

``python -m torchdist_fast.tools.gpu_estimate --recount`` recounts, re-measures, re-chooses the silicon
cases (``gpu_check_silicon_cases.txt``) and rewrites the data (a few minutes on 2 CPU cores);
``--measure`` only re-measures the compile time with this environment's Triton (run it in the GPU
machine's stack too: ``.venv-gpu-stack``); ``python -m torchdist_fast.tools.gpu_estimate`` prints the
estimates. They are estimates: no number in
the data was measured on a GPU.
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

DATA_PATH = Path(__file__).with_name("gpu_check_data.json")
PACKAGE = Path(__file__).resolve().parents[1]  # torchdist_fast
ROOT = PACKAGE.parent


def load(path: Path = DATA_PATH) -> dict:
    return json.loads(path.read_text())


# ----------------------------------------------------------------------------- counting workloads (CPU twins)
def _under_triton_on_cpu():
    """The ops on CPU tensors run the Triton kernels (interpreted), and Normal draws Philox."""
    import contextlib

    import torchdist_fast

    stack = contextlib.ExitStack()
    stack.enter_context(torchdist_fast.cpu_kernel("triton"))
    stack.enter_context(torchdist_fast.cpu_sampling("philox"))
    return stack


def _bench_rows(dtypes, op_modes, sizes):
    """The launches of ``bench`` rows of torchdist_fast.Normal (the CUDA code path, on CPU tensors)."""
    import torch

    import torchdist_fast
    from torchdist_fast.tools import bench

    for dtype in dtypes:
        for op, mode in op_modes:
            work = bench.make_work(torchdist_fast.Normal, op, mode)
            for n in sizes:
                work(*bench.make_inputs(n, "cpu", getattr(torch, dtype), mode, 0))


def workload_headline():
    """gpu_check's headline rows. Every size from 2^8 up is a multiple of 16: one specialization."""
    from torchdist_fast.tools import bench, gpu_workloads

    _bench_rows(gpu_workloads.HEADLINE_DTYPES, [bench.parse_op_mode(t) for t in gpu_workloads.HEADLINE_OP_MODES], [256])


def _bench_sweep(dtype, ops):
    from torchdist_fast.tools import bench

    # sizes 2^0..2^28: 1 (ints equal to 1 are specialized), 4 (numel % 16 != 0: a tail launch), 16 and up
    _bench_rows((dtype,), bench.combos(ops), [1, 4, 16, 256])


def workload_bench_fp32():
    from torchdist_fast.tools import bench

    _bench_sweep("float32", bench.OPS)


def workload_bench_bf16():
    from torchdist_fast.tools import bench

    _bench_sweep("bfloat16", bench.OPS)


def workload_bench_family():
    from torchdist_fast.tools import bench

    _bench_sweep("float32", bench.FAMILY_OPS)


def workload_graphs():
    """The eager launches of tests/test_cuda_graphs.py and the Inductor test, on CPU tensors of the
    same shapes: (Normal, TanhNormal, Independent) x methods at 256 x 8, forward and backward, and
    the policy head whose loc / log_std are views of one Linear output (strided operands)."""
    import torch

    import torchdist_fast

    dists = {"Normal": torchdist_fast.Normal, "TanhNormal": torchdist_fast.TanhNormal,
             "IndependentNormal": lambda loc, scale: torchdist_fast.Normal(loc, scale).to_event(1)}
    for shape in ((256, 8), (64, 8)):
        loc = torch.randn(shape, requires_grad=True)
        scale = (torch.rand(shape) + 0.5).requires_grad_()
        for name, method in (("Normal", "rsample"), ("Normal", "sample"), ("Normal", "rsample_and_log_prob"),
                             ("TanhNormal", "rsample_and_log_prob"), ("IndependentNormal", "rsample_and_log_prob")):
            out = getattr(dists[name](loc, scale), method)()
            outs = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
            if outs:
                torch.autograd.grad(sum((o.tanh() * 1.5).sum() for o in outs), (loc, scale))
    net = torch.nn.Linear(8, 16)
    mu, log_std = net(torch.randn(256, 8)).chunk(2, -1)
    d = torchdist_fast.Normal(mu, log_std.exp())
    z = d.rsample()
    (z.tanh().sum(-1) + d.log_prob(z).sum(-1)).sum().backward()


def workload_ncu():
    from torchdist_fast.tools import gpu_workloads

    gpu_workloads.workload_ncu("cpu", n=64)


def workload_memcheck():
    from torchdist_fast.tools import gpu_workloads

    gpu_workloads.workload_ops("cpu")


WORKLOADS = {"headline": workload_headline, "graphs": workload_graphs, "ncu": workload_ncu, "memcheck": workload_memcheck,
             "bench-fp32": workload_bench_fp32, "bench-bf16": workload_bench_bf16, "bench-family": workload_bench_family}


def count_workload_here(name: str) -> dict:
    """Run one counting workload in this process (TRITON_INTERPRET=1 must be set): its distinct
    specializations and launches."""
    from .gpu_check_pytest import VariantRecorder

    recorder = VariantRecorder(Path(os.devnull))
    recorder.install()
    recorder.current = name
    recorder.launches[name] = {}
    try:
        with _under_triton_on_cpu():
            WORKLOADS[name]()
    finally:
        recorder.uninstall()
    keys = recorder.launches[name]
    return {"variants": len(keys), "kernels": sorted({c.split("|")[0] for c in keys.values()})}


def interpreted_env() -> dict:
    return {**os.environ, "TRITON_INTERPRET": "1"}


def compiled_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


def count_workload(name: str) -> dict:
    """``count_workload_here`` in a fresh interpreted process."""
    return _run_json(["--count-workload", name], interpreted_env(), what=f"counting {name}")


def count_tests(selection, *pytest_args, workers: int = 0, collect_only: bool = False) -> dict:
    """The variant record (``gpu_check_pytest``) of running (or collecting) ``selection`` under the interpreter."""
    from . import gpu_workloads

    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "variants.json"
        argv = [sys.executable, "-m", "pytest", *selection, "-q", "-p", "no:cacheprovider", "-p", gpu_workloads.PYTEST_PLUGIN,
                "--record-kernel-variants", str(record), *pytest_args]
        if collect_only:
            argv.append("--collect-only")
        elif workers:
            argv += ["-n", str(workers)]
        res = subprocess.run(argv, capture_output=True, text=True, env=interpreted_env(), cwd=ROOT, timeout=3600)
        if res.returncode not in (0, 5) or not record.exists():
            raise RuntimeError(f"pytest failed ({res.returncode}):\n{res.stdout[-4000:]}\n{res.stderr[-2000:]}")
        return json.loads(record.read_text())


# ----------------------------------------------------------------------------- the silicon cases
def _atoms(variant_class: str) -> set:
    """What one launch checks, as atoms: (kernel, dtype, a code-path constexpr's value) and
    (kernel, dtype, tail or bulk launch)."""
    kernel, dtypes, flags = variant_class.split("|")
    dtype = "bf16" if "bf16" in dtypes else dtypes.split("/")[0].lstrip("*")
    flags = [f for f in flags.split(",") if f]
    atoms = {(kernel, dtype, f) for f in flags if f != "tail"}
    atoms.add((kernel, dtype, "tail" if "tail" in flags else "bulk"))
    return atoms


def choose_cases(record: dict) -> list:
    """A set of tests with few compiles whose launches take every atom (``_atoms``) the recorded
    tests take: every kernel in each dtype, each value of each code-path constexpr, tail and bulk
    launches. Greedy (most new atoms per new compile), then the tests the others make redundant
    are dropped, those with the most compiles of their own first."""
    launches = record["launches"]
    atoms = {t: set().union(*(_atoms(c) for c in keys.values())) if keys else set() for t, keys in launches.items()}
    keys = {t: set(k) for t, k in launches.items()}
    needed = set().union(*atoms.values()) if atoms else set()
    chosen, covered, compiled = [], set(), set()
    while covered != needed:
        best = max((t for t in launches if atoms[t] - covered),
                   key=lambda t: (len(atoms[t] - covered) / max(len(keys[t] - compiled), 0.5), -len(keys[t] - compiled), t))
        chosen.append(best)
        covered |= atoms[best]
        compiled |= keys[best]

    def others(t, field):
        return set().union(*(field[u] for u in chosen if u != t))

    while True:
        redundant = [t for t in chosen if atoms[t] <= others(t, atoms)]
        if not redundant:
            return sorted(chosen)
        chosen.remove(max(redundant, key=lambda t: (len(keys[t] - others(t, keys)), len(keys[t]), t)))


def silicon_counts(record: dict, cases: list, always: tuple) -> dict:
    """Counts of the silicon selection from the candidates' record: variants per file (the union
    over its selected tests), tests per file, and the tests that need a GPU (no launch here)."""
    selected = [t for t in record["collected"] if t in cases or t.split("[")[0] in always]
    files: dict = {}
    for t in selected:
        f = files.setdefault(t.split("::")[0], {"tests": 0, "keys": set(), "gpu_only": 0})
        f["tests"] += 1
        if t in record["launches"]:
            f["keys"].update(record["launches"][t])
        else:
            f["gpu_only"] += 1
    distinct = set().union(*(f["keys"] for f in files.values())) if files else set()
    return {"variants": len(distinct), "tests": len(selected),
            "by_file": {f: {"variants": len(v["keys"]), "tests": v["tests"], "gpu_only_tests": v["gpu_only"]}
                        for f, v in sorted(files.items())}}


def write_cases(cases: list, always: tuple, path: Path) -> None:
    lines = ["# The silicon step's test cases (gpu_check.SILICON_CASES), read by `pytest --kernel-cases`.",
             "# Written by `python -m torchdist_fast.tools.gpu_estimate --recount`: from gpu_check.SILICON_CANDIDATES, the",
             "# fewest-compiles set whose launches take every kernel, dtype (float32, bfloat16), code-path constexpr",
             "# value and tail launch that the candidates take; then gpu_check.SILICON_ALWAYS whole. Ids are without",
             "# the device parameter (cpu under the interpreter, cuda on a GPU).", ""]
    lines += sorted(cases) + ["", "# run whole"] + list(always)
    path.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------- compile time
def _cpu_seconds() -> float:
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _compile_launches():
    """Launcher calls on CPU tensors (launches captured, not run) giving the headline step's kernels:
    philox_randn, rsample fwd (with and without log_prob) and bwd, log_prob fwd and bwd, 1-D and
    tiled, float32 and bfloat16."""
    import torch

    from .. import triton_kernels as tk

    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.empty(4096, dtype=dtype), torch.empty(4096, dtype=dtype)
        row, rows = torch.empty(64, dtype=dtype), torch.empty(256, 64, dtype=dtype)
        tk.philox_randn((4096,), 1, 2, dtype, "cpu")
        for with_lp in (False, True):
            tk.normal_rsample_fwd(a, b, (), 1, 2, with_lp)
            tk.normal_rsample_fwd(row, row, (256,), 1, 2, with_lp)
        tk.normal_rsample_bwd(a, a, b, 1, 2)
        tk.normal_rsample_bwd(rows, rows, row, 1, 2)
        tk.normal_log_prob_fwd(a, a, b)
        tk.normal_log_prob_bwd(a, a, a, b, (True, True, True))
        tk.normal_log_prob_bwd(rows, rows, row, row, (True, True, True))


def measure_compile_here() -> dict:
    """CPU seconds of each distinct compile for sm_90 (``cost_model.compile_launch``, Triton's
    launch-time specialization), cold cache (set TRITON_CACHE_DIR to an empty folder)."""
    import platform
    import statistics

    import triton

    from . import bench, cost_model
    from ..triton_kernels.layout import force_fast_math

    with force_fast_math(True), cost_model.captured_launches() as calls:
        _compile_launches()
    seen, samples = set(), []
    for fn, args, kwargs, _grid in calls:
        key = cost_model.launch_specialization(fn, args, kwargs)[0]
        if key in seen:
            continue
        seen.add(key)
        t0 = _cpu_seconds()
        cost_model.compile_launch(fn, args, kwargs)
        samples.append([fn.fn.__name__, round(_cpu_seconds() - t0, 3)])
    rest = [s for _, s in samples[1:]]
    return {"first_s": samples[0][1], "per_variant_s": round(statistics.median(rest), 3), "max_s": max(rest),
            "variants": len(samples), "samples": samples, "triton": triton.__version__, "cpu": bench.cpu_name(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "how": "CPU seconds (user + system, with ptxas children) of cost_model.compile_launch for GPUTarget('cuda', 90, 32), "
                   "cold TRITON_CACHE_DIR; median of every variant but the first (the first also pays Triton's one-time "
                   "start); measured on this machine, which was shared and loaded: CPU time, not wall time"}


def _run_json(args: list, env: dict, what: str) -> dict:
    """The JSON last line of ``python -m torchdist_fast.tools.gpu_estimate ARGS`` in a fresh process."""
    res = subprocess.run([sys.executable, "-m", "torchdist_fast.tools.gpu_estimate", *args],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{what} failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def measured_compile() -> dict:
    """{"triton X.Y": the compile time measurement} with this environment's Triton, cold cache."""
    from .cost_model import triton_key

    with tempfile.TemporaryDirectory() as cache:
        measured = _run_json(["--measure-compile"], {**compiled_env(), "TRITON_CACHE_DIR": cache}, what="--measure-compile")
    return {triton_key(measured["triton"]): measured}


def compile_seconds(data: dict) -> float:
    """The per-variant compile time the estimates use: the slowest measured Triton's."""
    return max(entry["per_variant_s"] for entry in data["compile"].values())


IMPORT_PROBE = ("import resource\n"
                "def cpu():\n"
                "    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
                "    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime\n"
                "t0 = cpu()\n"
                "import torch, triton, torchdist_fast\n"
                "print(round(cpu() - t0, 2))\n")


def measure_import() -> float:
    """CPU seconds a fresh Python takes to import torch, triton and torchdist_fast (a step's start)."""
    res = subprocess.run([sys.executable, "-c", IMPORT_PROBE], capture_output=True, text=True, env=compiled_env(), cwd=ROOT,
                         timeout=600)
    if res.returncode != 0:
        raise RuntimeError(f"the import probe failed:\n{res.stderr[-3000:]}")
    return float(res.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- fingerprint
def fingerprint(collected: list) -> str:
    """Of what the counts depend on: the kernels and their launchers, the silicon candidates
    (collected ids), and the counting workloads (and the code they run)."""
    from . import bench, gpu_workloads

    h = hashlib.sha256()
    for path in sorted((PACKAGE / "triton_kernels").glob("*.py")):
        h.update(path.name.encode() + path.read_bytes())
    h.update(json.dumps([gpu_workloads.SILICON_CANDIDATES, gpu_workloads.SILICON_ALWAYS, sorted(collected)]).encode())
    for fn in (*WORKLOADS.values(), _bench_rows, _bench_sweep, _compile_launches, gpu_workloads.workload_ops,
               gpu_workloads.workload_ncu, bench.make_fwd, bench.with_backward):
        h.update(inspect.getsource(fn).encode())
    h.update(json.dumps([gpu_workloads.HEADLINE_DTYPES, gpu_workloads.HEADLINE_OP_MODES]).encode())
    return h.hexdigest()[:20]


def collect_candidates() -> list:
    from . import gpu_workloads

    record = count_tests(gpu_workloads.SILICON_CANDIDATES + gpu_workloads.SILICON_ALWAYS, "--kernel-dtypes", *gpu_workloads.HEADLINE_DTYPES,
                         collect_only=True)
    return record["collected"]


# ----------------------------------------------------------------------------- recount
def recount(workers: int = 2, verbose=print) -> dict:
    """Count, measure and choose anew; returns the data (written by ``main``)."""
    from . import bench, gpu_workloads

    old = load() if DATA_PATH.exists() else {}
    verbose("counting the silicon candidates under the interpreter ...")
    record = count_tests(gpu_workloads.SILICON_CANDIDATES + gpu_workloads.SILICON_ALWAYS, "--kernel-dtypes",
                         *gpu_workloads.HEADLINE_DTYPES, workers=workers)
    candidates = {t: k for t, k in record["launches"].items() if t.split("[")[0] in gpu_workloads.SILICON_CANDIDATES}
    cases = choose_cases({"launches": candidates})
    write_cases(cases, gpu_workloads.SILICON_ALWAYS, gpu_workloads.SILICON_CASES)
    counts = {"silicon": {**silicon_counts(record, cases, gpu_workloads.SILICON_ALWAYS),
                          "candidates": {"tests": len(record["collected"]),
                                         "variants": len({k for keys in record["launches"].values() for k in keys})}}}
    for name in WORKLOADS:
        verbose(f"counting {name} ...")
        counts[name] = count_workload(name)
    graphs = {  # the torch.compile graphs each step builds, from the plans
        "headline": len(gpu_workloads.HEADLINE_DTYPES) * len(gpu_workloads.HEADLINE_OP_MODES),
        "bench-fp32": 2 * len(bench.combos(bench.OPS)),  # one dynamic graph, and size 1 apart
        "bench-bf16": 2 * len(bench.combos(bench.OPS)),
        "bench-family": 2 * len(bench.combos(bench.FAMILY_OPS)),
        "graphs": 1 + 3,  # reduce-overhead, and the Inductor test's three cases
        "steps": 8,  # step_rate: 2 tasks x 2 implementations x (compile, reduce-overhead)
    }
    for name, n in graphs.items():
        counts.setdefault(name, {})["compiled_graphs"] = n
    counts["headline"]["compiled_graph_modes"] = [m.split(":")[1] for m in gpu_workloads.HEADLINE_OP_MODES] * len(gpu_workloads.HEADLINE_DTYPES)
    counts["tests"] = old.get("counts", {}).get("tests", {})
    verbose("measuring compile times ...")
    compile_time = {**old.get("compile", {}), **measured_compile()}
    data = {
        "note": "Inputs of the GPU check's time estimates (python -m torchdist_fast.tools.gpu_estimate). counts and compile are "
                "rewritten by --recount; assumed is edited by hand, each number with its reason. Nothing here was measured "
                "on a GPU.",
        "fingerprint": fingerprint(record["collected"]),
        "counts": counts,
        "compile": dict(sorted(compile_time.items())),
        "import_cpu_s": measure_import(),
        "assumed": old.get("assumed", {}),
    }
    return data


# ----------------------------------------------------------------------------- the estimates
def lpt_makespan(jobs, workers: int) -> float:
    """Longest-processing-time-first schedule of ``jobs`` (seconds) on ``workers``: its makespan."""
    loads = [0.0] * max(workers, 1)
    for job in sorted(jobs, reverse=True):
        loads[loads.index(min(loads))] += job
    return max(loads)


def _bench_run_s(av: dict, dtypes, op_modes, sizes, impls: int) -> float:
    """The timed part of ``bench`` rows: calls x bytes that must move / (assumed bandwidth), the
    implementations slowed by their assumed factors, plus a fixed cost per row (profiling, syncs)."""
    from . import bench

    itemsize = {"float32": 4, "bfloat16": 2, "float64": 8, "float16": 2}
    factors = av["bench_impl_traffic_factors"][:impls]
    total = 0.0
    for dtype in dtypes:
        for op, mode in op_modes:
            for n in sizes:
                call = bench.BYTES_PER_ELEMENT[(op, mode)] * n * itemsize[dtype] / av["gpu_bandwidth_Bps"]
                total += av["bench_calls_per_row"] * call * sum(factors) + impls * av["bench_row_overhead_s"]
    return total


def estimates(data: dict | None = None) -> dict:
    """{step: (seconds, how)} for every step of gpu_check."""
    from . import bench, gpu_workloads

    data = data or load()
    c, t = data["counts"], compile_seconds(data)
    av = {k: v["value"] for k, v in data["assumed"].items()}
    start = data["import_cpu_s"] + av["cuda_start_s"]
    first = av["triton_cold_start_s"]
    graph_s = av["inductor_graph_s"]
    out = {}

    def serial(name, variants, graphs=0, graph_kind="fwd+bwd", run=0.0, extra=0.0, note=""):
        secs = start + first + variants * t + graphs * graph_s[graph_kind] + run + extra
        how = f"start {start + first:.0f} s + {variants} variants x {t:.2f} s"
        if graphs:
            how += f" + {graphs} torch.compile graphs x {graph_s[graph_kind]} s"
        if run:
            how += f" + run {run:.0f} s"
        if extra:
            how += f" + {extra:.0f} s {note}"
        out[name] = (secs, how)

    out["env"] = (start + first + t + av["env_tools_s"], f"start {start + first:.0f} s + the copy kernel (1 variant x {t:.2f} s) "
                  f"+ nvidia-smi, nvcc {av['env_tools_s']} s")
    out["build"] = (av["extension_build_s"], f"assumed {av['extension_build_s']} s (issue 18: about 30 s for sm_90)")
    s = c["silicon"]
    jobs = [f["variants"] * t + f["tests"] * av["test_call_s"] for f in s["by_file"].values()]
    w = gpu_workloads.SILICON_WORKERS
    heavy = av["accuracy_reference_s"]
    span = lpt_makespan(jobs + [heavy], w)
    out["silicon"] = (start + first + av["pytest_collect_s"] + span,
                      f"{w} workers, one file each at a time: start {start + first:.0f} s + collect {av['pytest_collect_s']} s + "
                      f"longest worker {span:.0f} s ({s['variants']} variants in {len(s['by_file'])} files x {t:.2f} s, "
                      f"{s['tests']} tests x {av['test_call_s']} s, the 2^24-draw reference {heavy} s)")
    h = c["headline"]
    op_modes = [bench.parse_op_mode(m) for m in gpu_workloads.HEADLINE_OP_MODES]
    sizes = [2 ** int(x[2:]) for x in gpu_workloads.HEADLINE_SIZES]
    run = _bench_run_s(av, gpu_workloads.HEADLINE_DTYPES, op_modes, sizes, impls=4)
    graphs = sum(graph_s[m] for m in h["compiled_graph_modes"])
    out["headline"] = (start + first + h["variants"] * t + graphs + run + av["copy_measure_s"],
                       f"start {start + first:.0f} s + {h['variants']} variants x {t:.2f} s + {h['compiled_graphs']} "
                       f"torch.compile graphs {graphs:.0f} s + timed rows {run:.0f} s + copy bandwidth {av['copy_measure_s']} s")
    g = c["graphs"]
    work = g["variants"] * t + g["compiled_graphs"] * graph_s["fwd+bwd"] + av["graphs_run_s"]
    span = max(work / gpu_workloads.GRAPHS_WORKERS, graph_s["fwd+bwd"] + first)
    out["graphs"] = (start + first + av["pytest_collect_s"] + span,
                     f"{gpu_workloads.GRAPHS_WORKERS} workers: start {start + first:.0f} s + collect + ({g['variants']} variants x {t:.2f} s "
                     f"+ {g['compiled_graphs']} Inductor graphs x {graph_s['fwd+bwd']} s + run {av['graphs_run_s']} s) / "
                     f"{gpu_workloads.GRAPHS_WORKERS}")
    full = c.get("tests", {})
    if full.get("variants"):
        wk = gpu_workloads.SUITE_WORKERS
        work = full["variants"] * t * av["suite_duplicate_compiles"] + full["tests"] * av["test_call_s"] + \
            full["compiled_graphs"] * graph_s["fwd+bwd"]
        out["tests"] = (start + first + av["pytest_collect_s"] + work / wk,
                        f"{wk} workers: ({full['variants']} variants ({full['source']}) x {t:.2f} s x "
                        f"{av['suite_duplicate_compiles']} (compiled again by other workers) + {full['tests']} tests x "
                        f"{av['test_call_s']} s + {full['compiled_graphs']} graphs x {graph_s['fwd+bwd']} s) / {wk}")
    serial("memcheck", c["memcheck"]["variants"], run=av["memcheck_run_s"])
    serial("ncu", c["ncu"]["variants"], run=av["ncu_run_s"])
    sizes = [2 ** int(x[2:]) for x in gpu_workloads.BENCH_SIZES]
    for name, dtype, ops in (("bench-fp32", "float32", bench.OPS), ("bench-bf16", "bfloat16", bench.OPS),
                             ("bench-family", "float32", bench.FAMILY_OPS)):
        run = _bench_run_s(av, (dtype,), bench.combos(ops), sizes, impls=4) + av["copy_measure_s"]
        serial(name, c[name]["variants"], graphs=c[name]["compiled_graphs"], run=run)
    serial("host", 0, run=av["host_run_s"])
    serial("steps", 0, graphs=c["steps"]["compiled_graphs"], run=av["steps_run_s"])
    out["cuda-backend"] = (av["cuda_backend_s"], f"assumed {av['cuda_backend_s']} s (nvcc for sm_80 and sm_90, host builds of the tests)")
    serial("vae", 0, run=av["vae_run_s"])
    out["install"] = (av["install_s"], f"assumed {av['install_s']} s")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.tools.gpu_estimate", description=__doc__.splitlines()[0])
    p.add_argument("--recount", action="store_true", help="recount, re-measure, re-choose the silicon cases; rewrite the data")
    p.add_argument("--measure", action="store_true", help="re-measure the compile time with this environment's Triton only")
    p.add_argument("--workers", type=int, default=2, help="pytest-xdist workers for the recount (default 2)")
    p.add_argument("--count-workload", choices=list(WORKLOADS), help=argparse.SUPPRESS)
    p.add_argument("--measure-compile", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.count_workload:
        print(json.dumps(count_workload_here(args.count_workload)))
        return 0
    if args.measure_compile:
        print(json.dumps(measure_compile_here()))
        return 0
    if args.recount:
        data = recount(args.workers)
        DATA_PATH.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {DATA_PATH}")
    elif args.measure:
        data = load()
        data["compile"] = dict(sorted({**data["compile"], **measured_compile()}.items()))
        DATA_PATH.write_text(json.dumps(data, indent=1) + "\n")
        print(f"wrote {DATA_PATH}")
    for name, (secs, how) in estimates().items():
        print(f"{name:13s} ~{secs:5.0f} s  {how}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
