"""Seconds per call, as every measuring tool here takes them: CUDA events on a GPU (the time the
device spent between two events, read after the end event has completed), ``time.perf_counter``
on the CPU (a CPU call is synchronous)."""
from __future__ import annotations

import time

import torch


def time_calls(fn, input_sets, device: str, repeats: int) -> list:
    """``repeats`` timed calls of ``fn``, the i-th on ``input_sets[i % len(input_sets)]``: seconds each."""
    times = []
    for i in range(repeats):
        args = input_sets[i % len(input_sets)]
        if device == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn(*args)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn(*args)
            times.append(time.perf_counter() - t0)
    return times
