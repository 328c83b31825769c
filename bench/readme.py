"""bench/results/README.md (every curated result file rendered, newest first) and the results section of the
project's README (the headline tables between the bench-results markers)."""

from __future__ import annotations

import re
from pathlib import Path

from bench.benchmarks import group_benchmarks, is_accuracy, load, suite_of
from bench.render import render
from bench.tables import machine_line, precision_sections, suite_summary

__all__ = ["README_END", "README_HEAD", "README_START", "performance_section", "update_readme", "write_readme"]

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
README_START, README_END = "<!-- bench-results:start -->", "<!-- bench-results:end -->"


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


def performance_section(folder: Path) -> str:
    """Headline tables of every result file in ``folder`` (newest first), each labelled with its device."""
    runs = sorted((load([p]) | {"_path": p} for p in folder.glob("*.json")), key=lambda d: d.get("datetime") or "")
    lines = []
    for data in reversed(runs):
        path = data.pop("_path")
        groups = group_benchmarks(b for b in data["benchmarks"] if not is_accuracy(b))
        suites: dict[str, dict[str, list]] = {}
        for group, benches in groups.items():
            suites.setdefault(suite_of(group), {})[group] = benches
        lines += [f"**{path.stem}** ({machine_line(data)}; from `bench/results/{path.name}`)", ""]
        for suite, sgroups in suites.items():
            lines += [f"{suite}:", "", suite_summary(sgroups), "", *precision_sections(sgroups)]
    return "\n".join(lines)


def update_readme(readme: Path, folder: Path) -> None:
    """Replaces the text between the bench-results markers of ``readme`` with :func:`performance_section`."""
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    readme.write_text(f"{head}{README_START}\n{performance_section(folder)}\n{README_END}{tail}")
