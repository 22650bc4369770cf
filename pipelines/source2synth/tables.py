"""Tables for Source2Synth's table QA: read them from files, write them into a run's SQLite.

Inputs :func:`read_tables` accepts (a file, or a folder searched recursively; in a folder, files
with other extensions and hidden files are skipped, and ``table_id`` is the path relative to the
folder without its suffix, which for a top-level file is its stem):

``.csv``       one table, first record = header. WikiTableQuestions' own CSVs escape quotes as
               ``\\"`` rather than ``""``; a file containing ``\\"`` is read that way (set
               ``wtq_csv`` to force either reading).
``.jsonl``     one table per line: ``{"table_id", "header": [...], "rows": [[...], ...]}``. A line
               that also has ``"csv"`` (the WTQ export in ``shared/data/wikitablequestions``) is
               read from that text instead: its ``rows`` were split by a CSV reader that did not
               know the ``\\"`` escape, so cells with quotes are mangled or split in two.
``.parquet``   one table per file; header = column names, cells = ``str()`` of the values.
``.sqlite``    (also ``.sqlite3``, ``.db``, or any file with the SQLite magic) every user table,
               read from a private copy; the user's file is never opened by SQLite.

Malformed inputs raise :class:`TableError`, naming the file and line (a bad JSONL line, a row
whose cell count differs from the header's, an empty header, an unknown extension, duplicate
table ids).

The database :func:`build_database` writes, per table ``t_<slug of table_id>`` (unique):

- columns are sanitised header slugs (ASCII, lowercase, ``[a-z0-9_]``, no ``__``; ``col_<i>`` for
  an empty or non-Latin header; ``c_`` before a leading digit; ``_2``, ``_3`` for duplicates).
  Always double-quote them. The original header of each column is recorded in :class:`Column`.
- a column whose non-empty cells all parse as numbers (:func:`parse_number`: optional sign,
  digits with optional ``,`` thousands groups, optional ``.fraction``, optional trailing ``%``
  which is dropped, so "45%" is stored as 45) is ``INTEGER`` (no fraction anywhere) or ``REAL``;
  cells in :data:`NULL_MARKERS` ("", "-", "–", "—", "n/a") are NULL there. A numeric column
  ``x`` has a parallel ``x__text`` TEXT column holding each cell's original text. Every other
  column is ``TEXT`` and holds the original text itself ("" stays "").
- rows keep their order: ``rowid`` is the 1-based row number.
- a side table :data:`META_TABLE` maps table_id → SQL name, columns and sample rows as JSON;
  :func:`load_infos` reads it back. The sandbox does not expose it to queries.

:func:`copy_database` is the other route for an SQLite input: copy the file byte for byte into
the run (plus its ``-wal``), and describe its tables as they are (original names, declared
types, no ``__text`` columns).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import shutil
import sqlite3
import tempfile
import unicodedata
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

META_TABLE = "_synthrag_tables"
SAMPLE_ROWS = 10  # original rows kept in TableInfo for describe()
NULL_MARKERS = frozenset({"", "-", "\u2013", "\u2014", "n/a"})  # compared after strip + lower
SQLITE_SUFFIXES = {".sqlite", ".sqlite3", ".db"}
SUFFIXES = {".csv", ".jsonl", ".parquet"} | SQLITE_SUFFIXES
_SQLITE_MAGIC = b"SQLite format 3\x00"
_MAX_NAME = 40
_RESERVED_COLUMNS = {"rowid", "oid", "_rowid_"}
_NUMBER = re.compile(
    r"^(?P<sign>[+\-\u2212]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?P<frac>\.\d+)?%?$"
)


class TableError(ValueError):
    """A table input that cannot be read; the message names the file (and line)."""

    def __init__(self, message: str, path: str | Path | None = None, line: int | None = None):
        where = "" if path is None else f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.detail = message
        self.path = None if path is None else str(path)
        self.line = line


@dataclass
class Table:
    """One table as read: the original text of the header and of every cell."""

    table_id: str
    header: list[str]
    rows: list[list[str]]
    source: str = ""  # file (and line) it came from, for messages


@dataclass
class Column:
    """One column of a built table: its original header and the SQL names holding it."""

    header: str  # original header text
    name: str  # SQL column name (double-quote it)
    type: str  # INTEGER | REAL | TEXT (copied databases: the declared type's affinity)
    text_name: str | None = None  # numeric columns: the column with each cell's original text


@dataclass
class TableInfo:
    """Where a table lives in the run's database and what it looks like."""

    table_id: str
    name: str  # SQL table name
    columns: list[Column]
    n_rows: int
    sample: list[list[str]] = field(default_factory=list)  # first SAMPLE_ROWS rows, as text

    @property
    def header_map(self) -> dict[str, str]:
        """Original header → SQL column name (the first column, for duplicate headers)."""
        out: dict[str, str] = {}
        for c in self.columns:
            out.setdefault(c.header, c.name)
        return out

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> TableInfo:
        d = json.loads(text)
        d["columns"] = [Column(**c) for c in d["columns"]]
        return cls(**d)


# ----------------------------------------------------------------------------- reading
def read_tables(path: str | Path, *, wtq_csv: bool | None = None) -> list[Table]:
    """Read every table under ``path`` (a file or a folder; formats in the module docstring)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise TableError("does not exist", root)
    if root.is_file():
        files = [(root, root.stem)]
    else:
        files = [
            (p, p.relative_to(root).with_suffix("").as_posix())
            for p in sorted(root.rglob("*"))
            if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
            and p.suffix.lower() in SUFFIXES
        ]
        if not files:
            raise TableError(f"no table files ({', '.join(sorted(SUFFIXES))})", root)
    tables: list[Table] = []
    seen: dict[str, str] = {}
    for file, stem in files:
        for t in _read_file(file, stem, wtq_csv):
            if t.table_id in seen:
                raise TableError(f"duplicate table_id {t.table_id!r} (also in {seen[t.table_id]})",
                                 t.source or file)
            seen[t.table_id] = t.source or str(file)
            tables.append(t)
    return tables


def _read_file(path: Path, stem: str, wtq_csv: bool | None) -> list[Table]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return [_read_csv_file(path, stem, wtq_csv)]
    if suffix == ".jsonl":
        return list(_read_jsonl(path))
    if suffix == ".parquet":
        return [_read_parquet(path, stem)]
    if suffix in SQLITE_SUFFIXES or _is_sqlite(path):
        return _read_sqlite(path)
    raise TableError(f"unknown table format {path.suffix or '(no extension)'!r}; expected one of "
                     f"{', '.join(sorted(SUFFIXES))}", path)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise TableError(f"not UTF-8 text (byte {e.start})", path) from None


def _read_csv_file(path: Path, table_id: str, wtq_csv: bool | None) -> Table:
    return parse_csv(_read_text(path), table_id, source=str(path), wtq_csv=wtq_csv)


def parse_csv(text: str, table_id: str, *, source: str = "<csv>", wtq_csv: bool | None = None,
              first_line: int = 1) -> Table:
    """Parse CSV text (header first). ``wtq_csv``: quotes escaped as ``\\"`` (None: detect)."""
    wtq = ('\\"' in text) if wtq_csv is None else wtq_csv
    opts: dict[str, Any] = {"escapechar": "\\", "doublequote": False} if wtq else {}
    reader = csv.reader(io.StringIO(text, newline=""), **opts)
    header: list[str] | None = None
    rows: list[list[str]] = []
    try:
        for rec in reader:
            line = first_line + reader.line_num - 1
            if header is None:
                if not rec or (len(rec) == 1 and not rec[0].strip()):
                    raise TableError(f"table {table_id!r}: empty header", source, line)
                header = rec
                continue
            if not rec:  # a blank line
                continue
            if len(rec) != len(header):
                raise TableError(f"table {table_id!r}: row {len(rows) + 1} has {len(rec)} cells, "
                                 f"the header has {len(header)}", source, line)
            rows.append(rec)
    except csv.Error as e:
        raise TableError(f"table {table_id!r}: bad CSV: {e}", source,
                         first_line + reader.line_num - 1) from None
    if header is None:
        raise TableError(f"table {table_id!r}: empty file (no header)", source, first_line)
    return Table(table_id, header, rows, source)


def _read_jsonl(path: Path) -> Iterator[Table]:
    try:
        fh = path.open(encoding="utf-8-sig")
    except OSError as e:
        raise TableError(str(e), path) from None
    with fh:
        for n, line in enumerate(_lines(fh, path), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise TableError(f"malformed JSON: {e.msg} (column {e.colno})", path, n) from None
            yield _jsonl_table(rec, path, n)


def _lines(fh: Any, path: Path) -> Iterator[str]:
    try:
        yield from fh
    except UnicodeDecodeError as e:
        raise TableError(f"not UTF-8 text (byte {e.start})", path) from None


def _jsonl_table(rec: Any, path: Path, n: int) -> Table:
    if not isinstance(rec, dict):
        raise TableError("expected a JSON object with table_id, header, rows", path, n)
    tid = rec.get("table_id")
    if not isinstance(tid, (str, int)) or isinstance(tid, bool) or str(tid) == "":
        raise TableError("missing or empty table_id", path, n)
    tid = str(tid)
    source = f"{path}:{n}"
    if isinstance(rec.get("csv"), str):  # the WTQ export: its csv text is the faithful copy
        try:
            t = parse_csv(rec["csv"], tid, source=str(path), wtq_csv=None)
        except TableError as e:
            raise TableError(f"field 'csv': {e.detail}", path, n) from None
        t.source = source
        return t
    header, rows = rec.get("header"), rec.get("rows")
    if not isinstance(header, list) or not header:
        raise TableError(f"table {tid!r}: empty or missing header", path, n)
    if not isinstance(rows, list):
        raise TableError(f"table {tid!r}: 'rows' must be a list of lists", path, n)
    try:
        header = [_cell_text(h) for h in header]
        out = []
        for i, row in enumerate(rows, start=1):
            if not isinstance(row, list):
                raise TableError(f"table {tid!r}: row {i} is not a list", path, n)
            if len(row) != len(header):
                raise TableError(f"table {tid!r}: row {i} has {len(row)} cells, the header has "
                                 f"{len(header)}", path, n)
            out.append([_cell_text(c) for c in row])
    except _CellError as e:
        raise TableError(f"table {tid!r}: {e}", path, n) from None
    return Table(tid, header, out, source)


class _CellError(ValueError):
    pass


def _cell_text(v: Any) -> str:
    """A cell as text: strings as they are, None as "", numbers as Python prints them."""
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, bytes):
        return v.decode("utf-8", errors="replace")
    if isinstance(v, (list, dict)):
        raise _CellError(f"a cell is a {type(v).__name__}, not a scalar")
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _read_parquet(path: Path, table_id: str) -> Table:
    import pyarrow.parquet as pq

    try:
        t = pq.read_table(path)
    except Exception as e:  # noqa: BLE001 -- pyarrow raises several types for bad files
        raise TableError(f"not a readable Parquet file: {e}", path) from None
    header = list(t.column_names)
    if not header:
        raise TableError(f"table {table_id!r}: empty header (no columns)", path)
    cols = [t.column(i).to_pylist() for i in range(t.num_columns)]
    rows = [[c if isinstance(c, str) else _cell_text_nested(c) for c in cells]
            for cells in zip(*cols)]
    return Table(table_id, header, rows, str(path))


def _cell_text_nested(v: Any) -> str:
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False, default=str)
    return _cell_text(v)


def _is_sqlite(path: Path) -> bool:
    try:
        with path.open("rb") as fh:
            return fh.read(16) == _SQLITE_MAGIC
    except OSError:
        return False


def _user_tables(conn: sqlite3.Connection) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\' AND name != ? ORDER BY rowid", (META_TABLE,))]


def _read_sqlite(path: Path) -> list[Table]:
    if not _is_sqlite(path):
        raise TableError("not an SQLite database", path)
    with tempfile.TemporaryDirectory(prefix="synthrag-tables-") as tmp:
        copy = Path(tmp) / "copy.sqlite"
        try:
            _copy_files(path, copy)
        except OSError as e:
            raise TableError(f"cannot copy: {e}", path) from None
        conn = sqlite3.connect(copy)
        try:
            out = []
            for name in _user_tables(conn):
                cur = conn.execute(f"SELECT * FROM {quote_ident(name)} ORDER BY rowid")
                header = [d[0] for d in cur.description]
                rows = [[_cell_text_nested(c) for c in r] for r in cur]
                out.append(Table(name, header, rows, f"{path}:{name}"))
            return out
        except sqlite3.DatabaseError as e:
            raise TableError(f"unreadable SQLite database: {e}", path) from None
        finally:
            conn.close()


# ----------------------------------------------------------------------------- names + types
def quote_ident(name: str) -> str:
    """An SQL identifier, double-quoted (inner quotes doubled)."""
    return '"' + name.replace('"', '""') + '"'


def slug(text: str, max_len: int = _MAX_NAME) -> str:
    """ASCII lowercase ``[a-z0-9_]`` with single underscores, trimmed; "" if nothing is left."""
    chars = (c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) != "Mn")
    s = re.sub(r"[^a-z0-9]+", "_", "".join(chars).lower()).strip("_")  # accents dropped first
    return s[:max_len].rstrip("_")


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 2
    while name.lower() in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name.lower())
    return name


def column_names(header: list[str]) -> list[str]:
    """Sanitised, de-duplicated SQL column names for a header (module docstring)."""
    taken: set[str] = set()
    out = []
    for i, h in enumerate(header, start=1):
        s = slug(h) or f"col_{i}"
        if s[0].isdigit():
            s = "c_" + s
        if s in _RESERVED_COLUMNS:
            s += "_col"
        out.append(_unique(s, taken))
    return out


def parse_number(text: str) -> int | float | None:
    """The number a cell states, or None: "1,234" → 1234, "-3.5" → -3.5, "45%" → 45.

    Thousands groups must be well formed ("1,23" is not a number); no exponents, no currency.
    """
    m = _NUMBER.match(text.strip())
    if not m or not (m["int"] or m["frac"]):
        return None
    digits = (m["int"] or "0").replace(",", "")
    neg = m["sign"] in ("-", "\u2212")
    if m["frac"]:
        v = float(digits + m["frac"])
        return -v if neg else v
    n = int(digits)
    n = -n if neg else n
    return n if -(2**63) <= n < 2**63 else float(n)


def _is_null(cell: str) -> bool:
    return cell.strip().lower() in NULL_MARKERS


def infer_type(cells: Iterable[str]) -> str:
    """INTEGER or REAL when every non-null cell is a number (at least one), else TEXT."""
    kind = None
    for c in cells:
        if _is_null(c):
            continue
        v = parse_number(c)
        if v is None or (isinstance(v, float) and not math.isfinite(v)):
            return "TEXT"
        kind = "REAL" if isinstance(v, float) or kind == "REAL" else "INTEGER"
    return kind or "TEXT"


# ----------------------------------------------------------------------------- building
def build_database(tables: Iterable[Table], db_path: str | Path, *,
                   overwrite: bool = False) -> dict[str, TableInfo]:
    """Write ``tables`` into a new SQLite file; return table_id → :class:`TableInfo`.

    The file is written next to ``db_path`` and renamed into place, so a crash leaves no
    half-built database. An existing ``db_path`` is an error unless ``overwrite``.
    """
    db_path = Path(db_path)
    if db_path.exists() and not overwrite:
        raise TableError("database exists already (overwrite=False)", db_path)
    db_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = db_path.with_name(db_path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    infos: dict[str, TableInfo] = {}
    taken: set[str] = {META_TABLE.lower()}
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        _create_meta(conn)
        for t in tables:
            if t.table_id in infos:
                raise TableError(f"duplicate table_id {t.table_id!r}", t.source or None)
            info = _write_table(conn, t, taken)
            _put_meta(conn, info)
            infos[t.table_id] = info
        conn.commit()
    except BaseException:
        conn.close()
        tmp.unlink(missing_ok=True)
        raise
    conn.close()
    tmp.replace(db_path)
    return infos


def _table_name(table_id: str, taken: set[str]) -> str:
    base = slug(re.sub(r"\.(csv|tsv|jsonl|parquet|table|html?)$", "", table_id, flags=re.I))
    return _unique("t_" + (base or "table"), taken)


def _write_table(conn: sqlite3.Connection, t: Table, taken: set[str]) -> TableInfo:
    width = len(t.header)
    if width == 0:
        raise TableError(f"table {t.table_id!r}: empty header", t.source or None)
    for i, row in enumerate(t.rows, start=1):
        if len(row) != width:
            raise TableError(f"table {t.table_id!r}: row {i} has {len(row)} cells, the header "
                             f"has {width}", t.source or None)
    name = _table_name(t.table_id, taken)
    names = column_names(t.header)
    columns, defs = [], []
    for j, (h, col) in enumerate(zip(t.header, names)):
        typ = infer_type(r[j] for r in t.rows)
        text_name = f"{col}__text" if typ != "TEXT" else None
        columns.append(Column(h, col, typ, text_name))
        defs.append(f"{quote_ident(col)} {typ}")
        if text_name:
            defs.append(f"{quote_ident(text_name)} TEXT")
    conn.execute(f"CREATE TABLE {quote_ident(name)} ({', '.join(defs)})")

    def values(row: list[str]) -> list[Any]:
        out: list[Any] = []
        for c, cell in zip(columns, row):
            if c.text_name is None:
                out.append(cell)
            else:
                out.append(None if _is_null(cell) else parse_number(cell))
                out.append(cell)
        return out

    n_values = sum(1 if c.text_name is None else 2 for c in columns)
    conn.executemany(f"INSERT INTO {quote_ident(name)} VALUES ({', '.join('?' * n_values)})",
                     (values(r) for r in t.rows))
    return TableInfo(t.table_id, name, columns, len(t.rows),
                     [list(r) for r in t.rows[:SAMPLE_ROWS]])


def _create_meta(conn: sqlite3.Connection) -> None:
    conn.execute(f"CREATE TABLE IF NOT EXISTS {quote_ident(META_TABLE)} "
                 "(table_id TEXT PRIMARY KEY, name TEXT NOT NULL, info TEXT NOT NULL)")


def _put_meta(conn: sqlite3.Connection, info: TableInfo) -> None:
    conn.execute(f"INSERT INTO {quote_ident(META_TABLE)} VALUES (?, ?, ?)",
                 (info.table_id, info.name, info.to_json()))


def load_infos(db_path: str | Path) -> dict[str, TableInfo]:
    """The :class:`TableInfo` of every table of a database this module built or copied."""
    conn = sqlite3.connect(f"{Path(db_path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"SELECT table_id, info FROM {quote_ident(META_TABLE)} "
                            "ORDER BY rowid").fetchall()
    except sqlite3.DatabaseError as e:
        raise TableError(f"no table index ({META_TABLE}): {e}", db_path) from None
    finally:
        conn.close()
    return {tid: TableInfo.from_json(info) for tid, info in rows}


# ----------------------------------------------------------------------------- copying
def _copy_files(src: Path, dst: Path) -> None:
    """Byte copy of a database and its write-ahead log; SQLite never opens ``src``."""
    shutil.copyfile(src, dst)
    wal = src.with_name(src.name + "-wal")
    if wal.exists():
        shutil.copyfile(wal, dst.with_name(dst.name + "-wal"))


def _affinity(declared: str) -> str:
    d = declared.upper()
    if "INT" in d:
        return "INTEGER"
    if any(k in d for k in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if not d or "BLOB" in d:
        return "BLOB"
    if any(k in d for k in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def copy_database(src: str | Path, dst: str | Path, *,
                  overwrite: bool = False) -> dict[str, TableInfo]:
    """Copy an existing SQLite file into the run and describe its user tables as they are.

    ``src`` is only read as bytes (never opened by SQLite, so never locked or written); the copy
    gets :data:`META_TABLE` and rollback journaling (a WAL is checkpointed into it).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise TableError("does not exist", src)
    if not _is_sqlite(src):
        raise TableError("not an SQLite database", src)
    if dst.exists() and not overwrite:
        raise TableError("database exists already (overwrite=False)", dst)
    if src.resolve() == dst.resolve():
        raise TableError("copy_database: source and destination are the same file", src)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        p.unlink(missing_ok=True)
    try:
        _copy_files(src, tmp)
    except OSError as e:
        raise TableError(f"cannot copy: {e}", src) from None
    conn = sqlite3.connect(tmp)
    try:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute(f"DROP TABLE IF EXISTS {quote_ident(META_TABLE)}")
        _create_meta(conn)
        infos: dict[str, TableInfo] = {}
        for name in _user_tables(conn):
            q = quote_ident(name)
            cols = [Column(r[1], r[1], _affinity(r[2] or ""))
                    for r in conn.execute(f"PRAGMA table_info({q})")]
            n = conn.execute(f"SELECT count(*) FROM {q}").fetchone()[0]
            sample = [[_cell_text_nested(c) for c in r] for r in
                      conn.execute(f"SELECT * FROM {q} LIMIT {SAMPLE_ROWS}")]
            infos[name] = TableInfo(name, name, cols, n, sample)
            _put_meta(conn, infos[name])
        conn.commit()
    except BaseException as e:
        conn.close()
        for p in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
            p.unlink(missing_ok=True)
        if isinstance(e, sqlite3.DatabaseError):
            raise TableError(f"unreadable SQLite database: {e}", src) from None
        raise
    conn.close()
    tmp.replace(dst)
    return infos


def prepare_database(path: str | Path, db_path: str | Path, *,
                     overwrite: bool = False) -> dict[str, TableInfo]:
    """One call for a run: copy an SQLite input, or read any other input and build one."""
    p = Path(path)
    if p.is_file() and (p.suffix.lower() in SQLITE_SUFFIXES or _is_sqlite(p)):
        return copy_database(p, db_path, overwrite=overwrite)
    return build_database(read_tables(p), db_path, overwrite=overwrite)


# ----------------------------------------------------------------------------- prompts
def _short(cell: str, width: int) -> str:
    s = re.sub(r"\s+", " ", cell).strip()
    return s if len(s) <= width else s[: width - 1] + "…"


def describe(info: TableInfo, n_rows: int = 3, *, cell_chars: int = 40) -> str:
    """A compact schema and the first ``n_rows`` rows (original text), for an LLM prompt."""
    lines = [f"Table {quote_ident(info.name)} ({info.n_rows} rows; source {info.table_id})",
             "Columns (always double-quote names):"]
    for c in info.columns:
        note = f"header {json.dumps(c.header, ensure_ascii=False)}"
        if c.text_name:
            note += f"; original text in {quote_ident(c.text_name)}"
        lines.append(f"  {quote_ident(c.name)} {c.type}  -- {note}")
    sample = info.sample[: max(0, n_rows)]
    if sample:
        lines.append(f"First {len(sample)} rows (original text):")
        lines.append("  " + " | ".join(c.name for c in info.columns))
        for r in sample:
            lines.append("  " + " | ".join(_short(x, cell_chars) for x in r))
    return "\n".join(lines)
