"""The examples (torchdist_fast/examples): each trains in a tiny configuration, with both
implementations; the per-rank stream rule and a two-process gloo run; the CLIs' bad-input errors.

"Statistically matching". The runs are deterministic given the seed, so nothing here can flake
on one platform; the question is what tolerance is principled. Two comparisons:

* Default CPU mode: torchdist_fast.Normal is torch's Normal bit for bit (noise and ``log_prob``
  formula), so the two runs must give identical numbers.
* ``cpu_sampling("philox")``: different noise, the same distribution. The final metric is then a
  random variable over seeds; the two implementations match if its mean over seeds agrees. The
  tolerance is 5 standard errors of the mean paired difference over the seeds used here, the
  standard deviation of that difference calibrated on 30 seeds (VAE: 2.9 nats; REINFORCE: 0.2)
  with the configurations below; it is also a small fraction (under 10 %) of what training gains.
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys

import pytest
import torch

from torchdist_fast import rng
from torchdist_fast.examples import distributed, reinforce, sac, vae
from torchdist_fast.rng import GOLDEN_GAMMA, mix64, rank_generator, rank_seed

CPU = torch.device("cpu")
SEEDS = range(6)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_VAE = dict(epochs=3, hidden=64, batch_size=256, dataset_size=4096, eval_size=1024)
TINY_RL = dict(envs=256, horizon=20, iterations=20, hidden=32, eval_envs=256, lr=1e-2)
VAE_PAIRED_SD, RL_PAIRED_SD = 2.9, 0.2  # calibrated, see the module docstring


def _env():
    # the examples choose their own kernels: no interpreter for the subprocess
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _cli(module, *args, timeout=120):
    return subprocess.run([sys.executable, "-m", f"torchdist_fast.examples.{module}", *args],
                          capture_output=True, text=True, timeout=timeout, env=_env())


def _run_vae(impl, seed, sampling=None, device=CPU):
    return vae.train(vae.VAEConfig(seed=seed, **TINY_VAE), impl, device, cpu_sampling=sampling, progress=False, verbose=False)


def _run_rl(impl, seed, sampling=None, device=CPU):
    cfg = reinforce.ReinforceConfig(seed=seed, **TINY_RL)
    return reinforce.train(cfg, impl, device, cpu_sampling=sampling, progress=False, verbose=False)


# (impl, cpu_sampling) -> one run per seed, shared by the tests below
RUNS = [("torch", None), ("torchdist_fast", None), ("torchdist_fast", "philox")]


@pytest.fixture(scope="module")
def vae_runs():
    return {key: [_run_vae(key[0], seed, key[1]) for seed in SEEDS] for key in RUNS}


@pytest.fixture(scope="module")
def rl_runs():
    return {key: [_run_rl(key[0], seed, key[1]) for seed in SEEDS] for key in RUNS}


# ---------------------------------------------------------------------------------- streams
def test_rank_seed_is_splitmix64():
    # SplitMix64 seeded with 0: its first three outputs (the reference sequence)
    assert [rank_seed(0, r) for r in range(3)] == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]
    assert rank_seed(12345, 7) == mix64(12345 + 8 * GOLDEN_GAMMA)
    assert rank_seed(2**64 - 1, 2**64 - 1) < 2**64


def test_rank_seeds_are_distinct_and_valid_torch_seeds():
    seeds = [rank_seed(base, r) for base in range(4) for r in range(4096)]
    assert len(set(seeds)) == len(seeds)
    g = rank_generator(3, 5)
    assert g.initial_seed() == rank_seed(3, 5) and g.device.type == "cpu"
    torch.Generator().manual_seed(max(seeds))  # a full 64-bit seed is accepted


@pytest.mark.parametrize("base,rank,exc", [(-1, 0, ValueError), (0, -1, ValueError), (2**64, 0, ValueError),
                                           (0, True, TypeError), (1.0, 0, TypeError), (0, "1", TypeError)])
def test_rank_seed_rejects_bad_input(base, rank, exc):
    with pytest.raises(exc):
        rank_seed(base, rank)


# ---------------------------------------------------------------------------------- VAE
@pytest.mark.parametrize("key", RUNS, ids=lambda k: f"{k[0]}-{k[1] or 'default'}")
def test_vae_elbo_improves(vae_runs, key):
    for run in vae_runs[key]:
        assert run["eval_elbo"][-1] > run["eval_elbo"][0] + 40  # about +80 nats in 48 steps
        assert run["train_elbo"][-1] > run["train_elbo"][0]
        assert run["samples_per_s"] > 0 and run["saved_bytes_per_step"] > 0 and run["peak_bytes"] is None


def test_vae_impls_identical_with_torch_sampling(vae_runs):
    for a, b in zip(vae_runs[("torch", None)], vae_runs[("torchdist_fast", None)]):
        assert a["eval_elbo"] == b["eval_elbo"] and a["step_elbo"] == b["step_elbo"]


def test_vae_impls_match_statistically_with_philox_sampling(vae_runs):
    torch_final = [r["eval_elbo"][-1] for r in vae_runs[("torch", None)]]
    philox_final = [r["eval_elbo"][-1] for r in vae_runs[("torchdist_fast", "philox")]]
    assert torch_final != philox_final  # different noise, so different trajectories
    diff = statistics.mean(p - t for p, t in zip(philox_final, torch_final))
    assert abs(diff) < 5 * VAE_PAIRED_SD / math.sqrt(len(SEEDS))


def test_vae_philox_run_is_reproducible(vae_runs):
    again = _run_vae("torchdist_fast", SEEDS[0], "philox")
    assert again["step_elbo"] == vae_runs[("torchdist_fast", "philox")][0]["step_elbo"]


def test_vae_torch_log_prob_keeps_one_more_tensor(vae_runs):
    # the default CPU mode runs torch's own code, so it saves what torch saves; on the Philox path
    # the fused log_prob keeps one batch x pixels float32 tensor less for backward than torch's
    # formula, the fused KL two batch x latent tensors less (torch's var_ratio and t1); eager,
    # rsample keeps its stream position as two ints, no tensor (eager.py)
    t, f = vae_runs[("torch", None)][0], vae_runs[("torchdist_fast", None)][0]
    p = vae_runs[("torchdist_fast", "philox")][0]
    pixels = TINY_VAE["batch_size"] * vae.IMAGE_SIDE**2 * 4
    kl_terms = 2 * TINY_VAE["batch_size"] * vae.VAEConfig().latent_dim * 4
    assert t["saved_bytes_per_step"] == f["saved_bytes_per_step"]
    assert t["saved_bytes_per_step"] - p["saved_bytes_per_step"] == pixels + kl_terms


# ---------------------------------------------------------------------------------- REINFORCE
@pytest.mark.parametrize("key", RUNS, ids=lambda k: f"{k[0]}-{k[1] or 'default'}")
def test_reinforce_return_improves(rl_runs, key):
    for run in rl_runs[key]:
        assert run["eval_after"] > run["eval_before"] + 8  # about -22 -> -8.5
        assert statistics.mean(run["returns"][-3:]) > run["returns"][0] + 8
        assert run["steps_per_s"] > 0


def test_reinforce_impls_identical_with_torch_sampling(rl_runs):
    for a, b in zip(rl_runs[("torch", None)], rl_runs[("torchdist_fast", None)]):
        assert a["returns"] == b["returns"] and a["eval_after"] == b["eval_after"]


def test_reinforce_impls_match_statistically_with_philox_sampling(rl_runs):
    torch_final = [r["eval_after"] for r in rl_runs[("torch", None)]]
    philox_final = [r["eval_after"] for r in rl_runs[("torchdist_fast", "philox")]]
    assert torch_final != philox_final
    diff = statistics.mean(p - t for p, t in zip(philox_final, torch_final))
    assert abs(diff) < 5 * RL_PAIRED_SD / math.sqrt(len(SEEDS))


def test_reinforce_loss_is_the_score_function_estimate():
    # d/dtheta of the surrogate == -mean_i sum_t dlogp_t,i * (G_t,i - mean of the other G_t)
    theta = torch.zeros(3, 2, requires_grad=True)  # horizon 3, 2 episodes, logp = theta
    rewards = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    reinforce.reinforce_loss(theta, rewards).backward()
    to_go = torch.tensor([[2.0, 3.0], [1.0, 3.0], [1.0, 1.0]])
    advantage = to_go - to_go.flip(1)  # with 2 episodes, the other episode is the baseline
    assert torch.equal(theta.grad, -advantage / 2)


# ---------------------------------------------------------------------------------- CLIs, tiny runs
def test_vae_cli_runs_both_and_writes_plot(tmp_path):
    out = tmp_path / "missing" / "parents"  # created, with its parents
    res = _cli("vae", "--device", "cpu", "--epochs", "2", "--dataset-size", "1024", "--batch-size", "256",
               "--eval-size", "256", "--hidden", "32", "--cpu-sampling", "philox", "--out", str(out))
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "ELBO torch" in res.stdout and "ELBO torchdist_fast" in res.stdout and "images/s" in res.stdout
    assert "CPU sampling: philox" in res.stdout and "saved for backward/step" in res.stdout
    png = (out / "vae_elbo.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    data = json.loads((out / "vae.json").read_text())
    assert [r["impl"] for r in data["runs"]] == ["torch", "torchdist_fast"]
    assert all(len(r["eval_elbo"]) == 3 and len(r["step_elbo"]) == 8 for r in data["runs"])


def test_reinforce_cli_runs_one_impl(tmp_path):
    res = _cli("reinforce", "--device", "cpu", "--impl", "torchdist_fast", "--envs", "16", "--horizon", "5",
               "--iterations", "3", "--eval-envs", "8", "--out", str(tmp_path), "--no-progress")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "return torchdist_fast" in res.stdout and "return torch " not in res.stdout and "env steps/s" in res.stdout
    assert (tmp_path / "reinforce_return.png").read_bytes()[:4] == b"\x89PNG"
    assert len(json.loads((tmp_path / "reinforce.json").read_text())["runs"][0]["returns"]) == 3


# ---------------------------------------------------------------------------------- SAC
TINY_SAC = dict(envs=32, horizon=20, steps=200, batch_size=128, hidden=32, eval_envs=128)


@pytest.fixture(scope="module")
def sac_runs():
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is many times faster on a busy 2-core machine
    try:
        return {key: [sac.train(sac.SACConfig(seed=seed, **TINY_SAC), key[0], CPU, cpu_sampling=key[1], progress=False,
                                verbose=False) for seed in range(3)] for key in RUNS}
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("key", RUNS, ids=lambda k: f"{k[0]}-{k[1] or 'default'}")
def test_sac_learns(sac_runs, key):
    for run in sac_runs[key]:
        assert run["eval_after"] > run["eval_before"] + 3  # about -21 -> -15 in 200 updates
        assert run["updates_per_s"] > 0 and run["actor_saved_bytes"] > 0


def test_sac_impls_identical_by_default_and_tanh_normal_saves_less(sac_runs):
    for a, b in zip(sac_runs[("torch", None)], sac_runs[("torchdist_fast", None)]):
        assert a["returns"] == b["returns"] and a["eval_after"] == b["eval_after"]
    # the Philox path keeps the inputs and a 16-byte stream position; torch's transforms keep more
    t, p = sac_runs[("torch", None)][0], sac_runs[("torchdist_fast", "philox")][0]
    assert p["actor_saved_bytes"] < t["actor_saved_bytes"]


def test_sac_cli_runs_one_impl(tmp_path):
    res = _cli("sac", "--device", "cpu", "--impl", "torchdist_fast", "--envs", "8", "--horizon", "5", "--steps", "12",
               "--batch-size", "16", "--eval-envs", "8", "--out", str(tmp_path), "--no-progress")
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr[-3000:]
    assert "updates/s" in res.stdout and "torchdist_fast" in res.stdout
    assert len(json.loads((tmp_path / "sac.json").read_text())["runs"][0]["returns"]) == 2


# ---------------------------------------------------------------------------------- distributed
def _dist_run(tmp_path, name, *args, launcher="spawn"):
    dump = tmp_path / f"{name}.json"
    flags = ["--device", "cpu", "--steps", "3", "--batch-size", "64", "--dataset-size", "1024", "--eval-size", "64",
             "--hidden", "16", "--dump-draws", str(dump), "--dump-count", "16", "--no-progress", *args]
    if launcher == "spawn":
        res = _cli("distributed", "--nproc", "2", *flags)
    else:  # torchrun, as python -m torch.distributed.run (the same launcher)
        res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                              "-m", "torchdist_fast.examples.distributed", *flags],
                             capture_output=True, text=True, timeout=120, env=_env())
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "parameters identical on all ranks: yes" in res.stdout
    return json.loads(dump.read_text())


@pytest.fixture(scope="module")
def philox_dumps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    return [_dist_run(tmp, f"run{i}", "--seed", "7", "--cpu-sampling", "philox") for i in range(2)]


def test_distributed_ranks_draw_different_noise(philox_dumps):
    ranks = philox_dumps[0]["ranks"]
    assert [r["seed"] for r in ranks] == [rank_seed(7, 0), rank_seed(7, 1)]
    for step in range(2):
        e0, e1 = (torch.tensor(r["draws"][step]["eps"]) for r in ranks)
        assert (e0 - e1).abs().min() > 1e-4  # no value shared, let alone the stream


def test_distributed_rerun_reproduces_every_rank(philox_dumps):
    first, second = philox_dumps
    assert first["ranks"] == second["ranks"]  # seeds and draws, bit for bit
    assert first["params_in_sync"] and first["world_size"] == 2


def test_distributed_noise_is_the_documented_philox_stream(philox_dumps):
    # rank r's first draw is the Philox stream at position (rank_seed(7, r), 0); the second
    # continues right after the first (batch 64 x latent 4 = 256 normals = 64 counters)
    for r in philox_dumps[0]["ranks"]:
        for step, offset in ((0, 0), (1, 64)):
            expected = torch.ops.torchdist_fast.philox_randn([16], rng.pack_seed_offset(r["seed"], offset), torch.float32, CPU)
            torch.testing.assert_close(torch.tensor(r["draws"][step]["eps"]), expected, atol=1e-5, rtol=1e-5)


def test_distributed_under_torchrun_default_sampling(tmp_path):
    data = _dist_run(tmp_path, "torchrun", "--seed", "7", launcher="torchrun")
    for r in data["ranks"]:
        # default CPU sampling: torch's normal_ on a generator seeded with the rank's seed
        expected = torch.empty(64, 4).normal_(generator=rank_generator(7, r["rank"])).flatten()[:16]
        torch.testing.assert_close(torch.tensor(r["draws"][0]["eps"]), expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- bad input
def _bad_in_process(main, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1 and err.rstrip().splitlines()[-1] == lines[0]
    return lines[0]


def _a_file(tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    return f


COMMON_BAD = [
    (["--device", "nope"], "unknown device"),
    (["--device", "meta"], "not supported"),
    (["--device", "cuda:99"], "cuda:99"),
    (["--batch-size", "0"], "positive integer"),
    (["--batch-size", "-4"], "positive integer"),
    (["--batch-size", "1.5"], "positive integer"),
    (["--seed", "-1"], "seed must be"),
    (["--lr", "0"], "positive number"),
    (["--lr", "nan"], "positive number"),
    (["--impl", "jax"], "invalid choice"),
    (["--cpu-sampling", "mt"], "invalid choice"),
]


@pytest.mark.parametrize("module", [vae, reinforce, sac])
@pytest.mark.parametrize("argv,message", COMMON_BAD, ids=lambda a: " ".join(a) if isinstance(a, list) else "")
def test_example_cli_bad_input(module, argv, message, capsys, tmp_path):
    if module in (reinforce, sac) and argv[0] == "--batch-size":
        argv = ["--envs", *argv[1:]]
    line = _bad_in_process(module.main, [*argv, "--out", str(tmp_path)], capsys)
    assert message in line
    assert not any(tmp_path.iterdir())  # refused before anything ran


def test_cuda_refused_without_cuda(capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert "CUDA is not available" in _bad_in_process(vae.main, ["--device", "cuda", "--out", str(tmp_path)], capsys)
    assert "CUDA is not available" in _bad_in_process(distributed.main, ["--device", "cuda"], capsys)


@pytest.mark.parametrize("module", [vae, reinforce])
def test_out_must_be_a_folder(module, capsys, tmp_path):
    f = _a_file(tmp_path)
    assert "not a folder" in _bad_in_process(module.main, ["--out", str(f)], capsys)
    assert "cannot create the folder" in _bad_in_process(module.main, ["--out", str(f / "sub")], capsys)


def test_example_specific_bad_input(capsys, tmp_path):
    out = ["--out", str(tmp_path)]
    assert "larger than --dataset-size" in _bad_in_process(vae.main, ["--batch-size", "300", "--dataset-size", "200", *out], capsys)
    assert "at least 2" in _bad_in_process(reinforce.main, ["--envs", "1", *out], capsys)
    assert "positive integer" in _bad_in_process(reinforce.main, ["--iterations", "0", *out], capsys)
    assert "positive integer" in _bad_in_process(vae.main, ["--epochs", "0", *out], capsys)


@pytest.mark.parametrize("argv,message", [
    (["--nproc", "0"], "positive integer"),
    (["--batch-size", "0"], "positive integer"),
    (["--device", "tpu"], "invalid choice"),
    (["--batch-size", "600", "--dataset-size", "1000"], "larger than --dataset-size"),
    (["--dump-draws", "{tmp}"], "is a folder"),
    (["--dump-draws", "{tmp}/missing/draws.json"], "does not exist"),
])
def test_distributed_cli_bad_input(argv, message, capsys, tmp_path):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert message in _bad_in_process(distributed.main, argv, capsys)


@pytest.mark.parametrize("module,argv", [
    ("vae", ["--batch-size", "0"]),
    ("reinforce", ["--device", "nope"]),
    ("distributed", ["--nproc", "0"]),
])
def test_cli_error_is_one_line_without_traceback(module, argv):
    res = _cli(module, *argv, timeout=60)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith(f"python -m torchdist_fast.examples.{module}: error: ")


# ---------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_examples_learn_on_cuda():
    cuda = torch.device("cuda")
    for impl in ("torch", "torchdist_fast"):
        run = _run_vae(impl, 0, device=cuda)
        assert run["eval_elbo"][-1] > run["eval_elbo"][0] + 40 and run["peak_bytes"] > 0
        run = _run_rl(impl, 0, device=cuda)
        assert run["eval_after"] > run["eval_before"] + 8
