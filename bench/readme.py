"""bench/results/README.md: every curated result file rendered, newest first."""

from __future__ import annotations

import re
from pathlib import Path

from bench.benchmarks import load
from bench.render import render

__all__ = ["README_HEAD", "write_readme"]

README_HEAD = """# Benchmark results

Curated runs of `pytest bench/`, one JSON per device named `<device>-torch<version>[-triton<version>].json`
(the name is `machine_info.fastmtl.device_slug`). This page is generated: `python -m bench.report --readme
bench/results`. To add a device: run the suite there, copy the JSON here under its slug, regenerate.

    pytest bench/ --benchmark-json=out.json        # full suite (GPU main use; CPU subset on a CPU-only machine)
    python -m bench.report out.json --out report/   # Markdown + PNG bar plots
    python -m bench.report --compare a.json b.json  # two runs side by side

Cells: images/s (median round) and, in brackets, the speedup over eager fp32 PyTorch in the same group.
CPU runs come from a shared 2-core machine: each run's line gives the load average at its start and end, and the
per-group tables give images per CPU-second, which moves less than the wall clock when other jobs share the cores.
"""


def write_readme(folder: Path) -> str:
    """Renders every ``*.json`` in ``folder`` into ``<stem>/`` (PNGs) and ``README.md``, newest run first."""
    runs = [(load([p]), p) for p in sorted(folder.glob("*.json"))]
    runs.sort(key=lambda r: r[0].get("datetime") or "", reverse=True)
    sections = [README_HEAD]
    for data, path in runs:
        body = render(data, folder / path.stem)
        body = re.sub(r"!\[([^]]*)\]\(([^)]+)\)", rf"![\1]({path.stem}/\2)", body)
        sections += [f"## {path.stem}", "", f"From [`{path.name}`]({path.name}).", "", body]
    text = "\n".join(sections)
    (folder / "README.md").write_text(text)
    return text
