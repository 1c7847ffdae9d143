"""pytest-benchmark suite: the same comparisons as ``python -m torchdist_fast``.

    pip install -e ".[bench]"
    python -m pytest benchmarks/ --benchmark-only                      # CPU (and CUDA if present)
    python -m pytest benchmarks/ --benchmark-only -k cuda --benchmark-json out/bench.json

CPU calls are timed by pytest-benchmark itself. CUDA calls are timed with CUDA events (the
median lands in ``extra_info["cuda_median_ms"]``), because host timers around asynchronous
launches measure the launch, not the kernel. Every result records the device and versions.
The torch.compile case compiles its own forward with fresh compiler state (``bench.CompileGuard``)
and fails if dynamo broke the graph, recompiled while timed, or did not run the compiled region.
"""
import statistics

import pytest
import torch

from torchdist_fast.tools import bench

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
SIZES = {"cpu": [2**12, 2**16, 2**20], "cuda": [2**20, 2**24]}
CASES = [(d, n) for d in DEVICES for n in SIZES[d]]
IMPLS = ["eager", "compile", "torchdist_fast"]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("op,mode", bench.combos())
@pytest.mark.parametrize("device,size", CASES, ids=[f"{d}-{n}" for d, n in CASES])
def test_normal(benchmark, device, size, op, mode, impl):
    cls, is_compiled, ctx = bench.implementations(device)[impl]
    guard = bench.CompileGuard(cls, op, mode) if is_compiled else None
    work = guard.work if guard else bench.make_work(cls, op, mode)
    inputs = [bench.make_inputs(size, device, torch.float32, mode, seed) for seed in range(bench.ROTATE)]
    env = bench.environment([device])
    benchmark.extra_info.update(
        device=env["devices"][device], torch=env["torch"], triton=env["triton"], size=size, op=op, mode=mode, impl=impl,
        bytes_moved=bench.BYTES_PER_ELEMENT[(op, mode)] * size * 4,
    )
    with ctx():
        work(*inputs[0])  # warm-up (compiles under torch.compile)
        if device == "cuda":
            times = bench.time_calls(work, inputs, device, 50)
            benchmark.extra_info["cuda_median_ms"] = statistics.median(times) * 1e3
            benchmark.extra_info["gbps"] = benchmark.extra_info["bytes_moved"] / statistics.median(times) / 1e9
        state = {"i": 0}

        def call():
            state["i"] += 1
            out = work(*inputs[state["i"] % len(inputs)])
            if device == "cuda":
                torch.cuda.synchronize()
            return out

        if guard:
            guard.check_clean()
            graphs = guard.graphs()
        benchmark(call)
        if guard:  # the compile column must have run compiled code, without recompiling
            guard.check_clean()
            assert guard.graphs() == graphs, "dynamo recompiled while timed"
            guard.check_ran_compiled(inputs[0])
