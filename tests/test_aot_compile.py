"""Every Triton kernel of the inventory compiles ahead of time for sm_80 and sm_90 (no GPU needed),
in every variant its launchers pick, at their BLOCK sizes."""
import os
import re
import subprocess
import sys

import pytest


@pytest.mark.aot
def test_all_kernels_compile_for_sm80_and_sm90():
    pytest.importorskip("triton")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # real JIT kernels
    res = subprocess.run([sys.executable, "-m", "torchdist_fast.tools.aot", "--targets", "80", "90"],
                         env=env, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]
    summary = re.search(r"all kernels compiled: (\d+) kernels, (\d+) variants, (\d+) compiles", res.stdout)
    assert summary, res.stdout[-2000:]
    kernels, variants, compiles = map(int, summary.groups())
    assert kernels == 16
    ok_lines = [line for line in res.stdout.splitlines() if line.startswith("ok ")]
    assert len(ok_lines) == compiles >= 2 * variants
    assert {line.split()[1] for line in ok_lines} == {
        "philox_randn", "philox_words", "box_muller_words", "normal_rsample_fwd", "normal_rsample_bwd",
        "normal_rsample_fwd_2d", "normal_rsample_bwd_2d", "normal_log_prob_fwd", "normal_log_prob_bwd",
        "normal_log_prob_fwd_2d", "normal_log_prob_bwd_2d", "normal_kl_fwd", "normal_kl_bwd", "normal_event_sum_fwd",
        "tanh_normal_fwd", "tanh_normal_bwd"}
    # contiguous float32 launches of the elementwise kernels use 128-bit stores (what bandwidth needs)
    for line in ok_lines:
        if " fp32 " in line and " contig " in line and "words" not in line:
            assert "st.v4=0" not in line, line
            assert "spills=0B" in line, line


def test_kernel_specs_are_the_inventory():
    pytest.importorskip("triton")
    from torchdist_fast.tools import aot
    from torchdist_fast.triton_kernels import inventory

    specs = aot.kernel_specs()
    assert [name for name, _k, _v in specs] == [inventory.short_name(k) for _m, k in inventory.kernels()]
    assert sum(len(v) for _n, _k, v in specs) == len(inventory.variants())
    assert all(v for _n, _k, v in specs)  # every kernel in at least one variant
