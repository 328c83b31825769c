"""Every code block of README.md runs as written, in order, from the repository root.

A ``bash`` or ``python`` block runs unless the line before it says ``<!-- readme-test: skip: <reason> -->`` (the
CI runner itself, installs from the network, a GPU, system packages); the reason says where that block is covered
instead, or why it cannot run in CI. The runs are shrunk only through documented environment knobs, never by
editing the text: ``FASTMTL_SET`` (extra config overrides, see README "Command line") makes the quickstart's demo a
few steps long.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"(?:<!-- readme-test: skip: (?P<skip>[^>]*?) -->\n)?```(?P<lang>\w*)\n(?P<code>.*?)```", re.S)
SHRINK = {"FASTMTL_SET": "epochs=1 max_steps_per_epoch=2 max_val_steps=1", "OMP_NUM_THREADS": "1"}


def blocks() -> list[tuple[str, str, str | None]]:
    """(language, code, skip reason or None) of every fenced block, in order."""
    text = (REPO / "README.md").read_text()
    return [(m["lang"], m["code"], m["skip"]) for m in FENCE.finditer(text)]


def test_every_code_block_is_run_or_says_why_not() -> None:
    found = blocks()
    runnable = [b for b in found if b[0] in ("bash", "python") and b[2] is None]
    assert len(runnable) >= 2, "the quickstart's main job and the Python API block must run"
    for lang, code, skip in found:
        assert lang in ("bash", "python", "bibtex", ""), f"unknown block language {lang!r}: {code[:60]}"
        if skip is not None:
            assert lang in ("bash", "python") and len(skip) > 10, f"a skipped block needs its reason: {code[:60]}"
        if lang == "":  # synopses: commands with placeholders, checked against the parser by test_cli_surface
            assert all(line.startswith("fastmtl ") for line in code.splitlines()), code


def test_the_api_snippet_runs_its_models_in_eval_mode_without_autograd() -> None:
    """Users copy the snippet: every model it calls is in eval mode (``.eval()`` on ``create_model``;
    ``load_model`` returns one) and every call sits inside ``with torch.inference_mode():``."""
    code = next(c for lang, c, _ in blocks() if lang == "python" and "create_model(" in c)
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


@pytest.mark.slow
def test_readme_runs_as_written(tmp_path: Path) -> None:
    reason = _venv_matches_python3()
    if reason:
        pytest.skip(reason)
    demo = REPO / "fastmtl-demo"
    if demo.exists():
        pytest.skip(f"{demo} exists (a demo of your own?); the README's quickstart would overwrite it")
    env = {**os.environ, **SHRINK, "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    try:
        for i, (lang, code, skip) in enumerate(blocks()):
            if skip is not None or lang not in ("bash", "python"):
                continue
            cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
            done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
            assert done.returncode == 0, (
                f"README block {i} ({lang}) failed:\n{code}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
            if lang == "python":
                assert "(2, 1, 224, 224)" in done.stdout.replace("torch.Size([", "(").replace("])", ")")
    finally:
        shutil.rmtree(demo, ignore_errors=True)
