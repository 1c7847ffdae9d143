"""``python -m torchdist_fast.gpu_check``: everything a GPU machine should run, in one command.

For a machine that may be lent only briefly, with torch and triton preinstalled and no network.
Install first (offline): ``pip install --no-deps --no-build-isolation -e .``, then run from the
repository root:

    python -m torchdist_fast.gpu_check                     # every stage, into benchmarks/results/gpu-<time>/
    python -m torchdist_fast.gpu_check --stage tests       # one stage (repeat --stage for several)
    python -m torchdist_fast.gpu_check --dry-run           # print the plan (commands), run nothing
    python -m torchdist_fast.gpu_check --stage summary --out DIR   # rewrite DIR/summary.md

Stages (each can run alone, each is stopped after --stage-timeout seconds, 600 by default):

  env           nvidia-smi, versions, the CUDA device
  install       pip install --no-deps --no-build-isolation --no-index -e . (offline)
  tests         the whole test suite on CUDA, without Triton's interpreter, gpu-marked tests included
  memcheck      compute-sanitizer memcheck on a small run of every op, forward and backward, 4 dtypes
  bench-fp32    the full benchmark, float32, sizes 2^0..2^28 (python -m torchdist_fast)
  bench-bf16    the same in bfloat16
  bench-family  KL, the Independent log_prob and the tanh-Normal against torch's compositions, float32
  ncu           Nsight Compute: DRAM bytes, time and throughput per kernel at 2^24, and a copy kernel
  cuda-backend  kernels/check_compile.py, build the CUDA C++ backend, its tests on the device
  graphs        CUDA graph capture tests (graph-safe draws need the CUDA backend: built here if
                cuda-backend did not), host time per call (python -m torchdist_fast.host_overhead)
  steps         SAC / REINFORCE update steps per second: eager, torch.compile, reduce-overhead
                (python -m torchdist_fast.step_rate)
  vae           the VAE example at batch 65536 for 200 steps, both implementations

Everything goes into one folder (--out): logs/, stages.json, the results JSON and plots, and a
``summary.md`` with the headline ratios against eager and torch.compile, written after every run
from whatever stages have run into that folder so far. Logs are cut to keep the folder under
16 MB. Stages that need CUDA (or a tool that is missing) are reported as skipped, not run.
The exit status is 1 if a stage failed or timed out, else 0.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE_TIMEOUT_S = 600
MAX_FOLDER_BYTES = 16 * 2**20
MAX_LOG_BYTES = 2 * 2**20
BENCH_SIZES = [f"2^{k}" for k in range(0, 29, 2)]
NCU_SIZE = 2**24
NCU_METRICS = ("gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
               "dram__throughput.avg.pct_of_peak_sustained_elapsed")


@dataclass
class Command:
    argv: list
    env: dict = field(default_factory=dict)  # added to the environment; None removes a variable
    cwd: str = str(ROOT)

    def shell(self) -> str:
        sets = " ".join(f"{k}={shlex.quote(v)}" for k, v in self.env.items() if v is not None)
        unsets = " ".join(f"-u {k}" for k, v in self.env.items() if v is None)
        prefix = (f"env {unsets} " if unsets else "") + (f"{sets} " if sets else "")
        return prefix + shlex.join(str(a) for a in self.argv)


@dataclass
class Stage:
    name: str
    help: str
    needs_cuda: bool
    tools: tuple  # executables that must be on PATH
    commands: object  # (out: Path) -> list[Command]


def _py(*args) -> list:
    return [sys.executable, *args]


NO_INTERPRET = {"TRITON_INTERPRET": None}


def _arch() -> str:
    import torch

    if torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability()
        return f"{major}.{minor}"
    return "9.0"


def _stages() -> dict:
    def env_cmds(out):
        cmds = [Command(_py("-m", "torchdist_fast.gpu_check", "--workload", "env", "--out", str(out)))]
        if shutil.which("nvidia-smi"):
            cmds.insert(0, Command(["nvidia-smi"]))
        return cmds

    def install_cmds(out):
        # an editable install without build isolation builds with the setuptools already installed:
        # it needs setuptools >= 70.1 (bdist_wheel built in) or setuptools plus the wheel package
        check = ("import importlib.util as u, setuptools as s; v = tuple(int(x) for x in s.__version__.split('.')[:2]); "
                 "ok = v >= (70, 1) or u.find_spec('wheel') is not None; print('setuptools', s.__version__); "
                 "raise SystemExit(0 if ok else 'setuptools >= 70.1 (or the wheel package) is needed for an offline editable install')")
        return [Command(_py("-c", check)),
                Command(_py("-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", "."))]

    def tests_cmds(out):
        return [Command(_py("-m", "pytest", "-m", "not slow", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={out / 'tests' / 'junit.xml'}"), NO_INTERPRET)]

    def memcheck_cmds(out):
        return [Command(["compute-sanitizer", "--tool", "memcheck", "--error-exitcode", "1", "--target-processes", "all",
                         "--log-file", str(out / "memcheck" / "memcheck.log"),
                         *_py("-m", "torchdist_fast.gpu_check", "--workload", "ops")],
                        {**NO_INTERPRET, "PYTORCH_NO_CUDA_MEMORY_CACHING": "1"})]

    def bench_cmds(dtype, ops=()):
        def cmds(out):
            return [Command(_py("-m", "torchdist_fast", "--devices", "cuda", "--dtypes", dtype, "--sizes", *BENCH_SIZES,
                                *(("--ops", *ops) if ops else ()), "--out", str(out / "bench")), NO_INTERPRET)]
        return cmds

    def ncu_cmds(out):
        return [Command(["ncu", "--profile-from-start", "off", "--target-processes", "all", "--csv", "--page", "raw",
                         "--print-units", "base", "--metrics", ",".join(NCU_METRICS),
                         "--log-file", str(out / "ncu" / "ncu.csv"),
                         *_py("-m", "torchdist_fast.gpu_check", "--workload", "ncu")], NO_INTERPRET)]

    def cuda_backend_cmds(out):
        return [Command(_py("kernels/check_compile.py"), NO_INTERPRET),
                Command(_py("setup_cuda.py", "build_ext", "--inplace"), {**NO_INTERPRET, "TORCH_CUDA_ARCH_LIST": _arch()}),
                Command(_py("-m", "pytest", "tests/test_cuda_backend.py", "-q", "-p", "no:cacheprovider",
                            f"--junitxml={out / 'cuda-backend' / 'junit.xml'}"), NO_INTERPRET)]

    def graphs_cmds(out):
        # graph-safe draws need the CUDA backend extension: built here unless cuda-backend built it
        build = ("import subprocess, sys\nfrom torchdist_fast import cuda_backend\n"
                 "sys.exit(0 if cuda_backend.available() else "
                 "subprocess.call([sys.executable, 'setup_cuda.py', 'build_ext', '--inplace']))")
        return [Command(_py("-c", build), {**NO_INTERPRET, "TORCH_CUDA_ARCH_LIST": _arch()}),
                Command(_py("-m", "pytest", "tests/test_cuda_graphs.py", "tests/test_compiled_kernels.py", "-q", "-p",
                            "no:cacheprovider",
                            f"--junitxml={out / 'graphs' / 'junit.xml'}"), NO_INTERPRET),
                Command(_py("-m", "torchdist_fast.host_overhead", "--device", "cuda",
                            "--json", str(out / "graphs" / "host_overhead.json")), NO_INTERPRET)]

    def steps_cmds(out):
        # its own stage: 12 columns, 8 of them compiled (minutes of compile warm-up)
        return [Command(_py("-m", "torchdist_fast.step_rate", "--device", "cuda",
                            "--json", str(out / "steps" / "step_rate.json")), NO_INTERPRET)]

    def vae_cmds(out):
        return [Command(_py("-m", "torchdist_fast.examples.vae", "--device", "cuda", "--batch-size", "65536",
                            "--dataset-size", "65536", "--epochs", "200", "--no-progress", "--out", str(out / "vae")),
                        NO_INTERPRET)]

    stages = [
        Stage("env", "nvidia-smi, versions, the CUDA device", False, (), env_cmds),
        Stage("install", "pip install --no-deps --no-build-isolation --no-index -e . (offline)", False, (), install_cmds),
        Stage("tests", "the test suite on CUDA, no interpreter, gpu-marked tests included", True, (), tests_cmds),
        Stage("memcheck", "compute-sanitizer memcheck, every op, small sizes", True, ("compute-sanitizer",), memcheck_cmds),
        Stage("bench-fp32", "the full benchmark, float32, 2^0..2^28", True, (), bench_cmds("float32")),
        Stage("bench-bf16", "the full benchmark, bfloat16, 2^0..2^28", True, (), bench_cmds("bfloat16")),
        Stage("bench-family", "KL, Independent log_prob, tanh-Normal rows, float32, 2^0..2^28", True, (),
              bench_cmds("float32", ("kl", "event_log_prob", "tanh_rsample_and_log_prob"))),
        Stage("ncu", "Nsight Compute DRAM throughput per kernel at 2^24", True, ("ncu",), ncu_cmds),
        Stage("cuda-backend", "nvcc check, build and test the CUDA C++ backend", True, ("nvcc",), cuda_backend_cmds),
        Stage("graphs", "CUDA graph capture tests (builds the CUDA backend if missing), host time per call", True, (),
              graphs_cmds),
        Stage("steps", "SAC / REINFORCE update steps per second: eager, compile, reduce-overhead", True, (), steps_cmds),
        Stage("vae", "the VAE example, batch 65536, 200 steps", True, (), vae_cmds),
    ]
    return {s.name: s for s in stages}


STAGES = tuple(_stages())  # names in run order
DEFAULT_STAGES = tuple(s for s in STAGES if s != "install")


def skip_reason(stage: Stage, cuda: bool) -> str | None:
    if stage.needs_cuda and not cuda:
        return "skipped: no CUDA"
    missing = [t for t in stage.tools if shutil.which(t) is None]
    if missing:
        return f"skipped: {', '.join(missing)} not found on PATH"
    return None


# ----------------------------------------------------------------------------- running
def _trim_log(path: Path, limit: int = MAX_LOG_BYTES) -> None:
    """Keep the head and the tail of a log that grew past ``limit`` bytes."""
    if not path.exists() or path.stat().st_size <= limit:
        return
    data = path.read_bytes()
    head, tail = data[: limit // 8], data[-(limit - limit // 8):]
    path.write_bytes(head + f"\n... [{len(data) - len(head) - len(tail)} bytes cut] ...\n".encode() + tail)


def _env_for(cmd: Command) -> dict:
    env = dict(os.environ)
    for k, v in cmd.env.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    return env


def run_stage(stage: Stage, out: Path, timeout_s: float, cuda: bool) -> dict:
    reason = skip_reason(stage, cuda)
    cmds = stage.commands(out)
    record = {"status": "skipped", "reason": reason, "seconds": 0.0, "commands": [c.shell() for c in cmds],
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    if reason:
        print(f"[{stage.name}] {reason}", flush=True)
        return record
    (out / "logs").mkdir(parents=True, exist_ok=True)
    (out / stage.name).mkdir(parents=True, exist_ok=True)
    log = out / "logs" / f"{stage.name}.log"
    t0 = time.monotonic()
    record.update(status="ok", reason=None)
    with open(log, "w") as f:
        for cmd in cmds:
            left = timeout_s - (time.monotonic() - t0)
            print(f"[{stage.name}] $ {cmd.shell()}", flush=True)
            f.write(f"$ {cmd.shell()}\n")
            f.flush()
            try:
                res = subprocess.run(cmd.argv, cwd=cmd.cwd, env=_env_for(cmd), stdout=f, stderr=subprocess.STDOUT,
                                     timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                record.update(status="timeout", reason=f"stopped after {timeout_s:.0f} s in: {cmd.shell()}")
                break
            except OSError as exc:
                record.update(status="failed", reason=f"{cmd.argv[0]}: {exc}")
                break
            if res.returncode != 0:
                record.update(status="failed", reason=f"exit status {res.returncode}: {cmd.shell()}")
                break
    record["seconds"] = round(time.monotonic() - t0, 1)
    _trim_log(log)
    for extra in (out / stage.name).glob("*.log"):
        _trim_log(extra)
    print(f"[{stage.name}] {record['status']} in {record['seconds']} s" + (f": {record['reason']}" if record["reason"] else ""),
          flush=True)
    return record


def _load_stages(out: Path) -> dict:
    path = out / "stages.json"
    if path.exists():
        return json.loads(path.read_text())
    return {}


def folder_bytes(out: Path) -> int:
    return sum(p.stat().st_size for p in out.rglob("*") if p.is_file())


# ----------------------------------------------------------------------------- summary
def _junit_counts(path: Path) -> str | None:
    if not path.exists():
        return None
    import xml.etree.ElementTree as ET

    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    return f"{passed} passed, {tot['failures']} failed, {tot['errors']} errors, {tot['skipped']} skipped"


def parse_ncu_csv(path: Path) -> list[dict]:
    """Rows of ``ncu --csv --page raw --print-units base``: one per kernel launch, the metrics as numbers."""
    text = path.read_text(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]  # ncu prefixes its own messages with ==PROF==
    if not lines:
        return []
    reader = csv.DictReader(lines)
    rows = []
    for rec in reader:
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
           + (f"; copy kernel: {copy_gbps:.0f} GB/s" if copy_gbps else ""), "",
           "| kernel | time | DRAM read | DRAM write | GB/s | % of DRAM peak | % of copy |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        name = r["kernel"] if len(r["kernel"]) <= 60 else r["kernel"][:57] + "..."
        share = f"{100 * r['gbps'] / copy_gbps:.0f}%" if copy_gbps else "-"
        out.append(f"| `{name}` | {r['time_ns'] / 1e3:.1f} us | {r['dram_read'] / 2**20:.1f} MiB | "
                   f"{r['dram_write'] / 2**20:.1f} MiB | {r['gbps']:.0f} | {r['pct_peak']:.1f} | {share} |")
    return out


def _bench_section(out: Path) -> list[str]:
    from . import bench

    lines = []
    for path in sorted((out / "bench").glob("*.json")):
        data = json.loads(path.read_text())
        rel = path.relative_to(out).as_posix()
        for r in data["results"]:
            if r["impl"] == "torchdist_fast" and r["op"] == "rsample_and_log_prob" and r["mode"] == "fwd+bwd" and \
                    r["size"] == max(x["size"] for x in data["results"] if x["dtype"] == r["dtype"]):
                comp = "refused" if r["ratio_vs_compile"] is None else f"{r['ratio_vs_compile']:.2f}x"
                lines.append(f"**Headline** ({r['dtype']}, N = 2^{r['size'].bit_length() - 1}): rsample_and_log_prob "
                             f"fwd+bwd {r['ratio_vs_eager']:.2f}x eager (target >= 4), {comp} torch.compile (target >= 1.3)"
                             + (f", {r['pct_copy_bandwidth']:.0f} % of copy bandwidth" if r["pct_copy_bandwidth"] else ""))
                lines.append("")
        lines.append(bench.summary_markdown(data, rel))
    return lines


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


def write_summary(out: Path) -> Path:
    stages = _load_stages(out)
    env_path = out / "env" / "env.json"
    lines = ["# GPU check", ""]
    if env_path.exists():
        env = json.loads(env_path.read_text())
        lines += [f"{env.get('device', 'no CUDA device')} — torch {env.get('torch')}, triton {env.get('triton')}, "
                  f"CUDA {env.get('cuda')}, python {env.get('python')}, {env.get('date')}", ""]
    lines += ["| stage | status | seconds | note |", "|---|---|---|---|"]
    for name in STAGES:
        if name in stages:
            s = stages[name]
            lines.append(f"| {name} | {s['status']} | {s['seconds']} | {s['reason'] or ''} |")
        else:
            lines.append(f"| {name} | not run | - | |")
    lines.append("")
    for title, name, body in (
        ("Tests on CUDA", "tests", lambda: [_junit_counts(out / "tests" / "junit.xml") or "no junit.xml"]),
        ("compute-sanitizer memcheck", "memcheck", lambda: _memcheck_lines(out / "memcheck" / "memcheck.log")),
        ("Benchmark", "bench", lambda: _bench_section(out)),
        ("Nsight Compute", "ncu", lambda: _ncu_section(out / "ncu" / "ncu.csv")),
        ("CUDA C++ backend", "cuda-backend", lambda: [_junit_counts(out / "cuda-backend" / "junit.xml") or "no junit.xml"]),
        ("CUDA graphs and per-call cost", "graphs", lambda: _graphs_section(out / "graphs")),
        ("Training steps per second", "steps", lambda: _steps_section(out / "steps" / "step_rate.json")),
        ("VAE, batch 65536", "vae", lambda: _vae_section(out / "vae" / "vae.json")),
    ):
        ran = [k for k in stages if k == name or k.startswith(name + "-")]
        if not ran or all(stages[k]["status"] == "skipped" for k in ran):
            continue
        lines += [f"## {title}", ""]
        try:
            lines += body()
        except (OSError, ValueError, KeyError) as exc:
            lines.append(f"could not read the results: {type(exc).__name__}: {exc}")
        lines.append("")
    path = out / "summary.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _graphs_section(folder: Path) -> list[str]:
    from . import host_overhead

    path = folder / "host_overhead.json"
    return [_junit_counts(folder / "junit.xml") or "no junit.xml", "",
            host_overhead.table(json.loads(path.read_text())) if path.exists() else "no host_overhead.json"]


def _steps_section(path: Path) -> list[str]:
    from . import step_rate

    return [step_rate.table(json.loads(path.read_text())) if path.exists() else "no step_rate.json"]


def _memcheck_lines(path: Path) -> list[str]:
    if not path.exists():
        return ["no memcheck.log"]
    found = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if "ERROR SUMMARY" in ln]
    return found[-1:] or ["no ERROR SUMMARY line in memcheck.log"]


# ----------------------------------------------------------------------------- workloads (run under the tools)
def workload_env(out: Path) -> None:
    import platform

    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = torch.cuda.is_available()
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
           "cuda": torch.version.cuda, "device": torch.cuda.get_device_name() if cuda else None,
           "capability": list(torch.cuda.get_device_capability()) if cuda else None,
           "nvcc": shutil.which("nvcc"), "ncu": shutil.which("ncu"), "compute-sanitizer": shutil.which("compute-sanitizer")}
    (out / "env").mkdir(parents=True, exist_ok=True)
    (out / "env" / "env.json").write_text(json.dumps(env, indent=1))
    print(json.dumps(env, indent=1))


def workload_ops(device: str = "cuda") -> int:
    """Every op, forward and backward, every dtype, at small and odd sizes, broadcast and
    non-contiguous inputs: what memcheck watches. Returns the number of op calls made."""
    import torch

    import torchdist_fast

    calls = 0
    dtypes = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
    shapes = [((1,), (1,), ()), ((7,), (7,), (3,)), ((4099,), (4099,), ()), ((3, 1), (1, 5), (2,)), ((1000,), (), (2,))]
    for dtype in dtypes:
        for n in (1, 3, 4, 5, 1000, 4099):
            torchdist_fast.randn(n, dtype=dtype, device=device)
            calls += 1
        for loc_shape, scale_shape, sample_shape in shapes:
            loc = torch.randn(loc_shape, dtype=dtype, device=device).requires_grad_()
            scale = (torch.rand(scale_shape, dtype=dtype, device=device) + 0.5).requires_grad_()
            d = torchdist_fast.Normal(loc, scale)
            z = d.rsample(sample_shape)
            z2, lp = d.rsample_and_log_prob(sample_shape)
            value = torch.randn(z.shape, dtype=dtype, device=device).requires_grad_()
            lp2 = d.log_prob(value)
            torch.autograd.grad((z.sum() + z2.sum() + lp.sum() + lp2.sum()).float(), (loc, scale, value))
            _, lp3 = d.sample_and_log_prob(sample_shape)
            torch.autograd.grad(lp3.sum().float(), (loc, scale))
            calls += 5
        # non-contiguous (transposed, strided) parameters
        loc = torch.randn(64, 48, dtype=dtype, device=device).t().requires_grad_()
        scale = (torch.rand(48, 128, dtype=dtype, device=device) + 0.5)[:, ::2].requires_grad_()
        z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob()
        torch.autograd.grad((z.sum() + lp.sum()).float(), (loc, scale))
        calls += 1
    if device == "cuda":
        torch.cuda.synchronize()
        from . import cuda_backend

        if cuda_backend.available():
            with torchdist_fast.gpu_kernel("cuda"):
                loc = torch.randn(4099, device=device, requires_grad=True)
                scale = (torch.rand(4099, device=device) + 0.5).requires_grad_()
                z, lp = torchdist_fast.Normal(loc, scale).rsample_and_log_prob()
                torch.autograd.grad(z.sum() + lp.sum(), (loc, scale))
                calls += 1
            torch.cuda.synchronize()
    return calls


def workload_ncu(device: str = "cuda", n: int = NCU_SIZE) -> None:
    """Each op forward and backward at n elements (fp32 and bf16), and a device copy for scale.
    The kernels are compiled in a warm-up; only the second pass is profiled (ncu --profile-from-start off)."""
    import torch

    import torchdist_fast

    inputs = []
    for dtype in (torch.float32, torch.bfloat16):
        loc = torch.randn(n, dtype=dtype, device=device, requires_grad=True)
        scale = (torch.rand(n, dtype=dtype, device=device) + 0.5).requires_grad_()
        value, g = torch.randn(n, dtype=dtype, device=device), torch.randn(n, dtype=dtype, device=device)
        inputs.append((loc, scale, value, g, torch.empty_like(value)))

    def one_pass():
        for loc, scale, value, g, dst in inputs:
            dst.copy_(value)  # the reference: a device copy (its kernel name holds "copy")
            torchdist_fast.randn(n, dtype=loc.dtype, device=device)
            d = torchdist_fast.Normal(loc, scale)
            torch.autograd.grad(d.rsample(), (loc, scale), g)
            torch.autograd.grad(d.log_prob(value), (loc, scale), g)
            z, lp = d.rsample_and_log_prob()
            torch.autograd.grad((z, lp), (loc, scale), (g, g))
        if device == "cuda":
            torch.cuda.synchronize()

    one_pass()  # compiles the kernels
    if device == "cuda":
        torch.cuda.profiler.start()
    one_pass()
    if device == "cuda":
        torch.cuda.profiler.stop()


# ----------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m torchdist_fast.gpu_check", description=__doc__.split("\n\n")[0],
                                epilog="stages: " + "; ".join(f"{s.name}: {s.help}" for s in _stages().values()))
    p.add_argument("--stage", action="append", choices=list(STAGES) + ["summary"],
                   help="run this stage (repeat for several; default: every stage but install). "
                        "'summary' only rewrites summary.md")
    p.add_argument("--out", help="output folder (default benchmarks/results/gpu-<UTC time>/); reuse it to add stages")
    p.add_argument("--dry-run", action="store_true", help="print the plan (commands, and what would be skipped here), run nothing")
    p.add_argument("--stage-timeout", type=float, default=STAGE_TIMEOUT_S, help=f"seconds per stage (default {STAGE_TIMEOUT_S})")
    p.add_argument("--workload", choices=("env", "ops", "ncu"), help=argparse.SUPPRESS)  # run under the tools
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.stage_timeout <= 0:
        parser.error("--stage-timeout must be positive")
    out = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / (
        "gpu-" + datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S"))
    if out.exists() and not out.is_dir():
        parser.error(f"--out {str(out)!r} exists and is not a folder")

    if args.workload:
        if args.workload == "env":
            workload_env(out)
        elif args.workload == "ops":
            print(f"{workload_ops()} op calls")
        else:
            workload_ncu()
        return 0

    import torch

    cuda = torch.cuda.is_available()
    selected = args.stage or list(DEFAULT_STAGES)
    only_summary = selected == ["summary"]
    stages = _stages()
    names = [s for s in STAGES if s in selected]
    if args.dry_run:
        print(f"plan: {len(names)} stage(s) into {out}/ (each stopped after {args.stage_timeout:.0f} s), then summary.md")
        print(f"CUDA here: {'yes, ' + torch.cuda.get_device_name() if cuda else 'no'}")
        for name in names:
            st = stages[name]
            reason = skip_reason(st, cuda)
            print(f"\n[{name}] {st.help}" + (f"  -- would be {reason}" if reason else ""))
            for cmd in st.commands(out):
                print(f"  $ {cmd.shell()}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    record = _load_stages(out)
    if not only_summary:
        if not cuda:
            print("no CUDA device here: the stages that need one are skipped", flush=True)
        for name in names:
            record[name] = run_stage(stages[name], out, args.stage_timeout, cuda)
            (out / "stages.json").write_text(json.dumps(record, indent=1))
    summary = write_summary(out)
    size = folder_bytes(out)
    print(f"wrote {summary} ({size / 2**20:.1f} MiB in {out})")
    if size > MAX_FOLDER_BYTES:
        print(f"warning: {out} holds {size / 2**20:.1f} MiB, more than {MAX_FOLDER_BYTES / 2**20:.0f} MiB", file=sys.stderr)
    failed = [n for n in names if record.get(n, {}).get("status") in ("failed", "timeout")]
    skipped = [n for n in names if record.get(n, {}).get("status") == "skipped"]
    if skipped:
        print(f"skipped: {', '.join(skipped)}")
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
