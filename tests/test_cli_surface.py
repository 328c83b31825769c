"""The command line's surface: synopses that match the parser, one flag vocabulary, help on every option, and
mistakes answered before PyTorch is imported."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastmtl.cli
from fastmtl.cli import build_parser

REPO = Path(__file__).resolve().parents[1]


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def _options(p: argparse.ArgumentParser) -> dict[str, bool]:
    """Primary flag (the first long option) -> required, for every option but --help."""
    return {a.option_strings[0]: a.required for a in p._actions if a.option_strings and a.dest != "help"}


def _synopsis_flags(line: str) -> dict[str, bool]:
    """Flag -> required in one synopsis line (a flag inside [...] is optional)."""
    flags, depth = {}, 0
    for token in re.findall(r"\[|\]|--[a-z][a-z-]*", line.split("#")[0]):
        depth += {"[": 1, "]": -1}.get(token, 0)
        if token.startswith("--"):
            flags[token] = depth == 0
    return flags


def _synopses(text: str) -> dict[str, str]:
    return {m.group(1): m.group(0) for m in re.finditer(r"^\s*fastmtl ([\w-]+)(?![\w-]).*$", text, re.MULTILINE)}


@pytest.mark.parametrize("source", ["README.md", "fastmtl/cli.py"])
def test_synopses_match_the_parser(source: str) -> None:
    lines = _synopses((REPO / source).read_text())
    parsers = _subparsers()
    assert set(parsers) <= set(lines), f"{source} lacks a synopsis for {set(parsers) - set(lines)}"
    for command, parser in parsers.items():
        assert _synopsis_flags(lines[command]) == _options(parser), f"{source}: synopsis of {command!r}"


def test_one_output_flag_everywhere_with_the_alias() -> None:
    for command, parser in _subparsers().items():
        strings = {s for a in parser._actions for s in a.option_strings}
        if command != "info":
            assert {"--out", "--output"} <= strings, command
    args = build_parser().parse_args(["predict", "--checkpoint", "c", "--input", "i", "--output", "o"])
    assert args.out == "o"


def test_every_option_has_help_and_abbreviations_are_refused(capsys) -> None:
    for command, parser in _subparsers().items():
        assert not parser.allow_abbrev
        for action in parser._actions:
            assert action.help, f"{command} {action.option_strings} has no help text"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "--checkpoint", "c", "--out", "m.pt2", "--static"])
    assert "unrecognized arguments: --static" in capsys.readouterr().err  # not taken for --static-batch


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--checkpoint", "missing.safetensors", "--input", ".", "--out", "o"], "checkpoint missing"),
        (["predict", "--checkpoint", "README.md", "--input", "no/such/*.png", "--out", "o"], "input no/such"),
        (["predict", "--checkpoint", "README.md", "--input", ".", "--out", "o", "--threshold", "1.5"], "--threshold"),
        (["predict", "--checkpoint", "README.md", "--input", ".", "--out", "o", "--img-size", "100"], "--img-size"),
        (["eval", "--checkpoint", "README.md", "--data-root", "README.md", "--out", "o"], "is a file"),
        (["export", "--checkpoint", "README.md", "--out", "m.pt2", "--batch-size", "0"], "--batch-size"),
        (["train", "--config", "missing.toml"], "missing.toml"),
        (["train", "--config", "quick", "--set", "lr=abc"], "lr"),
        (["--threads", "0", "info"], "--threads"),
        (["--threads", "100000", "info"], "--threads must be between 1 and"),  # torch segfaulted on this
        (["predict", "--checkpoint", "README.md", "--input", ".", "--out", "o", "--device", "foo"], "--device 'foo'"),
        (["predict", "--checkpoint", "README.md", "--input", ".", "--out", "o", "--batch-size", "99999999"], "65536"),
        (["export", "--checkpoint", "README.md", "--out", "no/such/dir/m.pt2"], "create no/such/dir first"),
    ],
)
def test_mistakes_are_answered_before_torch_is_imported(argv: list[str], message: str) -> None:
    code = (
        "import sys; from fastmtl.cli import main; status = main(sys.argv[1:]); print(status, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.startswith("fastmtl: error: ") and message in done.stderr, done.stderr


def test_module_docstring_is_the_help_reference() -> None:
    assert "--output" in fastmtl.cli.__doc__ and "allow" not in fastmtl.cli.__doc__.lower()
