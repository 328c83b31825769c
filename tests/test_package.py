"""The top-level package: its public names, and that importing it (or the CLI module) does not load PyTorch."""

from __future__ import annotations

import subprocess
import sys

import fastmtl


def test_every_public_name_resolves() -> None:
    assert sorted(fastmtl.__all__) == sorted(fastmtl._EXPORTS)
    for name in fastmtl.__all__:
        assert getattr(fastmtl, name) is not None
        assert name in dir(fastmtl)


def test_unknown_attribute_is_an_attribute_error() -> None:
    try:
        fastmtl.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("fastmtl.no_such_thing did not raise")


def test_import_and_cli_module_do_not_load_torch() -> None:
    code = "import sys, fastmtl, fastmtl.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
