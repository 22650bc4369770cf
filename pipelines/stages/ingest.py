"""Ingest on Ray Data: read → clean → sentence-split and chunk → deduplicate → sentences.

Stages and the tables they write (each with its funnel in the manifest):

``read``       files → ``documents``. A file or folder of .txt, .md, .html, .jsonl, .parquet. Big
               text files are read in byte shards aligned to lines (bounded memory), jsonl/parquet
               per line/row group. Empty, binary, undecodable or malformed inputs are rejects.
``chunk``      documents → ``chunks_raw``. spaCy splits sentences; chunks are groups of whole
               sentences up to ``chunk_tokens`` tokens with ``overlap_tokens`` of overlap.
``dedupe``     chunks_raw → ``chunks``. Exact duplicates after normalising whitespace, case and
               punctuation, then chunks whose normalised word sequence is contained in another
               chunk (Tamber et al. 3.2.2), found by winnowing fingerprints + a shuffle, never by
               comparing all pairs.
``sentences``  chunks → ``sentences`` (a flat view: id, chunk, document, text, offsets).
"""

from __future__ import annotations

import hashlib
import html as htmllib
import json
import os
import re
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipelines.core.groups import DRIVER_MAX_ROWS, apply_groups, partitions, to_table
from pipelines.core.run import Run
from pipelines.core.schema import (
    CHUNKS,
    DOCUMENTS,
    REJECT_DETAIL,
    REJECT_REASON,
    SENTENCES,
    dumps,
    staging,
)
from pipelines.stages import quality
from pipelines.stages.quality import QualityConfig

TEXT_TYPES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html",
              ".htm": "html", ".jsonl": "jsonl", ".parquet": "parquet"}


class IngestConfig(BaseModel):
    """Ingest settings (``ingest:`` in the run config)."""

    model_config = ConfigDict(extra="forbid")
    id_field: str = "_id"  # jsonl/parquet fields; the defaults read a BEIR corpus.jsonl as is
    title_field: str = "title"
    text_field: str = "text"
    chunk_tokens: int = Field(200, ge=16)
    overlap_tokens: int = Field(32, ge=0)
    tokenizer: str = "embedded"  # a tokenizer directory; embedded = the packaged MiniLM's
    # "model": the packaged spaCy sentence recogniser; "regex": punctuation rules, ~100x faster,
    # for very large corpora where a few odd splits are acceptable
    splitter: Literal["model", "regex"] = "model"
    min_chunk_words: int = Field(8, ge=1)  # shorter chunks are rejects (too little to ask about)
    shard_bytes: int = Field(4 << 20, ge=1 << 16)  # text/jsonl files are read in shards this big
    dedupe: bool = True
    shingle_words: int = Field(5, ge=2)
    winnow_window: int = Field(4, ge=1)
    max_candidates_per_fingerprint: int = 200
    chunker_concurrency: tuple[int, int] = (1, 2)
    limit_files: int | None = None
    # a document (a file read whole, a line of a sharded file, a record's text) larger than this is
    # a reject, read no further, so one giant line cannot take a worker's memory
    max_document_bytes: int = Field(32 << 20, ge=1 << 10)
    # a corpus of at most this many bytes (and at most 256 read tasks) is read and chunked in the
    # driver: a Ray Data read costs ~4 s and the chunker pool ~5-10 s of start-up on a small run,
    # more than the work. Same rows either way; 0 always uses Ray.
    driver_max_bytes: int = Field(8 << 20, ge=0)
    quality: QualityConfig = QualityConfig()  # which chunks the LLM stages see (stages/quality.py)


# ----------------------------------------------------------------------------- discover + read
def discover(path: str | Path, cfg: IngestConfig) -> list[dict]:
    """List the read tasks: byte shards of text files, row groups of parquet, one per other file.

    Runs in the driver over file metadata only (sizes, parquet footers), never file contents.
    Entries that are not regular files (broken links, link loops, fifos, links to folders, which
    are not followed) become tasks that read as rejects, so the listing loses nothing.
    """
    root = Path(path).expanduser().resolve()
    if not root.exists():
        raise FileNotFoundError(f"corpus path {root} does not exist")
    entries = [root] if not root.is_dir() else sorted(
        p for p in root.rglob("*") if not (p.is_dir() and not p.is_symlink()))
    if cfg.limit_files:
        entries = entries[: cfg.limit_files]
    base = root.parent if not root.is_dir() else root
    tasks = []
    for f in entries:
        rel = f.relative_to(base).as_posix()
        kind = TEXT_TYPES.get(f.suffix.lower(), "unsupported")
        common = {"path": str(f), "rel": rel, "kind": kind, "size": 0, "part": 0, "parts": 1, "start": 0, "end": 0}
        problem = _not_a_file(f)
        if problem:
            tasks.append({**common, "error": problem})
            continue
        try:
            size = f.stat().st_size
        except OSError as e:
            tasks.append({**common, "error": f"cannot stat: {e.strerror or e}"})
            continue
        common.update(size=size, end=size)
        if kind == "parquet":
            try:
                groups = pq.ParquetFile(f).num_row_groups
            except Exception as e:
                tasks.append({**common, "error": f"unreadable parquet: {e}"})
                continue
            tasks += [{**common, "part": i, "parts": groups, "start": i, "end": i + 1} for i in range(max(groups, 1))]
        elif kind in ("text", "markdown", "jsonl") and size > cfg.shard_bytes:
            n = -(-size // cfg.shard_bytes)
            tasks += [{**common, "part": i, "parts": n, "start": i * cfg.shard_bytes,
                       "end": min(size, (i + 1) * cfg.shard_bytes)} for i in range(n)]
        else:
            tasks.append(common)
    return tasks


def _not_a_file(p: Path) -> str | None:
    """Why ``p`` cannot be read as a document (None: a regular file, possibly through a link)."""
    if p.is_symlink():
        if p.is_dir():
            return "link to a folder: not followed (links can loop); pass the folder itself as a corpus"
        try:
            p.resolve(strict=True)
        except RuntimeError:
            return "symbolic link loop"
        except OSError as e:
            return f"broken symbolic link ({e.strerror or e})"
    if not p.is_file():
        return "not a regular file (a fifo, socket or device)"
    return None


def read_byte_range(path: str, start: int, end: int, max_line: int | None = None) -> tuple[bytes, list[tuple[int, int]]]:
    """Bytes of the lines that *begin* in [start, end): a line straddling a boundary belongs to
    the shard where it starts, so shards tile the file exactly. A line longer than ``max_line``
    bytes is not read into memory: it is left out (an empty line keeps the numbering) and listed
    as (line number in the shard, 1-based; its length) so the caller can reject it."""
    limit = max_line or -1
    out, long = [], []
    with open(path, "rb") as f:
        if start > 0:
            f.seek(start - 1)
            if f.read(1) != b"\n":
                _skip_line(f)  # finish the line owned by the previous shard
        pos, i = f.tell(), 0
        while pos < end:
            line = f.readline(limit + 1 if max_line else -1)
            if not line:
                break
            i += 1
            if max_line and len(line) > max_line and not line.endswith(b"\n"):
                n = len(line) + _skip_line(f)
                long.append((i, n))
                line = b"\n"
            out.append(line)
            pos = f.tell()
    return b"".join(out), long


def _skip_line(f, block: int = 1 << 20) -> int:
    """Move past the next newline without holding the line in memory; the bytes skipped."""
    n = 0
    while True:
        piece = f.readline(block)
        n += len(piece)
        if not piece or piece.endswith(b"\n"):
            return n


def looks_binary(data: bytes) -> bool:
    sample = data[:8192]
    if b"\x00" in sample:
        return True
    ctrl = sum(1 for b in sample if b < 32 and b not in (9, 10, 12, 13))
    return len(sample) > 0 and ctrl / len(sample) > 0.1


# Single-byte Latin encodings cannot be told apart reliably from a short sample; for those
# Windows-1252 (a superset of Latin-1's printable range) is the best guess.
_LATIN_LIKE = {"ascii", "latin_1", "iso8859_15", "iso8859_2", "iso8859_9", "cp1250", "cp1252",
               "cp1254", "cp1257", "mac_roman", "mac_latin2", "cp850", "cp437"}


def decode(data: bytes) -> tuple[str, str]:
    """Text and the encoding used: UTF-8 first, then charset detection (a non-Latin legacy
    encoding such as cp1251 or Shift-JIS), else Windows-1252 / Latin-1, which decode any byte
    string, so a Latin-1 file is decoded rather than lost."""
    try:
        return data.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        pass
    from charset_normalizer import from_bytes

    best = from_bytes(data[:65536]).best()
    guess = best.encoding if best and best.encoding not in _LATIN_LIKE else None
    for enc in ([guess] if guess else []) + ["cp1252", "latin-1"]:
        try:
            return data.decode(enc), enc
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode("latin-1", errors="replace"), "latin-1"


_CTRL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\ufeff]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANKS = re.compile(r"\n\s*\n\s*(\n\s*)+")


def clean_text(text: str) -> str:
    """Unicode NFC, no control characters, single spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    text = _CTRL.sub(" ", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANKS.sub("\n\n", text).strip()


_SCRIPTS = re.compile(r"<(script|style)\b.*?</\1\s*>", re.I | re.S)


def html_to_text(raw: str) -> tuple[str, str | None]:
    from bs4 import BeautifulSoup

    # scripts and styles go before parsing too: in broken markup (``<div<script>``) the parser
    # may not see the tag, and the code would read as text
    soup = BeautifulSoup(_SCRIPTS.sub(" ", raw), "html.parser")
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    for tag in soup(["script", "style", "noscript", "nav", "header", "footer", "template", "svg"]):
        tag.decompose()
    blocks = ["p", "div", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "br", "section",
              "article", "blockquote", "pre", "table", "ul", "ol", "dd", "dt"]
    for tag in soup.find_all(blocks):
        tag.insert_before("\n\n")
    return htmllib.unescape(soup.get_text(" ")), title


def _md_title(text: str) -> str | None:
    for line in text.split("\n", 50)[:50]:
        if line.startswith("# "):
            return line[2:].strip()
    return None


def _utf8(s: str | None) -> str | None:
    """``s`` as Arrow can store it: lone surrogates (a JSON ``"\\ud800"``, a mis-decoded file
    name) become U+FFFD instead of failing the whole batch at write time."""
    return s if s is None or s.isascii() else s.encode("utf-8", "replace").decode("utf-8")


def _doc(doc_id: str, source: str, title: str | None, text: str, meta: dict) -> dict:
    return {"doc_id": _utf8(doc_id), "source": _utf8(source), "title": _utf8(title), "text": _utf8(text),
            "meta": _utf8(dumps(meta)), REJECT_REASON: None, REJECT_DETAIL: None}


def _rej(task: dict, reason: str, detail: Any, *, doc_id: str | None = None) -> dict:
    return {"doc_id": _utf8(doc_id or task["rel"]), "source": _utf8(task["rel"]), "title": None, "text": None,
            "meta": dumps({"part": task["part"]}), REJECT_REASON: reason,
            REJECT_DETAIL: _utf8(detail if isinstance(detail, str) else dumps(detail))}


def read_task(task: dict, cfg: IngestConfig) -> Iterator[dict]:
    """Documents (or rejects) from one read task: at least one row, and never an exception.
    A reader bug shows as a ``reader_error`` reject (the fuzz tests count them: zero so far)."""
    try:
        yield from _read_task(task, cfg)
    except Exception as e:  # only text/html reach here with nothing yielded; records catch their own
        yield _rej(task, "reader_error", f"{type(e).__name__}: {e}")


def _read_task(task: dict, cfg: IngestConfig) -> Iterator[dict]:
    rel, kind = task["rel"], task["kind"]
    if task.get("error"):
        yield _rej(task, "unreadable_file", task["error"])
        return
    if kind == "unsupported":
        yield _rej(task, "unsupported_file_type", f"extension {Path(rel).suffix or '(none)'} is not one of "
                   f"{sorted(TEXT_TYPES)}")
        return
    if task["size"] == 0:
        yield _rej(task, "empty_file", "file has 0 bytes")
        return
    if kind == "parquet":
        yield from _read_parquet(task, cfg)
        return
    by_lines = kind in ("text", "markdown", "jsonl")  # read line by line; other files are read whole
    if not by_lines and task["size"] > cfg.max_document_bytes:
        yield _rej(task, "document_too_large", f"{task['size']} bytes > ingest.max_document_bytes="
                   f"{cfg.max_document_bytes}; split the file or raise the limit")
        return
    try:
        data, long = read_byte_range(task["path"], task["start"], task["end"],
                                     cfg.max_document_bytes if by_lines else None)
    except OSError as e:
        yield _rej(task, "unreadable_file", str(e))
        return
    # (a JSONL file is judged line by line: only NULs make all of it binary)
    if task["part"] == 0 and (b"\x00" in data[:8192] if kind == "jsonl" else looks_binary(data)):
        yield _rej(task, "binary_file", "NUL or control bytes in the first 8 KiB; not a text file")
        return
    where = "line " if task["parts"] == 1 else f"line p{task['part']}."
    for line, n in long:  # each line over the limit is its own reject (numbered as _read_jsonl does)
        yield _rej(task, "document_too_large", f"{where}{line}: {n} bytes > ingest.max_document_bytes="
                   f"{cfg.max_document_bytes}; split the line or raise the limit", doc_id=f"{rel}:{where[5:]}{line}")
    if kind == "jsonl":
        yield from _read_jsonl(task, data, cfg, lines_rejected=len(long))
        return
    text, enc = decode(data)
    title = None
    if kind == "html":
        text, title = html_to_text(text)
    text = clean_text(text)
    if kind == "markdown":
        title = _md_title(text)
    title = title or Path(rel).stem
    doc_id = rel if task["parts"] == 1 else f"{rel}#p{task['part']}"
    if not text:  # (a shard that holds no line start, or only rejected lines, is no document)
        if not long and (task["parts"] == 1 or data):
            yield _rej(task, "empty_file" if task["parts"] == 1 else "empty_text", "no text after cleaning",
                       doc_id=doc_id)
        return
    yield _doc(doc_id, rel, title, text, {"encoding": enc, "part": task["part"], "parts": task["parts"],
                                          "type": kind})


def _record_doc(task: dict, rec: Any, where: str, cfg: IngestConfig) -> dict:
    try:
        return _record(task, rec, where, cfg)
    except Exception as e:
        return _rej(task, "reader_error", f"{where}: {type(e).__name__}: {e}", doc_id=f"{task['rel']}:{where}")


def _record(task: dict, rec: Any, where: str, cfg: IngestConfig) -> dict:
    if not isinstance(rec, dict):
        return _rej(task, "malformed_record", f"{where}: expected a JSON object, got {type(rec).__name__}",
                    doc_id=f"{task['rel']}:{where}")
    text = rec.get(cfg.text_field)
    rid = rec.get(cfg.id_field, rec.get("id"))
    doc_id = str(rid) if rid not in (None, "") else f"{task['rel']}:{where}"
    if not isinstance(text, str):
        return _rej(task, "missing_text_field", f"{where}: no string field {cfg.text_field!r}", doc_id=doc_id)
    if len(text) > cfg.max_document_bytes:
        return _rej(task, "document_too_large", f"{where}: {len(text)} characters > ingest.max_document_bytes="
                    f"{cfg.max_document_bytes}", doc_id=doc_id)
    title = rec.get(cfg.title_field)
    text = clean_text(text)
    if not text:
        return _rej(task, "empty_text", f"{where}: field {cfg.text_field!r} is empty", doc_id=doc_id)
    meta = {k: v for k, v in rec.items() if k not in (cfg.text_field, cfg.title_field, cfg.id_field)}
    return _doc(doc_id, task["rel"], str(title) if title else None, text, {"record": where, **meta})


def _read_jsonl(task: dict, data: bytes, cfg: IngestConfig, lines_rejected: int = 0) -> Iterator[dict]:
    text, _ = decode(data)
    # Line numbers are exact for unsharded files; a shard numbers from its own start.
    prefix = "" if task["parts"] == 1 else f"p{task['part']}."
    seen = 0
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        seen += 1
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError) as e:  # also: nesting too deep, 5,000-digit numbers
            why = e.msg if isinstance(e, json.JSONDecodeError) else f"{type(e).__name__}: {str(e)[:200]}"
            yield _rej(task, "malformed_json", f"line {prefix}{i}: {why}: {line[:200]!r}",
                       doc_id=f"{task['rel']}:{prefix}{i}")
            continue
        yield _record_doc(task, rec, f"line {prefix}{i}", cfg)
    if not seen and task["parts"] == 1 and not lines_rejected:
        yield _rej(task, "empty_file", "no records, only blank lines")


def _read_parquet(task: dict, cfg: IngestConfig) -> Iterator[dict]:
    try:
        if task["part"] == 0 and pq.ParquetFile(task["path"]).metadata.num_rows == 0:
            yield _rej(task, "empty_file", "parquet file has no rows")
            return
        table = pq.ParquetFile(task["path"]).read_row_group(task["part"])
    except Exception as e:
        yield _rej(task, "unreadable_file", f"row group {task['part']}: {e}")
        return
    for i, rec in enumerate(table.to_pylist()):
        yield _record_doc(task, rec, f"rg{task['part']}.row{i}", cfg)


DOC_STAGING = staging(DOCUMENTS)


def _read_batch(batch: pa.Table, cfg: dict) -> pa.Table:
    c = IngestConfig.model_validate(cfg)
    rows = [d for task in batch.to_pylist() for d in read_task(task, c)]
    return pa.Table.from_pylist(rows, schema=DOC_STAGING)


def read_documents_on_driver(tasks: list[dict], cfg: IngestConfig) -> pa.Table:
    """The same rows as :func:`read_documents`, read in this process."""
    return pa.Table.from_pylist([d for task in tasks for d in read_task(task, cfg)], schema=DOC_STAGING)


def on_driver(tasks: list[dict], cfg: IngestConfig) -> bool:
    return len(tasks) <= 256 and sum({t["path"]: t["size"] for t in tasks}.values()) <= cfg.driver_max_bytes


def read_documents(tasks: list[dict], cfg: IngestConfig):
    import ray.data

    ds = ray.data.from_items(tasks, override_num_blocks=max(1, min(len(tasks), 200)))
    return ds.map_batches(_read_batch, fn_kwargs={"cfg": cfg.model_dump()}, batch_size=1,
                          batch_format="pyarrow")


# ----------------------------------------------------------------------------- chunking
_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_SENT_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[A-Z0-9\"'(\[])")


def normalise(text: str) -> str:
    """Lower case, punctuation and whitespace folded to single spaces (dedupe's notion of text)."""
    return _NON_WORD.sub(" ", text.lower()).strip()


CHUNKS_RAW = staging(CHUNKS, pa.field("norm", pa.string()))


class Chunker:
    """Callable class for an actor pool: documents in, sentence-aligned token chunks out."""

    def __init__(self, cfg: dict, threads: int | None = 1):
        import torch
        from transformers import AutoTokenizer

        from actors.models import load_spacy, resolve_model

        if threads:  # an actor's own process (the driver keeps its settings)
            torch.set_num_threads(threads)
        self.cfg = IngestConfig.model_validate(cfg)
        self.nlp = load_spacy(sentences_only=True) if self.cfg.splitter == "model" else None
        if self.nlp is not None:
            self.nlp.max_length = 2_000_000
        self.tok = AutoTokenizer.from_pretrained(resolve_model(self.cfg.tokenizer, "embedder"))

    def sentences(self, text: str) -> list[tuple[int, int]]:
        """Sentence spans (start, end) in ``text``; paragraphs (blank lines) always break."""
        paras, pos = [], 0
        for m in re.finditer(r"\n\s*\n", text):
            paras.append((pos, m.start()))
            pos = m.end()
        paras.append((pos, len(text)))
        paras = [(a, b) for a, b in paras if text[a:b].strip()]
        spans = []
        pieces = []  # spaCy has a length limit and is slow on giant paragraphs: cut at 100k chars
        for a, b in paras:
            while b - a > 100_000:
                cut = text.rfind(" ", a, a + 100_000)
                cut = cut if cut > a else a + 100_000
                pieces.append((a, cut))
                a = cut
            pieces.append((a, b))
        for a, local in zip((p[0] for p in pieces), self._split(text[a:b] for a, b in pieces)):
            for s0, e0 in local:
                st, en = a + s0, a + e0
                while st < en and text[st].isspace():
                    st += 1
                while en > st and text[en - 1].isspace():
                    en -= 1
                if en > st:
                    spans.append((st, en))
        return spans

    def _split(self, texts) -> Iterator[list[tuple[int, int]]]:
        if self.nlp is not None:
            for doc in self.nlp.pipe(texts, batch_size=64):
                yield [(s.start_char, s.end_char) for s in doc.sents]
        else:
            for t in texts:
                cuts = [m.end() for m in _SENT_END.finditer(t)]
                yield list(zip([0] + cuts, cuts + [len(t)]))

    def _split_long(self, text: str, span: tuple[int, int], n_tokens: int) -> list[tuple[int, int]]:
        """A sentence longer than a chunk is cut at word boundaries into roughly equal parts."""
        a, b = span
        parts = -(-n_tokens // self.cfg.chunk_tokens)
        words = [m.span() for m in re.finditer(r"\S+", text[a:b])]
        per = -(-len(words) // parts)
        return [(a + words[i][0], a + words[min(i + per, len(words)) - 1][1]) for i in range(0, len(words), per)]

    def chunk(self, doc: dict) -> list[dict]:
        text, cfg = doc["text"], self.cfg
        spans = self.sentences(text)
        if not spans:  # nothing to split (cannot follow read's cleaning; kept as a reject if it does)
            row = self._row(doc, 0, [(0, len(text))], 0)
            row.update({REJECT_REASON: "no_sentences", REJECT_DETAIL: "no sentence found in the document"})
            return [row]
        counts = [len(x) for x in self.tok([text[a:b] for a, b in spans], add_special_tokens=False)["input_ids"]]
        sp, ct = [], []
        for s, c in zip(spans, counts):
            if c > cfg.chunk_tokens:
                for piece in self._split_long(text, s, c):
                    sp.append(piece)
                    ct.append(len(self.tok(text[piece[0]:piece[1]], add_special_tokens=False)["input_ids"]))
            else:
                sp.append(s)
                ct.append(c)
        out, i, k = [], 0, 0
        while i < len(sp):
            j, total = i, 0
            while j < len(sp) and (j == i or total + ct[j] <= cfg.chunk_tokens):
                total += ct[j]
                j += 1
            out.append(self._row(doc, k, sp[i:j], total))
            k += 1
            if j >= len(sp):
                break
            # next chunk starts with the tail sentences that fit in the overlap, but always moves on
            back, ov = j, 0
            while back - 1 > i and ov + ct[back - 1] <= cfg.overlap_tokens:
                back -= 1
                ov += ct[back]
            i = back
        return out

    def _row(self, doc: dict, k: int, spans: list[tuple[int, int]], tokens: int) -> dict:
        text = doc["text"]
        start, end = spans[0][0], spans[-1][1]
        chunk_id = f"{doc['doc_id']}#c{k}"
        body = text[start:end]
        norm = normalise(body)
        row = {"chunk_id": chunk_id, "doc_id": doc["doc_id"], "title": doc["title"], "text": body,
               "token_count": tokens, "char_start": start, "char_end": end,
               "sentences": [f"{chunk_id}:s{i}" for i in range(len(spans))],
               "sentence_spans": [{"start": a - start, "end": b - start} for a, b in spans],
               "norm": norm, REJECT_REASON: None, REJECT_DETAIL: None}
        if len(norm.split()) < self.cfg.min_chunk_words:
            row[REJECT_REASON] = "too_short"
            row[REJECT_DETAIL] = f"{len(norm.split())} words < min_chunk_words={self.cfg.min_chunk_words}"
        return row

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = [c for doc in batch.to_pylist() for c in self.chunk(doc)]
        return pa.Table.from_pylist(rows, schema=CHUNKS_RAW)


@lru_cache(maxsize=2)
def _driver_chunker(cfg_json: str) -> Chunker:
    return Chunker(json.loads(cfg_json), threads=None)


def chunk_documents_on_driver(docs: pa.Table, cfg: IngestConfig) -> pa.Table:
    """The same rows as :func:`chunk_documents`, chunked in this process (one chunker per config,
    kept for the next run of this process)."""
    chunker = _driver_chunker(json.dumps(cfg.model_dump(), sort_keys=True))
    return pa.concat_tables([chunker(docs.slice(i, 64)) for i in range(0, docs.num_rows, 64)]
                            or [CHUNKS_RAW.empty_table()])


def chunk_documents(docs, cfg: IngestConfig):
    import ray.data

    lo, hi = cfg.chunker_concurrency
    return docs.map_batches(Chunker, fn_constructor_kwargs={"cfg": cfg.model_dump()}, batch_size=16,
                            batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(min_size=lo, max_size=hi),
                            num_cpus=1)


# ----------------------------------------------------------------------------- dedupe
# Every step is a Ray Data shuffle over small columns or a streaming map; nothing comes back to the
# driver. The texts cross one shuffle, once each (to verify containment next to the containing
# chunk); candidate pairs carry only ids, a hash and a length, never text.
def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little", signed=True)


def winnow(words: list[str], n: int, w: int) -> set[int]:
    """Winnowing fingerprints (Schleimer et al. 2003) of word n-gram hashes.

    If a word sequence A occurs contiguously in B (and A has at least ``n + w - 1`` words), every
    fingerprint of A is also one of B's, because each window of A is a window of B and both pick
    the same minimum. That makes containment findable through shared fingerprints.
    """
    if len(words) < n:
        return {_h64(" ".join(words))}
    hashes = [_h64(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)]
    if len(hashes) <= w:
        return {min(hashes)}
    arr = np.array(hashes, dtype=np.int64)
    windows = np.lib.stride_tricks.sliding_window_view(arr, w)
    return set(windows.min(axis=1).tolist())


def _hash_rows(batch: pa.Table) -> pa.Table:
    norms = batch.column("norm").to_pylist()
    return batch.append_column("h", pa.array([_h64(x) for x in norms], pa.int64()))


_VERDICTS = pa.schema([("chunk_id", pa.string()), (REJECT_REASON, pa.string()), (REJECT_DETAIL, pa.string())])


def _first_of_group(group: pa.Table) -> pa.Table:
    """One group of identical texts → a verdict for every copy but the smallest id."""
    kept, *copies = sorted(group.column("chunk_id").to_pylist())
    return pa.table({"chunk_id": copies, REJECT_REASON: ["exact_duplicate"] * len(copies),
                     REJECT_DETAIL: [dumps({"duplicate_of": kept})] * len(copies)}, schema=_VERDICTS)


_MASK_BITS = 128


def _mask(prints: list[int]) -> int:
    """A 128-bit signature of a fingerprint set: if A's prints are a subset of B's, so is A's
    mask of B's. One bit per print makes a cheap, exact-safe filter: a chunk that merely shares a
    sentence with a longer one almost always has some print whose bit the longer one lacks."""
    m = 0
    for fp in prints:
        m |= 1 << (fp % _MASK_BITS)
    return m


def _fingerprint_rows(batch: pa.Table, n: int, w: int) -> pa.Table:
    out = {k: [] for k in ("fp", "chunk_id", "h", "nwords", "anchor", "mask_lo", "mask_hi")}
    for cid, norm, h in zip(batch.column("chunk_id").to_pylist(), batch.column("norm").to_pylist(),
                            batch.column("h").to_pylist()):
        words = norm.split()
        prints = sorted(winnow(words, n, w))
        m = _mask(prints)
        lo, hi = m & (2**64 - 1), m >> 64
        for j, fp in enumerate(prints):
            out["fp"].append(fp)
            out["chunk_id"].append(cid)
            out["h"].append(h)
            out["nwords"].append(len(words))
            out["anchor"].append(j == 0)  # A's smallest fingerprint: any container of A must have it
            out["mask_lo"].append(lo)
            out["mask_hi"].append(hi)
    return pa.table({"fp": pa.array(out["fp"], pa.int64()), "chunk_id": pa.array(out["chunk_id"], pa.string()),
                     "h": pa.array(out["h"], pa.int64()), "nwords": pa.array(out["nwords"], pa.int32()),
                     "anchor": pa.array(out["anchor"], pa.bool_()),
                     "mask_lo": pa.array(out["mask_lo"], pa.uint64()), "mask_hi": pa.array(out["mask_hi"], pa.uint64())})


_PAIRS = pa.schema([("b", pa.string()), ("a", pa.string()), ("h_a", pa.int64()), ("n_a", pa.int32()),
                    ("norm", pa.string())])


def _candidate_pairs(group: pa.Table, cap: int) -> pa.Table:
    """Chunks sharing fingerprint ``fp`` → (a, b) where a's anchor is fp and b is longer.

    Copies of one text collapse to the smallest id first (the copy exact dedupe keeps), so pairs
    never involve a chunk that is already an exact duplicate; pairs whose print masks show that a
    has a print b lacks are dropped here (see :func:`_mask`).
    """
    out = {k: [] for k in _PAIRS.names}
    if len(group) < 2 or not pc.any(group.column("anchor")).as_py():
        return pa.table(out, schema=_PAIRS)  # most prints are one chunk's alone
    rows: dict[int, dict] = {}
    for r in group.to_pylist():
        if r["h"] not in rows or r["chunk_id"] < rows[r["h"]]["chunk_id"]:
            rows[r["h"]] = r
    anchors = [r for r in rows.values() if r["anchor"]]
    if anchors and len(rows) > 1:
        bigger = sorted(rows.values(), key=lambda r: (-r["nwords"], r["chunk_id"]))
        for r in rows.values():
            r["mask"] = (r["mask_hi"] << 64) | r["mask_lo"]
        for a in anchors:
            for b in bigger[:cap]:
                if b["nwords"] <= a["nwords"]:
                    break
                if a["mask"] & ~b["mask"]:
                    continue  # a has a print b lacks: a cannot occur in b
                out["b"].append(b["chunk_id"])
                out["a"].append(a["chunk_id"])
                out["h_a"].append(a["h"])
                out["n_a"].append(a["nwords"])
                out["norm"].append(None)
    return pa.table(out, schema=_PAIRS)


def _as_pair_text(batch: pa.Table) -> pa.Table:
    n = len(batch)
    return pa.table({"b": batch.column("chunk_id"), "a": pa.nulls(n, pa.string()), "h_a": pa.nulls(n, pa.int64()),
                     "n_a": pa.nulls(n, pa.int32()), "norm": batch.column("norm")}, schema=_PAIRS)


_CONTAINED = pa.schema([("a", pa.string()), ("b", pa.string())])


def _verify(group: pa.Table) -> pa.Table:
    """Rows for one chunk b: its text, and candidates a (hash, length). Keep the a occurring in b.

    a occurs in b at word boundaries iff some window of ``n_a`` of b's words hashes to a's hash
    (both texts are normalised words joined by single spaces).
    """
    texts = [t for t in group.column("norm").to_pylist() if t is not None]
    a_ids, b_ids = [], []
    if texts:
        words = texts[0].split()
        windows: dict[int, set[int]] = {}
        b = group.column("b")[0].as_py()
        for a, h, n in zip(group.column("a").to_pylist(), group.column("h_a").to_pylist(),
                           group.column("n_a").to_pylist()):
            if a is None:
                continue
            if n not in windows:
                windows[n] = {_h64(" ".join(words[i:i + n])) for i in range(len(words) - n + 1)}
            if h in windows[n]:
                a_ids.append(a)
                b_ids.append(b)
    return pa.table({"a": pa.array(a_ids, pa.string()), "b": pa.array(b_ids, pa.string())}, schema=_CONTAINED)


def _first_container(group: pa.Table) -> pa.Table:
    a = group.column("a")[0].as_py()
    b = min(group.column("b").to_pylist())
    return pa.table({"chunk_id": [a], REJECT_REASON: ["contained_in_other_chunk"],
                     REJECT_DETAIL: [dumps({"contained_in": b})]}, schema=_VERDICTS)


def find_duplicates(chunks, cfg: IngestConfig, n_rows: int):
    """A dataset of verdicts (chunk_id, reject_reason, reject_detail), one per duplicate chunk.

    Exact: copies of one normalised text, all but the smallest id. Contained: a chunk whose text
    occurs, at word boundaries, inside a longer chunk's (candidates from shared winnowing anchors,
    verified by hashing the longer chunk's word windows; the smallest containing id is named).
    """
    n_parts = partitions(n_rows)
    keyed = chunks.select_columns(["chunk_id", "norm"]).map_batches(_hash_rows, batch_format="pyarrow")
    exact = (keyed.select_columns(["chunk_id", "h"]).groupby("h", num_partitions=n_parts)
             .map_groups(_first_of_group, batch_format="pyarrow"))
    pairs = (keyed.map_batches(_fingerprint_rows, fn_kwargs={"n": cfg.shingle_words, "w": cfg.winnow_window},
                               batch_format="pyarrow")
             .groupby("fp", num_partitions=n_parts)
             .map_groups(_candidate_pairs, fn_kwargs={"cap": cfg.max_candidates_per_fingerprint},
                         batch_format="pyarrow"))
    texts = keyed.map_batches(_as_pair_text, batch_format="pyarrow")
    contained = (pairs.union(texts).groupby("b", num_partitions=n_parts).map_groups(_verify, batch_format="pyarrow")
                 .groupby("a", num_partitions=n_parts).map_groups(_first_container, batch_format="pyarrow"))
    return exact.union(contained)


def find_duplicates_on_driver(chunks: pa.Table, cfg: IngestConfig) -> pa.Table:
    """:func:`find_duplicates` over one Arrow table in this process: the same group functions,
    grouped by :func:`apply_groups` instead of four Ray Data shuffles (seconds each)."""
    keyed = _hash_rows(chunks.select(["chunk_id", "norm"]))
    exact = apply_groups(keyed.select(["chunk_id", "h"]), "h", _first_of_group, _VERDICTS)
    prints = _fingerprint_rows(keyed, cfg.shingle_words, cfg.winnow_window)
    pairs = apply_groups(prints, "fp", _candidate_pairs, _PAIRS, cap=cfg.max_candidates_per_fingerprint)
    found = apply_groups(pa.concat_tables([pairs, _as_pair_text(keyed)]), "b", _verify, _CONTAINED)
    contained = apply_groups(found, "a", _first_container, _VERDICTS)
    return pa.concat_tables([exact, contained])


def _with_reject_columns(batch: pa.Table) -> pa.Table:
    """Null reject columns where the join had no verdict to bring (none at all: no columns)."""
    for c in (REJECT_REASON, REJECT_DETAIL):
        if c not in batch.column_names:
            batch = batch.append_column(c, pa.nulls(len(batch), pa.string()))
    return batch


def dedupe_chunks(chunks, cfg: IngestConfig, n_rows: int, driver_max_rows: int = DRIVER_MAX_ROWS):
    """chunks_raw → chunks with reject columns set on duplicates (a left join with the verdicts).

    Up to ``driver_max_rows`` chunks this runs on the driver and returns an Arrow table; above it,
    a lazy Ray dataset (shuffles and a distributed join). Both give the same verdicts (tested).
    """
    if n_rows <= driver_max_rows:
        table = to_table(chunks)
        if table.num_rows == 0:
            return chunks.drop_columns(["norm"]).map_batches(_with_reject_columns, batch_format="pyarrow")
        verdicts = find_duplicates_on_driver(table, cfg) if cfg.dedupe else _VERDICTS.empty_table()
        found = {c: (r, d) for c, r, d in zip(*(verdicts.column(k).to_pylist() for k in _VERDICTS.names))}
        got = [found.get(c, (None, None)) for c in table.column("chunk_id").to_pylist()]
        return (table.drop_columns(["norm"])
                .append_column(REJECT_REASON, pa.array([g[0] for g in got], pa.string()))
                .append_column(REJECT_DETAIL, pa.array([g[1] for g in got], pa.string())))
    rows = chunks.drop_columns(["norm"])
    if cfg.dedupe:
        rows = rows.join(find_duplicates(chunks, cfg, n_rows), "left_outer", partitions(n_rows), on=("chunk_id",))
    return rows.map_batches(_with_reject_columns, batch_format="pyarrow")


# ----------------------------------------------------------------------------- sentences
def _flatten_sentences(batch: pa.Table) -> pa.Table:
    out = {k: [] for k in SENTENCES.names}
    for r in batch.select(["chunk_id", "doc_id", "text", "char_start", "sentences", "sentence_spans"]).to_pylist():
        for sid, span in zip(r["sentences"], r["sentence_spans"]):
            out["sentence_id"].append(sid)
            out["chunk_id"].append(r["chunk_id"])
            out["doc_id"].append(r["doc_id"])
            out["text"].append(r["text"][span["start"]:span["end"]])
            out["char_start"].append(r["char_start"] + span["start"])
            out["char_end"].append(r["char_start"] + span["end"])
    t = pa.table(out, schema=SENTENCES)
    return t.append_column(REJECT_REASON, pa.nulls(len(t), pa.string())).append_column(
        REJECT_DETAIL, pa.nulls(len(t), pa.string()))


# ----------------------------------------------------------------------------- the ingest pipeline
def ingest(run: Run, corpus: str | Path, cfg: IngestConfig) -> None:
    """Read, chunk, dedupe and split a corpus into ``run``'s documents/chunks/sentences tables."""
    corpus = str(Path(corpus).expanduser().resolve())
    cfgd = cfg.model_dump()
    tasks = discover(corpus, cfg)
    listing = stable_listing(tasks)
    small = on_driver(tasks, cfg)
    where = "driver" if small else "ray"
    read_fp = {k: v for k, v in cfgd.items() if k != "driver_max_bytes"}  # where is not what
    with run.stage("read", corpus, listing, read_fp) as rec:
        if rec is not None:
            docs = read_documents_on_driver(tasks, cfg) if small else read_documents(tasks, cfg)
            run.commit(rec, docs, table="documents", schema=DOCUMENTS)
            rec.extra.update(files=len({t["path"] for t in tasks}), where=where)
    docs_fp = run.stage_record("read")["fingerprint"]
    chunk_cfg = {k: cfgd[k] for k in ("chunk_tokens", "overlap_tokens", "tokenizer", "min_chunk_words", "splitter")}
    with run.stage("chunk", docs_fp, chunk_cfg) as rec:
        if rec is not None:
            ds = (chunk_documents_on_driver(run.read_arrow("documents"), cfg) if small
                  else chunk_documents(run.read("documents"), cfg))
            rec.extra["where"] = where
            run.commit(rec, ds, table="chunks_raw", schema=pa.schema(list(CHUNKS) + [pa.field("norm", pa.string())]))
    chunk_fp = run.stage_record("chunk")["fingerprint"]
    dd_cfg = {k: cfgd[k] for k in ("dedupe", "shingle_words", "winnow_window", "max_candidates_per_fingerprint")}
    with run.stage("dedupe", chunk_fp, dd_cfg) as rec:
        if rec is not None:
            chunks = run.read("chunks_raw")
            run.commit(rec, dedupe_chunks(chunks, cfg, run.count("chunks_raw")), table="chunks", schema=CHUNKS)
    with run.stage("sentences", run.stage_record("dedupe")["fingerprint"]) as rec:
        if rec is not None:
            ds = run.read("chunks", columns=["chunk_id", "doc_id", "text", "char_start", "sentences", "sentence_spans"])
            run.commit(rec, ds.map_batches(_flatten_sentences, batch_format="pyarrow"), table="sentences",
                       schema=SENTENCES)
    qc = cfg.quality
    with run.stage("quality", run.stage_record("dedupe")["fingerprint"], qc.model_dump()) as rec:
        if rec is not None:
            if qc.enabled:
                bp = quality.boilerplate_lines(run.read("documents"), qc, run.count("documents"))
                rows = quality.score_chunks(run.read("chunks"), bp, qc)
            else:
                rows = run.read("chunks", columns=["chunk_id", "doc_id"]).map_batches(
                    quality.unscored, batch_format="pyarrow")
                bp = set()
            run.commit(rec, rows, table="chunk_quality", schema=quality.QUALITY)
            rec.extra["boilerplate_lines"] = len(bp)
            if rec.rejected:
                rec.extra["failed"] = dict(quality.reasons_summary(run.read_arrow("rejects/quality").to_pylist()))


def stable_listing(tasks: list[dict]) -> str:
    """A fingerprint of the corpus listing (paths, sizes, shards), so a changed corpus reruns."""
    h = hashlib.blake2b(digest_size=16)
    for t in tasks:
        h.update(f"{t['rel']}|{t['size']}|{t['part']}|{t['start']}|{t['end']}\n".encode())
    return h.hexdigest()
