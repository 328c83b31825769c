"""The GPU suite's memory and race checks: where compute-sanitizer is, how it runs, and what its result means.

compute-sanitizer is looked for on PATH, in ``$CUDA_HOME/bin`` and ``$CUDA_PATH/bin``, then in every
``/usr/local/cuda*/bin`` (newest version first): a CUDA install rarely puts it on PATH. Each tool
(memcheck over one launch of every kernel, racecheck over window attention; :mod:`bench.kernel_launches`) gets at
least :data:`TOOL_FLOOR_S` seconds, since it must import torch and JIT the kernels under instrumentation, and
launches each kernel with one fixed configuration (``FASTMTL_TRITON_FIXED_CONFIG=1``: no autotuning runs under
the tool). ``--report-api-errors no`` keeps the CUDA runtime's own probing calls (which fail by design) out of the
report. The outcome of a tool is one of:

- ``ok``: it ran, found no error;
- ``failed: <what it found>``: the tool reported memory or race errors (the only outcome that fails the step);
- ``could not run: <reason>``: the tool is missing, the device or driver refused it, it ran out of time, or the
  launch script failed on its own.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
from pathlib import Path

TOOL_FLOOR_S = 60.0
ERROR_EXIT = 99  # --error-exitcode: the tool found errors
TOOLS = (("memcheck", []), ("racecheck", ["--only", "window_attention"]))
ENV = {
    "PYTORCH_NO_CUDA_MEMORY_CACHING": "1",  # every allocation its own block, so overruns are visible
    "FASTMTL_TRITON_FIXED_CONFIG": "1",  # one configuration per launch: no autotuning under instrumentation
}
_REFUSED = re.compile(
    r"(device not supported|not supported on this|unable to|could not|failed to (?:initialize|attach|launch)"
    r"|permission|no cuda-capable device|driver version)",
    re.IGNORECASE,
)
_ERRORS = re.compile(r"ERROR SUMMARY:\s*(\d+) error", re.IGNORECASE)


def candidates(environ: dict[str, str] | None = None) -> list[str]:
    """Every place compute-sanitizer may be, in the order they are tried."""
    environ = os.environ if environ is None else environ
    found = [shutil.which("compute-sanitizer", path=environ.get("PATH")) or ""]
    found += [str(Path(environ[v]) / "bin" / "compute-sanitizer") for v in ("CUDA_HOME", "CUDA_PATH") if environ.get(v)]
    found.append("/usr/local/cuda/bin/compute-sanitizer")
    versioned = glob.glob("/usr/local/cuda*/bin/compute-sanitizer")
    found += sorted(versioned, key=_version_key, reverse=True)
    return list(dict.fromkeys(p for p in found if p))


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.parent.name)) or (0,)


def find(environ: dict[str, str] | None = None) -> str | None:
    """The first executable compute-sanitizer of :func:`candidates`, or None."""
    for path in candidates(environ):
        if Path(path).is_file() and os.access(path, os.X_OK):
            return path
    return None


def command(sanitizer: str, tool: str, log: Path, launches: list[str], extra: list[str]) -> list[str]:
    return [sanitizer, "--tool", tool, "--error-exitcode", str(ERROR_EXIT), "--report-api-errors", "no",
            "--log-file", str(log), *launches, *extra]  # fmt: skip


def verdict(code: int | None, text: str, seconds: float) -> str:
    """``ok`` / ``failed: ...`` / ``could not run: ...`` from the tool's exit code and its log."""
    found = _ERRORS.search(text)
    errors = int(found.group(1)) if found else 0
    if errors or code == ERROR_EXIT:
        first = next((ln.strip("= ").strip() for ln in text.splitlines() if "Invalid" in ln or "Race" in ln), "")
        return f"failed: {errors or 'some'} error(s) reported" + (f" ({first[:200]})" if first else "")
    if code is None:
        return f"could not run: timed out after {seconds:.0f} s (import, JIT and launches under instrumentation)"
    if code == 0:
        return "ok"
    refused = _REFUSED.search(text)
    if refused:
        line = next(ln for ln in text.splitlines() if refused.group(0) in ln)
        return f"could not run: {line.strip('= ').strip()[:200]}"
    return f"could not run: the launch script exited with code {code} and the tool reported no error"


def step_status(results: dict[str, str]) -> str:
    if any(v.startswith("failed") for v in results.values()):
        return "failed"
    if all(v == "ok" for v in results.values()):
        return "ok"
    return "could not run"
