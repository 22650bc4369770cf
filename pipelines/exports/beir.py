"""BEIR folders: read and write ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv``.

The layout (Thakur et al., BEIR):

```
DIR/corpus.jsonl         {"_id", "title", "text"} per line
DIR/queries.jsonl        {"_id", "text"} per line (queries_<split>.jsonl is accepted too)
DIR/qrels/<split>.tsv    header "query-id<TAB>corpus-id<TAB>score", one judgement per line
```

The corpus is streamed in batches (it can be millions of lines); queries and qrels are small
and read whole. Sentence-transformers retrievers see a document as ``title + " " + text``,
stripped, as BEIR's own ``SentenceBERT`` model does (:func:`passage_text`).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping

Qrels = dict[str, dict[str, int]]


def passage_text(title: str | None, text: str | None, sep: str = " ") -> str:
    """The string a bi-encoder embeds for a document: title and text joined, as BEIR does."""
    return ((title or "") + sep + (text or "")).strip()


def _queries_path(root: Path, split: str | None) -> Path:
    for name in ("queries.jsonl", f"queries_{split}.jsonl" if split else None):
        if name and (root / name).exists():
            return root / name
    raise FileNotFoundError(f"{root}: no queries.jsonl" + (f" or queries_{split}.jsonl"
                                                           if split else ""))


def iter_corpus(root: str | Path, batch_size: int = 1024) -> Iterator[list[dict]]:
    """Yield the corpus as lists of ``{"_id", "title", "text"}`` dicts, ``batch_size`` at a time."""
    batch: list[dict] = []
    with open(Path(root) / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            doc = json.loads(line)
            batch.append({"_id": str(doc["_id"]), "title": doc.get("title") or "",
                          "text": doc.get("text") or ""})
            if len(batch) >= batch_size:
                yield batch
                batch = []
    if batch:
        yield batch


def count_corpus(root: str | Path) -> int:
    with open(Path(root) / "corpus.jsonl", encoding="utf-8") as f:
        return sum(1 for line in f if line.strip())


def load_queries(root: str | Path, split: str | None = None) -> dict[str, str]:
    """``{query_id: text}`` from ``queries.jsonl`` (or ``queries_<split>.jsonl``)."""
    out: dict[str, str] = {}
    with open(_queries_path(Path(root), split), encoding="utf-8") as f:
        for line in f:
            if line.strip():
                q = json.loads(line)
                out[str(q["_id"])] = q.get("text") or ""
    return out


def load_qrels(root: str | Path, split: str = "test") -> Qrels:
    """``{query_id: {doc_id: relevance}}`` from ``qrels/<split>.tsv`` (header line skipped)."""
    path = Path(root) / "qrels" / f"{split}.tsv"
    if not path.exists():
        have = sorted(p.stem for p in (Path(root) / "qrels").glob("*.tsv"))
        raise FileNotFoundError(f"{path} not found; splits here: {have}")
    qrels: Qrels = {}
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header and header[-1].strip().lstrip("-").isdigit():  # no header after all
            reader = iter([header, *reader])
        for row in reader:
            if len(row) < 3:
                continue
            qid, did, score = row[0], row[1], int(float(row[2]))
            qrels.setdefault(qid, {})[did] = score
    return qrels


def write_beir(root: str | Path, corpus: Iterable[Mapping], queries: Mapping[str, str],
               qrels: Mapping[str, Mapping[str, int]], split: str = "test") -> Path:
    """Write a BEIR folder. ``corpus`` rows have ``_id``, ``title``, ``text`` (streamed)."""
    root = Path(root)
    (root / "qrels").mkdir(parents=True, exist_ok=True)

    def atomic(path: Path, write) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            write(f)
        os.replace(tmp, path)

    def corpus_lines(f):
        for doc in corpus:
            f.write(json.dumps({"_id": str(doc["_id"]), "title": doc.get("title") or "",
                                "text": doc.get("text") or ""}, ensure_ascii=False) + "\n")

    def query_lines(f):
        for qid, text in queries.items():
            f.write(json.dumps({"_id": str(qid), "text": text}, ensure_ascii=False) + "\n")

    def qrel_lines(f):
        f.write("query-id\tcorpus-id\tscore\n")
        for qid, docs in qrels.items():
            for did, rel in docs.items():
                f.write(f"{qid}\t{did}\t{int(rel)}\n")

    atomic(root / "corpus.jsonl", corpus_lines)
    atomic(root / "queries.jsonl", query_lines)
    atomic(root / "qrels" / f"{split}.tsv", qrel_lines)
    return root
