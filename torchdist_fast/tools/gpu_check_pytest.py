"""pytest plugin of the GPU check: a dtype filter, and a record of the Triton kernel variants a run compiles.

Load it with ``-p torchdist_fast.tools.gpu_check_pytest`` (``python -m torchdist_fast.tools.gpu_check`` does):

``--kernel-dtypes float32 bfloat16``
    deselect the parametrized tests that take a ``torch.dtype`` parameter outside these dtypes
    (tests without a dtype parameter stay selected).
``--kernel-cases FILE``
    keep only the tests FILE lists, one per line (``#`` starts a comment): a test id without its
    device parameter (``normalized_id``: the same case under the interpreter and on a GPU), or a
    test function (``file::name``), which keeps all its parameters.
``--record-kernel-variants FILE``
    write FILE (JSON): per test file, the distinct Triton launch specializations for ``cuda:90``
    the tests launched, by Triton's own launch-time binder (``cost_model.launch_specialization``):
    two launches with one key run one compiled kernel, so the count of keys is the count of
    compiles. Works under ``TRITON_INTERPRET=1`` on CPU tensors (the interpreted kernels'
    launches are recorded) and with compiled kernels on a GPU. Under pytest-xdist each worker
    writes ``FILE.<worker>`` and the controller merges them into FILE.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

DTYPE_OPTION = "--kernel-dtypes"
CASES_OPTION = "--kernel-cases"
RECORD_OPTION = "--record-kernel-variants"


def pytest_addoption(parser):
    group = parser.getgroup("torchdist_fast GPU check")
    group.addoption(DTYPE_OPTION, nargs="+", default=None, metavar="DTYPE",
                    help="keep only parametrized tests whose torch.dtype parameters are among these (e.g. float32 bfloat16)")
    group.addoption(CASES_OPTION, default=None, metavar="FILE",
                    help="keep only the test cases listed in FILE (ids without the device parameter, or test functions)")
    group.addoption(RECORD_OPTION, default=None, metavar="FILE",
                    help="record the distinct Triton kernel specializations (for cuda:90) launched per test file")


def dtypes_of(item) -> list:
    """The torch.dtype values among a test item's parameters."""
    import torch

    params = getattr(getattr(item, "callspec", None), "params", {})
    return [v for v in params.values() if isinstance(v, torch.dtype)]


def read_cases(path) -> list:
    """The test ids of a cases file (one per line, ``#`` comments)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line]


def pytest_collection_modifyitems(config, items):
    keep = list(items)
    names = config.getoption(DTYPE_OPTION)
    if names:
        import torch

        keep_dtypes = {getattr(torch, n) for n in names}
        keep = [item for item in keep if all(d in keep_dtypes for d in dtypes_of(item))]
    cases_file = config.getoption(CASES_OPTION)
    if cases_file:
        cases = set(read_cases(cases_file))
        keep = [item for item in keep if normalized_id(item.nodeid) in cases or item.nodeid.split("[")[0] in cases]
    if len(keep) != len(items):
        kept = set(map(id, keep))
        config.hook.pytest_deselected(items=[item for item in items if id(item) not in kept])
        items[:] = keep
    recorder = getattr(config, "_torchdist_fast_recorder", None)
    if recorder is not None:
        recorder.collected = [normalized_id(item.nodeid) for item in items]


# constexprs that set sizes or values (block shapes, bounds), not code paths: two launches that
# differ only in these compile twice but check no other branch of the kernel
SIZE_CONSTEXPRS = frozenset({"BLOCK", "BLOCK_R", "BLOCK_C", "BR", "BC", "DP", "NC", "MID", "HALF"})


def normalized_id(nodeid: str) -> str:
    """A test id without the device parameter ("cpu" under the interpreter, "cuda" on a GPU), so
    that a case chosen on CPU names the same case on the device."""
    if "[" not in nodeid:
        return nodeid
    func, params = nodeid.split("[", 1)
    tokens = [t for t in params[:-1].split("-") if t not in ("cpu", "cuda")]
    return f"{func}[{'-'.join(tokens)}]" if tokens else func


def variant_class(jit, signature: dict, args, kwargs) -> str:
    """What a launch checks, beyond its compile key: the kernel, its pointer dtypes, its code-path
    constexprs (not the sizes), and for the 1-D kernels whether it is a tail launch (numel % 16 != 0)."""
    declared = [p.name for p in jit.params if p.is_constexpr]
    bound = dict(zip(jit.arg_names, args), **kwargs)
    dtypes = sorted({v for v in signature.values() if isinstance(v, str) and v.startswith("*")})
    dtypes = [d for d in dtypes if d != "*i64"] or dtypes  # the int64 stream position rides along every dtype
    flags = ",".join(f"{n}={bound[n]}" for n in declared if n in bound and n not in SIZE_CONSTEXPRS)
    numel = bound.get("numel")
    tail = "" if not isinstance(numel, int) or numel % 16 == 0 else ",tail"
    return f"{jit.fn.__name__}|{'/'.join(dtypes)}|{flags}{tail}"


class VariantRecorder:
    """Records, per test, the compile keys (and what each checks) of the Triton launches its call makes."""

    def __init__(self, path: Path):
        self.path = path
        self.launches: dict = {}
        self.collected: list = []
        self.current = None
        self._jit_of: dict = {}
        self._restore = []

    # -- the launch hook
    def install(self) -> None:
        from triton.runtime.jit import JITFunction

        self._wrap(JITFunction, lambda fn: fn)
        try:
            from triton.runtime.interpreter import InterpretedFunction
        except ImportError:
            return
        self._wrap(InterpretedFunction, self._jit_twin)

    def _wrap(self, cls, as_jit) -> None:
        real_run = cls.run
        recorder = self

        def run(fn, *args, grid, warmup, **kwargs):
            if not warmup and recorder.current is not None:
                recorder.record(as_jit(fn), args, kwargs)
            return real_run(fn, *args, grid=grid, warmup=warmup, **kwargs)

        cls.run = run
        self._restore.append((cls, real_run))

    def uninstall(self) -> None:
        for cls, real_run in reversed(self._restore):
            cls.run = real_run
        self._restore.clear()

    def _jit_twin(self, interpreted):
        """A JITFunction of an interpreted kernel's source and options: its binder gives the key."""
        twin = self._jit_of.get(interpreted)
        if twin is None:
            from triton.runtime.jit import JITFunction

            twin = self._jit_of[interpreted] = JITFunction(interpreted.fn, **interpreted.kwargs)
        return twin

    def record(self, jit, args, kwargs) -> None:
        from .cost_model import launch_specialization

        try:
            key, signature, *_ = launch_specialization(jit, args, kwargs)
            label = variant_class(jit, signature, args, kwargs)
        except Exception as exc:  # noqa: BLE001 - the record must never fail a test; the launch still counts
            meta = [(str(a.dtype), tuple(a.shape), a.stride()) if hasattr(a, "stride") else a for a in args]
            key = (jit.fn.__qualname__, repr(meta), repr(sorted(kwargs.items())))
            label = f"{jit.fn.__name__}|?|unbound: {type(exc).__name__}"
        digest = hashlib.sha1(repr(key).encode()).hexdigest()[:16]
        self.launches[self.current][digest] = label

    def write(self, path: Path) -> None:
        path.write_text(json.dumps({"launches": self.launches, "collected": self.collected}, indent=1, sort_keys=True))


def merge_records(paths) -> dict:
    """One record from several (xdist workers, each of which collects every test): every test's launches."""
    launches: dict = {}
    collected: dict = {}
    for path in paths:
        data = json.loads(Path(path).read_text())
        for test, keys in data["launches"].items():
            launches.setdefault(test, {}).update(keys)
        collected.update(dict.fromkeys(data.get("collected", [])))
    return {"launches": dict(sorted(launches.items())), "collected": list(collected)}


def distinct_variants(record: dict) -> int:
    return len({k for launched in record["launches"].values() for k in launched})


def _worker_id(config):
    return getattr(config, "workerinput", {}).get("workerid")


def pytest_configure(config):
    path = config.getoption(RECORD_OPTION)
    if not path:
        return
    recorder = VariantRecorder(Path(path))
    recorder.install()
    config._torchdist_fast_recorder = recorder


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    recorder = getattr(item.config, "_torchdist_fast_recorder", None)
    if recorder is None:
        yield
        return
    recorder.current = normalized_id(item.nodeid)
    recorder.launches.setdefault(recorder.current, {})
    try:
        yield
    finally:
        recorder.current = None


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    config = session.config
    recorder = getattr(config, "_torchdist_fast_recorder", None)
    if recorder is None:
        return
    recorder.uninstall()
    worker = _worker_id(config)
    if worker is not None:
        recorder.write(Path(f"{recorder.path}.{worker}"))
        return
    parts = sorted(recorder.path.parent.glob(recorder.path.name + ".gw*"))
    if parts:
        merged = merge_records(parts)
        for p in parts:
            os.remove(p)
        recorder.path.write_text(json.dumps(merged, indent=1, sort_keys=True))
    else:
        recorder.write(recorder.path)
