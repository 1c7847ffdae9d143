"""python -m torchdist_fast.tools.gpu_check: the plans, the CLI, skipping without CUDA, the runner's
records and logs, and the summary built from each step's outputs (fed with recorded or synthetic
outputs here: no GPU needed). The rehearsal of a whole plan is tests/test_gpu_check_rehearsal.py."""
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from torchdist_fast.tools import gpu_check, gpu_plan

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


def _cli(*args, timeout=180):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "torchdist_fast.tools.gpu_check", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_every_plan_and_stage():
    res = _cli("--help")
    assert res.returncode == 0, res.stderr
    for name in (*gpu_check.STAGES, *gpu_check.PLANS):
        assert name in res.stdout
    assert "--dry-run" in res.stdout and "--stage" in res.stdout and "--plan" in res.stdout


def test_the_first_contact_plan_is_the_default_in_the_issues_order():
    steps = gpu_check.plan_steps(gpu_check.PLANS[gpu_check.FIRST_CONTACT])
    assert [s.name for s in steps] == ["env", "build", "silicon", "headline", "graphs"]
    build = steps[1]
    assert build.background and build.provides_env is not None
    assert all("build" in s.waits_for for s in steps if s.name in ("headline", "graphs"))
    assert "build" not in steps[2].waits_for  # silicon runs while the extension builds
    assert gpu_check.plan_budget_s(steps) <= gpu_check.PLAN_DEADLINE_S < gpu_check.PLAN_LIMIT_S == 9 * 60
    assert build.budget_s <= gpu_check.PLAN_DEADLINE_S


@pytest.mark.parametrize("plan", list(gpu_check.PLANS))
def test_every_plan_fits_one_command_of_nine_minutes(plan):
    steps = gpu_check.plan_steps(gpu_check.PLANS[plan])
    assert gpu_check.plan_budget_s(steps) <= gpu_check.PLAN_DEADLINE_S
    assert steps[0].name == "env"


def test_the_later_plans_run_every_remaining_stage():
    later = {n for p in gpu_check.LATER_PLANS for n in gpu_check.PLANS[p]}
    first = set(gpu_check.PLANS[gpu_check.FIRST_CONTACT])
    assert set(gpu_check.STAGES) - {"install"} <= later | first
    assert {"tests", "memcheck", "ncu", "bench-fp32", "bench-bf16", "bench-family", "steps", "vae", "cuda-backend", "host"} <= later


def test_the_build_is_out_of_tree_and_not_after_check_compile():
    """Issue 18, prediction 5: the build must not follow kernels/check_compile.py (-Werror) fatally."""
    ctx = gpu_plan.Context(Path("/r"), Path("/s"))
    steps = gpu_check.steps_by_name()
    build = steps["build"].commands(ctx)
    assert len(build) == 1 and "--inplace" not in build[0].argv
    argv = [str(a) for a in build[0].argv]
    assert argv[argv.index("--build-lib") + 1].startswith("/s/") and argv[argv.index("--build-temp") + 1].startswith("/s/")
    assert steps["build"].provides_env(ctx) == {"TORCHDIST_FAST_CUDA_BACKEND_DIR": "/s/cuda-extension/lib"}
    for step in steps.values():
        cmds = step.commands(ctx)
        for cmd in cmds:
            if "kernels/check_compile.py" in cmd.argv:
                assert not cmd.fatal, step.name
            assert "--inplace" not in cmd.argv, step.name


def test_dry_run_prints_both_plans_with_estimates_and_runs_nothing(tmp_path):
    out = tmp_path / "plan"
    res = _cli("--dry-run", "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    assert "1. the first-contact plan (the default)" in text and "2. the later plans" in text
    for plan in gpu_check.LATER_PLANS:
        assert f"[{plan}]" in text and f"--plan {plan} --out DIR" in text
    for name in gpu_check.STAGES:
        if name != "install":
            assert f"\n  {name} " in text, name
    assert text.count("estimate:") >= 20 and "an estimate, not a measurement" in text
    # the commands the issue asks for
    assert "-m pytest -m 'not slow'" in text and "env -u TRITON_INTERPRET" in text
    assert "--kernel-cases" in text and "-n 8 --dist loadfile" in text
    assert "--op-modes randn:fwd rsample:fwd log_prob:fwd+bwd rsample_and_log_prob:fwd+bwd" in text
    assert "'2^8' '2^12' '2^20' '2^24' '2^28'" in text and "--dtypes float32 bfloat16" in text
    assert "tests/test_cuda_graphs.py" in text and "test_inductor_calls_the_kernels_from_its_generated_code" in text
    assert "compute-sanitizer --tool memcheck" in text and "--workload ops" in text
    assert "--dtypes float32 --sizes '2^0'" in text and "--dtypes bfloat16" in text and "'2^28'" in text
    assert "ncu --profile-from-start off" in text and "dram__throughput" in text
    assert "setup_cuda.py build_ext --build-lib" in text and "tests/test_cuda_backend.py" in text
    assert "kernels/check_compile.py   (not fatal)" in text
    assert "examples.vae --device cuda --batch-size 65536" in text and "--epochs 200" in text
    if NO_CUDA:
        assert "(here it would be skipped: no CUDA)" in text
    assert not out.exists()


def test_dry_run_of_stages_adds_the_build_they_use():
    res = _cli("--dry-run", "--stage", "graphs")
    assert res.returncode == 0, res.stderr
    assert "\n  build " in res.stdout and "\n  graphs " in res.stdout and "\n  silicon " not in res.stdout
    res = _cli("--dry-run", "--stage", "install")
    assert "pip install --no-deps --no-build-isolation --no-index -e ." in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--stage", "bogus"], "invalid choice"),
    (["--plan", "bogus"], "invalid choice"),
    (["--plan", "suite", "--stage", "env"], "exclude each other"),
    (["--stage", "summary"], "needs --results"),
    (["--deadline", "-1"], "--deadline must be positive"),
])
def test_bad_flags_fail_in_one_line(args, message):
    res = _cli(*args)
    assert res.returncode == 2 and message in res.stderr and "Traceback" not in res.stderr


def test_out_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    res = _cli("--dry-run", "--out", str(f))
    assert res.returncode == 2 and "not a folder" in res.stderr


@pytest.mark.skipif(not NO_CUDA, reason="checks the behaviour without CUDA")
def test_cuda_steps_are_skipped_without_cuda(tmp_path):
    out, results = tmp_path / "out", tmp_path / "results"
    res = _cli("--out", str(out), "--results", str(results))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[silicon] skipped: no CUDA" in res.stdout
    assert sorted(p.name for p in out.iterdir()) == ["first-contact.tar.gz", "summary.md"]  # what comes back: 2 files
    record = json.loads((results / "stages.json").read_text())
    assert record["env"]["status"] == "ok"
    for name in ("build", "silicon", "headline", "graphs"):
        assert record[name]["status"] == "skipped" and record[name]["reason"] == "skipped: no CUDA"
        assert record[name]["commands"] and record[name]["estimate_s"] > 0
    env = json.loads((results / "env" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] is None and "copy" not in env
    summary = (out / "summary.md").read_text()
    assert "| silicon | skipped | 0.0 | 120 |" in summary and f"torch {torch.__version__}" in summary
    with tarfile.open(out / "first-contact.tar.gz") as tar:
        names = tar.getnames()
    assert "first-contact/summary.md" in names and "first-contact/logs/env.log" in names
    assert not (ROOT / "build").exists() or not any((ROOT / "build").glob("**/_cuda_backend*"))


def _step(argv_list, name="x", budget=60, **kw):
    return gpu_plan.Step(name, "test step", budget, lambda ctx: [gpu_plan.Command(a) if isinstance(a, list) else a
                                                                 for a in argv_list], needs_cuda=False, **kw)


def _run(tmp_path, steps, **kw):
    return gpu_plan.PlanRun("p", steps, tmp_path / "r", tmp_path / "s", tmp_path / "o", cuda=False, **kw)


def test_step_failure_stops_its_commands(tmp_path):
    marker = tmp_path / "second-ran"
    run = _run(tmp_path, [])
    rec = run.run_step(_step([[sys.executable, "-c", "import sys; print('hello'); sys.exit(3)"],
                              [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]]))
    assert rec["status"] == "failed" and "exit status 3" in rec["reason"]
    assert not marker.exists()
    assert "hello" in (tmp_path / "r" / "logs" / "x.log").read_text()


def test_a_command_that_is_not_fatal_lets_the_step_go_on(tmp_path):
    marker = tmp_path / "second-ran"
    run = _run(tmp_path, [])
    rec = run.run_step(_step([gpu_plan.Command([sys.executable, "-c", "raise SystemExit(4)"], fatal=False),
                              [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]]))
    assert rec["status"] == "ok" and marker.exists() and "not fatal: exit status 4" in rec["reason"]


def test_step_timeout_stops_the_whole_process_group(tmp_path):
    pid_file = tmp_path / "child.pid"
    # the command starts a grandchild that would outlive a plain kill of the child
    code = ("import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
            f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    run = _run(tmp_path, [])
    rec = run.run_step(_step([[sys.executable, "-c", code]], budget=2))
    assert rec["status"] == "timeout" and "stopped at its budget (2 s" in rec["reason"] and rec["seconds"] < 15
    pid = int(pid_file.read_text())
    import time

    for _ in range(50):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("the grandchild survived the step's timeout")


def test_missing_tool_skips(tmp_path):
    st = gpu_plan.Step("y", "", 60, lambda ctx: [gpu_plan.Command(["no-such-tool-xyz"])], needs_cuda=False,
                       tools=("no-such-tool-xyz",))
    rec = _run(tmp_path, []).run_step(st)
    assert rec["status"] == "skipped" and "no-such-tool-xyz not found" in rec["reason"]


def test_long_logs_are_cut(tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(b"head\n" + b"x" * 5000 + b"\ntail-line\n")
    gpu_plan.trim_log(log, limit=1000)
    data = log.read_bytes()
    assert len(data) < 1100 and data.startswith(b"head") and data.endswith(b"tail-line\n") and b"bytes cut" in data


def test_the_archive_leaves_the_largest_files_out_past_its_limit(tmp_path):
    results = tmp_path / "r"
    (results / "big").mkdir(parents=True)
    (results / "summary.md").write_text("# s\n")
    (results / "stages.json").write_text("{}")
    (results / "big" / "a.bin").write_bytes(os.urandom(60_000))
    (results / "big" / "b.bin").write_bytes(os.urandom(30_000))
    (results / "small.txt").write_text("x" * 100)
    packed = gpu_plan.pack(results, tmp_path / "o" / "p.tar.gz", "p", limit=50_000)
    assert packed["left_out"] == ["big/a.bin"] and packed["bytes"] <= 50_000
    with tarfile.open(tmp_path / "o" / "p.tar.gz") as tar:
        names = tar.getnames()
        manifest = tar.extractfile("p/MANIFEST.txt").read().decode()
    assert "p/big/b.bin" in names and "p/big/a.bin" not in names and "big/a.bin" in manifest
    assert not (tmp_path / "o" / "p.tar.gz.partial").exists()


NCU_CSV = '''==PROF== Connected to process 1234
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum"
"","","","","","","","","","","","byte","byte","%","nsecond"
"0","1234","python","h","copy_kernel","1","7","(256, 1, 1)","(1, 1, 1)","0","9.0","67108864","67108864","91.5","44000"
"1","1234","python","h","_normal_rsample_fwd_kernel","1","7","(128, 1, 1)","(1, 1, 1)","0","9.0","134217728","134217728","88.0","90000"
==PROF== Disconnected from process 1234
'''


def _fake_outputs(results: Path):
    (results / "bench").mkdir(parents=True)
    recorded = sorted((ROOT / "benchmarks" / "results").glob("results-*.json"))[-1]
    shutil.copy(recorded, results / "bench" / recorded.name)
    (results / "ncu").mkdir()
    (results / "ncu" / "ncu.csv").write_text(NCU_CSV)
    (results / "tests").mkdir()
    (results / "tests" / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="10" failures="1" errors="0" skipped="2">'
        '<testcase classname="tests.test_x" name="test_bad"><failure message="boom"/></testcase>'
        '</testsuite></testsuites>')
    (results / "memcheck").mkdir()
    (results / "memcheck" / "memcheck.log").write_text("========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n")
    (results / "vae").mkdir()
    (results / "vae" / "vae.json").write_text(json.dumps({
        "config": {"batch_size": 65536, "epochs": 200, "dataset_size": 65536}, "device_name": "GPU",
        "runs": [{"impl": "torch", "samples_per_s": 1e6, "saved_bytes_per_step": 2**20, "peak_bytes": 2**30, "eval_elbo": [1.0, 2.5]}]}))
    stages = {n: {"status": "ok", "reason": None, "seconds": 1.0, "budget_s": 10, "commands": []}
              for n in ("tests", "memcheck", "bench-fp32", "ncu", "vae")}
    (results / "stages.json").write_text(json.dumps(stages))


def test_parse_ncu_csv(tmp_path):
    p = tmp_path / "ncu.csv"
    p.write_text(NCU_CSV)
    rows = gpu_check.parse_ncu_csv(p)
    assert [r["kernel"] for r in rows] == ["copy_kernel", "_normal_rsample_fwd_kernel"]
    assert rows[1]["gbps"] == pytest.approx(2 * 134217728 / 90000)  # bytes per ns = GB/s
    assert rows[1]["pct_peak"] == 88.0


def test_summary_from_stage_outputs(tmp_path):
    _fake_outputs(tmp_path)
    text = gpu_check.write_summary(tmp_path).read_text()
    assert "7 passed, 1 failed, 0 errors, 2 skipped" in text and "`tests.test_x::test_bad`" in text
    assert "ERROR SUMMARY: 0 errors" in text
    assert "**Headline** (float32, N = 2^24): rsample_and_log_prob fwd+bwd" in text and "torch.compile" in text
    assert "| op | mode | eager | torch.compile | torchdist_fast | x eager | x compile |" in text
    assert "Small batches" in text
    assert "copy kernel: 3050 GB/s" in text
    assert "`_normal_rsample_fwd_kernel`" in text and "| 88.0 | 98% |" in text  # 2982 / 3050 GB/s of the copy kernel
    assert "| torch | 1,000,000 | 1.00 MiB | 1024.0 MiB | 2.500 |" in text
    assert "| vae | ok | 1.0 | 10 | - |" in text and "cuda-backend" not in text  # only the steps that ran, without a plan


def _headline_results(tmp_path) -> Path:
    """A headline results JSON as bench writes it on CUDA (synthetic numbers)."""
    from torchdist_fast.tools import bench

    rows = []
    for dtype in ("float32", "bfloat16"):
        for op, mode in [bench.parse_op_mode(m) for m in gpu_check.HEADLINE_OP_MODES]:
            for k in (8, 12, 20, 24, 28):
                for impl, t in (("eager", 10.0), ("compile", 4.0), ("torchdist_fast", 2.0), ("torchdist_fast[cuda]", 2.5)):
                    rows.append(dict(device="cuda", dtype=dtype, op=op, mode=mode, size=2**k, impl=impl, median_s=t * 1e-3,
                                     min_s=t * 1e-3, max_s=t * 1e-3, repeats=50, gbps=1.0, ratio_vs_eager=10.0 / t,
                                     ratio_vs_compile=4.0 / t, pct_copy_bandwidth=91.0, host_s=t * 1e-5, wall_s=t * 1e-3))
    folder = tmp_path / "headline"
    folder.mkdir(parents=True)
    path = folder / "results-cuda-x.json"
    path.write_text(json.dumps({"results": rows, "refused": [], "copy_bandwidth_gbps": {"cuda": 3000.0},
                                "environment": {"devices": {"cuda": "GPU"}, "date": "2026", "torch": "t", "triton": "t"}}))
    return path


def test_headline_section(tmp_path):
    _headline_results(tmp_path)
    (tmp_path / "stages.json").write_text(json.dumps({
        "_plan": {"name": "first-contact", "steps": ["env", "headline"], "seconds": 100.0},
        "headline": {"status": "ok", "reason": None, "seconds": 90.0, "budget_s": 240, "estimate_s": 175}}))
    text = gpu_check.write_summary(tmp_path).read_text()
    assert "# GPU check: first-contact" in text and "| headline | ok | 90.0 | 240 | ~175 |" in text and "| env | not run |" in text
    assert "copy kernel: 3000 GB/s" in text and "**bfloat16**" in text
    assert "| rsample_and_log_prob | fwd+bwd | 2^28 | 10.000 ms | 4.000 ms | 2.000 ms | 2.500 ms | 5.00 | 2.00 | 91% |" in text
    assert "| randn | fwd | 2^8 | 100.0 us | 40.0 us | 20.0 us | 0.20 |" in text  # host time per call
    assert "| randn | fwd | 2^12 |" in text


def test_summary_shows_the_log_of_a_failed_step(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "silicon.log").write_text("\n".join(f"line {i}" for i in range(50)) + "\nE   AssertionError: boom\n")
    (tmp_path / "stages.json").write_text(json.dumps({
        "silicon": {"status": "timeout", "reason": "stopped at its budget (120 s) in: pytest", "seconds": 120.0, "budget_s": 120}}))
    text = gpu_check.write_summary(tmp_path).read_text()
    assert "no junit.xml (the step stopped before pytest finished" in text
    assert "E   AssertionError: boom" in text and "line 10\n" not in text


def test_ops_workload_runs_every_op_on_cpu():
    """The memcheck workload itself (on CPU, with the reference kernels): every op in 4 dtypes."""
    assert gpu_check.workload_ops("cpu") == 4 * (6 + 5 * 5 + 1)


def test_ncu_workload_runs_on_cpu():
    """Under the interpreter (conftest), with the copy kernel as its reference."""
    gpu_check.workload_ncu("cpu", n=64)


def test_summary_of_the_host_and_steps_stages(tmp_path):
    from torchdist_fast.tools import host_overhead

    (tmp_path / "host").mkdir()
    (tmp_path / "steps").mkdir()
    rows = {op: {"torch eager": 2e-5, "ours, cuda generator": 1e-5} for op in host_overhead.TARGETS}
    (tmp_path / "host" / "host_overhead.json").write_text(json.dumps({"device": "cuda", "shape": [256, 8], "rows": rows}))
    steps = {"sac | eager | torch": 500.0, "sac | eager | torchdist_fast": 750.0,
             "sac | reduce-overhead | torch": 900.0, "sac | reduce-overhead | torchdist_fast": "failed: RuntimeError: x"}
    (tmp_path / "steps" / "step_rate.json").write_text(json.dumps({"device": "cuda", "steps": 200, "rows": steps}))
    stages = {n: {"status": "ok", "reason": None, "seconds": 1.0, "commands": []} for n in ("host", "steps")}
    (tmp_path / "stages.json").write_text(json.dumps(stages))
    text = gpu_check.write_summary(tmp_path).read_text()
    assert "## Host time per call" in text and "| rsample | ours, cuda generator | 10.0 us | 0.50 | <= 1.00 |" in text
    assert "## Training steps per second" in text and "| sac | eager | 500/s | 750/s | 1.50 |" in text
    assert "| sac | reduce-overhead | 900/s | failed: RuntimeError: x | - |" in text
    assert "| host | ok |" in text and "| steps | ok |" in text


def test_summary_stage_rewrites_a_results_folder(tmp_path):
    _fake_outputs(tmp_path / "r")
    res = _cli("--stage", "summary", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "o"))
    assert res.returncode == 0, res.stderr
    assert "ERROR SUMMARY" in (tmp_path / "o" / "summary.md").read_text()


def test_the_copy_kernel_copies_and_reports_its_rate():
    """The reference of every "% of copy": a kernel (ncu lists it), under the interpreter here."""
    from torchdist_fast.tools import device_copy

    src = torch.randn(5000)
    dst = torch.empty_like(src)
    device_copy.copy(src, dst)
    assert torch.equal(src, dst)
    with pytest.raises(ValueError):
        device_copy.copy(src, torch.empty(5000, dtype=torch.float64))
    rate = device_copy.bandwidth("cpu", nbytes=4 * 4096, repeats=2)
    assert rate["kernel_gbps"] > 0 and rate["memcpy_gbps"] > 0 and rate["bytes"] == 4 * 4096
    assert "copy" in device_copy.copy_kernel.fn.__name__  # how the ncu summary finds the reference


def test_a_step_that_cannot_say_its_commands_fails_alone(tmp_path):
    def broken(ctx):
        raise KeyError("no such file")

    marker = tmp_path / "next-ran"
    steps = [gpu_plan.Step("broken", "", 5, broken, needs_cuda=False),
             _step([[sys.executable, "-c", f"open({str(marker)!r}, 'w')"]], name="next")]
    records = gpu_plan.step_records(_run(tmp_path, steps).run())
    assert records["broken"]["status"] == "failed" and "KeyError" in records["broken"]["reason"]
    assert records["next"]["status"] == "ok" and marker.exists()
