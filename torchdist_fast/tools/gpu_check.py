"""``python -m torchdist_fast.tools.gpu_check``: what to run in a short GPU window, timed, into one archive.

For a GPU machine lent briefly (torch, triton, pytest-xdist preinstalled, no network), from the
repository root (nothing to install):

    python -m torchdist_fast.tools.gpu_check --out DIR           # the first-contact plan, <= 9 minutes
    python -m torchdist_fast.tools.gpu_check --plan suite --out DIR   # one of the later plans
    python -m torchdist_fast.tools.gpu_check --dry-run           # every plan, its commands and time estimates
    python -m torchdist_fast.tools.gpu_check --stage headline    # single stages (repeat --stage for several)

The first-contact plan (the default): env (versions, copy bandwidth measured with a copy kernel),
build (the CUDA C++ extension, in the background, out of tree, not fatal), silicon (every kernel
family against the CPU reference on the device, pytest-xdist), headline (torch eager vs
torch.compile vs ours), graphs (CUDA graph capture, reduce-overhead, Inductor calling our kernels).
The later plans, one command of <= 9 minutes each, run the rest (full suite, memcheck, ncu,
benchmark sweeps, family rows, host time, step rates, CUDA backend, VAE).

Each step is a subprocess stopped at its own budget (``gpu_plan`` runs them). Results go to a
results folder (default: a new temporary folder; the extension build goes beside it, not into the
repository); after every step (and every 30 s during one) ``stages.json`` and ``summary.md`` are
rewritten and the folder is packed into ``DIR/<plan>.tar.gz`` (<= 16 MB), with ``DIR/summary.md``
beside it: a run stopped at any moment leaves what it had. The estimates are ``gpu_estimate``'s.
The exit status is 1 if a step failed or timed out, else 0.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from .gpu_plan import ROOT, Command, Context, PlanRun, Step, load_records, plan_budget_s, skip_reason, step_records, utc_now

from .gpu_workloads import (  # noqa: F401  (also gpu_check's: the tests and docs name them here)
    PLAN_LIMIT_S, PLAN_DEADLINE_S, BENCH_SIZES, HEADLINE_SIZES,
    HEADLINE_DTYPES, HEADLINE_OP_MODES, SILICON_WORKERS,
    GRAPHS_WORKERS, SUITE_WORKERS, NCU_SIZE, NCU_METRICS,
    NO_INTERPRET, PYTEST_PLUGIN, SILICON_CASES, SILICON_CANDIDATES,
    SILICON_ALWAYS, GRAPHS_TESTS,
    workload_ncu, workload_ops,
)


def _py(*args) -> list:
    return [sys.executable, *args]


def _arch() -> str:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


def _xdist(workers: int, dist: str = "load") -> list:
    """pytest-xdist arguments, or none where it is not installed (then the tests run serially)."""
    import importlib.util

    return ["-n", str(workers), "--dist", dist] if importlib.util.find_spec("xdist") else []


def _pytest(ctx: Context, step: str, *selection, workers: int = 0, dist: str = "load", extra=()) -> Command:
    junit = ctx.results / step / "junit.xml"
    return Command(_py("-m", "pytest", *selection, "-v", "-p", "no:cacheprovider", "-p", PYTEST_PLUGIN,
                       *(_xdist(workers, dist) if workers else []), *extra, f"--junitxml={junit}"), NO_INTERPRET)


def silicon_files() -> list:
    return list(dict.fromkeys(t.split("::")[0] for t in SILICON_CANDIDATES + SILICON_ALWAYS))


def extension_build_dir(ctx: Context) -> Path:
    return ctx.scratch / "cuda-extension"


# ----------------------------------------------------------------------------- the steps
def steps_by_name() -> dict:
    def env_cmds(ctx):
        return [Command(_py("-m", "torchdist_fast.tools.gpu_check", "--workload", "env", "--results", str(ctx.results)), NO_INTERPRET)]

    def build_cmds(ctx):
        # out of tree (the .so must not land in the repository, where later runs would pick it up);
        # kernels/check_compile.py (warnings as errors) is not run first: a host-compiler warning must not stop it
        folder = extension_build_dir(ctx)
        return [Command(_py("setup_cuda.py", "build_ext", "--build-lib", str(folder / "lib"),
                            "--build-temp", str(folder / "temp")), {**NO_INTERPRET, "TORCH_CUDA_ARCH_LIST": _arch()})]

    def build_env(ctx):
        return {"TORCHDIST_FAST_CUDA_BACKEND_DIR": str(extension_build_dir(ctx) / "lib")}

    def silicon_cmds(ctx):
        return [_pytest(ctx, "silicon", *silicon_files(), workers=SILICON_WORKERS, dist="loadfile",
                        extra=("--kernel-cases", str(SILICON_CASES),
                               "--record-kernel-variants", str(ctx.results / "silicon" / "variants.json")))]

    def headline_cmds(ctx):
        return [Command(_py("-m", "torchdist_fast", "--devices", "cuda", "--dtypes", *HEADLINE_DTYPES,
                            "--sizes", *HEADLINE_SIZES, "--op-modes", *HEADLINE_OP_MODES,
                            "--out", str(ctx.results / "headline")), NO_INTERPRET)]

    def graphs_cmds(ctx):
        return [_pytest(ctx, "graphs", *GRAPHS_TESTS, workers=GRAPHS_WORKERS)]

    def tests_cmds(ctx):
        return [_pytest(ctx, "tests", "-m", "not slow", workers=SUITE_WORKERS)]

    def memcheck_cmds(ctx):
        return [Command(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", "--target-processes", "all",
                         "--log-file", str(ctx.results / "memcheck" / "memcheck.log"),
                         *_py("-m", "torchdist_fast.tools.gpu_check", "--workload", "ops")],
                        {**NO_INTERPRET, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})]

    def ncu_cmds(ctx):
        return [Command(["ncu", "--profile-from-start", "off", "--target-processes", "all", "--csv", "--page", "raw",
                         "--print-units", "base", "--metrics", ",".join(NCU_METRICS),
                         "--log-file", str(ctx.results / "ncu" / "ncu.csv"),
                         *_py("-m", "torchdist_fast.tools.gpu_check", "--workload", "ncu")], NO_INTERPRET)]

    def bench_cmds(dtype, ops=()):
        def cmds(ctx):
            return [Command(_py("-m", "torchdist_fast", "--devices", "cuda", "--dtypes", dtype, "--sizes", *BENCH_SIZES,
                                *(("--ops", *ops) if ops else ()), "--out", str(ctx.results / "bench")), NO_INTERPRET)]
        return cmds

    def cuda_backend_cmds(ctx):
        return [Command(_py("kernels/check_compile.py"), NO_INTERPRET, fatal=False),
                _pytest(ctx, "cuda-backend", "tests/test_cuda_backend.py")]

    def install_cmds(ctx):
        # an editable install without build isolation builds with the setuptools already installed:
        # it needs setuptools >= 70.1 (bdist_wheel built in) or setuptools plus the wheel package
        check = ("import importlib.util as u, setuptools as s; v = tuple(int(x) for x in s.__version__.split('.')[:2]); "
                 "ok = v >= (70, 1) or u.find_spec('wheel') is not None; print('setuptools', s.__version__); "
                 "raise SystemExit(0 if ok else 'setuptools >= 70.1 (or the wheel package) is needed for an offline editable install')")
        return [Command(_py("-c", check)),
                Command(_py("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", "."))]

    def host_cmds(ctx):
        return [Command(_py("-m", "torchdist_fast.tools.host_overhead", "--device", "cuda",
                            "--json", str(ctx.results / "host" / "host_overhead.json")), NO_INTERPRET)]

    def steps_cmds(ctx):
        return [Command(_py("-m", "torchdist_fast.tools.step_rate", "--device", "cuda",
                            "--json", str(ctx.results / "steps" / "step_rate.json")), NO_INTERPRET)]

    def vae_cmds(ctx):
        return [Command(_py("-m", "torchdist_fast.examples.vae", "--device", "cuda", "--batch-size", "65536",
                            "--dataset-size", "65536", "--epochs", "200", "--no-progress", "--out", str(ctx.results / "vae")),
                        NO_INTERPRET)]

    build = ("build",)
    steps = [
        Step("env", "versions (GPU, driver, torch, Triton, CUDA, nvcc), copy bandwidth of a copy kernel", 45, env_cmds,
             needs_cuda=False),
        Step("build", "the CUDA C++ extension (setup_cuda.py), out of tree, in the background; not fatal", 240, build_cmds,
             tools=("nvcc",), background=True, provides_env=build_env),
        Step("silicon", "every kernel family on the device against the CPU reference (fp32, bf16; 1-D, tile, tail; "
             "fwd and bwd; FAST_MATH contract over 2^24 draws), pytest-xdist", 120, silicon_cmds),
        Step("headline", "torch eager vs torch.compile vs ours (+ CUDA C++ backend): randn, rsample fwd, log_prob and "
             "rsample_and_log_prob fwd+bwd at 2^20/2^24/2^28, host time per call at 2^8/2^12, fp32 and bf16", 240,
             headline_cmds, waits_for=build),
        Step("graphs", "CUDA graph capture, reduce-overhead, Inductor calling our kernels, the CUDA backend on the device",
             105, graphs_cmds, waits_for=build),
        Step("tests", "the whole suite on CUDA, no interpreter, gpu-marked tests included, pytest-xdist", 450, tests_cmds,
             waits_for=build),
        Step("memcheck", "compute-sanitizer memcheck on a small run of every op, forward and backward, 4 dtypes", 480,
             memcheck_cmds, tools=("compute-sanitizer",)),
        Step("ncu", "Nsight Compute: DRAM bytes, time, throughput per kernel at 2^24, the copy kernel as reference", 180,
             ncu_cmds, tools=("ncu",)),
        Step("bench-fp32", "the full benchmark, float32, 2^0..2^28", 450, bench_cmds("float32"), waits_for=build),
        Step("bench-bf16", "the full benchmark, bfloat16, 2^0..2^28", 450, bench_cmds("bfloat16"), waits_for=build),
        Step("bench-family", "KL, Independent log_prob, tanh-Normal rows against torch's compositions, float32", 420,
             bench_cmds("float32", ("kl", "event_log_prob", "tanh_rsample_and_log_prob")), waits_for=build),
        Step("host", "host time per call at batch 256 x 8 (python -m torchdist_fast.tools.host_overhead)", 60, host_cmds),
        Step("steps", "SAC / REINFORCE update steps per second: eager, compile, reduce-overhead", 240, steps_cmds,
             waits_for=build),
        Step("cuda-backend", "kernels/check_compile.py (not fatal) and tests/test_cuda_backend.py with the built extension",
             180, cuda_backend_cmds, waits_for=build),
        Step("vae", "the VAE example, batch 65536, 200 steps, both implementations", 240, vae_cmds),
        Step("install", "pip install --no-deps --no-build-isolation --no-index -e . (offline; not needed to run)", 120,
             install_cmds, needs_cuda=False),
    ]
    return {s.name: s for s in steps}


STAGES = tuple(steps_by_name())
FIRST_CONTACT = "first-contact"
PLANS = {
    FIRST_CONTACT: ("env", "build", "silicon", "headline", "graphs"),
    "suite": ("env", "build", "tests"),
    "memcheck": ("env", "memcheck"),
    "ncu-backend": ("env", "build", "ncu", "cuda-backend", "host"),
    "bench-fp32": ("env", "build", "bench-fp32"),
    "bench-bf16": ("env", "build", "bench-bf16"),
    "bench-family": ("env", "build", "bench-family"),
    "steps-vae": ("env", "build", "steps", "vae"),
}
LATER_PLANS = tuple(p for p in PLANS if p != FIRST_CONTACT)


def plan_steps(names) -> list:
    """The steps of ``names`` in run order, plus the background steps they wait for."""
    steps = steps_by_name()
    wanted = set(names)
    for n in names:
        wanted.update(steps[n].waits_for)
    return [s for n, s in steps.items() if n in wanted]


# ----------------------------------------------------------------------------- summary
def junit_counts(path: Path) -> dict | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    tot["failed"] = [f"{case.get('classname', '')}::{case.get('name', '')}" for case in root.iter("testcase")
                     if case.find("failure") is not None or case.find("error") is not None]
    return tot


def _junit_lines(path: Path) -> list:
    tot = junit_counts(path)
    if tot is None:
        return [f"no {path.name} (the step stopped before pytest finished: see its log)"]
    lines = [f"{tot['passed']} passed, {tot['failures']} failed, {tot['errors']} errors, {tot['skipped']} skipped"]
    if tot["failed"]:
        lines += ["", "Failed:"] + [f"- `{name}`" for name in tot["failed"][:40]]
        if len(tot["failed"]) > 40:
            lines.append(f"- ... and {len(tot['failed']) - 40} more")
    return lines


def parse_ncu_csv(path: Path) -> list[dict]:
    """Rows of ``ncu --csv --page raw --print-units base``: one per kernel launch, the metrics as numbers."""
    text = path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]  # ncu prefixes its own messages with ==PROF==
    if not lines:
        return []
    rows = []
    for rec in csv.DictReader(lines):
        if not rec.get("Kernel Name") or rec.get("ID", "").strip() in ("", "ID"):
            continue
        try:
            t = float(rec["gpu__time_duration.sum"])
            rd, wr = float(rec["dram__bytes_read.sum"]), float(rec["dram__bytes_write.sum"])
            pct = float(rec["dram__throughput.avg.pct_of_peak_sustained_elapsed"])
        except (KeyError, ValueError):
            continue  # the units row
        rows.append({"kernel": rec["Kernel Name"], "time_ns": t, "dram_read": rd, "dram_write": wr,
                     "gbps": (rd + wr) / t if t else 0.0, "pct_peak": pct})
    return rows


def _ncu_section(path: Path) -> list[str]:
    rows = parse_ncu_csv(path)
    if not rows:
        return ["no kernels found in the Nsight Compute output"]
    copy = [r for r in rows if "copy" in r["kernel"].lower()]
    copy_gbps = max((r["gbps"] for r in copy), default=None)
    out = [f"N = 2^{NCU_SIZE.bit_length() - 1}; GB/s = DRAM bytes read + written / kernel time"
           + (f"; copy kernel: {copy_gbps:.0f} GB/s" if copy_gbps else "; no copy kernel found"), "",
           "| kernel | time | DRAM read | DRAM write | GB/s | % of DRAM peak | % of copy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["kernel"] if len(r["kernel"]) <= 60 else r["kernel"][:57] + "..."
        share = f"{100 * r['gbps'] / copy_gbps:.0f}%" if copy_gbps else "-"
        out.append(f"| `{name}` | {r['time_ns'] / 1e3:.1f} us | {r['dram_read'] / 2**20:.1f} MiB | "
                   f"{r['dram_write'] / 2**20:.1f} MiB | {r['gbps']:.0f} | {r['pct_peak']:.1f} | {share} |")
    return out


def _bench_section(folder: Path, root: Path) -> list[str]:
    from . import bench

    lines = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        rel = path.relative_to(root).as_posix()
        for r in data["results"]:
            if r["impl"] == "torchdist_fast" and r["op"] == "rsample_and_log_prob" and r["mode"] == "fwd+bwd" and \
                    r["size"] == max(x["size"] for x in data["results"] if x["dtype"] == r["dtype"]):
                comp = "refused" if r["ratio_vs_compile"] is None else f"{r['ratio_vs_compile']:.2f}x"
                lines.append(f"**Headline** ({r['dtype']}, N = 2^{r['size'].bit_length() - 1}): rsample_and_log_prob "
                             f"fwd+bwd {r['ratio_vs_eager']:.2f}x eager (target >= 5), {comp} torch.compile (target >= 1.2)"
                             + (f", {r['pct_copy_bandwidth']:.0f} % of copy bandwidth" if r["pct_copy_bandwidth"] else ""))
                lines.append("")
        lines.append(bench.summary_markdown(data, rel))
    return lines or ["no results JSON"]


def _fmt_s(s) -> str:
    if s is None:
        return "-"
    return f"{s * 1e6:.1f} us" if s < 1e-3 else f"{s * 1e3:.3f} ms"


def _headline_section(folder: Path) -> list[str]:
    """Per dtype: each op at 2^20..2^28 (median time per implementation, ours against eager and
    torch.compile, % of the copy kernel's bandwidth), then the host time per call at 2^8 and 2^12."""
    from . import bench

    paths = sorted(folder.glob("results-*.json"))
    if not paths:
        return ["no results JSON (the step stopped before the benchmark finished: see its log)"]
    data = json.loads(paths[-1].read_text())
    rows = data["results"]
    impls = list(dict.fromkeys(r["impl"] for r in rows))
    ours = [i for i in impls if i.startswith("torchdist_fast")]
    copy_bw = data.get("copy_bandwidth_gbps", {}).get("cuda")
    lines = [f"copy kernel: {copy_bw:.0f} GB/s (the denominator of % of copy)" if copy_bw else "copy bandwidth: not measured", ""]
    refused = {(r["dtype"], r["op"], r["mode"], r["size"]) for r in data.get("refused", [])}
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        head = "| op | mode | N | eager | torch.compile | " + " | ".join(ours) + " | x eager | x compile | % of copy |"
        lines += [f"**{dtype}**", "", head, "|" + "---|" * (head.count("|") - 1)]
        host = []
        for op, mode in dict.fromkeys((r["op"], r["mode"]) for r in rows):
            for size in sorted({r["size"] for r in rows}):
                by = {r["impl"]: r for r in rows if (r["dtype"], r["op"], r["mode"], r["size"]) == (dtype, op, mode, size)}
                if "eager" not in by or "torchdist_fast" not in by:
                    continue
                o, c = by["torchdist_fast"], by.get("compile")
                if size <= bench.LATENCY_MAX_SIZE:  # the small-batch rows: host time per call
                    if o.get("host_s") and by["eager"].get("host_s"):
                        host.append(f"| {op} | {mode} | 2^{size.bit_length() - 1} | {_fmt_s(by['eager']['host_s'])} | "
                                    f"{_fmt_s(c.get('host_s')) if c else 'refused'} | {_fmt_s(o['host_s'])} | "
                                    f"{o['host_s'] / by['eager']['host_s']:.2f} |")
                    continue
                ctime = _fmt_s(c["median_s"]) if c else ("refused" if (dtype, op, mode, size) in refused else "-")
                x_compile = "-" if o["ratio_vs_compile"] is None else f"{o['ratio_vs_compile']:.2f}"
                pct = "-" if o.get("pct_copy_bandwidth") is None else f"{o['pct_copy_bandwidth']:.0f}%"
                mine = " | ".join(_fmt_s(by[i]["median_s"]) if i in by else "-" for i in ours)
                lines.append(f"| {op} | {mode} | 2^{size.bit_length() - 1} | {_fmt_s(by['eager']['median_s'])} | {ctime} | "
                             f"{mine} | {o['ratio_vs_eager']:.2f} | {x_compile} | {pct} |")
        lines.append("")
        if host:
            lines += [f"Host time per call ({dtype}; a call's return, no sync)", "",
                      "| op | mode | N | eager | torch.compile | ours | ours / eager |", "|---|---|---|---|---|---|---|", *host, ""]
    if refused:
        lines.append(f"torch.compile rows refused (fallback, graph break or recompile): {len(refused)}; see the results JSON.")
    return lines


def _env_line(env: dict) -> list[str]:
    copy = env.get("copy") or {}
    parts = [env.get("device") or "no CUDA device", f"driver {env.get('driver')}", f"torch {env.get('torch')}",
             f"triton {env.get('triton')}", f"CUDA {env.get('cuda')}", f"nvcc {env.get('nvcc_version')}",
             f"python {env.get('python')}"]
    lines = [" — ".join([parts[0], ", ".join(parts[1:])]) + f", {env.get('date')}", ""]
    if copy:
        lines += [f"Copy bandwidth (device to device, read + write): copy kernel {copy['kernel_gbps']:.0f} GB/s "
                  f"(the denominator of every % of copy), torch copy_ (cudaMemcpyAsync) {copy['memcpy_gbps']:.0f} GB/s, "
                  f"{copy['bytes'] / 2**30:.0f} GiB buffers, best of {copy['repeats']}", ""]
    return lines


def _log_tail(path: Path, n: int = 20) -> list[str]:
    if not path.exists():
        return []
    tail = path.read_text(errors="replace").splitlines()[-n:]
    return ["```", *tail, "```"]


def write_summary(results: Path) -> Path:
    """summary.md of a results folder: the environment, every step with its status, and each
    step's results as far as they exist."""
    from . import gpu_estimate

    results = Path(results)
    records = load_records(results)
    plan = records.get("_plan", {})
    steps = step_records(records)
    lines = [f"# GPU check: {plan.get('name', 'stages')}", ""]
    env_path = results / "env" / "env.json"
    if env_path.exists():
        lines += _env_line(json.loads(env_path.read_text()))
    names = plan.get("steps") or [s for s in STAGES if s in steps]
    lines += ["| step | status | seconds | budget | estimate | note |", "|---|---|---|---|---|---|"]
    for name in names:
        s = steps.get(name, {"status": "not run"})
        est = s.get("estimate_s")
        lines.append(f"| {name} | {s.get('status')} | {s.get('seconds') if s.get('seconds') is not None else '-'} | "
                     f"{s.get('budget_s', '-')} | {'-' if est is None else f'~{est:.0f}'} | "
                     f"{(s.get('reason') or '').replace('|', '/')} |")
    if plan.get("seconds") is not None:
        lines.append("")
        lines.append(f"Plan: {plan['seconds']} s in all (limit {PLAN_LIMIT_S} s). Estimates are from "
                     f"`{gpu_estimate.DATA_PATH.name}` (counted kernel variants x measured compile time, on CPU).")
    lines.append("")
    sections = {
        "build": ("The CUDA extension build", lambda: [
            f"built out of tree: {steps['build'].get('provides', {}).get('TORCHDIST_FAST_CUDA_BACKEND_DIR')}"]
            if steps["build"]["status"] == "ok" else []),
        "silicon": ("Silicon correctness", lambda: _junit_lines(results / "silicon" / "junit.xml")
                    + _variant_lines(results / "silicon" / "variants.json", "silicon")),
        "headline": ("Headline speed (median of interleaved repeats, CUDA events)", lambda: _headline_section(results / "headline")),
        "graphs": ("CUDA graphs and Inductor", lambda: _junit_lines(results / "graphs" / "junit.xml")),
        "tests": ("The whole suite on CUDA", lambda: _junit_lines(results / "tests" / "junit.xml")),
        "memcheck": ("compute-sanitizer memcheck", lambda: _memcheck_lines(results / "memcheck" / "memcheck.log")),
        "ncu": ("Nsight Compute", lambda: _ncu_section(results / "ncu" / "ncu.csv")),
        "bench": ("Benchmark", lambda: _bench_section(results / "bench", results)),
        "host": ("Host time per call", lambda: _json_table(results / "host" / "host_overhead.json", "host_overhead")),
        "steps": ("Training steps per second", lambda: _json_table(results / "steps" / "step_rate.json", "step_rate")),
        "cuda-backend": ("CUDA C++ backend", lambda: _junit_lines(results / "cuda-backend" / "junit.xml")),
        "vae": ("VAE, batch 65536", lambda: _vae_section(results / "vae" / "vae.json")),
    }
    for key, (title, body) in sections.items():
        ran = [k for k in names if (k == key or k.startswith(key + "-")) and steps.get(k, {}).get("status")
               not in (None, "not run", "skipped", "running")]
        if not ran:
            continue
        lines += [f"## {title}", ""]
        try:
            lines += body()
        except (OSError, ValueError, KeyError, TypeError, ET.ParseError) as exc:
            lines.append(f"could not read the results: {type(exc).__name__}: {exc}")
        for k in ran:
            if steps[k]["status"] in ("failed", "timeout"):
                lines += ["", f"{k}: {steps[k]['status']}; the end of `logs/{k}.log`:", *_log_tail(results / "logs" / f"{k}.log")]
        lines.append("")
    path = results / "summary.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _variant_lines(path: Path, step: str) -> list[str]:
    """The distinct Triton specializations the step launched on the device, beside the count its
    estimate was made with."""
    from . import gpu_check_pytest, gpu_estimate

    if not path.exists():
        return []
    counted = gpu_estimate.load()["counts"].get(step, {}).get("variants")
    found = gpu_check_pytest.distinct_variants(json.loads(path.read_text()))
    return ["", f"Triton kernel variants launched: {found} (counted on CPU for the estimate: {counted})"]


def _json_table(path: Path, module: str) -> list[str]:
    import importlib

    if not path.exists():
        return [f"no {path.name}"]
    return [importlib.import_module(f"{__package__}.{module}").table(json.loads(path.read_text()))]


def _vae_section(path: Path) -> list[str]:
    data = json.loads(path.read_text())
    cfg = data.get("config", {})
    out = [f"batch {cfg.get('batch_size')}, {cfg.get('epochs')} epochs of {cfg.get('dataset_size')} images, "
           f"{data.get('device_name')}", "",
           "| impl | images/s | saved for backward/step | peak CUDA memory | final held-out ELBO |", "|---|---|---|---|---|"]
    for r in data.get("runs", []):
        ips = "-" if r.get("samples_per_s") is None else f"{r['samples_per_s']:,.0f}"
        peak = "-" if r.get("peak_bytes") is None else f"{r['peak_bytes'] / 2**20:.1f} MiB"
        out.append(f"| {r['impl']} | {ips} | {r['saved_bytes_per_step'] / 2**20:.2f} MiB | {peak} | {r['eval_elbo'][-1]:.3f} |")
    return out


def _memcheck_lines(path: Path) -> list[str]:
    if not path.exists():
        return ["no memcheck.log"]
    found = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if "ERROR SUMMARY" in ln]
    return found[-1:] or ["no ERROR SUMMARY line in memcheck.log"]


# ----------------------------------------------------------------------------- workloads (run under the tools)
def _tool_version(argv, pick=lambda out: out.strip().splitlines()[-1] if out.strip() else None):
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return pick(res.stdout) if res.returncode == 0 else None


def workload_env(results: Path) -> dict:
    """env/env.json: versions, the device, and (on CUDA) the copy bandwidth of a copy kernel."""
    import platform

    import torch

    from . import bench

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    env = {"date": utc_now(),
           "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
           "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if cuda else None,
           "capability": list(torch.cuda.get_device_capability()) if cuda else None,
           "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
           "driver": _tool_version(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]),
           "nvcc": shutil.which("nvcc"),
           "nvcc_version": _tool_version(["nvcc", "--version"]),
           "ncu": shutil.which("ncu"), "compute-sanitizer": shutil.which("compute-sanitizer"),
           "cpu": bench.cpu_name(), "cpu_count": os.cpu_count()}
    if cuda:
        from . import device_copy

        env["copy"] = device_copy.bandwidth("cuda")
    (results / "env").mkdir(parents=True, exist_ok=True)
    (results / "env" / "env.json").write_text(json.dumps(env, indent=1))
    print(json.dumps(env, indent=1))
    return env


def describe(plan: str, steps: list, cuda: bool) -> list[str]:
    """The dry run of one plan: its command, each step's budget and estimate, its commands."""
    from . import gpu_estimate

    estimates = gpu_estimate.estimates()
    cmd = "python -m torchdist_fast.tools.gpu_check" + ("" if plan == FIRST_CONTACT else f" --plan {plan}") + " --out DIR"
    budget = plan_budget_s(steps)
    est = sum(estimates[s.name][0] for s in steps if not s.background and s.name in estimates)
    lines = [f"$ {cmd}", f"  {'step':13s} {'budget':>7s} {'estimate':>9s}  what"]
    ctx = Context(Path("RESULTS"), Path("SCRATCH"))
    for s in steps:
        e, basis = estimates.get(s.name, (None, "not estimated"))
        flag = "  ** estimate over budget **" if e is not None and e > s.budget_s else ""
        lines.append(f"  {s.name:13s} {s.budget_s:6.0f}s {'-' if e is None else f'~{e:.0f}s':>9s}  "
                     f"{'(background) ' if s.background else ''}{s.help}{flag}")
        lines.append(f"  {'':13s} {'':7s} {'':9s}  estimate: {basis}")
        reason = skip_reason(s, cuda)
        for c in s.commands(ctx):
            lines.append(f"      $ {c.shell()}" + ("" if c.fatal else "   (not fatal)"))
        if reason:
            lines.append(f"      (here it would be {reason})")
    lines.append(f"  total: budget {budget:.0f} s (limit {PLAN_LIMIT_S} s), estimate ~{est:.0f} s "
                 f"({est / 60:.1f} min; an estimate, not a measurement)")
    return lines


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.tools.gpu_check", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="plans: " + "; ".join(f"{k}: {', '.join(v)}" for k, v in PLANS.items())
                                + "\nstages: " + "; ".join(f"{s.name}: {s.help}" for s in steps_by_name().values()))
    p.add_argument("--plan", choices=list(PLANS), default=None, help=f"the plan to run (default {FIRST_CONTACT})")
    p.add_argument("--stage", action="append", choices=list(STAGES) + ["summary"],
                   help="run these stages instead of a plan (repeat for several; the background build is added when "
                        "a stage uses it). 'summary' only rewrites summary.md of --results")
    p.add_argument("--out", help="where the archive <plan>.tar.gz and summary.md go (what comes back from the GPU "
                                 "machine; default benchmarks/results/gpu-<UTC time>/)")
    p.add_argument("--results", help="the results folder (default: a new temporary folder; builds go beside it); "
                                     "reuse one to add stages")
    p.add_argument("--dry-run", action="store_true", help="print every plan with its commands and estimates, run nothing")
    p.add_argument("--deadline", type=float, default=PLAN_DEADLINE_S,
                   help=f"seconds after which the run stops whatever step is running (default {PLAN_DEADLINE_S}: the "
                        f"last archive is written inside a {PLAN_LIMIT_S // 60}-minute command; 0: no deadline)")
    p.add_argument("--workload", choices=("env", "ops", "ncu"), help=argparse.SUPPRESS)  # run under the tools
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.plan and args.stage:
        parser.error("--plan and --stage exclude each other")
    if args.deadline < 0:
        parser.error("--deadline must be positive (or 0: none)")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "gpu-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    for flag, path in (("--out", out), ("--results", Path(args.results) if args.results else None)):
        if path is not None and path.exists() and not path.is_dir():
            parser.error(f"{flag} {str(path)!r} exists and is not a folder")

    if args.workload:
        results = Path(args.results or ".")
        if args.workload == "env":
            workload_env(results)
        elif args.workload == "ops":
            print(f"{workload_ops()} op calls")
        else:
            workload_ncu()
        return 0

    if args.stage == ["summary"]:
        if not args.results:
            parser.error("--stage summary needs --results (the folder to summarize)")
        path = write_summary(Path(args.results))
        if args.out:
            out.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, out / "summary.md")
        print(f"wrote {path}")
        return 0
    if args.stage and "summary" in args.stage:
        parser.error("'summary' runs alone")

    import torch

    cuda = torch.cuda.is_available()
    if args.dry_run:
        print(f"CUDA here: {'yes, ' + torch.cuda.get_device_name() if cuda else 'no'}")
        if args.stage:
            print("\nstages " + ", ".join(args.stage) + ":")
            print("\n".join(describe("stages", plan_steps(args.stage), cuda)))
            return 0
        print(f"\n1. the first-contact plan (the default): one command, at most {PLAN_LIMIT_S // 60} minutes, "
              "one archive")
        print("\n".join(describe(FIRST_CONTACT, plan_steps(PLANS[FIRST_CONTACT]), cuda)))
        print("\n2. the later plans: one command each, in later GPU windows")
        for name in LATER_PLANS:
            print(f"\n[{name}]")
            print("\n".join(describe(name, plan_steps(PLANS[name]), cuda)))
        return 0

    from . import gpu_estimate

    name = "stages" if args.stage else (args.plan or FIRST_CONTACT)
    steps = plan_steps(args.stage or PLANS[name])
    base = Path(args.results) if args.results else Path(tempfile.mkdtemp(prefix=f"gpu_check-{name}-"))
    results = base if args.results else base / "results"
    scratch = results.parent / (f"{results.name}-scratch" if args.results else "scratch")
    print(f"{name}: {', '.join(s.name for s in steps)}; results in {results}, builds in {scratch}, archive "
          f"{out / (name + '.tar.gz')}", flush=True)
    if not cuda:
        print("no CUDA device here: the steps that need one are skipped", flush=True)
    run = PlanRun(name, steps, results, scratch, out, cuda, deadline_s=args.deadline or None, summary=write_summary,
                  estimates={k: round(v[0]) for k, v in gpu_estimate.estimates().items()})
    records = step_records(run.run())
    print(f"wrote {run.archive} ({run.packed.get('bytes', 0) / 2**20:.2f} MiB"
          + (f"; left out: {', '.join(run.packed['left_out'])}" if run.packed.get("left_out") else "") + f") and {out / 'summary.md'}")
    failed = [s.name for s in steps if records.get(s.name, {}).get("status") in ("failed", "timeout")]
    skipped = [s.name for s in steps if records.get(s.name, {}).get("status") == "skipped"]
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
