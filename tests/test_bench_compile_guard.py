"""The torch.compile column of the benchmark runner never reports eager code: a forward that
breaks the graph, recompiles on every call, or is not compiled at all gets its rows refused."""
import torch

from torchdist_fast.tools import bench

SIZES = {"cpu": [4, 16]}


def _run(monkeypatch, make_fwd=None, compile_fn=None):
    if make_fwd is not None:
        monkeypatch.setattr(bench, "make_fwd", make_fwd)
    if compile_fn is not None:
        monkeypatch.setattr(bench, "_compile", compile_fn)
    return bench.run(["cpu"], ["float32"], SIZES, ops=("log_prob",), modes=("fwd",), repeats=2)


def _assert_refused(data, needle):
    assert [(r["op"], r["mode"], r["size"]) for r in data["refused"]] == [("log_prob", "fwd", n) for n in SIZES["cpu"]]
    assert all(needle in r["reason"] for r in data["refused"]), data["refused"]
    assert not any(r["impl"] == "compile" for r in data["results"])
    # the other columns are still measured, with no ratio against a compile row that does not exist
    assert {r["impl"] for r in data["results"]} >= {"eager", "torchdist_fast"}
    assert all(r["ratio_vs_compile"] is None for r in data["results"])
    summary = bench.summary_markdown(data, "x.json")
    assert "| log_prob | fwd |" in summary and "refused" in summary
    assert "REFUSED" in bench.format_table(data)
    # the terminal summary says so in the x compile column
    rows = [ln.split() for ln in bench.summary_text(data).splitlines() if ln.startswith("log_prob")]
    assert len(rows) == 2 and all("refused" in row for row in rows)  # largest size; small batches


def test_graph_break_is_refused(monkeypatch):
    def make_fwd(cls, op):
        def fwd(loc, scale, value):
            d = cls(loc, scale)
            torch._dynamo.graph_break()
            return (d.log_prob(value),)
        return fwd

    _assert_refused(_run(monkeypatch, make_fwd), "Unsupported")


def test_recompile_on_every_call_is_refused(monkeypatch):
    state = {"k": ""}

    def make_fwd(cls, op):
        def fwd(loc, scale, value):
            state["k"] += "x"  # a guard on a value that changes every call: dynamo recompiles each time
            return (cls(loc, scale).log_prob(value) * len(state["k"]),)
        return fwd

    _assert_refused(_run(monkeypatch, make_fwd), "RecompileLimit")


def test_uncompiled_function_is_refused(monkeypatch):
    """If "compile" ever ran plain eager code (here: torch.compile replaced by the identity), the
    runner has no compiled graph and no compiled region to show, and says so."""
    _assert_refused(_run(monkeypatch, compile_fn=lambda fn: fn), "eager")


def test_compile_failure_is_refused(monkeypatch):
    def broken(fn):
        raise RuntimeError("no C++ compiler")

    _assert_refused(_run(monkeypatch, compile_fn=broken), "no C++ compiler")


def test_guard_gives_each_row_fresh_state():
    """Two guards in a row: the second starts from zero graphs (torch._dynamo.reset), and its
    forward is a different code object from the first, so no cache is shared."""
    loc, scale, value = torch.randn(8), torch.rand(8) + 0.5, torch.randn(8)
    g1 = bench.CompileGuard(torch.distributions.Normal, "log_prob", "fwd")
    g1.work(loc, scale, value, None, None)
    assert g1.graphs() == 1
    g2 = bench.CompileGuard(torch.distributions.Normal, "rsample", "fwd")
    assert g2.graphs() == 0
    g2.work(loc, scale, value, None, None)
    g2.check_clean()
    g2.check_ran_compiled((loc, scale, value, None, None))
    assert g2.graphs() == 1
    assert g1.compiled_fwd is not g2.compiled_fwd
    assert bench.make_fwd(torch.distributions.Normal, "rsample").__code__ is not \
        bench.make_fwd(torch.distributions.Normal, "rsample").__code__


def test_guard_matches_eager_results():
    """The compiled forward computes what eager computes (log_prob is deterministic)."""
    loc, scale, value = torch.randn(32), torch.rand(32) + 0.5, torch.randn(32)
    g = bench.CompileGuard(torch.distributions.Normal, "log_prob", "fwd")
    (got,) = g.work(loc, scale, value, None, None)
    (want,) = bench.make_work(torch.distributions.Normal, "log_prob", "fwd")(loc, scale, value, None, None)
    torch.testing.assert_close(got, want)


def test_refusal_reason_is_one_line():
    assert bench._first_line(RuntimeError("first\nsecond")) == "RuntimeError: first"
    assert bench._first_line(bench.CompileRefused("")) == "CompileRefused: "
