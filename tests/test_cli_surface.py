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
        (["eval", "--checkpoint", "README.md", "--kind", "isic", "--out", "o"], "unknown dataset kind 'isic'"),
        (["check-data", "--data-root", ".", "--kind", "coco"], "valid kinds: isic2017, retouch, oct, folder"),
        (["train", "--config", "quick", "--set", "data=isic"], "data.kind='isic' is not valid; expected one of auto"),
        (["check-data", "--data-root", "docs"], "cannot tell the dataset kind of docs: expected ISIC-2017_"),
        (["eval", "--checkpoint", "README.md", "--data-root", "docs", "--out", "o"], "cannot tell the dataset kind"),
        (["train", "--config", "quick", "--data-root", "docs"], "cannot tell the dataset kind of docs"),
    ],
)
def test_mistakes_are_answered_before_torch_is_imported(argv: list[str], message: str) -> None:
    _answered_without_torch(argv, message)


def _answered_without_torch(argv: list[str], message: str, *, absent: tuple[str, ...] = ()) -> str:
    """Runs ``main(argv)`` in a fresh interpreter (with the ``absent`` packages made uninstallable) and checks that
    it exits 2 with ``message`` on one error line, PyTorch never imported; returns the error line."""
    code = (
        f"import sys; sys.modules.update(dict.fromkeys({list(absent)!r})); from fastmtl.cli import main; "
        "status = main(sys.argv[1:]); print(status, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert done.stderr.startswith("fastmtl: error: ") and message in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    return done.stderr.strip()


@pytest.mark.parametrize(
    ("precision", "absent", "named"),
    [
        ("fp32", ("onnx", "onnxscript", "onnxruntime"), "needs onnx, onnxscript: pip install onnx onnxscript"),
        ("fp32", ("onnxscript",), "export --format onnx needs onnxscript: pip install onnxscript"),
        ("int8", ("onnxruntime",), "export --format onnx --precision int8 needs onnxruntime: pip install onnxruntime"),
    ],
)
def test_an_export_without_its_extra_is_answered_before_torch_is_imported(precision, absent, named, tmp_path):
    """The packages are made absent (``sys.modules[name] = None``: find_spec and import both fail, as without the
    ``export`` extra)."""
    argv = ["export", "--checkpoint", "README.md", "--format", "onnx", "--out", str(tmp_path / "m.onnx"),
            "--precision", precision, *(["--calibrate", "README.md"] if precision == "int8" else [])]  # fmt: skip
    line = _answered_without_torch(argv, named, absent=absent)
    assert line.endswith("(or pip install 'fastmtl[export]')")
    assert not list(tmp_path.iterdir())  # no lock, no partial file


@pytest.mark.parametrize(
    ("command", "name", "img_size", "bad", "sizes"),
    [
        ("predict", "resformer_mtl_nodfe", 64, 96, "multiples of 64 up to 8192: 64, 128, 192, 256, ..."),
        ("export", "resformer_mtl", 224, 448 + 16, "multiples of 224 up to 8192: 224, 448, 672, 896, ..."),
        ("predict", "unet_resnet34_mtl", 64, 8208, "a multiple of 16 from 16 up to 8192"),  # the general rule first
    ],
)
def test_an_img_size_the_checkpoint_does_not_take_is_answered_before_torch_names_the_sizes_it_takes(
    command, name, img_size, bad, sizes, tmp_path, header_checkpoint
):
    checkpoint = header_checkpoint(name, img_size)
    out = tmp_path / ("out.pt2" if command == "export" else "out")
    extra = ["--input", "README.md"] if command == "predict" else []
    line = _answered_without_torch(
        [command, "--checkpoint", str(checkpoint), *extra, "--out", str(out), "--img-size", str(bad)], sizes
    )
    assert str(bad) in line and "build the model" not in line
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [checkpoint.name]


@pytest.mark.parametrize(
    ("name", "img_size", "takes", "refuses"),
    [("resformer_mtl", 64, [64, 128, 192, 8192 - 8192 % 64], [32, 96, 80, 8256]),
     ("resformer_mtl_serial", 32, [32, 64, 96], [16, 48]),
     ("unet_resnet34", 64, [16, 32, 48, 96], [8, 40, 8208]),
     ("a_model_of_your_own", 64, [16, 48], [8, 40])],  # registered elsewhere: only the encoders' stride
)  # fmt: skip
def test_the_input_size_rule(name, img_size, takes, refuses):
    from fastmtl.options import check_input_side

    for side in takes:
        check_input_side(side, name, img_size, "c.safetensors")
    for side in refuses:
        with pytest.raises(ValueError, match=rf"--img-size {side} does not fit checkpoint c.safetensors"):
            check_input_side(side, name, img_size, "c.safetensors")


def test_the_models_follow_the_input_size_rule():
    """The rule the command line applies before loading a model is the one the models enforce."""
    import torch

    import fastmtl
    from fastmtl.models._registry import ENTRYPOINTS
    from fastmtl.options import WINDOWED_MODELS, input_step

    resformers = {n for n, fn in ENTRYPOINTS.items() if fn.__module__ == "fastmtl.models.mtl"}
    assert set(WINDOWED_MODELS) == resformers
    for name in ("resformer_mtl_nodfe", "unet_resnet34"):
        model = fastmtl.create_model(name, img_size=32).eval()
        step = input_step(name, 32)
        with torch.inference_mode():
            model(torch.zeros(1, 3, 2 * step, step))  # taken
            with pytest.raises(ValueError, match="multiples of"):
                model(torch.zeros(1, 3, step + 8, step))


def test_module_docstring_is_the_help_reference() -> None:
    assert "--output" in fastmtl.cli.__doc__ and "allow" not in fastmtl.cli.__doc__.lower()
