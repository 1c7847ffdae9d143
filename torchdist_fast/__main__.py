"""``python -m torchdist_fast``: what torchdist_fast buys on this machine.

For every available device: the stream check (Triton words == reference words, normals to
float rounding; on CPU only under TRITON_INTERPRET=1), then the comparison of
torch.distributions.Normal eager, the same code under torch.compile, and torchdist_fast.Normal
for sample, rsample, log_prob and rsample_and_log_prob, forward and forward+backward (``--op-modes``
picks rows, e.g. ``randn:fwd``: torch.randn against torchdist_fast.randn), over sizes
(2^0..2^24 on CPU, 2^0..2^28 on a GPU; the sizes up to 2^12 are the small-batch rows, where the
host time per call decides). Prints the answer first (each op and mode at the largest size: median
time, how many times faster than eager and than torch.compile; the host time per call at the small
sizes), then where it wrote the full table (Markdown), the JSON and the plot (speedup against size).
A torch.compile row that did not run compiled code (fallback, graph break, recompile) is refused,
not reported.
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys

DEFAULT_SIZES = {"cpu": list(range(0, 25, 2)), "cuda": list(range(0, 29, 2))}
QUICK_SIZES = {"cpu": [0, 12, 16], "cuda": [0, 12, 20, 24]}


def _parse_size(text: str) -> int:
    try:
        value = 2 ** int(text[2:]) if text.startswith("2^") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be an integer or 2^k, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return value


def _parse_op_mode(text: str) -> tuple:
    from torchdist_fast.tools.bench import parse_op_mode

    try:
        return parse_op_mode(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _stream_check(device: str) -> str:
    import torch

    from torchdist_fast import reference, rng

    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "stream: CPU uses the reference (run with TRITON_INTERPRET=1 to check the Triton kernel on CPU)"
    import torchdist_fast
    from torchdist_fast.triton_kernels.philox import philox_words

    seed, offset, n = 0x5EED_1234_ABCD, 2**32 - 3, 1000
    words_ok = torch.equal(philox_words(n // 4, seed, offset, 0, device).cpu(), reference.philox_words(n // 4, seed, offset))
    with torchdist_fast.cpu_kernel("triton" if device == "cpu" else torchdist_fast.get_cpu_kernel()):
        z = torch.ops.torchdist_fast.philox_randn([n], rng.pack_seed_offset(seed, offset), torch.float32, torch.device(device))
    err = (z.cpu() - reference.philox_randn((n,), seed, offset)).abs().max().item()
    verdict = "OK" if words_ok and err < 1e-5 else "MISMATCH"
    return f"stream: Triton words == reference words: {words_ok}; max |normal diff| {err:.1e} -> {verdict}"


def _progress(total: int):
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        bar = tqdm(total=total, unit="run", file=sys.stderr, dynamic_ncols=True)

        def step(label):
            bar.set_postfix_str(label, refresh=False)
            bar.update(1)
            if bar.n == bar.total:
                bar.close()

        return step
    state = {"n": 0}

    def step(label):
        state["n"] += 1
        print(f"\r[{state['n']}/{total}] {label:70s}", end="" if state["n"] < total else "\n", file=sys.stderr, flush=True)

    return step


def main(argv=None) -> int:
    from torchdist_fast.tools.bench import ALL_OPS, DTYPES_CHOICES, MODES, OPS

    parser = argparse.ArgumentParser(prog="python -m torchdist_fast", description=__doc__.splitlines()[0])
    parser.add_argument("--devices", nargs="+", choices=["cpu", "cuda"], help="default: every available one")
    parser.add_argument("--sizes", nargs="+", type=_parse_size, help="element counts, e.g. 4096 or 2^20")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=DTYPES_CHOICES)
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=ALL_OPS,
                        help="default: the Normal ops; also kl, event_log_prob, tanh_rsample_and_log_prob")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--op-modes", nargs="+", type=_parse_op_mode, metavar="OP:MODE",
                        help="exactly these rows instead of --ops x --modes, e.g. randn:fwd log_prob:fwd+bwd")
    parser.add_argument("--repeats", type=int, help="timed calls per measurement (default by size)")
    parser.add_argument("--quick", action="store_true", help="a few small sizes: a smoke run in about a minute")
    parser.add_argument("--out", default="out", help="folder for the full table (.md), the JSON and the plot (.png) (default ./out)")
    parser.add_argument("--table", action="store_true", help="also print the full table (every row, every column)")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be at least 1")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        parser.error(f"--out {args.out!r} exists and is not a folder")

    import torch

    import torchdist_fast
    from torchdist_fast.tools import bench

    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = args.devices or available
    for d in devices:
        if d not in available:
            parser.error(f"device {d!r} is not available on this machine (available: {', '.join(available)})")
    sizes = {d: args.sizes or [2**k for k in (QUICK_SIZES if args.quick else DEFAULT_SIZES)[d]] for d in devices}
    repeats = args.repeats or (3 if args.quick else None)

    env = bench.environment(devices)
    print(f"torchdist_fast {torchdist_fast.__version__} | torch {env['torch']} | triton {env['triton']} | python {env['python']}")
    for d in devices:
        print(f"{d}: {env['devices'][d]} | {_stream_check(d)}")
    data = bench.run(devices, args.dtypes, sizes, tuple(args.ops), tuple(args.modes), repeats, progress=_progress,
                     op_modes=args.op_modes)
    print()
    print(bench.summary_text(data), end="")
    if args.table:
        print(f"\n{bench.format_table(data)}\n")
    warm = [r["compile_warmup_s"] for r in data["results"] if r["compile_warmup_s"]]
    if warm:
        print(f"torch.compile warm-up (excluded from the timings): {sum(warm):.1f} s over {len(warm)} first calls")
    if data["refused"]:
        reasons = list(dict.fromkeys(r["reason"] for r in data["refused"]))
        print(f"torch.compile rows refused (fallback, graph break or recompile; not reported): {len(data['refused'])}, "
              f"{len(reasons)} reason(s), e.g. {reasons[0]}")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = bench.write_outputs(data, args.out, f"results-{'-'.join(devices)}-{stamp}")
    print(f"full table: {paths['table']}")
    print(f"JSON:       {paths['json']}")
    print(f"plot:       {paths['plot']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
