"""Ingest: reading, cleaning, chunking and dedupe, unit by unit and end to end on Ray."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pipelines.core.run import Run
from pipelines.stages.ingest import (
    Chunker,
    IngestConfig,
    clean_text,
    decode,
    dedupe_chunks,
    discover,
    html_to_text,
    ingest,
    looks_binary,
    normalise,
    read_byte_range,
    winnow,
)


def test_byte_shards_tile_a_file_exactly(tmp_path):
    rng = random.Random(0)
    lines = ["".join(rng.choice("abcdef ") for _ in range(rng.randint(0, 90))) for _ in range(500)]
    path = tmp_path / "f.txt"
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(data)
    for shard in (1, 7, 64, 1000, len(data)):
        parts = [read_byte_range(str(path), s, min(len(data), s + shard))[0] for s in range(0, len(data), shard)]
        assert b"".join(parts) == data, shard
        assert all(p == b"" or p.endswith(b"\n") for p in parts[:-1])


def test_decode_keeps_latin1_text():
    text, enc = decode("Café crème à la française, naïve façade.".encode("latin-1"))
    assert "Café crème" in text and "façade" in text
    assert enc != "utf-8"
    assert decode("Zürich".encode())[0] == "Zürich"


def test_clean_text_and_html():
    assert clean_text("a\x00b\x07  c\r\n\n\n\nd\t e") == "a b c\n\nd e"
    text, title = html_to_text("<html><head><title>T</title><script>var x=1;</script></head>"
                               "<body><nav>menu</nav><p>One &amp; two.</p><p>Three.</p></body></html>")
    text = clean_text(text)
    assert title == "T"
    assert "One & two." in text and "Three." in text
    assert "var x" not in text and "menu" not in text
    assert looks_binary(bytes(range(256)) * 4) and not looks_binary("plain text\n".encode())


def _rows_of(out) -> list[dict]:
    return out.to_pylist() if isinstance(out, pa.Table) else out.take_all()


# the driver path (small inputs: one Arrow table) and the Ray Data path (shuffles, a distributed
# join) must give the same verdicts
@pytest.mark.parametrize("driver_max_rows", [10_000, 0], ids=["driver", "ray_data"])
def test_dedupe_marks_exact_and_contained_chunks_and_nothing_else(ray_local, driver_max_rows):
    import ray

    dedupe = lambda ds, cfg, n: _rows_of(dedupe_chunks(ds, cfg, n, driver_max_rows))  # noqa: E731

    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(400)]
    words = lambda n: [rng.choice(vocab) for _ in range(n)]  # noqa: E731
    base, other, lonely = words(120), words(90), words(60)
    texts = {
        "d0#c0": base, "d1#c0": base, "d2#c0": base,  # three copies: the smallest id is kept
        "d3#c0": base[30:80],  # occurs inside base (and so inside every copy of it)
        "d4#c0": other, "d5#c0": other[10:70],  # contained in other
        # base[30:80] with one word changed: shares most fingerprints with base, occurs nowhere
        "d6#c0": base[30:55] + ["changed"] + base[56:80],
        # the two halves of other swapped: every fingerprint of each half is in other, the whole is not
        "d7#c0": other[45:90] + other[0:45],
        "d8#c0": lonely,
    }
    rows = [{"chunk_id": cid, "text": " ".join(w).upper() + ".", "norm": " ".join(w)} for cid, w in texts.items()]
    ds = ray.data.from_items(rows, override_num_blocks=4)
    out = {r["chunk_id"]: r for r in dedupe(ds, IngestConfig(), len(rows))}
    assert sorted(out) == sorted(texts)  # every row comes back exactly once
    assert "norm" not in out["d0#c0"] and out["d0#c0"]["text"].startswith("W")
    verdicts = {cid: (r["reject_reason"], json.loads(r["reject_detail"]) if r["reject_detail"] else None)
                for cid, r in out.items() if r["reject_reason"]}
    assert verdicts == {
        "d1#c0": ("exact_duplicate", {"duplicate_of": "d0#c0"}),
        "d2#c0": ("exact_duplicate", {"duplicate_of": "d0#c0"}),
        "d3#c0": ("contained_in_other_chunk", {"contained_in": "d0#c0"}),
        "d5#c0": ("contained_in_other_chunk", {"contained_in": "d4#c0"}),
    }
    assert all(r["reject_reason"] is None for r in dedupe(ds, IngestConfig(dedupe=False), len(rows)))
    unique = ray.data.from_items([r for r in rows if r["chunk_id"] in ("d0#c0", "d4#c0", "d8#c0")])
    out = dedupe(unique, IngestConfig(), 3)  # no verdict at all: columns still there
    assert len(out) == 3 and all(r["reject_reason"] is None and r["reject_detail"] is None for r in out)


def test_winnowing_finds_every_contained_sequence():
    rng = random.Random(1)
    vocab = [f"w{i}" for i in range(300)]
    for _ in range(50):
        b = [rng.choice(vocab) for _ in range(rng.randint(30, 120))]
        i = rng.randint(0, len(b) - 8)
        a = b[i:i + rng.randint(8, len(b) - i)]
        assert winnow(a, 5, 4) <= winnow(b, 5, 4)
    # unrelated text shares (almost) nothing
    x = [rng.choice(vocab) for _ in range(80)]
    y = [rng.choice(vocab) for _ in range(80)]
    assert len(winnow(x, 5, 4) & winnow(y, 5, 4)) == 0


def test_chunker_aligns_chunks_to_sentences_with_overlap():
    cfg = IngestConfig(chunk_tokens=40, overlap_tokens=12)
    chunker = Chunker(cfg.model_dump())
    sents = [f"Sentence number {i} talks about topic {i} in a few words." for i in range(12)]
    doc = {"doc_id": "d", "title": "t", "text": " ".join(sents[:6]) + "\n\n" + " ".join(sents[6:])}
    chunks = chunker.chunk(doc)
    assert len(chunks) > 2
    for c in chunks:
        assert c["text"] == doc["text"][c["char_start"]:c["char_end"]]
        assert c["token_count"] <= cfg.chunk_tokens
        pieces = [c["text"][s["start"]:s["end"]] for s in c["sentence_spans"]]
        assert all(p in sents for p in pieces), pieces  # whole sentences only
        assert len(c["sentences"]) == len(pieces)
    for prev, nxt in zip(chunks, chunks[1:]):  # consecutive chunks overlap by whole sentences
        assert nxt["char_start"] < prev["char_end"]
        assert nxt["char_start"] > prev["char_start"]
    covered = "".join(doc["text"][c["char_start"]:c["char_end"]] for c in chunks)
    assert all(s in covered for s in sents)


def _messy_corpus(root, big_bytes: int):
    root.mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "image.txt").write_bytes(bytes(range(256)) * 40)  # binary content, text extension
    (root / "notes.bin").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(300))
    (root / "cafe.txt").write_bytes(
        "Le café au lait est une boisson française. On le sert souvent dans un grand bol le matin.".encode("latin-1"))
    long_doc = ("The reservoir above the village was built in 1931 to supply drinking water. "
                "Its dam is made of granite blocks quarried nearby. "
                "Engineers inspect the spillway every spring after the snow melts. "
                "A footpath crosses the crest of the dam and joins the ridge trail.")
    (root / "reservoir.md").write_text(f"# Reservoir\n\n{long_doc}\n")
    (root / "reservoir-copy.md").write_text(f"# Reservoir\n\n{long_doc}\n")  # exact duplicate
    # contained: the middle of another document, worded identically apart from case/punctuation
    (root / "excerpt.txt").write_text("its dam is made of granite blocks quarried nearby; engineers inspect "
                                      "the spillway every spring after the snow melts")
    (root / "page.html").write_text("<html><head><title>Mill</title></head><body><p>The old mill ground wheat "
                                    "for three villages until 1950. Its wheel was turned by the river.</p></body></html>")
    lines = [json.dumps({"_id": f"r{i}", "title": f"Record {i}",
                         "text": f"Record {i} describes a lighthouse keeper who logged {i} storms in one winter."})
             for i in range(5)]
    lines.insert(2, '{"_id": "bad1", "text": "unterminated')
    lines.insert(4, "not json at all")
    lines.append(json.dumps({"_id": "notext", "title": "no text field"}))
    (root / "records.jsonl").write_text("\n".join(lines) + "\n")
    # megabytes of a log that repeats itself: read in shards, chunked, and all but one copy deduped
    line = "Pump station 4 reported normal pressure and flow during the routine hourly check.\n"
    with open(root / "big.txt", "w") as f:
        block = line * 1000
        for _ in range(-(-big_bytes // len(block))):
            f.write(block)


@pytest.mark.slow
def test_ingest_messy_folder_end_to_end(ray_local, tmp_path):
    corpus = tmp_path / "corpus"
    _messy_corpus(corpus, big_bytes=3 * 2**20)  # three 1 MiB shards
    cfg = IngestConfig(splitter="regex", chunk_tokens=256, overlap_tokens=0, shard_bytes=1 << 20,
                       driver_max_bytes=0)  # Ray Data read tasks and the chunker pool
    run = Run.open(tmp_path / "run", command="test", config={})
    ingest(run, corpus, cfg)
    stages = {s["name"]: s for s in run.manifest["stages"]}
    assert stages["read"]["where"] == stages["chunk"]["where"] == "ray"

    # a small corpus is read and chunked on the driver: the same tables
    small = Run.open(tmp_path / "small", command="test", config={})
    ingest(small, corpus, cfg.model_copy(update={"driver_max_bytes": 8 << 20}))
    assert {s["name"]: s.get("where") for s in small.manifest["stages"]}.keys() >= {"read", "chunk"}
    assert small.stage_record("read")["where"] == small.stage_record("chunk")["where"] == "driver"
    for table, key in (("documents", "doc_id"), ("chunks_raw", "chunk_id"), ("rejects/read", "doc_id"),
                       ("rejects/chunk", "chunk_id")):
        if (run.path(table)).exists() or (small.path(table)).exists():
            a = pads.dataset(run.path(table)).to_table().sort_by(key)
            b = pads.dataset(small.path(table)).to_table().sort_by(key)
            assert a.to_pylist() == b.to_pylist(), table
    for s in stages.values():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s

    rej = pads.dataset(run.path("rejects/read")).to_table().to_pylist()
    by_source = {}
    for r in rej:
        by_source.setdefault(r["source"], []).append(r)
    assert [r["reject_reason"] for r in by_source["empty.txt"]] == ["empty_file"]
    assert [r["reject_reason"] for r in by_source["image.txt"]] == ["binary_file"]
    assert [r["reject_reason"] for r in by_source["notes.bin"]] == ["unsupported_file_type"]
    jsonl = sorted(r["reject_reason"] for r in by_source["records.jsonl"])
    assert jsonl == ["malformed_json", "malformed_json", "missing_text_field"]
    assert all(r["reject_detail"] for r in rej)

    docs = pads.dataset(run.path("documents")).to_table(columns=["doc_id", "source", "text"]).to_pylist()
    ids = {d["doc_id"] for d in docs}
    assert {f"r{i}" for i in range(5)} <= ids
    assert {"cafe.txt", "reservoir.md", "reservoir-copy.md", "excerpt.txt", "page.html"} <= ids
    cafe = next(d for d in docs if d["doc_id"] == "cafe.txt")
    assert "café au lait" in cafe["text"] and "française" in cafe["text"]
    big_parts = [d for d in docs if d["source"] == "big.txt"]
    assert len(big_parts) == -(-(corpus / "big.txt").stat().st_size // cfg.shard_bytes)
    # bounded per task: a shard plus the line that straddles its end
    assert max(len(d["text"].encode()) for d in big_parts) <= cfg.shard_bytes + 1024
    assert stages["read"]["in"] == len(docs) + len(rej)

    dd = pads.dataset(run.path("rejects/dedupe")).to_table(columns=["doc_id", "reject_reason", "reject_detail"]).to_pylist()
    reasons = {d["doc_id"]: d["reject_reason"] for d in dd if not d["doc_id"].startswith("big.txt")}
    twins = {"reservoir.md", "reservoir-copy.md"}
    assert sorted(reasons.get(t) for t in twins if t in reasons) == ["exact_duplicate"]  # one copy kept
    assert reasons.get("excerpt.txt") == "contained_in_other_chunk"
    # the big file repeats itself: every chunk text is kept exactly once
    chunks = pads.dataset(run.path("chunks")).to_table(columns=["chunk_id", "doc_id", "text"]).to_pylist()
    norms = [normalise(c["text"]) for c in chunks]
    assert len(norms) == len(set(norms))
    assert stages["dedupe"]["rejected"]["exact_duplicate"] > 1000
    assert any(c["doc_id"].startswith("big.txt") for c in chunks)

    sents = pads.dataset(run.path("sentences")).to_table().to_pylist()
    by_chunk = {c["chunk_id"]: c["text"] for c in chunks}
    assert {s["chunk_id"] for s in sents} == set(by_chunk)
    for s in sents[:2000]:
        assert s["text"] in by_chunk[s["chunk_id"]]


def test_discover_shards_large_files(tmp_path):
    (tmp_path / "a.txt").write_text("x\n" * 50_000)
    (tmp_path / "b.md").write_text("hello\n")
    tasks = discover(tmp_path, IngestConfig(shard_bytes=1 << 16))
    a = [t for t in tasks if t["rel"] == "a.txt"]
    assert len(a) == -(-100_000 // (1 << 16)) and a[-1]["end"] == 100_000
    assert [t["kind"] for t in tasks if t["rel"] == "b.md"] == ["markdown"]
