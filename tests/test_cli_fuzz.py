"""Bad values for every option of every ``fastmtl`` subcommand, fed through ``main([...])`` in-process.

The options are read from the parser itself (``build_parser()``: its sub-parsers and their actions), so an option
added later is fuzzed too, and one whose kind of value this file cannot tell fails :func:`test_every_option_is_fuzzed`
until it gets bad values here. Each bad value must end with exit status 2 and either one ``fastmtl: error: ...`` line
or an argparse usage error, never a traceback; the line names the option or the value. No bad value may reach the
work itself (training, evaluation, prediction, export are replaced by a tripwire), nor create the output, and every
value but those of the options listed in :data:`CHECKED_BY_COMMAND` must be refused before the command runs, i.e.
by argparse or ``_check_args``, before PyTorch is needed.
"""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from PIL import Image

import fastmtl.cli as cli
from fastmtl.cli import build_parser, main

PARSER = build_parser()
SUBCOMMANDS: dict[str, argparse.ArgumentParser] = dict(
    next(a for a in PARSER._actions if isinstance(a, argparse._SubParsersAction)).choices
)
HEAVY = ("fastmtl.engine.train.job.train", "fastmtl.engine.evaluate.job.evaluate", "fastmtl.engine.predict.job.predict",
         "fastmtl.inference.export.export")  # fmt: skip
# Options whose values only the command can judge, before any work: a config file or preset and its overrides
# (fastmtl.engine.train.config.load_config) and a dataset kind (the dataset registry).
CHECKED_BY_COMMAND = {"config", "overrides", "kind"}

NUMBERS = ["-1", "0", str(10**12), "nan", "inf", "-inf", "1e309", "", "abc"]
OVERRIDES = ["", "novalue", "=1", "lr=nan", "lr=inf", "lr=-1", "epochs=0", "epochs=nan", "epochs=1e309",
             f"batch_size={10**12}", "nope=1", "img_size=abc", "amp=maybe"]  # fmt: skip
DEVICES = ["", "bogus", "nan", "-1", "cuda:-1", "cuda:abc", f"cuda:{10**30}", "cuda:99",
           *([] if torch.cuda.is_available() else ["cuda:0"]),
           *([] if torch.backends.mps.is_available() else ["mps"])]  # fmt: skip
BAD = {  # kind of value -> bad values; <dir>, <file>, <missing> are replaced by real paths
    "int": [*NUMBERS, "1.5"],
    "float": [*NUMBERS, "1"],
    "choice": ["bogus", "", "nan", "-1"],
    "text": ["", "bogus", "nan", "-1"],
    "existing file": ["", "<missing>", "<dir>"],
    "existing folder": ["", "<missing>", "<file>"],
    "output folder": ["", "<file>", "<file>/sub"],
    "output file": ["", "<dir>", "<file>/sub.out"],
    "input": ["", "<missing>", "<missing>/*.png"],
    "config": ["", "<missing>.toml", "<dir>", "bogus-preset", "<file>"],
    "overrides": OVERRIDES,
    "device": DEVICES,
}
STILL_VALID = {  # values in the lists above that mean something for that option
    ("--workers", "0"),
    ("--set", f"batch_size={10**12}"),  # a batch larger than the data is one batch of all of it
}
VALID = {  # dest -> a good value, for the required options of the base command lines
    "config": "quick",
    "checkpoint": "<file>",
    "input": "<image>",
    "data_root": "<dir>",
}
FILE_OUTPUT = {"export", "check-data"}  # commands whose --out is a file


def _kind(command: str, action: argparse.Action) -> str | None:
    """Which list of bad values ``action`` gets (None: this file cannot tell)."""
    if action.choices:
        return "choice"
    if action.type is int:
        return "int"
    if action.type is float:
        return "float"
    by_dest = {"checkpoint": "existing file", "data_root": "existing folder", "input": "input", "config": "config",
               "overrides": "overrides", "device": "device", "kind": "text", "calibrate": "input"}  # fmt: skip
    if action.dest == "out":
        return "output file" if command in FILE_OUTPUT else "output folder"
    return by_dest.get(action.dest)


def _options(command: str) -> list[argparse.Action]:
    parser = PARSER if command == "" else SUBCOMMANDS[command]
    return [a for a in parser._actions if a.option_strings and a.nargs != 0 and not isinstance(a, argparse._HelpAction)]


def _base(command: str) -> list[str]:
    """A command line of ``command`` with every required option at a good value."""
    if command == "":
        return ["info"]
    argv = [command]
    for action in _options(command):
        if action.required:
            value = "<out>" if action.dest == "out" else VALID[action.dest]
            argv += [action.option_strings[0], value]
    return argv


def _cases():
    for command in ["", *SUBCOMMANDS]:
        for action in _options(command):
            flag = action.option_strings[0]
            for value in BAD.get(_kind(command, action) or "", []):
                if (flag, value) not in STILL_VALID:
                    yield pytest.param(command, action.dest, flag, value, id=f"{command or 'fastmtl'} {flag}={value!r}")


def test_every_option_is_fuzzed():
    unknown = [(c, a.option_strings[0]) for c in ["", *SUBCOMMANDS] for a in _options(c) if _kind(c, a) is None]
    assert not unknown, f"options without bad values in tests/test_cli_fuzz.py: {unknown}; add them to BAD"
    assert len(list(_cases())) > 150


@pytest.fixture
def paths(tmp_path, monkeypatch):
    """The placeholders' paths; the heavy work replaced by a tripwire; the command functions recorded."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a command that ran would leave torch's threads alone
    monkeypatch.setenv("FASTMTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FASTMTL_SET", raising=False)
    for target in HEAVY:

        def tripwire(*args, _name=target, **kwargs):
            raise AssertionError(f"a bad value reached {_name}")

        monkeypatch.setattr(target, tripwire)
    ran = []
    commands = {name: (lambda args, _f=f, _n=name: ran.append(_n) or _f(args)) for name, f in cli._COMMANDS.items()}
    monkeypatch.setattr(cli, "_COMMANDS", commands)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"not a checkpoint")
    Image.new("RGB", (8, 8)).save(tmp_path / "image.png")
    places = {"<dir>": tmp_path / "dir", "<file>": tmp_path / "file", "<missing>": tmp_path / "missing",
              "<image>": tmp_path / "image.png", "<out>": tmp_path / "out"}  # fmt: skip
    return places, ran


def _fill(text: str, places) -> str:
    for key, path in places.items():
        text = text.replace(key, str(path))
    return text


def _outcome(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's usage errors
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("command", "dest", "flag", "value"), list(_cases()))
def test_a_bad_value_is_one_clear_error_line(command, dest, flag, value, paths, capsys):
    places, ran = paths
    given = _fill(value, places)
    base = [_fill(a, places) for a in _base(command)]
    if flag in base:  # a required option: replace its good value
        at = base.index(flag)
        base = base[:at] + base[at + 2 :]
    argv = [flag, given, *base] if command == "" else [*base, flag, given]  # a global option comes first
    code, err = _outcome(argv, capsys)
    assert "Traceback" not in err, err
    assert code == 2, f"{argv} exited {code}: {err}"
    lines = err.strip().splitlines()
    if lines and lines[0].startswith("usage:"):
        assert re.match(rf"fastmtl( {re.escape(command)})?: error: ", lines[-1]), err
    else:
        assert len(lines) == 1 and lines[0].startswith("fastmtl: error: "), err
        named = [flag.lstrip("-"), flag.lstrip("-").replace("-", " "), dest.replace("_", " ")]
        named += [given, given.split("=")[0]] if given else []
        assert any(n and n in lines[0] for n in named), f"the error names neither {flag} nor {given!r}: {err}"
    if dest not in CHECKED_BY_COMMAND:
        assert ran == [], f"{flag}={value!r} passed the argument checks and reached the {command} command"
    assert not places["<out>"].exists(), "a refused command created its output"
