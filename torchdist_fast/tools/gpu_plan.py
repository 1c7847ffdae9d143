"""Runs a plan of timed steps for a short GPU window, and keeps whatever they produced.

A plan is an ordered list of ``Step``s, each a list of ``Command``s (subprocesses) with a budget
in seconds. The runner (``run_plan``):

* stops a step at its budget (or at the plan's deadline, whichever comes first): its process
  group is terminated, the step is recorded as ``timeout`` and the next step starts;
* starts a ``background`` step and goes on with the next ones; a step that ``waits_for`` it
  waits (inside its own budget) and, when it finished ``ok``, runs with the environment the
  background step provides (``provides_env``);
* streams every command's output into ``logs/<step>.log`` inside the results folder;
* after every step, and every ``CHECKPOINT_EVERY_S`` seconds while one runs, rewrites
  ``stages.json`` and ``summary.md`` and re-packs the results folder into one archive (written
  atomically: a run killed at any moment leaves the last complete archive), which is kept under
  ``MAX_ARCHIVE_BYTES`` by leaving the largest files out (listed in ``MANIFEST.txt``).

Nothing here knows about GPUs: ``gpu_check`` defines the steps, and the tests rehearse the
runner with stand-in commands of known duration.
"""
from __future__ import annotations

import datetime
import io
import json
import os
import shlex
import shutil
import signal
import subprocess
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
MAX_ARCHIVE_BYTES = 16 * 2**20   # what one file brought back from a GPU machine may hold
MAX_LOG_BYTES = 2 * 2**20        # a longer log keeps its head and tail
CHECKPOINT_EVERY_S = 30.0        # re-pack while a long step runs
KILL_GRACE_S = 5.0               # SIGTERM, then SIGKILL after this long
POLL_S = 0.1


@dataclass
class Command:
    argv: list
    env: dict = field(default_factory=dict)  # added to the environment; None removes a variable
    cwd: str = str(ROOT)
    fatal: bool = True  # False: a failure is recorded, and the step's next command still runs

    def shell(self) -> str:
        sets = " ".join(f"{k}={shlex.quote(str(v))}" for k, v in self.env.items() if v is not None)
        unsets = " ".join(f"-u {k}" for k, v in self.env.items() if v is None)
        prefix = (f"env {unsets} " if unsets else "") + (f"{sets} " if sets else "")
        return prefix + shlex.join(str(a) for a in self.argv)


@dataclass
class Context:
    """Where a step's commands write: ``results`` is archived, ``scratch`` (builds, caches) is not."""
    results: Path
    scratch: Path


@dataclass
class Step:
    name: str
    help: str
    budget_s: float
    commands: Callable  # (Context) -> list[Command]
    needs_cuda: bool = True
    tools: tuple = ()  # executables that must be on PATH
    background: bool = False
    waits_for: tuple = ()  # names of background steps whose result this step uses when they finished ok
    provides_env: Callable | None = None  # (Context) -> dict, for the steps that wait for this one


def skip_reason(step: Step, cuda: bool) -> str | None:
    if step.needs_cuda and not cuda:
        return "skipped: no CUDA"
    missing = [t for t in step.tools if shutil.which(t) is None]
    if missing:
        return f"skipped: {', '.join(missing)} not found on PATH"
    return None


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def trim_log(path: Path, limit: int = MAX_LOG_BYTES) -> None:
    """Keep the head and the tail of a log that grew past ``limit`` bytes."""
    if not path.exists() or path.stat().st_size <= limit:
        return
    data = path.read_bytes()
    head, tail = data[: limit // 8], data[-(limit - limit // 8):]
    path.write_bytes(head + f"\n... [{len(data) - len(head) - len(tail)} bytes cut] ...\n".encode() + tail)


def plan_budget_s(steps) -> float:
    """The budget of a plan: its steps' budgets, background steps aside (they run beside the others)."""
    return sum(s.budget_s for s in steps if not s.background)


def load_records(results: Path) -> dict:
    """stages.json of a results folder ({} when there is none yet)."""
    path = Path(results) / "stages.json"
    return json.loads(path.read_text()) if path.exists() else {}


def pack(results: Path, archive: Path, top: str, limit: int = MAX_ARCHIVE_BYTES) -> dict:
    """Write ``results`` into the tar.gz ``archive`` (under the folder ``top``), atomically.

    When the archive would exceed ``limit`` bytes, the largest files are left out one by one
    (never ``summary.md``, ``stages.json`` or ``MANIFEST.txt``) and named in ``MANIFEST.txt``.
    Returns {"bytes", "files", "left_out"}."""
    keep = {"summary.md", "stages.json", "MANIFEST.txt"}
    files = sorted((p for p in results.rglob("*") if p.is_file() and p.name != "MANIFEST.txt"),
                   key=lambda p: p.relative_to(results).as_posix())
    left_out: list = []
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(archive.name + ".partial")
    while True:
        manifest = "".join(f"left out (archive limit {limit} bytes): {p.relative_to(results).as_posix()} "
                           f"({p.stat().st_size} bytes)\n" for p in left_out)
        with tarfile.open(tmp, "w:gz") as tar:
            for p in files:
                if p not in left_out and p.exists():
                    tar.add(p, arcname=f"{top}/{p.relative_to(results).as_posix()}", recursive=False)
            data = (manifest or "nothing left out\n").encode()
            info = tarfile.TarInfo(f"{top}/MANIFEST.txt")
            info.size, info.mtime = len(data), int(time.time())
            tar.addfile(info, io.BytesIO(data))
        size = tmp.stat().st_size
        candidates = [p for p in files if p not in left_out and p.name not in keep and p.exists()]
        if size <= limit or not candidates:
            break
        left_out.append(max(candidates, key=lambda p: p.stat().st_size))
    os.replace(tmp, archive)
    return {"bytes": size, "files": len(files) - len(left_out), "left_out": [p.relative_to(results).as_posix() for p in left_out]}


class PlanRun:
    """One run of a plan: the records of its steps, their logs, the archive and the summary."""

    def __init__(self, name: str, steps: list, results: Path, scratch: Path, out: Path, cuda: bool,
                 deadline_s: float | None = None, summary: Callable | None = None, estimates: dict | None = None):
        self.name, self.steps, self.cuda = name, steps, cuda
        self.results, self.scratch, self.out = Path(results), Path(scratch), Path(out)
        self.archive = self.out / f"{name}.tar.gz"
        self.summary = summary  # (results folder) -> Path of the summary.md it wrote
        self.estimates = estimates or {}
        self.t0 = time.monotonic()
        self.deadline = self.t0 + deadline_s if deadline_s else None
        self.records = load_records(self.results)
        self._lock = threading.RLock()
        self._threads: dict = {}
        self._procs: set = set()
        self._last_checkpoint = 0.0
        self.packed: dict = {}

    # -------------------------------------------------------------------- records and outputs
    def checkpoint(self) -> None:
        """stages.json, summary.md and the archive, as they stand now."""
        with self._lock:
            self._last_checkpoint = time.monotonic()
            self.results.mkdir(parents=True, exist_ok=True)
            (self.results / "stages.json").write_text(json.dumps(self.records, indent=1))
            if self.summary is not None:
                try:
                    self.summary(self.results)
                except Exception as exc:  # noqa: BLE001 - a summary bug must not lose the results
                    (self.results / "summary.md").write_text(f"# {self.name}\n\nsummary failed: {type(exc).__name__}: {exc}\n")
            self.out.mkdir(parents=True, exist_ok=True)
            self.packed = pack(self.results, self.archive, self.name)
            if (self.results / "summary.md").exists():
                shutil.copyfile(self.results / "summary.md", self.out / "summary.md")

    # -------------------------------------------------------------------- running
    def _step_deadline(self, start: float, budget_s: float) -> float:
        end = start + budget_s
        return min(end, self.deadline) if self.deadline else end

    def _record(self, step: Step, **fields) -> dict:
        with self._lock:
            rec = self.records.setdefault(step.name, {})
            rec.update(fields)
            return rec

    def _kill(self, proc: subprocess.Popen) -> None:
        for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, KILL_GRACE_S)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def _run_command(self, cmd: Command, log, deadline: float, env: dict) -> tuple:
        """(status, reason) of one command run until it exits or the deadline passes."""
        full_env = dict(os.environ)
        for k, v in {**env, **cmd.env}.items():
            if v is None:
                full_env.pop(k, None)
            else:
                full_env[k] = str(v)
        try:
            proc = subprocess.Popen([str(a) for a in cmd.argv], cwd=cmd.cwd, env=full_env, stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            return "failed", f"{cmd.argv[0]}: {exc}"
        self._procs.add(proc)
        try:
            while proc.poll() is None:
                now = time.monotonic()
                if now >= deadline:
                    self._kill(proc)
                    return "timeout", None
                if threading.current_thread() is threading.main_thread() and \
                        now - self._last_checkpoint >= CHECKPOINT_EVERY_S:
                    self.checkpoint()
                time.sleep(POLL_S)
        finally:
            self._procs.discard(proc)
        return ("ok", None) if proc.returncode == 0 else ("failed", f"exit status {proc.returncode}: {cmd.shell()}")

    def run_step(self, step: Step) -> dict:
        ctx = Context(self.results, self.scratch)
        reason = skip_reason(step, self.cuda)
        with self._lock:
            self.records[step.name] = {}  # nothing kept from an earlier run into the same folder
        try:
            commands = step.commands(ctx)
        except Exception as exc:  # noqa: BLE001 - a step that cannot say its commands fails alone
            return self._record(step, status="failed", reason=f"its commands: {type(exc).__name__}: {exc}", seconds=0.0,
                                budget_s=step.budget_s, estimate_s=self.estimates.get(step.name), commands=[])
        rec = self._record(step, status="skipped" if reason else "running", reason=reason, seconds=0.0,
                           budget_s=step.budget_s, estimate_s=self.estimates.get(step.name),
                           commands=[c.shell() for c in commands], started=utc_now(),
                           log=f"logs/{step.name}.log", background=step.background)
        if reason:
            print(f"[{step.name}] {reason}", flush=True)
            return rec
        start = time.monotonic()
        deadline = self._step_deadline(start, step.budget_s)
        (self.results / "logs").mkdir(parents=True, exist_ok=True)
        if threading.current_thread() is threading.main_thread():
            self.checkpoint()  # the archive says which step was running if the whole run is stopped
        env = {}
        notes = []
        for name in step.waits_for:  # inside this step's own budget
            thread = self._threads.get(name)
            if thread is not None and thread.is_alive():
                print(f"[{step.name}] waiting for {name}", flush=True)
                self._wait(thread, deadline)
            status = self.records.get(name, {}).get("status")
            if status == "ok":
                env.update(self.records[name].get("provides", {}))
            else:
                notes.append(f"without {name} ({status or 'not run'})")
        status, why = "ok", None
        failures = []
        with open(self.results / "logs" / f"{step.name}.log", "a") as log:
            for cmd in commands:
                print(f"[{step.name}] $ {cmd.shell()}", flush=True)
                log.write(f"$ {cmd.shell()}\n")
                log.flush()
                result, why = self._run_command(cmd, log, deadline, env)
                if result == "timeout":
                    status = "timeout"
                    cut = self.deadline is not None and deadline < start + step.budget_s
                    why = (f"stopped at the plan's deadline ({self.deadline - self.t0:g} s after the plan started)" if cut
                           else f"stopped at its budget ({step.budget_s:g} s)") + f" in: {cmd.shell()}"
                    break
                if result == "failed":
                    failures.append(why)
                    if cmd.fatal:
                        status = "failed"
                        break
                    log.write(f"(not fatal: {why})\n")
        if status == "ok" and step.provides_env is not None:
            self._record(step, provides={k: str(v) for k, v in step.provides_env(ctx).items()})
        reason = "; ".join(([why] if status != "ok" and why else []) + [f"not fatal: {f}" for f in failures if f != why] + notes)
        trim_log(self.results / "logs" / f"{step.name}.log")
        rec = self._record(step, status=status, reason=reason or None, seconds=round(time.monotonic() - start, 1))
        print(f"[{step.name}] {status} in {rec['seconds']} s (budget {step.budget_s:g} s)" + (f": {reason}" if reason else ""),
              flush=True)
        return rec

    def _wait(self, thread: threading.Thread, deadline: float | None = None) -> None:
        """Join ``thread`` (until ``deadline``), checkpointing meanwhile."""
        while thread.is_alive() and (deadline is None or time.monotonic() < deadline):
            thread.join(timeout=1.0)
            if time.monotonic() - self._last_checkpoint >= CHECKPOINT_EVERY_S:
                self.checkpoint()

    def _background(self, step: Step) -> None:
        try:
            self.run_step(step)
        except Exception as exc:  # noqa: BLE001 - recorded, the plan goes on
            self._record(step, status="failed", reason=f"{type(exc).__name__}: {exc}")

    def stop_all(self) -> None:
        """Terminate every command still running (its whole process group)."""
        for proc in list(self._procs):
            self._kill(proc)

    def run(self) -> dict:
        self.results.mkdir(parents=True, exist_ok=True)
        self.scratch.mkdir(parents=True, exist_ok=True)
        self.records["_plan"] = {"name": self.name, "started": utc_now(), "steps": [s.name for s in self.steps],
                                 "budget_s": plan_budget_s(self.steps),
                                 "deadline_s": None if self.deadline is None else round(self.deadline - self.t0, 1)}
        for step in self.steps:  # every step is listed as not run until it starts
            self.records.setdefault(step.name, {"status": "not run", "reason": None, "seconds": None,
                                                "budget_s": step.budget_s, "estimate_s": self.estimates.get(step.name)})
        self.checkpoint()
        previous = signal.signal(signal.SIGTERM, _raise_interrupt) if threading.current_thread() is threading.main_thread() else None
        try:
            for step in self.steps:
                if step.background:
                    thread = threading.Thread(target=self._background, args=(step,), name=step.name, daemon=True)
                    self._threads[step.name] = thread
                    thread.start()
                    time.sleep(POLL_S)  # let it record its start
                else:
                    self.run_step(step)
                self.checkpoint()
            for thread in self._threads.values():  # each stops at its own budget
                self._wait(thread)
        except KeyboardInterrupt:
            self.stop_all()
            for step in self.steps:
                if self.records.get(step.name, {}).get("status") == "running":
                    self._record(step, status="timeout", reason="the whole run was interrupted")
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self.records["_plan"]["seconds"] = round(time.monotonic() - self.t0, 1)
            self.records["_plan"]["finished"] = utc_now()
            self.checkpoint()
        return self.records


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def step_records(records: dict) -> dict:
    """The records of the steps (without the plan's own entries, which start with an underscore)."""
    return {k: v for k, v in records.items() if not k.startswith("_")}
