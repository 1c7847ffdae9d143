"""Every code block of the docs (docs/*.md and README.md) runs, or says why it cannot.

Python blocks run in order, one subprocess per page (the blocks of a page share one namespace,
as a reader running them one after the other would), on CPU with Triton's interpreter. A block
that cannot run here carries a marker on the line before its fence::

    <!-- docs-test: skip (needs a CUDA device) -->

Shell blocks (bash, sh, console) must carry such a marker: they install packages or run for
minutes; the commands themselves are run by CI (.ci/run) or by tests of their own.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
RUNNABLE = {"python", "py"}
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+)\s*([\w+-]*)")
MARKER = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+?)\)\s*-->")


def code_blocks(path: Path) -> list[dict]:
    """Fenced blocks of a Markdown page: language, line of the first code line (1-based), code, skip
    reason or None."""
    lines = path.read_text().splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m.group(1), m.group(2), m.group(3).lower()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1
        before = lines[start - 2] if start >= 2 else ""
        skip = MARKER.search(before)
        blocks.append({"lang": lang, "line": start + 1, "code": "\n".join(body) + "\n",
                       "skip": skip.group(1) if skip else None})
    return blocks


def page_id(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


RUNNER = r"""
import json, sys
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__docs__"}
for b in blocks:
    exec(compile(b["code"], f"{b['page']}:{b['line']}", "exec"), namespace)
"""


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_python_blocks_run(page):
    blocks = [dict(b, page=page_id(page)) for b in code_blocks(page) if b["lang"] in RUNNABLE and b["skip"] is None]
    if not blocks:
        pytest.skip("no runnable Python block on this page")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    res = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True, text=True,
                         cwd=ROOT, env=env, timeout=600)
    assert res.returncode == 0, f"{page_id(page)}: a code block failed\n{res.stderr[-4000:]}"


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_block_runs_or_says_why_not(page):
    for b in code_blocks(page):
        if b["lang"] in SHELL:
            assert b["skip"], f"{page_id(page)}:{b['line']}: a {b['lang']} block needs a docs-test marker saying why it is not run"
        if b["skip"] is not None:
            assert b["lang"] in RUNNABLE | SHELL, f"{page_id(page)}:{b['line']}: a marker on a {b['lang'] or 'plain'} block"


def test_the_parser_sees_markers_and_fences(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("text\n<!-- docs-test: skip (needs a CUDA device) -->\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
                    "- item\n\n    ```python\n    y = 2\n    ```\n")
    blocks = code_blocks(page)
    assert [(b["lang"], b["line"], b["skip"]) for b in blocks] == [
        ("python", 4, "needs a CUDA device"), ("bash", 8, None), ("python", 13, None)]
    assert blocks[2]["code"] == "y = 2\n"


COMMAND = re.compile(r"python3? -m (torchdist_fast[\w.]*)")
COMMAND_PAGES = PAGES + [ROOT / "benchmarks" / "README.md"]


def documented_commands() -> dict:
    """Every ``python -m torchdist_fast...`` a page names: module -> the pages naming it."""
    found: dict = {}
    for page in COMMAND_PAGES:
        for module in COMMAND.findall(page.read_text()):
            if not module.endswith("."):  # ``python -m torchdist_fast.tools.<name>``: a pattern, not a command
                found.setdefault(module, set()).add(page_id(page))
    return found


def missing_commands(commands: dict) -> dict:
    """The documented commands ``python -m`` would not find (module -> pages), found without
    importing the tools (importlib locates the file; a package needs its ``__main__``)."""
    import importlib.util

    missing = {}
    for module, pages in commands.items():
        try:
            spec = importlib.util.find_spec(module)
        except ModuleNotFoundError:  # a parent package that does not exist
            spec = None
        if spec is None or (spec.submodule_search_locations is not None
                            and importlib.util.find_spec(module + ".__main__") is None):
            missing[module] = sorted(pages)
    return missing


def test_documented_commands_exist():
    """Each command the docs name is a runnable module: no page names a path that moved."""
    commands = documented_commands()
    assert "torchdist_fast" in commands and "torchdist_fast.tools.gpu_check" in commands
    assert not missing_commands(commands)


def test_the_command_check_sees_a_moved_path(tmp_path):
    assert missing_commands({"torchdist_fast.gpu_check_that_moved": {"page.md"},
                             "torchdist_fast.nowhere.tool": {"page.md"},
                             "torchdist_fast.tools.aot": {"page.md"}}) == {
        "torchdist_fast.gpu_check_that_moved": ["page.md"], "torchdist_fast.nowhere.tool": ["page.md"]}
