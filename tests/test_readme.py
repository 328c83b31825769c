"""Every code block of README.md and docs/*.md runs as written, in order, from the repository root.

A ``bash`` or ``python`` block runs unless the line before it says ``<!-- readme-test: skip: <reason> -->`` (the
CI runner itself, installs from the network, a GPU, system packages, hours of training); the reason says where that
block is covered instead, or why it cannot run in CI. The README runs first: the docs' commands continue from the
demo its quickstart leaves in ``fastmtl-demo/``. The runs are shrunk only through documented environment knobs,
never by editing the text: ``FASTMTL_SET`` (extra config overrides, see docs/TRAINING.md "Configs") makes every
training run a few steps long.

Blocks that are shown, not run: ``text`` (diagrams, formulas, signatures), ``bibtex``, the README's command
synopses (no language; checked against the parser by tests/test_cli_surface.py) and the commands that
``experiments/run.py report`` writes into its generated section of docs/RESULTS.md (each trained a table row).
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

from fastmtl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
FENCE = re.compile(
    r"^(?:<!-- readme-test: skip: (?P<skip>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)^```$", re.S | re.M
)
GENERATED = re.compile(r"<!-- results:begin .*?<!-- results:end -->", re.S)  # experiments/run.py report's section
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
SHRINK = {"FASTMTL_SET": "epochs=1 max_steps_per_epoch=2 max_val_steps=1", "OMP_NUM_THREADS": "1"}
SHOWN = ("text", "bibtex", "")
README_MAX_LINES = 220  # issue 25: a README of about 200 lines; the reference lives in docs/


class Block(NamedTuple):
    page: Path
    line: int
    lang: str
    code: str
    skip: str | None
    generated: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line} ({self.lang or 'no language'})"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, in order."""
    text = page.read_text()
    regions = [m.span() for m in GENERATED.finditer(text)]
    found = []
    for m in FENCE.finditer(text):
        line = text.count("\n", 0, m.start("lang")) + 1
        generated = any(a <= m.start() < b for a, b in regions)
        found.append(Block(page, line, m["lang"], m["code"], m["skip"], generated))
    return found


def runnable(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.lang in ("bash", "python") and b.skip is None]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_code_block_is_run_or_says_why_not(page: Path) -> None:
    for block in blocks(page):
        assert block.lang in ("bash", "python", *SHOWN), f"{block}: unknown block language: {block.code[:60]}"
        if block.skip is not None:
            assert block.lang in ("bash", "python") and len(block.skip) > 10, f"{block}: a skip needs its reason"
        if block.lang == "" and block.generated:  # the commands behind a generated table's rows
            assert all(line.startswith("python experiments/run.py ") for line in block.code.splitlines()), block
        elif block.lang == "":  # synopses: commands with placeholders, checked against the parser
            assert page == README, f"{block}: a block without a language; name it (bash, python, text)"
            assert all(line.startswith("fastmtl ") for line in block.code.splitlines()), block
    assert len(FENCE.findall(page.read_text())) == page.read_text().count("\n```") // 2, f"{page}: unpaired fence"


def test_the_readme_runs_its_main_job_and_api_and_stays_short() -> None:
    assert len(runnable(README)) >= 2, "the quickstart's main job and the Python API block must run"
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move reference text to docs/"


def test_the_api_snippet_runs_its_models_in_eval_mode_without_autograd() -> None:
    """Users copy the snippet: every model it calls is in eval mode (``.eval()`` on ``create_model``;
    ``load_model`` returns one) and every call sits inside ``with torch.inference_mode():``."""
    code = next(b.code for b in blocks(README) if b.lang == "python" and "create_model(" in b.code)
    tree = ast.parse(code)
    in_eval = {}  # model variable -> built in eval mode
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            text = ast.unparse(node.value)
            if "create_model(" in text or "load_model(" in text:
                in_eval[node.targets[0].id] = text.endswith(".eval()") or "load_model(" in text
    calls = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.With):
            guarded = guarded or any("torch.inference_mode()" == ast.unparse(i.context_expr) for i in node.items)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in in_eval:
            calls.append((node.func.id, guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    assert len(calls) >= 2, calls  # the fresh model and the trained one are both run
    assert all(guarded and in_eval[name] for name, guarded in calls), (calls, in_eval)


def _anchors(page: Path) -> set[str]:
    """GitHub's heading ids of ``page``: lower case, punctuation but ``-`` and ``_`` dropped, spaces to ``-``."""
    headings = re.findall(r"^#+ (.+)$", FENCE.sub("", page.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _links(page: Path) -> Iterator[tuple[str, Path, str]]:
    """(link as written, target file, anchor or "") of every relative link of ``page``, code blocks left out."""
    for m in LINK.finditer(FENCE.sub("", page.read_text())):
        target = m["target"]
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        yield target, (page.parent / path).resolve() if path else page, anchor


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    for target, path, anchor in _links(page):
        assert path.exists(), f"{page.name}: link {target}: no file {path}"
        assert REPO in path.parents or path == REPO, f"{page.name}: link {target} leaves the repository"
        if anchor:
            assert path.suffix == ".md" and anchor in _anchors(path), f"{page.name}: link {target}: no such heading"


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_cli_reference_documents_every_option_of_every_command() -> None:
    """docs/CLI.md has a ``## fastmtl <command>`` section per command naming each of its options (their first
    long spelling), and the global options before the commands."""
    text = (REPO / "docs" / "CLI.md").read_text()
    sections = dict(re.findall(r"^## fastmtl ([\w-]+)\n(.*?)(?=^## |\Z)", text, re.S | re.M))
    parsers = _subparsers()
    assert set(sections) == set(parsers), f"docs/CLI.md: sections {sorted(sections)}, commands {sorted(parsers)}"
    for command, parser in parsers.items():
        for action in parser._actions:
            flag = action.option_strings[0] if action.option_strings else None
            if flag and action.dest != "help":
                assert f"`{flag}" in sections[command], f"docs/CLI.md, fastmtl {command}: no {flag}"
    for action in build_parser()._actions:
        if action.option_strings and action.dest != "help":
            assert f"`fastmtl {action.option_strings[0]}" in text, f"CLI.md: no global {action.option_strings}"


def _venv_matches_python3() -> str | None:
    """Why the quickstart cannot run here, or None: it installs into ./.venv with the machine's python3."""
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        return f"the quickstart installs into {REPO / '.venv'}; these tests run from {sys.prefix} (run .ci/run)"
    python3 = shutil.which("python3")
    if python3 is None:
        return "no python3 on PATH"
    version = subprocess.run([python3, "-c", "import sys; print(sys.version.split()[0])"], capture_output=True,
                             text=True).stdout.strip()  # fmt: skip
    base = re.search(r"^version\s*=\s*(\S+)", (REPO / ".venv" / "pyvenv.cfg").read_text(), re.M)
    if base is None or base.group(1) != version:
        return f"python3 is {version}, but .venv was made with {base and base.group(1)}: the quickstart would remake it"
    return None


def _run(block: Block, env: dict[str, str]) -> str:
    """Runs one block as a user would paste it; returns its output."""
    cmd = ["bash", "-euo", "pipefail", "-c", block.code] if block.lang == "bash" else [sys.executable, "-c", block.code]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"{block} failed:\n{block.code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Runs the README's blocks (the demo, then the API snippet that loads its model); yields the environment the
    docs' blocks run in, and removes the demo folder at the end. Their cache (decoded images, ONNX files) is a
    throw-away folder: this fixture is set up before the per-test private cache of conftest.py."""
    reason = _venv_matches_python3()
    if reason:
        pytest.skip(reason)
    demo = REPO / "fastmtl-demo"
    if demo.exists():
        pytest.skip(f"{demo} exists (a demo of your own?); the README's quickstart would overwrite it")
    cache = tmp_path_factory.mktemp("docs_cache")
    env = {
        **os.environ,
        **SHRINK,
        "FASTMTL_CACHE": str(cache),
        "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
    }
    try:
        for block in runnable(README):
            out = _run(block, env)
            if block.lang == "python":
                assert "(2, 1, 224, 224)" in out.replace("torch.Size([", "(").replace("])", ")"), out
        yield env
    finally:
        shutil.rmtree(demo, ignore_errors=True)
        shutil.rmtree(cache, ignore_errors=True)


@pytest.mark.slow
def test_readme_runs_as_written(quickstart: dict[str, str]) -> None:
    assert (REPO / "fastmtl-demo" / "train" / "best.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("page", [p for p in DOCS if runnable(p)], ids=lambda p: p.name)
def test_docs_run_as_written(page: Path, quickstart: dict[str, str]) -> None:
    for block in runnable(page):
        _run(block, quickstart)
