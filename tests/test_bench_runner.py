"""The comparison runner (python -m torchdist_fast): quick mode, JSON schema, plot, CLI errors,
the compile column's evidence and the small-batch (latency) rows."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import torchdist_fast
from torchdist_fast.tools import bench

RESULT_KEYS = {
    "device", "dtype", "op", "mode", "size", "impl", "median_s", "min_s", "max_s", "repeats", "gbps",
    "compile_warmup_s", "ratio_vs_eager", "ratio_vs_compile", "pct_copy_bandwidth", "saved_bytes_per_element",
    "ops_per_call", "ops_per_call_kind", "host_syncs", "host_s", "wall_s", "host_bound", "host_ratio_vs_eager", "extra",
}
QUICK = (2**0, 2**12, 2**16)
ROOT = Path(__file__).resolve().parents[1]


def _run_cli(*args, timeout=600):  # a hang guard, not a timing: a loaded machine runs the quick mode for minutes
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "torchdist_fast", *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    t0 = time.perf_counter()
    res = _run_cli("--quick", "--devices", "cpu", "--out", str(out))
    return res, out, time.perf_counter() - t0


def test_quick_mode_runs(quick_run):
    res, out, _ = quick_run  # bounded by the subprocess timeout, not timed: the machine may be shared
    assert res.returncode == 0, res.stderr[-3000:]
    assert "x eager" in res.stdout and "torchdist_fast" in res.stdout


def test_quick_run_leads_with_its_answer(quick_run):
    """The terminal gets the summary and the paths, in at most 40 lines, and no profiler noise
    (kineto's USDT profiler_start / profiler_stop lines) on stdout or stderr."""
    res, out, _ = quick_run
    lines = res.stdout.splitlines()
    assert len(lines) <= 40, res.stdout
    assert not any("USDT" in ln or "profiler_st" in ln for ln in (res.stdout + res.stderr).splitlines())
    assert lines[3].startswith("cpu, float32, N = 2^16: median time per call")  # the answer comes first
    for op, mode in bench.combos():
        assert sum(1 for ln in lines if ln.split()[:2] == [op, mode]) == 2  # largest size; small batches
    assert any(ln.startswith("cpu, float32, small batches: host time per call") for ln in lines)
    written = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in lines[-3:]}
    assert list(written) == ["full table", "JSON", "plot"]
    assert all(os.path.exists(path) and os.path.dirname(path) == str(out) for path in written.values())
    assert "| device | dtype | op | mode |" not in res.stdout  # the full table goes to the file (--table prints it)


def test_json_schema_and_plot(quick_run):
    _, out, _ = quick_run
    jsons = list(out.glob("*.json"))
    pngs = list(out.glob("*.png"))
    tables = list(out.glob("*.md"))
    assert len(jsons) == 1 and len(pngs) == 1 and len(tables) == 1
    table = tables[0].read_text()
    assert "| device | dtype | op | mode | size | impl | median | x eager | x compile |" in table
    assert f"`{jsons[0].name}`" in table and "Small batches (cpu, float32)" in table
    assert pngs[0].stat().st_size > 10_000 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(jsons[0].read_text())
    assert data["schema_version"] == bench.SCHEMA_VERSION
    env = data["environment"]
    assert env["torch"] and env["devices"]["cpu"] and env["date"] and "triton" in env
    assert env["torchdist_fast"] == torchdist_fast.__version__
    impls = set(bench.implementations("cpu"))
    expected = {(op, mode, n, impl) for op, mode in bench.combos() for n in QUICK for impl in impls}
    got = {(r["op"], r["mode"], r["size"], r["impl"]) for r in data["results"]}
    assert got == expected
    for r in data["results"]:
        assert set(r) == RESULT_KEYS
        assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"]
        assert r["gbps"] > 0 and r["ratio_vs_eager"] > 0 and r["ratio_vs_compile"] > 0
        if r["impl"] == "eager":
            assert r["ratio_vs_eager"] == 1.0
        if r["impl"] == "compile":
            assert r["ratio_vs_compile"] == 1.0
        if r["mode"] == "fwd+bwd":
            assert r["saved_bytes_per_element"] is not None
    # what the runner measures about memory: eager keeps eps-sized tensors, the Philox path none
    fwd_bwd = {(r["op"], r["impl"]): r["saved_bytes_per_element"] for r in data["results"]
               if r["mode"] == "fwd+bwd" and r["size"] == 2**16}
    assert fwd_bwd[("rsample_and_log_prob", "eager")] >= 8
    assert fwd_bwd[("rsample_and_log_prob", "torchdist_fast[philox]")] < 0.01


def _quick_data(quick_run):
    _, out, _ = quick_run
    return json.loads(next(out.glob("*.json")).read_text())


def test_compile_column_ran_compiled_code(quick_run):
    """Every compile row carries the evidence that it ran one compiled graph (never eager code):
    no graph break, nothing recompiled while timed, the compiled region seen by the profiler."""
    data = _quick_data(quick_run)
    assert data["refused"] == []
    rows = [r for r in data["results"] if r["impl"] == "compile"]
    assert len(rows) == len(bench.combos()) * len(QUICK)
    for r in rows:
        ev = r["extra"]["compile"]
        assert ev["graph_breaks"] == 0 and ev["recompiles_while_timed"] == 0 and ev["compiled_region_ran"] is True
        # fresh compiler state per op/mode: size 1 (specialized) and one dynamic graph for the rest
        assert 1 <= ev["graphs_total"] <= 2
    # one compile per (op, mode) at its first size, one more at the first size above 1
    first = [r for r in rows if r["size"] == QUICK[0]]
    assert all(r["compile_warmup_s"] > 0 and r["extra"]["compile"]["graphs_compiled_at_this_size"] == 1 for r in first)


def test_latency_rows_on_cpu(quick_run):
    """Small sizes are in the run; each row has the host time per call next to eager's, and our
    rows the cost of the stream-position draw. Shape and sanity only: nothing here is timed."""
    data = _quick_data(quick_run)
    small = [r for r in data["results"] if r["size"] <= bench.LATENCY_MAX_SIZE]
    assert {r["size"] for r in small} == {1, 4096}
    for r in data["results"]:
        assert r["host_s"] > 0 and r["wall_s"] > 0
        assert r["host_s"] == r["median_s"]  # a CPU call is synchronous
        assert r["host_bound"] is None  # a GPU-only flag
        eager_host = next(e["host_s"] for e in data["results"] if e["impl"] == "eager" and
                          (e["op"], e["mode"], e["size"]) == (r["op"], r["mode"], r["size"]))
        assert r["host_ratio_vs_eager"] == pytest.approx(r["host_s"] / eager_host)  # ours / eager: < 1 is less host time
    for r in small:
        if r["impl"].startswith("torchdist_fast"):
            assert 0 < r["extra"]["seed_offset_draw_s"] < 0.1
    summary = bench.summary_markdown(data, "x.json")
    assert "Small batches (cpu, float32)" in summary
    for op, mode in bench.combos():
        assert f"| {op} | {mode} | 2^0 |" in summary and f"| {op} | {mode} | 2^12 |" in summary


@pytest.mark.parametrize("args,message", [
    (["--devices", "tpu"], "invalid choice"),
    (["--sizes", "0"], "size must be positive"),
    (["--sizes", "abc"], "size must be an integer"),
    (["--repeats", "0"], "--repeats must be at least 1"),
])
def test_cli_rejects_bad_flags_in_one_line(args, message):
    res = _run_cli(*args, timeout=300)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_cli_rejects_out_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    res = _run_cli("--out", str(f), timeout=300)
    assert res.returncode == 2 and "not a folder" in res.stderr and "Traceback" not in res.stderr


def test_pytest_benchmark_suite_runs():
    res = subprocess.run(
        [sys.executable, "-m", "pytest", os.path.join(ROOT, "benchmarks"), "-q", "-p", "no:cacheprovider",
         "--benchmark-disable", "-k", "cpu-4096 and rsample_and_log_prob and fwd+bwd"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "3 passed" in res.stdout


def _cuda_like_row(monkeypatch, fn, event_s):
    """A row measured as on CUDA, with the CUDA pieces replaced: events report ``event_s`` per
    call, synchronization is a no-op. What is left is the runner's own wall/host bookkeeping."""
    import torch

    monkeypatch.setattr(bench, "_sync", lambda device: None)
    monkeypatch.setattr(bench, "time_calls", lambda fn, sets, device, n: [event_s] * n)
    inputs = [bench.make_inputs(8, "cpu", torch.float32, "fwd", s) for s in range(bench.ROTATE)]
    return bench._timings(fn, "sample", "fwd", 8, "cuda", torch.float32, inputs, 5, {})


def test_gpu_rows_have_wall_host_and_the_host_bound_flag(monkeypatch):
    slow_host = _cuda_like_row(monkeypatch, lambda *a: time.sleep(0.02), event_s=1e-5)
    # wall and host are measured in separate loops, so either may come out a little ahead
    assert slow_host.median_s == 1e-5 and slow_host.host_s >= 0.015 and slow_host.wall_s >= 0.015
    assert slow_host.host_bound is True
    # a call that returns at once while the (pretend) GPU is busy: wall is set by the device
    monkeypatch.setattr(bench, "_sync", lambda device: time.sleep(0.2))
    monkeypatch.setattr(bench, "time_calls", lambda fn, sets, device, n: [0.04] * n)
    import torch

    inputs = [bench.make_inputs(8, "cpu", torch.float32, "fwd", s) for s in range(bench.ROTATE)]
    fast_host = bench._timings(lambda *a: None, "sample", "fwd", 8, "cuda", torch.float32, inputs, 5, {})
    assert fast_host.host_bound is False and fast_host.wall_s > 5 * fast_host.host_s


def test_gpu_small_batch_summary_columns():
    def row(impl, host, wall, bound, median=1e-5):
        return dict(device="cuda", dtype="float32", op="sample", mode="fwd", size=64, impl=impl, median_s=median,
                    min_s=median, max_s=median, repeats=5, gbps=1.0, compile_warmup_s=None, ratio_vs_eager=1.0,
                    ratio_vs_compile=1.0, pct_copy_bandwidth=None, saved_bytes_per_element=None, ops_per_call=None,
                    ops_per_call_kind="", host_syncs=0, host_s=host, wall_s=wall, host_bound=bound,
                    host_ratio_vs_eager=1.0, extra={})
    data = {"environment": {"devices": {"cuda": "GPU"}, "date": "2026-01-01", "torch": "t", "triton": "x"},
            "results": [row("eager", 4e-5, 4.2e-5, True), row("compile", 2e-5, 2.1e-5, True), row("torchdist_fast", 1e-5, 1.3e-5, False)],
            "refused": []}
    text = bench.summary_markdown(data, "gpu.json")
    assert "Small batches (cuda, float32)" in text and "host-bound (eager / compile / ours)" in text
    assert "| sample | fwd | 2^6 | 40.0 us | 20.0 us | 10.0 us | 0.25 | 0.50 | 42.0 us / 21.0 us / 13.0 us | host / host / GPU |" in text
    assert "HOST" in bench.format_table(data)
    text = bench.summary_text(data)  # the terminal's: our host time and how many times faster (eager / ours)
    assert "cuda, float32, small batches: host time per call of torchdist_fast (the time a call takes to return)" in text
    assert [ln.split() for ln in text.splitlines() if ln.startswith("sample")] == [
        ["sample", "fwd", "10.0", "us", "10.0", "us", "10.0", "us", "1.00", "1.00"],
        ["sample", "fwd", "10.0", "us", "4.00", "2.00"]]


def test_docs_show_the_terminal_summary_of_the_recorded_run():
    recorded = sorted((ROOT / "benchmarks" / "results").glob("results-*.json"))[-1]
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert f"```text\n{bench.summary_text(json.loads(recorded.read_text()))}```" in page


def test_small_batch_sizes_are_at_most_three():
    assert bench.small_batch_sizes([2**k for k in range(0, 25, 2)]) == [2**0, 2**6, 2**12]
    assert bench.small_batch_sizes([2**0, 2**12, 2**16]) == [2**0, 2**12]
    assert bench.small_batch_sizes([2**20]) == []


def test_plot_shows_speedup_panels(tmp_path, monkeypatch):
    """One panel per op and mode, speedup over eager and over compile against size, the device and
    versions in the title (the recorded run; matplotlib draws into a figure we inspect)."""
    import matplotlib.pyplot as plt

    recorded = sorted((ROOT / "benchmarks" / "results").glob("results-*.json"))[-1]
    data = json.loads(recorded.read_text())
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    bench.plot(data, str(tmp_path / "p.png"))
    (fig,) = figures
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == [f"{op} {mode} (cpu, float32)" for op, mode in bench.combos()]
    assert [ln.get_label() for ln in panels[0].get_lines()[:2]] == ["torchdist_fast vs eager", "torchdist_fast vs torch.compile"]
    ours = next(r for r in data["results"] if (r["op"], r["mode"], r["size"], r["impl"]) == ("sample", "fwd", 2**24, "torchdist_fast"))
    assert panels[0].get_lines()[0].get_ydata()[-1] == ours["ratio_vs_eager"]
    title = fig._suptitle.get_text()
    assert data["environment"]["devices"]["cpu"] in title and f"torch {data['environment']['torch']}" in title
    assert (tmp_path / "p.png").stat().st_size > 10_000


@pytest.mark.parametrize("op", bench.FAMILY_OPS)
@pytest.mark.parametrize("mode", bench.MODES)
def test_family_ops_do_the_same_work_in_each_column(op, mode):
    """The opt-in family rows: torch's composition and ours compute the same thing (the same
    numbers for KL and the event log_prob; the same shapes for the tanh-Normal, whose noise is
    each library's own), forward and backward."""
    import torchdist_fast

    loc, scale, value, grad_a, grad_b = bench.make_inputs(64, "cpu", torch.float64, mode, 1)
    outs = {}
    for name, cls in (("torch", torch.distributions.Normal), ("ours", torchdist_fast.Normal)):
        with torchdist_fast.cpu_sampling("philox"):  # ours on its fused paths, as on a GPU
            outs[name] = bench.make_work(cls, op, mode)(loc, scale, value, grad_a, grad_b)
    assert [tuple(o.shape) for o in outs["torch"]] == [tuple(o.shape) for o in outs["ours"]]
    if op != "tanh_rsample_and_log_prob":
        for a, b in zip(outs["torch"], outs["ours"]):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_cli_takes_the_family_ops():
    res = _run_cli("--ops", "nope", timeout=300)
    assert res.returncode == 2 and "tanh_rsample_and_log_prob" in res.stderr


def test_op_modes_pick_rows_and_reject_unknown_ones(tmp_path):
    assert bench.parse_op_mode("log_prob:fwd+bwd") == ("log_prob", "fwd+bwd")
    with pytest.raises(ValueError, match="randn:fwd"):
        bench.parse_op_mode("randn:fwd+bwd")
    res = _run_cli("--devices", "cpu", "--sizes", "64", "--repeats", "2", "--op-modes", "randn:fwd", "log_prob:fwd+bwd",
                   "--out", str(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(next(tmp_path.glob("*.json")).read_text())
    assert {(r["op"], r["mode"]) for r in data["results"]} == {("randn", "fwd"), ("log_prob", "fwd+bwd")}
    assert all(r["repeats"] == 2 for r in data["results"])
    res = _run_cli("--op-modes", "randn:bwd", timeout=300)
    assert res.returncode == 2 and "is not one of" in res.stderr


def test_randn_rows_draw_the_shape_and_dtype_of_the_inputs():
    loc, scale, value, grad_a, grad_b = bench.make_inputs(64, "cpu", torch.bfloat16, "fwd", 1)
    for cls in (torch.distributions.Normal, torchdist_fast.Normal):
        (z,) = bench.make_work(cls, "randn", "fwd")(loc, scale, value, grad_a, grad_b)
        assert z.shape == loc.shape and z.dtype == torch.bfloat16


def test_timed_calls_are_interleaved_across_implementations(monkeypatch):
    import contextlib

    order = []
    monkeypatch.setattr(bench, "time_calls", lambda fn, sets, device, n: [fn(*sets[0]) or 1.0] * n)
    fns = {name: (lambda *a, name=name: order.append(name), contextlib.nullcontext) for name in ("a", "b", "c")}
    times = bench.time_interleaved(fns, [(0,), (1,)], "cpu", 4)
    assert times == {"a": [1.0] * 4, "b": [1.0] * 4, "c": [1.0] * 4}
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b", "a", "b", "c"]
