"""The README's headline table and the benchmarks page's summary are exactly what the committed
results files say."""
import json
import re
from pathlib import Path

from torchdist_fast.tools import bench

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench-summary:start -->", "<!-- bench-summary:end -->"


def test_benchmarks_page_summary_matches_committed_results():
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    block = page.split(START, 1)[1].split(END, 1)[0]
    paths = re.findall(r"`(benchmarks/results/[^`]+\.json)`", block)
    assert paths, "the summary must name its results file"
    expected = "".join(
        bench.summary_markdown(json.loads((ROOT / p).read_text()), p) for p in dict.fromkeys(paths)
    )
    assert block.strip() == expected.strip()


def test_results_files_are_complete():
    files = sorted((ROOT / "benchmarks" / "results").glob("results-*.json"))
    assert files, "no recorded results"
    for f in files:
        data = json.loads(f.read_text())
        assert data["schema_version"] == bench.SCHEMA_VERSION
        assert data["environment"]["devices"] and data["environment"]["torch"]
        assert f.with_suffix(".png").exists()


def test_committed_compile_rows_ran_compiled_code():
    """Every torch.compile row of a recorded run carries the runner's evidence that it ran one
    compiled graph: no graph break, no recompile while timed, the compiled region seen running."""
    for f in sorted((ROOT / "benchmarks" / "results").glob("results-*.json")):
        rows = [r for r in json.loads(f.read_text())["results"] if r["impl"] == "compile"]
        assert rows, f
        for r in rows:
            ev = r["extra"]["compile"]
            assert ev["graph_breaks"] == 0 and ev["recompiles_while_timed"] == 0 and ev["compiled_region_ran"], (f, r)


def test_readme_headline_is_generated_from_the_committed_results():
    from torchdist_fast.tools import headline

    block = headline.readme_block((ROOT / "README.md").read_text())
    assert block.strip() == headline.headline().strip()
    if not headline.gpu_headline_files():  # no GPU run committed: the table must say it predicts
        assert "Predicted, not measured" in block


def test_headline_prefers_a_committed_gpu_run(tmp_path, monkeypatch):
    from torchdist_fast.tools import headline

    run = tmp_path / "benchmarks" / "results" / "gpu-20990101"
    run.mkdir(parents=True)
    (run / "headline.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "table": "| op | x eager |\n|---|---|\n| randn | 9.9 |"}))
    monkeypatch.setattr(headline, "ROOT", tmp_path)
    monkeypatch.setattr(headline, "RESULTS", tmp_path / "benchmarks" / "results")
    text = headline.headline()
    assert text.startswith("**Measured** on NVIDIA H100 80GB HBM3 (`benchmarks/results/gpu-20990101/headline.json`)")
    assert "| randn | 9.9 |" in text and "Predicted" not in text
