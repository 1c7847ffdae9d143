"""A rehearsal of the first-contact plan on CPU (issue 18): gpu_check's own plan (its steps in
their order, the background build, the waits for it, the environment it provides, the summary
and the archive) with every command replaced by a stand-in of known duration and the budgets
scaled down to seconds. One stand-in overruns its budget. Each stand-in reports what the
archive held when it started: the results of the steps before it must already be there.

Run as a script (``python tests/test_gpu_check_rehearsal.py OUT``) it rehearses the plan with
a last step that never ends, for the test that kills the whole run."""
import dataclasses
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from torchdist_fast.tools import gpu_check, gpu_plan

PLAN = gpu_check.FIRST_CONTACT
# step: (stand-in seconds, budget seconds): headline overruns its budget
REHEARSAL = {"env": (0.3, 3), "build": (1.5, 5), "silicon": (0.3, 3), "headline": (30, 1.5), "graphs": (0.3, 3)}


def stand_in(name: str, seconds: float, archive: Path) -> list:
    """A command that prints what the archive holds now (names, the steps' statuses), the
    extension folder it was given, writes a junit.xml for the pytest steps, then sleeps."""
    code = f"""
import json, os, sys, tarfile, time
archive = {str(archive)!r}
if os.path.exists(archive):
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        stages = json.load(tar.extractfile({PLAN + '/stages.json'!r}))
    print("archive:", " ".join(sorted(names)))
    print("statuses:", json.dumps({{k: v["status"] for k, v in stages.items() if not k.startswith("_")}}))
print("extension:", os.environ.get("TORCHDIST_FAST_CUDA_BACKEND_DIR"))
if {name!r} in ("silicon", "graphs"):
    os.makedirs(sys.argv[1], exist_ok=True)
    open(os.path.join(sys.argv[1], "junit.xml"), "w").write(
        '<testsuites><testsuite name="p" tests="3" failures="0" errors="0" skipped="1"/></testsuites>')
    launched = {{"t.py::a": {{"k1": "kern|*fp32|", "k2": "kern|*bf16|"}}, "t.py::b": {{"k1": "kern|*fp32|"}}}}
    open(os.path.join(sys.argv[1], "variants.json"), "w").write(json.dumps({{"launches": launched}}))
sys.stdout.flush()
time.sleep({seconds})
"""
    return [gpu_plan.Command([sys.executable, "-c", code, "RESULTS"])]


def rehearsal_steps(archive: Path, plan=REHEARSAL) -> list:
    steps = []
    for step in gpu_check.plan_steps(gpu_check.PLANS[PLAN]):
        seconds, budget = plan[step.name]

        def commands(ctx, name=step.name, seconds=seconds):
            cmds = stand_in(name, seconds, archive)
            cmds[0].argv[-1] = str(ctx.results / name)
            return cmds

        steps.append(dataclasses.replace(step, commands=commands, budget_s=budget, needs_cuda=False, tools=()))
    return steps


def rehearse(tmp: Path, plan=REHEARSAL, deadline_s=None) -> tuple:
    out = tmp / "out"
    run = gpu_plan.PlanRun(PLAN, rehearsal_steps(out / f"{PLAN}.tar.gz", plan), tmp / "results", tmp / "scratch", out,
                           cuda=False, deadline_s=deadline_s, summary=gpu_check.write_summary,
                           estimates={name: 1.0 for name in plan})
    t0 = time.monotonic()
    records = run.run()
    return run, records, time.monotonic() - t0


def _log(tmp: Path, step: str) -> str:
    return (tmp / "results" / "logs" / f"{step}.log").read_text()


def _statuses_seen(tmp: Path, step: str) -> dict:
    line = next(ln for ln in _log(tmp, step).splitlines() if ln.startswith("statuses:"))
    return json.loads(line.split(":", 1)[1])


def test_rehearsal_of_the_first_contact_plan(tmp_path):
    run, records, wall = rehearse(tmp_path)
    steps = gpu_plan.step_records(records)
    # budgets are enforced: the overrun is stopped near its budget and recorded; later steps still run
    assert steps["headline"]["status"] == "timeout" and "stopped at its budget (1.5 s" in steps["headline"]["reason"]
    assert steps["headline"]["seconds"] < REHEARSAL["headline"][1] + gpu_plan.KILL_GRACE_S
    for name in ("env", "build", "silicon", "graphs"):
        assert steps[name]["status"] == "ok", (name, steps[name])
    assert wall < 20
    # the background build ran beside silicon; the steps that use it waited, and got its folder
    assert steps["build"]["background"] and steps["build"]["provides"]["TORCHDIST_FAST_CUDA_BACKEND_DIR"].endswith(
        "scratch/cuda-extension/lib")
    assert "extension: None" in _log(tmp_path, "silicon")
    for name in ("headline", "graphs"):
        assert f"extension: {tmp_path / 'scratch' / 'cuda-extension' / 'lib'}" in _log(tmp_path, name)
    # partial results existed after each step: what each stand-in found in the archive when it started
    assert f"{PLAN}/logs/env.log" in _log(tmp_path, "silicon") and _statuses_seen(tmp_path, "silicon")["env"] == "ok"
    seen = _statuses_seen(tmp_path, "graphs")
    assert seen["headline"] == "timeout" and seen["silicon"] == "ok" and seen["graphs"] == "running"
    assert f"{PLAN}/silicon/junit.xml" in _log(tmp_path, "graphs") and f"{PLAN}/logs/headline.log" in _log(tmp_path, "graphs")
    # one archive (and summary.md) come back, within the limits of the GPU machine's return
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [f"{PLAN}.tar.gz", "summary.md"]
    archive = out / f"{PLAN}.tar.gz"
    assert archive.stat().st_size <= gpu_plan.MAX_ARCHIVE_BYTES == 16 * 2**20
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
        summary = tar.extractfile(f"{PLAN}/summary.md").read().decode()
    assert {f"{PLAN}/summary.md", f"{PLAN}/stages.json", f"{PLAN}/MANIFEST.txt"} <= names
    assert {f"{PLAN}/logs/{name}.log" for name in REHEARSAL} <= names
    assert summary == (out / "summary.md").read_text()
    for name, status in (("env", "ok"), ("build", "ok"), ("silicon", "ok"), ("headline", "timeout"), ("graphs", "ok")):
        assert f"| {name} | {status} |" in summary
    assert "2 passed, 0 failed, 0 errors, 1 skipped" in summary  # the silicon step's junit.xml
    assert "Triton kernel variants launched: 2 (counted on CPU for the estimate: " in summary
    assert "headline: timeout; the end of `logs/headline.log`" in summary


def test_the_plan_deadline_stops_the_step_that_would_pass_it(tmp_path):
    plan = {**REHEARSAL, "headline": (0.3, 3), "graphs": (30, 20)}
    _, records, wall = rehearse(tmp_path, plan, deadline_s=4)
    steps = gpu_plan.step_records(records)
    assert steps["graphs"]["status"] == "timeout" and "the plan's deadline" in steps["graphs"]["reason"]
    assert wall < 4 + gpu_plan.KILL_GRACE_S + 3


def test_a_run_killed_mid_step_leaves_the_archive_of_the_steps_before(tmp_path):
    """The GPU machine stops a command at its limit without warning (SIGKILL): the archive written
    after the last finished step is there, whole."""
    proc = subprocess.Popen([sys.executable, __file__, str(tmp_path)], cwd=Path(__file__).resolve().parents[1],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    archive = tmp_path / "out" / f"{PLAN}.tar.gz"
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            log = tmp_path / "results" / "logs" / "graphs.log"
            if log.exists() and "extension:" in log.read_text():
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the rehearsal never reached its last step")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with tarfile.open(archive) as tar:
        stages = json.load(tar.extractfile(f"{PLAN}/stages.json"))
        names = tar.getnames()
    assert stages["headline"]["status"] == "ok" and stages["graphs"]["status"] == "running"
    assert f"{PLAN}/logs/headline.log" in names and f"{PLAN}/summary.md" in names


if __name__ == "__main__":  # the run the kill test stops: the last step never ends
    rehearse(Path(sys.argv[1]), {**REHEARSAL, "headline": (0.3, 3), "graphs": (600, 600)})
