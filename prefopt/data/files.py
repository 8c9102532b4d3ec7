"""Read local data files into raw rows, one row at a time, so that a bad row never ends a run.

Why prefopt reads local files itself instead of through ``datasets``: ``datasets`` hands a whole
file to pyarrow or pandas, and one malformed row (a missing comma, a line that is a list, a stray
byte, a CSV line with an extra field) makes the whole file fail with a 40-80 line traceback that
buries the useful "in row 20". Here each format is read with the standard library (pyarrow for
parquet, which is binary and either readable or not), so that every problem is either

* a counted bad row, ``unreadable_line:<why>`` (JSON lines, CSV; the examples are line numbers
  from 1) or ``unreadable_row:<why>`` (an element of a JSON array; the examples are positions
  from 0), skipped as the other bad rows are; or, with ``on_bad_row="error"``, a `DataError`
  ``<file>: line <n>: <problem>`` / ``<file>: row <i>: <problem>``;
* or, when the file as a whole cannot be read (an empty file, a JSON document broken before its
  rows can be told apart, a damaged gzip or parquet file), a one-line `DataError` naming the file
  and, where known, the line and column.

Formats, by file name (each but parquet may end in ``.gz``):

* ``.jsonl``: one JSON object per line;
* ``.json``: a JSON array of objects, an object of equal-length column lists, a single object, or
  JSON lines (what ``datasets`` also accepts under this name);
* ``.csv``: a header line, then one record per line (quoted fields may span lines); cells are
  text and an empty cell is missing, except ``margin`` (read as a number), ``id`` / ``choice``
  (read as integers when written as one), the fields of the formats that are numbers, and
  ``desirable`` / ``label`` (``true`` / ``false`` in any case read as booleans);
* ``.parquet``: read with pyarrow, every row as a dict.
"""

from __future__ import annotations

import csv
import glob
import gzip
import io
import json
import os
import re
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from prefopt.data.records import BadRows, DataError

Rows = list[dict[str, Any]]
_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")  # what surrogateescape makes of a non-UTF-8 byte
_INTEGER = re.compile(r"[+-]?\d+")


def read_file_rows(source: str, on_bad_row: str, bad: BadRows) -> Rows:
    """The raw rows of a local file or glob (see the module docstring); unreadable rows are
    counted in ``bad`` or, with ``on_bad_row="error"``, raise `DataError`. A source without any
    readable row is an error naming it."""
    rows: Rows = []
    for path in expand(source):
        rows.extend(_reader(path)(path, on_bad_row, bad))
    if not rows:
        found = "; ".join(f"{reason} at {bad.examples[reason][0]}" for reason in sorted(bad.counts))
        raise DataError(f"{source}: no records ({found or 'the file holds no rows'})")
    return rows


def expand(source: str) -> list[str]:
    """The files of a path or glob, sorted; FileNotFoundError if none."""
    path = os.path.expanduser(source)
    files = [path] if os.path.isfile(path) else sorted(glob.glob(path))
    if not files:
        raise FileNotFoundError(f"no data file matches {source!r}")
    return files


def _reader(path: str) -> Callable[[str, str, BadRows], Rows]:
    ext = os.path.splitext(path.lower().removesuffix(".gz"))[1]
    readers = {
        ".jsonl": read_json_lines,
        ".json": read_json,
        ".csv": read_csv,
        ".parquet": read_parquet,
    }
    if ext not in readers:
        raise DataError(f"{path}: not a data file (expected .jsonl, .json, .csv or .parquet)")
    return readers[ext]


# --------------------------------------------------------------------------- JSON


def read_json_lines(path: str, on_bad_row: str, bad: BadRows) -> Rows:
    """One JSON object per line; a line that is not UTF-8, not JSON, not an object or holds a
    lone surrogate is an unreadable line."""
    opener: Any = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            return _json_line_rows(path, handle, on_bad_row, bad)
    except (OSError, EOFError, zlib.error) as exc:  # a damaged gzip stream
        raise DataError(f"{path}: cannot be read ({exc})") from None


def _json_line_rows(path: str, lines: Iterable[bytes], on_bad_row: str, bad: BadRows) -> Rows:
    rows: Rows = []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        value, problem = parse_json_line(raw)
        if problem is not None:
            unreadable(bad, on_bad_row, path, "line", number, problem)
            continue
        rows.append(value)
    return rows


def parse_json_line(raw: bytes) -> tuple[Any, str | None]:
    """(the object, None), or (None, what is wrong with the line)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 (byte {exc.start})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg} at column {exc.colno})"
    return value, _object_problem(value)


def _object_problem(value: Any) -> str | None:
    if not isinstance(value, dict):
        return f"not an object (a JSON {type(value).__name__})"
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "a lone surrogate (not valid Unicode)"
    return None


def read_json(path: str, on_bad_row: str, bad: BadRows) -> Rows:
    """A JSON document (array of objects, object of columns, one object) or JSON lines."""
    data = read_bytes(path)
    start = data.lstrip()[:1]
    if not start:
        raise DataError(f"{path}: the file is empty")
    try:
        value = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        if start != b"[":
            return _json_line_rows(path, data.split(b"\n"), on_bad_row, bad)
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(f"{path}: line {line}: not UTF-8 (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        if start != b"[" and _json_lines_inside(data, exc):
            return _json_line_rows(path, data.split(b"\n"), on_bad_row, bad)
        raise DataError(
            f"{path}: line {exc.lineno}, column {exc.colno}: not JSON ({exc.msg})"
        ) from None
    return _document_rows(path, value, on_bad_row, bad)


def _json_lines_inside(data: bytes, exc: json.JSONDecodeError) -> bool:
    """Whether a .json file that is not one JSON document is JSON lines: a document followed
    by more ("Extra data"), or one of its first two lines is an object on its own."""
    if exc.msg == "Extra data":
        return True
    lines = [line for line in data.split(b"\n", 3)[:3] if line.strip()][:2]
    return len(lines) > 1 and any(parse_json_line(line)[1] is None for line in lines)


def _document_rows(path: str, value: Any, on_bad_row: str, bad: BadRows) -> Rows:
    if isinstance(value, dict):
        columns = list(value.values())
        if columns and all(isinstance(c, list) for c in columns):
            lengths = sorted({len(c) for c in columns})
            if len(lengths) > 1:
                raise DataError(
                    f"{path}: an object of columns whose lists differ in length ({lengths})"
                )
            value = [dict(zip(value, cells, strict=True)) for cells in zip(*columns, strict=True)]
        else:
            value = [value]
    if not isinstance(value, list):
        raise DataError(f"{path}: not a JSON array of objects (a JSON {type(value).__name__})")
    rows: Rows = []
    for index, item in enumerate(value):
        problem = _object_problem(item)
        if problem is not None:
            unreadable(bad, on_bad_row, path, "row", index, problem)
            continue
        rows.append(item)
    return rows


# --------------------------------------------------------------------------- CSV


def read_csv(path: str, on_bad_row: str, bad: BadRows) -> Rows:
    """A header line, then records; a record that is not valid CSV, has another number of
    fields than the header or holds bytes that are not UTF-8 is an unreadable line."""
    data = read_bytes(path)
    try:
        text, escaped = data.decode("utf-8"), False
    except UnicodeDecodeError:
        text, escaped = data.decode("utf-8", errors="surrogateescape"), True
    reader = csv.reader(io.StringIO(text.removeprefix("\ufeff"), newline=""), strict=True)
    header = _csv_header(path, reader, escaped)
    rows: Rows = []
    while True:
        first_line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            unreadable(bad, on_bad_row, path, "line", first_line, f"not CSV ({exc})")
            if reader.line_num < first_line:  # nothing left to read
                break
            continue
        if not cells:  # a blank line
            continue
        problem = None
        if len(cells) != len(header):
            problem = f"wrong number of fields ({len(cells)}; the header has {len(header)})"
        elif escaped and any(_ESCAPED_BYTE.search(cell) for cell in cells):
            problem = "not UTF-8"
        if problem is not None:
            unreadable(bad, on_bad_row, path, "line", first_line, problem)
            continue
        rows.append({k: _csv_value(k, cell) for k, cell in zip(header, cells, strict=True)})
    return rows


def _csv_header(path: str, reader: Any, escaped: bool) -> list[str]:
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise DataError(f"{path}: line 1: the header is not CSV ({exc})") from None
    if not header:
        raise DataError(f"{path}: the file is empty (no header line)")
    if escaped and any(_ESCAPED_BYTE.search(name) for name in header):
        raise DataError(f"{path}: line 1: the header is not UTF-8")
    named = [name for name in header if name]
    twice = sorted({name for name in named if named.count(name) > 1})
    if twice:
        raise DataError(f"{path}: line 1: column {twice[0]!r} appears more than once")
    return header


def _csv_value(name: str, cell: str) -> Any:
    if cell == "":
        return None
    if name == "margin":
        try:
            return float(cell)
        except ValueError:
            return cell  # counted as wrong_type:margin
    if name in ("id", "choice") and _INTEGER.fullmatch(cell.strip()):
        return int(cell)
    if name in ("desirable", "label") and cell.strip().lower() in ("true", "false"):
        return cell.strip().lower() == "true"  # anything else: wrong_type:desirable
    return cell


# --------------------------------------------------------------------------- parquet


def read_parquet(path: str, on_bad_row: str, bad: BadRows) -> Rows:
    """Every row of a parquet file (typed columns: per-row problems are the loaders' checks)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable parquet file ({first_line(exc)})") from None


# --------------------------------------------------------------------------- shared


def read_bytes(path: str) -> bytes:
    """The bytes of a file, uncompressed when it ends in .gz; a damaged file is a DataError."""
    try:
        if path.lower().endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        with open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: cannot be read ({exc})") from None


def unreadable(
    bad: BadRows, on_bad_row: str, path: str, unit: str, number: int, problem: str
) -> None:
    """Count an unreadable line or row (``unreadable_<unit>:<why>``, ``why`` being the problem
    up to its parenthesis) or, with ``on_bad_row="error"``, raise naming file, place, problem."""
    if on_bad_row == "error":
        raise DataError(f"{path}: {unit} {number}: {problem}")
    why = problem.split(" (")[0].replace(" ", "_").lower()
    bad.add(f"unreadable_{unit}:{why}", number)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
