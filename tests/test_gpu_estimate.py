"""The GPU check's time estimates (torchdist_fast/tools/gpu_estimate.py, gpu_check_data.json) and the
pytest plugin that counts kernel variants and picks the silicon cases (gpu_check_pytest.py).

The committed counts cannot go stale silently: the fingerprint of what they depend on is
recomputed here, the cheap counts are recounted, and the silicon cases must all be collected."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from torchdist_fast.tools import gpu_check, gpu_estimate, gpu_plan
from torchdist_fast.tools.gpu_check_pytest import normalized_id, read_cases

ROOT = Path(__file__).resolve().parents[1]
DATA = gpu_estimate.load()


def test_data_holds_counted_measured_and_assumed_numbers():
    from torchdist_fast.tools.cost_model import triton_key

    assert "triton 3.6" in DATA["compile"]  # the GPU machine's Triton
    for key, measured in DATA["compile"].items():
        assert key == triton_key(measured["triton"])
        assert 0.05 < measured["per_variant_s"] < 30 and measured["variants"] >= 10
        assert len(measured["samples"]) == measured["variants"] and measured["how"]
    assert gpu_estimate.compile_seconds(DATA) == max(m["per_variant_s"] for m in DATA["compile"].values())
    assert DATA["import_cpu_s"] > 0.5  # a fresh Python importing torch, triton and torchdist_fast
    for step in ("silicon", "headline", "graphs", "memcheck", "ncu", "bench-fp32", "bench-bf16", "bench-family"):
        assert DATA["counts"][step]["variants"] > 0, step
    assert DATA["counts"]["silicon"]["tests"] == sum(f["tests"] for f in DATA["counts"]["silicon"]["by_file"].values())
    for name, entry in DATA["assumed"].items():
        assert set(entry) == {"value", "why"} and len(entry["why"]) > 20, name


def test_the_first_contact_estimate_is_at_most_nine_minutes():
    est = gpu_estimate.estimates()
    steps = gpu_check.plan_steps(gpu_check.PLANS[gpu_check.FIRST_CONTACT])
    total = sum(est[s.name][0] for s in steps if not s.background)
    assert total <= gpu_check.PLAN_LIMIT_S
    for s in steps:
        assert est[s.name][0] <= s.budget_s, (s.name, est[s.name])


@pytest.mark.parametrize("plan", gpu_check.LATER_PLANS)
def test_every_later_step_is_estimated_within_its_budget(plan):
    est = gpu_estimate.estimates()
    for s in gpu_check.plan_steps(gpu_check.PLANS[plan]):
        assert s.name in est and est[s.name][0] <= s.budget_s, (s.name, est.get(s.name))


def test_the_counts_are_current_and_every_silicon_case_is_collected():
    collected = gpu_estimate.collect_candidates()
    assert gpu_estimate.fingerprint(collected) == DATA["fingerprint"], (
        "the kernels, the silicon candidates or the counting workloads changed since gpu_check_data.json was counted: "
        "run `python -m torchdist_fast.tools.gpu_estimate --recount` and commit gpu_check_data.json and "
        "gpu_check_silicon_cases.txt")
    cases = read_cases(gpu_check.SILICON_CASES)
    functions = {c for c in cases if "[" not in c}
    assert functions == set(gpu_check.SILICON_ALWAYS)
    missing = [c for c in cases if c not in functions and c not in collected]
    assert not missing, missing
    assert all(any(t.split("[")[0] == f for t in collected) for f in functions)


@pytest.mark.parametrize("workload", ["headline", "graphs", "bench-family"])
def test_cheap_counts_recount_exactly(workload):
    assert gpu_estimate.count_workload(workload)["variants"] == DATA["counts"][workload]["variants"]


@pytest.mark.slow
def test_silicon_count_recounts_exactly():
    record = gpu_estimate.count_tests(gpu_check.silicon_files(), "--kernel-cases", str(gpu_check.SILICON_CASES), workers=2)
    counts = gpu_estimate.silicon_counts(record, read_cases(gpu_check.SILICON_CASES), gpu_check.SILICON_ALWAYS)
    assert counts["variants"] == DATA["counts"]["silicon"]["variants"]


def test_choose_cases_covers_every_atom_with_the_fewest_compiles():
    record = {"launches": {
        "t.py::a[1]": {"k1": "kern|*fp32|FLAG=True", "k2": "kern|*fp32|FLAG=False"},
        "t.py::a[2]": {"k1": "kern|*fp32|FLAG=True"},
        "t.py::b[1]": {"k3": "kern|*bf16|FLAG=True,tail", "k4": "kern|*bf16|FLAG=True"},
        "t.py::b[2]": {"k5": "kern|*bf16|FLAG=True,tail"},
        "t.py::c": {},
    }}
    chosen = gpu_estimate.choose_cases(record)
    assert chosen == ["t.py::a[1]", "t.py::b[1]"]
    counts = gpu_estimate.silicon_counts({**record, "collected": list(record["launches"]) + ["t.py::gpu"]}, chosen, ("t.py::gpu",))
    assert counts == {"variants": 4, "tests": 3, "by_file": {"t.py": {"variants": 4, "tests": 3, "gpu_only_tests": 1}}}


def test_lpt_makespan():
    assert gpu_estimate.lpt_makespan([5, 4, 3, 3], 2) == 8
    assert gpu_estimate.lpt_makespan([10, 1, 1], 8) == 10


@pytest.mark.parametrize("nodeid, expected", [
    ("tests/t.py::f[cpu-x1-dtype0-1e-05-1e-05]", "tests/t.py::f[x1-dtype0-1e-05-1e-05]"),
    ("tests/t.py::f[cuda-x1-dtype0-1e-05-1e-05]", "tests/t.py::f[x1-dtype0-1e-05-1e-05]"),
    ("tests/t.py::f[cpu]", "tests/t.py::f"),
    ("tests/t.py::f[a-cpu-b]", "tests/t.py::f[a-b]"),
    ("tests/t.py::f", "tests/t.py::f"),
    ("tests/t.py::f[cpu_log_prob_stable]", "tests/t.py::f[cpu_log_prob_stable]"),
])
def test_normalized_id_drops_the_device_parameter(nodeid, expected):
    assert normalized_id(nodeid) == expected


PLUGIN_TESTS = '''
import pytest, torch

@pytest.fixture(params=["cpu"])
def triton_device(request):
    return request.param

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("n", [1, 2])
def test_kernel(dtype, n, triton_device):
    pass

def test_plain():
    pass
'''


def _collect(tmp_path, *args):
    (tmp_path / "test_plugin_case.py").write_text(PLUGIN_TESTS)
    record = tmp_path / "record.json"
    res = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_plugin_case.py"), "--collect-only", "-q",
                          "-p", "no:cacheprovider", "-p", "torchdist_fast.tools.gpu_check_pytest", "--rootdir", str(tmp_path),
                          "--record-kernel-variants", str(record), *args], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    return json.loads(record.read_text())["collected"]


def test_plugin_dtype_filter(tmp_path):
    collected = _collect(tmp_path, "--kernel-dtypes", "float32", "bfloat16")
    assert len(collected) == 5 and not any("dtype1" in t for t in collected) and "test_plugin_case.py::test_plain" in collected


def test_plugin_cases_file(tmp_path):
    cases = tmp_path / "cases.txt"
    cases.write_text("# comment\ntest_plugin_case.py::test_kernel[2-dtype1]  # one case\n\ntest_plugin_case.py::test_plain\n")
    assert _collect(tmp_path, "--kernel-cases", str(cases)) == ["test_plugin_case.py::test_kernel[2-dtype1]",
                                                               "test_plugin_case.py::test_plain"]


def test_plugin_records_the_launches_of_each_test(tmp_path):
    """Under the interpreter (conftest): the launches of a test, by compile key and what they check."""
    (tmp_path / "test_launch.py").write_text(
        "import torch\nfrom torchdist_fast.triton_kernels.philox import philox_randn\n"
        "def test_two_sizes():\n    philox_randn((64,), 1, 2, torch.float32, 'cpu')\n"
        "    philox_randn((70,), 1, 2, torch.float32, 'cpu')\n    philox_randn((128,), 3, 4, torch.float32, 'cpu')\n")
    record = tmp_path / "record.json"
    res = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path / "test_launch.py"), "-q", "-p", "no:cacheprovider",
                          "-p", "torchdist_fast.tools.gpu_check_pytest", "--rootdir", str(tmp_path), "--record-kernel-variants",
                          str(record)], capture_output=True, text=True, cwd=tmp_path, env=gpu_estimate.interpreted_env())
    assert res.returncode == 0, res.stdout + res.stderr
    launches = json.loads(record.read_text())["launches"]["test_launch.py::test_two_sizes"]
    # 64 and 128 elements compile once (sizes % 16 == 0); 70 adds a bulk launch over 64 (the same
    # kernel) and a tail launch (numel 70: another specialization)
    assert sorted(launches.values()) == ["_philox_randn_kernel|*fp32|FAST_MATH=False",
                                         "_philox_randn_kernel|*fp32|FAST_MATH=False,tail"]  # the *i64 position left out


def test_the_archive_limit_is_the_gpu_machines():
    assert gpu_plan.MAX_ARCHIVE_BYTES == 16 * 2**20
