"""Property-based fuzzing of the corpus readers (hypothesis): whatever a folder holds, reading it
raises nothing and loses nothing. Each generated case is written to disk and read the way the
``read`` stage reads it (``discover`` → ``read_task`` per task → the stage's Arrow batch), then
chunked the way the ``chunk`` stage chunks it. Properties:

- no exception escapes; every task gives at least one row;
- every row is a document (clean, non-empty text) or a reject with a reason and a detail;
- count in = count out + count rejected: JSONL lines, Parquet rows;
- every document gives at least one chunk row (a chunk or a reject), inside the document's text;
- no ``reader_error`` (the readers' catch-all): each bad input has its own named reason.

CI runs ~30 cases per property (``ci`` profile); ``--hypothesis-profile=long`` runs 1,500.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="hypothesis is in the test extra: pip install -e '.[test]'")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pipelines.core.schema import REJECT_DETAIL, REJECT_REASON  # noqa: E402
from pipelines.stages.ingest import DOC_STAGING, Chunker, IngestConfig, discover, read_task  # noqa: E402
from pipelines.source2synth.tables import TableError, parse_csv  # noqa: E402

# Small shards so generated files are also cut into several shards (lines across boundaries).
CFG = IngestConfig(shard_bytes=1 << 16, max_document_bytes=1 << 16, min_chunk_words=1)
SEEN: Counter = Counter()  # rows by reject reason across cases; FUZZ_SUMMARY=FILE writes them at exit
if os.environ.get("FUZZ_SUMMARY"):
    import atexit

    atexit.register(lambda: Path(os.environ["FUZZ_SUMMARY"]).write_text(json.dumps(dict(SEEN.most_common()), indent=1)))


@lru_cache(maxsize=1)
def chunker() -> Chunker:
    return Chunker(CFG.model_dump())


def read_folder(folder: Path, chunk: bool = True) -> tuple[list[dict], list[dict]]:
    """(tasks, rows) as the read stage makes them, checking the per-row contract."""
    tasks = discover(folder, CFG)
    rows = []
    for task in tasks:
        got = list(read_task(task, CFG))
        assert got or task["parts"] > 1, f"a file gave no row: {task}"  # (a shard may hold no line)
        rows += got
    pa.Table.from_pylist(rows, schema=DOC_STAGING)  # the stage's batch: every value storable
    for r in rows:
        SEEN[r[REJECT_REASON] or "document"] += 1
        if r[REJECT_REASON] is None:
            assert isinstance(r["text"], str) and r["text"].strip(), r
            assert "\x00" not in r["text"]
        else:
            assert r["text"] is None and r[REJECT_DETAIL], r
        assert r[REJECT_REASON] != "reader_error", r[REJECT_DETAIL]
    for doc in (r for r in rows if chunk and r[REJECT_REASON] is None):
        chunks = chunker().chunk(doc)
        assert chunks, f"document {doc['doc_id']} gave no chunk row"
        for c in chunks:
            assert c["text"] in doc["text"]
    return tasks, rows


# ----------------------------------------------------------------------------- strategies
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252", "cp1251", "shift_jis", "gb18030"]
EXTENSIONS = [".txt", ".md", ".html", ".htm", ".jsonl", ".parquet", ".csv", ".pdf", ""]

prose = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=400)
words = st.lists(st.sampled_from(["pump", "valve", "the", "seal", "is", "replaced", "every", "year", "Łódź",
                                  "naïve", "数据", "Привет", "\t", "\r\n", "\n\n", ".", "!", "\u200b", "\x00"]),
                 max_size=120).map(" ".join)


@st.composite
def encoded_text(draw) -> bytes:
    text = draw(st.one_of(prose, words))
    data = text.encode(draw(st.sampled_from(ENCODINGS)), errors="ignore")
    if draw(st.booleans()):  # stray NULs or a BOM in the middle
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\x00" * 9])) + data[at:]
    return data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | prose,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)


@st.composite
def jsonl_line(draw) -> str:
    kind = draw(st.sampled_from(["record", "record", "wrong_types", "value", "deep", "broken", "blank", "bignum"]))
    if kind == "record":
        rec = {"_id": draw(st.one_of(st.text(max_size=10), st.integers())), "text": draw(st.one_of(prose, words))}
        if draw(st.booleans()):
            rec["title"] = draw(json_values)
        if draw(st.booleans()):
            rec["extra"] = draw(json_values)
        return json.dumps(rec, ensure_ascii=draw(st.booleans()))
    if kind == "wrong_types":
        rec = draw(st.dictionaries(st.sampled_from(["_id", "id", "text", "title", "x"]), json_values, max_size=4))
        return json.dumps(rec)
    if kind == "value":  # a JSON value that is not an object
        return json.dumps(draw(json_values))
    if kind == "deep":  # nesting deeper than any parser's recursion limit
        n = draw(st.sampled_from([10, 900, 5000, 100_000]))
        return '{"text": ' + "[" * n + "]" * n + "}"
    if kind == "bignum":
        return '{"_id": ' + "9" * draw(st.integers(4000, 6000)) + ', "text": "a number too long to parse"}'
    if kind == "blank":
        return draw(st.sampled_from(["", "   ", "\t"]))
    line = draw(st.text(max_size=60))
    return line.replace("\n", " ")


html_bits = st.sampled_from(["<p>", "</p>", "<div", ">", "<script>var a = '</div>';</script>", "<style>p{}</style>",
                             "<!--", "-->", "<![CDATA[x]]>", "&amp;", "&#xD800;", "&#0;", "&bogus;", "<title>T",
                             "<br/>", "<table><tr><td>1</td>", "<svg><text>x</text></svg>", "\x00", "<?xml ?>",
                             "Pumps need seals.", "Η αντλία.", "<li>item"])


# ----------------------------------------------------------------------------- properties
@given(files=st.lists(st.tuples(st.sampled_from(EXTENSIONS), st.one_of(st.binary(max_size=2048), encoded_text())),
                      min_size=1, max_size=4))
def test_any_bytes_in_any_file_read_as_documents_or_rejects(tmp_path_factory, files):
    folder = tmp_path_factory.mktemp("bytes")
    for i, (ext, data) in enumerate(files):
        (folder / f"f{i}{ext}").write_bytes(data)
    tasks, rows = read_folder(folder)
    assert {r["source"] for r in rows} == {f"f{i}{ext}" for i, (ext, _) in enumerate(files)}


@given(lines=st.lists(jsonl_line(), min_size=1, max_size=25), crlf=st.booleans(), bom=st.booleans())
def test_every_jsonl_line_is_a_document_or_a_reject(tmp_path_factory, lines, crlf, bom):
    folder = tmp_path_factory.mktemp("jsonl")
    text = ("\r\n" if crlf else "\n").join(lines)
    data = (b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8", "surrogatepass")
    (folder / "c.jsonl").write_bytes(data)
    _, rows = read_folder(folder)
    per_line = max(1, sum(1 for line in lines if line.strip()))  # (a file of blank lines: one "empty_file")
    if b"\x00" in data:  # NULs near the start make it a binary file, one reject; else line by line
        assert [r[REJECT_REASON] for r in rows] == ["binary_file"] or len(rows) == per_line
    else:  # in = out + rejected
        assert len(rows) == per_line


@given(n_lines=st.integers(1, 400), long_line=st.integers(0, 3 * (1 << 16)))
def test_sharded_jsonl_keeps_every_line_exactly_once(tmp_path_factory, n_lines, long_line):
    """Files over shard_bytes are read in byte shards; a line that crosses a boundary belongs to
    one shard, and a line over max_document_bytes is one reject, read no further."""
    folder = tmp_path_factory.mktemp("shards")
    lines = [json.dumps({"_id": f"d{i}", "text": f"passage {i} " + "word " * (i % 50)}) for i in range(n_lines)]
    long = json.dumps({"_id": "long", "text": "x" * long_line})
    lines.insert(n_lines // 2, long)
    (folder / "big.jsonl").write_text("\n".join(lines) + "\n")
    _, rows = read_folder(folder, chunk=False)
    ids = Counter(r["doc_id"] for r in rows)
    assert sum(ids.values()) == len(lines) and max(ids.values()) == 1
    too_large = [r for r in rows if r[REJECT_REASON] == "document_too_large"]
    if len(long) > CFG.max_document_bytes:
        assert len(too_large) == 1
    else:
        assert not too_large and "long" in ids


@given(columns=st.dictionaries(
    st.sampled_from(["_id", "id", "text", "title", "body", "meta"]),
    st.sampled_from(["string", "int64", "float64", "binary", "list<int64>", "struct", "null", "timestamp"]),
    min_size=1, max_size=4), n_rows=st.integers(0, 20), row_group=st.integers(1, 8))
def test_parquet_of_any_schema_accounts_for_every_row(tmp_path_factory, columns, n_rows, row_group):
    import datetime

    make = {
        "string": lambda i: None if i % 5 == 4 else f"text {i} about pumps and seals",
        "int64": lambda i: i, "float64": lambda i: i / 3, "binary": lambda i: bytes([i % 256]) * 3,
        "list<int64>": lambda i: list(range(i % 4)), "struct": lambda i: {"a": i, "b": str(i)},
        "null": lambda i: None, "timestamp": lambda i: datetime.datetime(2020, 1, 1 + i % 28),
    }
    table = pa.table({name: pa.array([make[t](i) for i in range(n_rows)], type=pa.null() if t == "null" else None)
                      for name, t in columns.items()})
    folder = tmp_path_factory.mktemp("parquet")
    pq.write_table(table, folder / "t.parquet", row_group_size=row_group)
    _, rows = read_folder(folder)
    assert len(rows) == max(n_rows, 1)  # in = out + rejected (an empty file is one reject)
    docs = [r for r in rows if r[REJECT_REASON] is None]
    assert len(docs) == (sum(make["string"](i) is not None for i in range(n_rows))
                         if columns.get("text") == "string" else 0)


@given(bits=st.lists(html_bits, max_size=60))
def test_broken_html_never_breaks_the_reader(tmp_path_factory, bits):
    folder = tmp_path_factory.mktemp("html")
    (folder / "page.html").write_text("".join(bits), encoding="utf-8")
    _, rows = read_folder(folder)
    assert len(rows) == 1
    if rows[0][REJECT_REASON] is None:  # scripts and styles never reach the text
        assert "var a" not in rows[0]["text"] and "p{}" not in rows[0]["text"]


@given(rows=st.lists(st.lists(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
                              min_size=0, max_size=5), min_size=0, max_size=8),
       dup_header=st.booleans())
def test_csv_tables_parse_or_fail_with_a_table_error(rows, dup_header):
    """Source2Synth's CSV reader: a ragged or broken table is a TableError naming the table and
    line, never another exception; a table that parses keeps every non-blank record."""
    import csv
    import io

    if dup_header and rows and rows[0]:
        rows[0] = [rows[0][0]] * len(rows[0])
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    try:
        table = parse_csv(buf.getvalue(), "t")
    except TableError as e:
        assert "table 't'" in str(e) or "empty" in str(e)
        return
    records = list(csv.reader(io.StringIO(buf.getvalue(), newline="")))
    assert table.header == records[0]
    assert len(table.rows) == sum(1 for r in records[1:] if r)


# ----------------------------------------------------------------------------- fixed cases
def test_a_50_mb_line_a_link_loop_and_special_files_are_rejects(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    with open(folder / "one-line.txt", "wb") as f:  # 50 MB, one line, no newline
        for _ in range(50):
            f.write(b"word " * 209_715)
    (folder / "ok.md").write_text("# Pumps\n\nThe seal is replaced every year by the crew.\n")
    os.symlink(folder / "loop", folder / "loop")
    os.symlink(folder / "missing.txt", folder / "broken.txt")
    os.symlink(folder, folder / "up")  # a link to a folder: not followed
    os.mkfifo(folder / "pipe.txt")
    cfg = IngestConfig()  # the default limit (32 MiB)
    tasks = discover(folder, cfg)
    rows = [r for t in tasks for r in read_task(t, cfg)]
    reasons = {r["source"]: r[REJECT_REASON] for r in rows}
    assert [r[REJECT_REASON] for r in rows if r["source"] == "one-line.txt"] == ["document_too_large"]
    assert reasons["ok.md"] is None
    assert {reasons[k] for k in ("loop", "broken.txt", "up", "pipe.txt")} == {"unreadable_file"}
    details = {r["source"]: r[REJECT_DETAIL] for r in rows}
    assert "loop" in details["loop"] and "broken" in details["broken.txt"] and "not followed" in details["up"]
