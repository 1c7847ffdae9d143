"""The README's headline results table, generated from a committed results file.

    python -m torchdist_fast.tools.headline            # print the table
    python -m torchdist_fast.tools.headline --write    # rewrite it in README.md (between the markers)

Source: GPU measurements where a first-contact run has been committed
(``benchmarks/results/gpu-*/headline.json``, newest first); until then the static cost model's
predictions (``benchmarks/results/cost-model-sm90.json``), labelled as predictions.
``tests/test_readme_results.py`` checks that README.md holds exactly what this prints.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- headline:start -->", "<!-- headline:end -->"

# (label, cost-model variant name with {dtype}) in reading order
PREDICTED_ROWS = (
    ("randn", "philox_randn {dtype}"),
    ("rsample forward, scalar loc/scale", "rsample_fwd {dtype} scalar"),
    ("rsample + log_prob forward, scalar loc/scale", "rsample_fwd+log_prob {dtype} scalar"),
    ("rsample + log_prob forward, row broadcast (D = 768)", "rsample_fwd+log_prob {dtype} row"),
    ("rsample + log_prob backward", "rsample_bwd (z, log_prob) {dtype} scalar"),
    ("log_prob forward", "log_prob_fwd {dtype} contiguous"),
    ("log_prob backward", "log_prob_bwd {dtype} contiguous"),
    ("KL(Normal ‖ Normal) forward", "kl_fwd {dtype} contiguous"),
    ("TanhNormal rsample + log_prob forward", "tanh_normal_fwd+log_prob {dtype} contiguous"),
)
DTYPES = ("fp32", "bf16")


def gpu_headline_files() -> list[Path]:
    return sorted(RESULTS.glob("gpu-*/headline.json"), reverse=True)


def predicted_table(data: dict, source: str) -> str:
    meta = data["meta"]
    rows = {r["variant"]: r for r in data["rows"]}
    n = meta["n"]
    lines = [
        f"**Predicted, not measured** (no GPU run is committed yet): the static cost model "
        f"(`{source}`), {meta['target']} as an H100 SXM, N = 2^{n.bit_length() - 1} elements, "
        f"{meta['copy_bw'] / 1e12:.1f} TB/s copy bandwidth, {meta['efficiency']:.0%} issue efficiency, "
        f"Triton {meta['triton']}. \"% of copy\": the predicted time of a copy moving the same bytes "
        f"over the kernel's predicted time.",
        "",
        "| kernel | " + " | ".join(f"{d} instr/elem | {d} time | {d} % of copy" for d in DTYPES) + " |",
        "|---|" + "---:|" * (3 * len(DTYPES)),
    ]
    for label, variant in PREDICTED_ROWS:
        cells = []
        for dtype in DTYPES:
            r = rows.get(variant.format(dtype=dtype))
            cells += (["-"] * 3 if r is None else
                      [f"{r['instr_per_elem']:.1f}", f"{r['predicted_us']:.1f} µs", f"{r['pct_copy_bw']:.0f} %"])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def measured_table(data: dict, source: str) -> str:
    """A first-contact run's headline: written by the GPU check (``table`` holds its Markdown)."""
    return f"**Measured** on {data['device']} (`{source}`):\n\n{data['table'].rstrip()}\n"


def headline() -> str:
    measured = gpu_headline_files()
    if measured:
        path = measured[0]
        return measured_table(json.loads(path.read_text()), path.relative_to(ROOT).as_posix())
    from .cost_model import RESULTS_JSON

    return predicted_table(json.loads(RESULTS_JSON.read_text()), RESULTS_JSON.relative_to(ROOT).as_posix())


def readme_block(text: str) -> str:
    if START not in text or END not in text:
        raise ValueError(f"README.md lacks the markers {START} ... {END}")
    return text.split(START, 1)[1].split(END, 1)[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m torchdist_fast.tools.headline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the table in README.md")
    args = parser.parse_args(argv)
    table = headline()
    if not args.write:
        print(table, end="")
        return 0
    text = README.read_text()
    old = readme_block(text)
    README.write_text(text.replace(START + old + END, f"{START}\n{table}{END}"))
    print(f"wrote the headline table into {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
