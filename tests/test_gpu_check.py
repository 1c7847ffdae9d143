"""python -m torchdist_fast.gpu_check: the plan, the CLI, skipping without CUDA, stage records,
log trimming, and the summary built from each stage's outputs (fed with recorded or synthetic
outputs here: no GPU needed)."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchdist_fast import gpu_check

ROOT = Path(__file__).resolve().parents[1]
NO_CUDA = not torch.cuda.is_available()


def _cli(*args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", "torchdist_fast.gpu_check", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def test_help_lists_every_stage():
    res = _cli("--help")
    assert res.returncode == 0, res.stderr
    for name in gpu_check.STAGES:
        assert name in res.stdout
    assert "--dry-run" in res.stdout and "--stage" in res.stdout


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    out = tmp_path / "plan"
    res = _cli("--dry-run", "--out", str(out))
    assert res.returncode == 0, res.stderr
    text = res.stdout
    for name in gpu_check.DEFAULT_STAGES:
        assert f"[{name}]" in text
    assert "[install]" not in text  # opt-in
    # the commands the issue asks for
    assert "-m pytest -m 'not slow'" in text and "env -u TRITON_INTERPRET" in text
    assert "compute-sanitizer --tool memcheck" in text and "--workload ops" in text
    assert "--dtypes float32" in text and "--dtypes bfloat16" in text and "'2^0'" in text and "'2^28'" in text
    assert "ncu --profile-from-start off" in text and "dram__throughput" in text
    assert "setup_cuda.py build_ext --inplace" in text and "tests/test_cuda_backend.py" in text
    assert "examples.vae --device cuda --batch-size 65536" in text and "--epochs 200" in text
    if NO_CUDA:
        assert text.count("would be skipped: no CUDA") == sum(gpu_check._stages()[n].needs_cuda for n in gpu_check.DEFAULT_STAGES)
    assert not out.exists()


def test_dry_run_of_one_stage_and_install_is_offline():
    res = _cli("--dry-run", "--stage", "install")
    assert res.returncode == 0
    assert "pip install --no-deps --no-build-isolation --no-index -e ." in res.stdout
    assert "[tests]" not in res.stdout


@pytest.mark.parametrize("args,message", [
    (["--stage", "bogus"], "invalid choice"),
    (["--stage-timeout", "0"], "--stage-timeout must be positive"),
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
def test_cuda_stages_are_skipped_without_cuda(tmp_path):
    out = tmp_path / "run"
    res = _cli("--stage", "env", "--stage", "tests", "--stage", "memcheck", "--stage", "bench-fp32", "--out", str(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert "[tests] skipped: no CUDA" in res.stdout
    record = json.loads((out / "stages.json").read_text())
    assert record["env"]["status"] == "ok"
    for name in ("tests", "memcheck", "bench-fp32"):
        assert record[name]["status"] == "skipped" and record[name]["reason"] == "skipped: no CUDA"
        assert record[name]["commands"]
    env = json.loads((out / "env" / "env.json").read_text())
    assert env["torch"] == torch.__version__ and env["device"] is None
    summary = (out / "summary.md").read_text()
    assert "| tests | skipped | 0.0 | skipped: no CUDA |" in summary
    assert "| vae | not run |" in summary
    assert f"torch {torch.__version__}" in summary
    assert gpu_check.folder_bytes(out) < gpu_check.MAX_FOLDER_BYTES


def _stage(argv_list):
    return gpu_check.Stage("x", "test stage", False, (), lambda out: [gpu_check.Command(a) for a in argv_list])


def test_stage_failure_stops_its_commands(tmp_path):
    marker = tmp_path / "second-ran"
    rec = gpu_check.run_stage(_stage([[sys.executable, "-c", "import sys; print('hello'); sys.exit(3)"],
                                      [sys.executable, "-c", f"open({str(marker)!r}, 'w')"]]), tmp_path, 60, cuda=False)
    assert rec["status"] == "failed" and "exit status 3" in rec["reason"]
    assert not marker.exists()
    assert "hello" in (tmp_path / "logs" / "x.log").read_text()


def test_stage_timeout(tmp_path):
    rec = gpu_check.run_stage(_stage([[sys.executable, "-c", "import time; time.sleep(60)"]]), tmp_path, 1, cuda=False)
    assert rec["status"] == "timeout" and "stopped after 1 s" in rec["reason"]


def test_missing_tool_skips(tmp_path):
    st = gpu_check.Stage("y", "", False, ("no-such-tool-xyz",), lambda out: [gpu_check.Command(["no-such-tool-xyz"])])
    rec = gpu_check.run_stage(st, tmp_path, 60, cuda=True)
    assert rec["status"] == "skipped" and "no-such-tool-xyz not found" in rec["reason"]


def test_long_logs_are_cut(tmp_path):
    log = tmp_path / "big.log"
    log.write_bytes(b"head\n" + b"x" * 5000 + b"\ntail-line\n")
    gpu_check._trim_log(log, limit=1000)
    data = log.read_bytes()
    assert len(data) < 1100 and data.startswith(b"head") and data.endswith(b"tail-line\n") and b"bytes cut" in data


NCU_CSV = '''==PROF== Connected to process 1234
"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","dram__bytes_read.sum","dram__bytes_write.sum","dram__throughput.avg.pct_of_peak_sustained_elapsed","gpu__time_duration.sum"
"","","","","","","","","","","","byte","byte","%","nsecond"
"0","1234","python","h","void at::native::direct_copy_kernel_cuda(float)","1","7","(128, 1, 1)","(1, 1, 1)","0","9.0","67108864","67108864","91.5","44000"
"1","1234","python","h","_normal_rsample_fwd_kernel","1","7","(128, 1, 1)","(1, 1, 1)","0","9.0","134217728","134217728","88.0","90000"
==PROF== Disconnected from process 1234
'''


def _fake_outputs(out: Path):
    (out / "bench").mkdir(parents=True)
    results = sorted((ROOT / "benchmarks" / "results").glob("results-*.json"))[-1]
    shutil.copy(results, out / "bench" / results.name)
    (out / "ncu").mkdir()
    (out / "ncu" / "ncu.csv").write_text(NCU_CSV)
    (out / "tests").mkdir()
    (out / "tests" / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="10" failures="1" errors="0" skipped="2"/></testsuites>')
    (out / "memcheck").mkdir()
    (out / "memcheck" / "memcheck.log").write_text("========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n")
    (out / "vae").mkdir()
    (out / "vae" / "vae.json").write_text(json.dumps({
        "config": {"batch_size": 65536, "epochs": 200, "dataset_size": 65536}, "device_name": "GPU",
        "runs": [{"impl": "torch", "samples_per_s": 1e6, "saved_bytes_per_step": 2**20, "peak_bytes": 2**30, "eval_elbo": [1.0, 2.5]}]}))
    stages = {n: {"status": "ok", "reason": None, "seconds": 1.0, "commands": []}
              for n in ("tests", "memcheck", "bench-fp32", "ncu", "vae")}
    (out / "stages.json").write_text(json.dumps(stages))


def test_parse_ncu_csv(tmp_path):
    p = tmp_path / "ncu.csv"
    p.write_text(NCU_CSV)
    rows = gpu_check.parse_ncu_csv(p)
    assert [r["kernel"] for r in rows] == ["void at::native::direct_copy_kernel_cuda(float)", "_normal_rsample_fwd_kernel"]
    assert rows[1]["gbps"] == pytest.approx(2 * 134217728 / 90000)  # bytes per ns = GB/s
    assert rows[1]["pct_peak"] == 88.0


def test_summary_from_stage_outputs(tmp_path):
    _fake_outputs(tmp_path)
    text = gpu_check.write_summary(tmp_path).read_text()
    assert "7 passed, 1 failed, 0 errors, 2 skipped" in text
    assert "ERROR SUMMARY: 0 errors" in text
    assert "**Headline** (float32, N = 2^24): rsample_and_log_prob fwd+bwd" in text and "torch.compile" in text
    assert "| op | mode | eager | torch.compile | torchdist_fast | x eager | x compile |" in text
    assert "Small batches" in text
    assert "`_normal_rsample_fwd_kernel`" in text and "| 88.0 | 98% |" in text  # 2982 / 3050 GB/s of the copy
    assert "| torch | 1,000,000 | 1.00 MiB | 1024.0 MiB | 2.500 |" in text
    assert "| cuda-backend | not run |" in text


def test_ops_workload_runs_every_op_on_cpu():
    """The memcheck workload itself (on CPU, with the reference kernels): every op in 4 dtypes."""
    assert gpu_check.workload_ops("cpu") == 4 * (6 + 5 * 5 + 1)


def test_ncu_workload_runs_on_cpu():
    gpu_check.workload_ncu("cpu", n=64)


def test_summary_of_the_graphs_and_steps_stages(tmp_path):
    from torchdist_fast import host_overhead

    (tmp_path / "graphs").mkdir()
    (tmp_path / "steps").mkdir()
    (tmp_path / "graphs" / "junit.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="9" failures="0" errors="0" skipped="0"/></testsuites>')
    rows = {op: {"torch eager": 2e-5, "ours, cuda generator": 1e-5} for op in host_overhead.TARGETS}
    (tmp_path / "graphs" / "host_overhead.json").write_text(json.dumps({"device": "cuda", "shape": [256, 8], "rows": rows}))
    steps = {"sac | eager | torch": 500.0, "sac | eager | torchdist_fast": 750.0,
             "sac | reduce-overhead | torch": 900.0, "sac | reduce-overhead | torchdist_fast": "failed: RuntimeError: x"}
    (tmp_path / "steps" / "step_rate.json").write_text(json.dumps({"device": "cuda", "steps": 200, "rows": steps}))
    stages = {n: {"status": "ok", "reason": None, "seconds": 1.0, "commands": []} for n in ("graphs", "steps")}
    (tmp_path / "stages.json").write_text(json.dumps(stages))
    text = gpu_check.write_summary(tmp_path).read_text()
    assert "## CUDA graphs and per-call cost" in text and "9 passed, 0 failed, 0 errors, 0 skipped" in text
    assert "| rsample | ours, cuda generator | 10.0 us | 0.50 | <= 1.00 |" in text
    assert "## Training steps per second" in text and "| sac | eager | 500/s | 750/s | 1.50 |" in text
    assert "| sac | reduce-overhead | 900/s | failed: RuntimeError: x | - |" in text
    assert "| graphs | ok |" in text and "| steps | ok |" in text
