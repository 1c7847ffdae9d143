"""Per-call host cost: what the eager path does not do (no tensor for the stream position, no
.tolist(), no layout recomputed for a repeated shape), and the two benchmarks that measure it
(run, not timed: speed is measured in benchmarks, never asserted in tests)."""
import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import INTERPRET

import torchdist_fast
from torchdist_fast import rng
from torchdist_fast.tools import host_overhead


def _no(name):
    def refuse(*args, **kwargs):
        raise AssertionError(f"{name} called on the eager path")
    return refuse


@pytest.mark.interpreter
@pytest.mark.skipif(not INTERPRET, reason="runs the launchers' GPU code path on CPU tensors")
def test_eager_call_makes_no_position_tensor_and_reads_none_back(monkeypatch):
    from torchdist_fast.triton_kernels import layout

    loc, scale = torch.randn(256, 8, requires_grad=True), torch.rand(256, 8) + 0.5
    with torchdist_fast.cpu_sampling("philox"), torchdist_fast.cpu_kernel("triton"), \
            host_overhead.no_kernel_launches(), host_overhead.offset_generator_as_default() as gen:
        d = torchdist_fast.Normal(loc, scale, validate_args=False)
        d.rsample_and_log_prob()  # first call of this pattern: computes the layout
        monkeypatch.setattr(rng, "pack_seed_offset", _no("pack_seed_offset"))
        monkeypatch.setattr(rng, "unpack_seed_offset", _no("unpack_seed_offset"))
        monkeypatch.setattr(torch.Tensor, "tolist", _no("Tensor.tolist"))
        misses = layout.tile_layout_of.cache_info().misses + layout.broadcast_layout_of.cache_info().misses
        offset = gen.get_offset()
        for _ in range(3):
            z, lp = d.rsample_and_log_prob()
            d.rsample()
            (z.sum() + lp.sum()).backward()
        assert layout.tile_layout_of.cache_info().misses + layout.broadcast_layout_of.cache_info().misses == misses
        assert gen.get_offset() == offset + 6 * rng.advance(256 * 8 // 4)  # the generator still moves on


def test_no_kernel_launches_restores_the_kernels():
    from torchdist_fast.triton_kernels import normal_rsample

    kernel = normal_rsample._normal_rsample_fwd_kernel
    with host_overhead.no_kernel_launches():
        assert isinstance(normal_rsample._normal_rsample_fwd_kernel, host_overhead._NoLaunch)
        assert normal_rsample._normal_rsample_fwd_kernel[(1,)](1, 2, x=3) is None
    assert normal_rsample._normal_rsample_fwd_kernel is kernel


def _cli(module, *args, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_host_overhead_benchmark_runs(tmp_path):
    out = tmp_path / "host.json"
    res = _cli("torchdist_fast.tools.host_overhead", "--calls", "50", "--repeats", "1", "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    data = json.loads(out.read_text())
    assert set(data["rows"]) == {"rsample", "rsample_and_log_prob", "log_prob", "tanh_normal rsample_and_log_prob"}
    assert data["shape"] == [256, 8]
    for row in data["rows"].values():
        assert set(row) == {"torch eager", "ours, cpu generator", "ours, offset generator"}
        assert all(v > 0 for v in row.values())
    assert "| rsample | ours, offset generator |" in res.stdout and "<= 0.70" in res.stdout


def test_host_overhead_refuses_bad_flags():
    res = _cli("torchdist_fast.tools.host_overhead", "--calls", "0", timeout=60)
    assert res.returncode == 2 and "--calls, --repeats and --threads must be at least 1" in res.stderr


def test_step_rate_benchmark_runs(tmp_path):
    out = tmp_path / "steps.json"
    res = _cli("torchdist_fast.tools.step_rate", "--steps", "3", "--modes", "eager", "--json", str(out))
    assert res.returncode == 0, res.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert set(rows) == {f"{t} | eager | {i}" for t in ("sac", "reinforce") for i in ("torch", "torchdist_fast")}
    assert all(isinstance(v, float) and v > 0 for v in rows.values()), rows
    assert "| sac | eager |" in res.stdout
