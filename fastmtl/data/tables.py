"""Label tables validated row by row, with every problem listed: the rules the ISIC Part 3 CSV, a folder's
``labels.csv`` and the label flags of an OCT manifest share.

:func:`validate_rows` reads the rows of one table and returns the rows it can use (a :class:`LabelTable`) with a
:class:`Problem` for each other row: an id that is not a plain file name, a label that is not 0 or 1 (non-numeric,
non-finite or out of range), two positive classes where the classes exclude each other, an id listed twice (with
the same labels: a duplicate; with other labels: a conflict). :func:`match_files` adds a label row without its
image and an image without a label row. A dataset refuses a table with problems through :func:`refuse`: one line
naming the file, row and value of the first problem and the count of the others; ``fastmtl check-data`` lists
them all (it builds the dataset with ``strict_labels=False``, which keeps the problems in ``label_problems``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np

__all__ = [
    "LabelTable",
    "LabelTableError",
    "MissingImageError",
    "Problem",
    "match_files",
    "plain_id_error",
    "refuse",
    "relative_path_error",
    "validate_rows",
]

NOT_LISTED = "image without a label"  # a finding, not a reason to refuse: such an image is simply no sample
NO_IMAGE = "label without an image"


@dataclass(frozen=True)
class Problem:
    """One finding: the file (``file:line`` for a table row), what is wrong (a short kind) and the details.

    ``note`` marks a finding that is worth knowing but no problem (e.g. an EXIF orientation the mask agrees with).
    """

    path: str
    problem: str
    detail: str
    note: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.detail}"


class LabelTableError(ValueError):
    """A label table with problems: the message names the first one (file:row, what, the value) and counts the
    others; ``problems`` holds them all."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        self.problems = list(problems)
        first, more = self.problems[0], len(self.problems) - 1
        file, _, line = first.path.rpartition(":")
        file = file if line.isdigit() else first.path
        tail = f" (and {more} more problem(s) in {Path(file).name}; `fastmtl check-data` lists them all)"
        super().__init__(f"{first}{tail if more else ''}")

    def __reduce__(self):  # one-argument constructor: keep it picklable
        return (type(self), (self.problems,))


class MissingImageError(LabelTableError, FileNotFoundError):
    """A label table whose first problem is a row without its image file."""


def plain_id_error(image_id: str) -> str | None:
    """Why ``image_id`` is not a plain file name (a folder part, ``.`` / ``..``, a NUL, an absolute path), or None.
    Ids from tables build file names and must not lead out of the data folder."""
    if not image_id or image_id in (".", "..") or any(c in image_id for c in "/\\\0") or Path(image_id).is_absolute():
        return f"image id {image_id!r} is not a plain file name (it must not name a folder)"
    return None


def relative_path_error(text: str) -> str | None:
    """Why a path from a table would leave the table's folder (absolute, a drive, a ``..`` part, a NUL), or None."""
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if not text.strip() or "\0" in text or text.startswith(("/", "\\")) or PureWindowsPath(text).drive or ".." in parts:
        return f"path {text!r} leaves the data folder (it must be relative, without '..')"
    return None


@dataclass
class LabelTable:
    """The usable rows of one table: ``ids``, ``labels`` float32 (N, K) in ``columns`` order (NaN: unknown) and
    each row's ``lines``; ``problems`` in table order (a row's line first, files without a row last)."""

    file: Path
    columns: tuple[str, ...]
    ids: list[str] = field(default_factory=list)
    rows: list[tuple[float, ...]] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    found: list[tuple[int, Problem]] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)  # every id the table names, usable or not

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.rows, dtype=np.float32).reshape(len(self.rows), len(self.columns))

    @property
    def problems(self) -> list[Problem]:
        return [p for _, p in sorted(self.found, key=lambda item: item[0])]

    def add(self, line: int, problem: str, detail: str) -> None:
        where = f"{self.file}:{line}" if line else str(self.file)
        self.found.append((line, Problem(where, problem, detail)))

    def keep(self, indices: Sequence[int]) -> None:
        """Keeps the rows at ``indices``."""
        self.ids = [self.ids[i] for i in indices]
        self.rows = [self.rows[i] for i in indices]
        self.lines = [self.lines[i] for i in indices]


def _shown(columns: Sequence[str], values: Sequence[float | None]) -> str:
    return ", ".join(f"{c}={'' if v is None else f'{v:g}'}" for c, v in zip(columns, values, strict=True))


def validate_rows(
    file: str | Path,
    rows: Iterable[tuple[int, str, Sequence[str | None]]],
    columns: Sequence[str],
    *,
    exclusive: Sequence[str] = (),
    allow_unknown: bool = False,
    plain_ids: bool = True,
    key: Callable[[str], str] = str,
) -> LabelTable:
    """Validates label rows; every row that breaks a rule is left out and reported.

    Args:
        file: the table, named in the problems as ``file:line``.
        rows: ``(line, id, label cells in columns order)``.
        columns: the label columns.
        exclusive: columns of which at most one may be 1 (ISIC: melanoma, seborrheic keratosis).
        allow_unknown: an empty cell is an unknown label (NaN) rather than an error.
        plain_ids: ids must be plain file names (they build file names).
        key: the id a row stands for (a folder's ``a.png`` and ``a`` are both ``a``): duplicates compare keys.
    """
    table = LabelTable(Path(file), tuple(columns))
    seen: dict[str, tuple[int, tuple[float | None, ...]]] = {}
    for line, raw, cells in rows:
        image_id = (raw or "").strip()
        table.listed.add(image_id)
        error = plain_id_error(image_id) if plain_ids else None
        if error:
            table.add(line, "id not a plain name", error)
            continue
        if len(cells) != len(columns):
            table.add(line, "label table", f"expected {len(columns) + 1} columns (id, {', '.join(columns)}), "
                      f"got {len(cells) + 1}")  # fmt: skip
            continue
        values, bad = [], []
        for name, cell in zip(columns, cells, strict=True):
            text = (cell or "").strip()
            try:
                value, numeric = (None if text == "" and allow_unknown else float(text)), True
            except ValueError:
                value, numeric = float("nan"), False
            if value is not None and value not in (0.0, 1.0):
                bad.append(f"{name}={text or '(empty)'}" + ("" if numeric else " (non-numeric)"))
            values.append(value)
        if bad:
            either = "0 or 1 (or empty: unknown)" if allow_unknown else "0 or 1"
            table.add(line, "label value", f"labels must be {either}, got {', '.join(bad)} for {image_id}")
            continue
        positive = [c for c, v in zip(columns, values, strict=True) if c in exclusive and v == 1.0]
        if len(positive) > 1:
            both = " and ".join(c.replace("_", " ") for c in positive)
            table.add(line, "two positive classes", f"{image_id} is labelled both {both} (they exclude each other)")
            continue
        name, values = key(image_id), tuple(values)
        table.listed.add(name)
        if name in seen:
            first, earlier = seen[name]
            if earlier == values:
                table.add(line, "duplicate id", f"{image_id} is listed twice (also on line {first})")
            else:
                table.add(line, "conflicting labels", f"{image_id} is listed twice (also on line {first}) with other "
                          f"labels: {_shown(columns, values)} here, {_shown(columns, earlier)} there")  # fmt: skip
            continue
        seen[name] = (line, values)
        table.ids.append(name)
        table.rows.append(tuple(float("nan") if v is None else v for v in values))
        table.lines.append(line)
    return table


def match_files(
    table: LabelTable,
    find: Callable[[str], Path | None],
    where: Path,
    present: Mapping[str, Path] | None = None,
    *,
    expected: Callable[[str], str] | None = None,
    unlisted_note: str = "",
) -> list[Path]:
    """The file of every row of ``table``; a row without one is left out and reported (``label without an
    image``: ``<id> has no image in <where>``, or ``expected(id)`` names the file looked for). With ``present``
    ({id: path} of the files in ``where``), each file without a row is reported too (``image without a label``):
    a problem, or with ``unlisted_note`` (what becomes of such an image) a note."""
    paths, keep = [], []
    for index, (image_id, line) in enumerate(zip(table.ids, table.lines, strict=True)):
        path = find(image_id)
        if path is None:
            looked = f"image {expected(image_id)}" if expected else "image"
            table.add(line, NO_IMAGE, f"{image_id} has no {looked} in {where}")
        else:
            paths.append(path)
            keep.append(index)
    table.keep(keep)
    for image_id, path in sorted((present or {}).items()):
        if image_id not in table.listed:
            detail = f"not in {table.file.name}" + (f"; {unlisted_note}" if unlisted_note else "")
            table.found.append((1 << 62, Problem(str(path), NOT_LISTED, detail, note=bool(unlisted_note))))
    return paths


def refuse(problems: Sequence[Problem]) -> None:
    """Raises :class:`LabelTableError` (:class:`MissingImageError`, also a FileNotFoundError, when the first
    problem is a row without its image) for ``problems`` other than images without a row; returns when there are
    none."""
    problems = [p for p in problems if p.problem != NOT_LISTED and not p.note]
    if problems:
        raise (MissingImageError if problems[0].problem == NO_IMAGE else LabelTableError)(problems)
