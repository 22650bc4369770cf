"""faiss index (flat / IVF / HNSW, streamed from Parquet, saved and loaded) and mining."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.stages.index import IndexConfig, VectorIndex, write_embeddings
from pipelines.stages.mining import (
    MiningConfig,
    mine_for_queries,
    mine_hard_negatives,
    refresh_negatives,
)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus():
    """4,000 vectors in 40 clusters (dim 32) and 200 queries near known corpus points."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(40, 32))
    x = _unit(centres[rng.integers(0, 40, 4000)] + 0.3 * rng.normal(size=(4000, 32)))
    targets = rng.choice(4000, 200, replace=False)
    q = _unit(x[targets] + 0.02 * rng.normal(size=(200, 32)))
    ids = [f"doc{i:05d}" for i in range(4000)]
    return ids, x, q, targets


def test_exact_ivf_and_hnsw_agree_on_top1(corpus):
    ids, x, q, targets = corpus
    flat = VectorIndex.from_vectors(ids, x, {"kind": "flat"})
    ivf = VectorIndex.from_vectors(ids, x, {"kind": "ivf", "nprobe": 8})
    hnsw = VectorIndex.from_vectors(ids, x, {"kind": "hnsw"})
    assert "IVF" in type(ivf.index).__name__ and "HNSW" in type(hnsw.index).__name__
    f_ids, f_scores = flat.search(q, 10)
    # exact search is exact: it matches brute force
    brute = np.argsort(-(q @ x.T), axis=1)[:, :10]
    assert (f_ids == np.array(ids, dtype=object)[brute]).all()
    assert (f_ids[:, 0] == np.array(ids, dtype=object)[targets]).all()
    for approx in (ivf, hnsw):
        a_ids, a_scores = approx.search(q, 10)
        assert (a_ids[:, 0] == f_ids[:, 0]).mean() >= 0.99
        np.testing.assert_allclose(a_scores[:, 0], f_scores[:, 0], atol=1e-5)


def test_auto_switches_to_ivf_above_threshold(corpus):
    ids, x, _, _ = corpus
    assert VectorIndex.from_vectors(ids[:500], x[:500], {"exact_threshold": 1000}).kind == "flat"
    assert VectorIndex.from_vectors(ids, x, {"exact_threshold": 1000}).kind == "ivf"


def test_build_streams_parquet_shards_and_roundtrips(corpus, tmp_path):
    ids, x, q, _ = corpus
    # three Parquet files of uneven size, read back in batches of 333 rows
    emb = write_embeddings(((ids[s:s + 700], x[s:s + 700]) for s in range(0, 4000, 700)),
                           tmp_path / "embeddings", rows_per_file=1000)
    assert len(list(emb.glob("*.parquet"))) == 3
    assert pq.read_schema(next(emb.glob("*.parquet"))).field("vector").type == pa.list_(
        pa.float32(), 32)
    for kind in ("flat", "ivf"):
        cfg = IndexConfig(kind=kind, add_batch_size=333, nprobe=8)
        built = VectorIndex.build(emb, cfg)
        ref = VectorIndex.from_vectors(ids, x, cfg)
        assert len(built) == 4000
        b_ids, b_scores = built.search(q, 5, batch_size=17)
        r_ids, r_scores = ref.search(q, 5)
        assert (b_ids[:, 0] == r_ids[:, 0]).all()
        built.save(tmp_path / f"index-{kind}")
        loaded = VectorIndex.load(tmp_path / f"index-{kind}")
        l_ids, l_scores = loaded.search(q, 5)
        assert loaded.kind == kind and (l_ids == b_ids).all()
        np.testing.assert_allclose(l_scores, b_scores)


def test_search_pads_when_k_exceeds_the_index():
    ids, scores = VectorIndex.from_vectors(["a", "b"], _unit(np.eye(2, 4))).search(
        _unit(np.ones((1, 4))), 4)
    assert ids[0, :2].tolist() == ["a", "b"] or ids[0, :2].tolist() == ["b", "a"]
    assert ids[0, 2:].tolist() == [None, None] and np.isneginf(scores[0, 2:]).all()


def _expected_scores(q, x, ids, positives, start, end):
    """Brute-force scores of the non-positive hits at ranks [start, end)."""
    sims = q @ x.T
    return [float(sims[i]) for i in np.argsort(-sims) if ids[i] not in positives][start:end]


def test_mining_excludes_positives_and_respects_the_rank_range(corpus):
    ids, x, q, targets = corpus
    index = VectorIndex.from_vectors(ids, x, {"kind": "flat"})
    # positives: the target itself and its two nearest corpus neighbours (the top-3 hits)
    top = np.argsort(-(q @ x.T), axis=1)
    positives = [{ids[j] for j in top[i, :3]} for i in range(len(q))]
    cfg = MiningConfig(rank_start=3, rank_end=30, query_batch_size=7)
    negs, scores = mine_hard_negatives(index, q, positives, cfg)
    for i in range(len(q)):
        assert not positives[i] & set(negs[i])
        assert len(negs[i]) == 27 and scores[i] == sorted(scores[i], reverse=True)
        # the ranks are right (compared by score: float32 near-ties may swap ids)
        np.testing.assert_allclose(scores[i], _expected_scores(q[i], x, ids, positives[i], 3, 30),
                                   atol=1e-5)
        np.testing.assert_allclose(scores[i], [float(q[i] @ x[ids.index(d)]) for d in negs[i]],
                                   atol=1e-5)
    # batching does not change the result
    negs_one_batch, _ = mine_hard_negatives(index, q, positives, {"query_batch_size": 1000})
    assert negs_one_batch == negs
    # num_negatives keeps the first n of the range; sample=True a seeded subset of it
    first5, _ = mine_hard_negatives(index, q[:3], positives[:3], {"num_negatives": 5})
    assert [n[:5] for n in negs[:3]] == first5
    sampled, _ = mine_hard_negatives(index, q[:3], positives[:3],
                                     {"num_negatives": 5, "sample": True, "seed": 1})
    for i in range(3):
        assert len(sampled[i]) == 5 and set(sampled[i]) <= set(negs[i])
    with pytest.raises(ValueError):
        MiningConfig(rank_start=10, rank_end=5)


PASSAGES = {
    "p-cat": "Cats are small carnivorous mammals kept as pets.",
    "p-dog": "Dogs are loyal domesticated animals descended from wolves.",
    "p-lion": "Lions are large wild cats living in prides on the savanna.",
    "p-bank": "The central bank raised interest rates to fight inflation.",
    "p-stock": "Stock markets fell sharply after the earnings report.",
    "p-rain": "Heavy rain caused flooding in the river valley.",
    "p-sun": "The sun is a star at the centre of the solar system.",
    "p-code": "Python is a popular programming language for data science.",
}


def test_refresh_with_a_checkpoint_re_encodes_and_re_mines(tmp_path):
    from actors.embedder import encode_texts
    from actors.models import embedded_embedder_dir

    chunks = tmp_path / "chunks"
    chunks.mkdir()
    pq.write_table(pa.table({"chunk_id": list(PASSAGES), "text": list(PASSAGES.values())}),
                   chunks / "part-0.parquet")
    queries = ["what pets are cats", "why did interest rates go up"]
    positives = [{"p-cat"}, {"p-bank"}]
    cfg = MiningConfig(rank_start=0, rank_end=3)
    negs, scores = refresh_negatives(embedded_embedder_dir(), chunks, queries, positives,
                                     tmp_path / "work", config=cfg)
    assert (tmp_path / "work" / "index" / "index.faiss").exists()
    # the same as mining directly with vectors from that checkpoint
    vecs = encode_texts(list(PASSAGES.values()))
    index = VectorIndex.from_vectors(list(PASSAGES), vecs)
    expected, _ = mine_for_queries(index, queries, positives, config=cfg)
    assert negs == expected
    assert "p-cat" not in negs[0] and "p-bank" not in negs[1]
    assert {"p-lion", "p-dog"} & set(negs[0])  # the hard negatives are the nearby topics
    assert "p-stock" in negs[1]


def test_embed_stage_resumes_from_its_rows_and_a_new_index_reuses_them(ray_local, tmp_path, monkeypatch):
    """A run killed mid-embedding keeps the rows it wrote; a new index kind does not re-embed."""
    import pipelines.stages.index as index_mod
    from actors.embedder import EmbedderSettings, encode_texts
    from pipelines.core.run import Run
    from pipelines.stages.index import index_run_chunks, iter_embeddings

    run = Run.open(tmp_path / "run", command="t", config={})
    ids, texts = list(PASSAGES), list(PASSAGES.values())
    with run.stage("dedupe", "a corpus"):
        run.path("chunks").mkdir()
        pq.write_table(pa.table({"chunk_id": ids, "text": texts}), run.path("chunks") / "part-0.parquet")
    settings = EmbedderSettings()
    sentinel = _unit(np.random.default_rng(1).normal(size=(3, 384)))

    def killed_mid_stage(source, out_dir, *, staging, **kwargs):
        # three rows reached disk, a fourth file was cut off, then the driver died
        pq.write_table(pa.table({"chunk_id": ids[:3], "vector": pa.FixedSizeListArray.from_arrays(
            pa.array(sentinel.reshape(-1)), 384)}), staging / "written.parquet")
        (staging / "cut.parquet").write_bytes(b"PAR1 half a file")
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(index_mod, "embed_passages", killed_mid_stage)
        with pytest.raises(KeyboardInterrupt):
            index_run_chunks(run, settings, IndexConfig(kind="flat"))
    assert run.stage_record("embed")["status"] == "interrupted"

    index_run_chunks(run, settings, IndexConfig(kind="flat"))  # the rerun
    embed = run.stage_record("embed")
    assert embed["status"] == "done" and embed["resumed_rows"] == 3
    assert embed["in"] == embed["out"] == len(ids)
    got = {}
    for batch_ids, vecs in iter_embeddings(run.path("embeddings")):
        for i, v in zip(batch_ids.to_pylist(), vecs):
            assert i not in got  # no row twice
            got[i] = v
    assert set(got) == set(ids)
    np.testing.assert_array_equal(np.stack([got[i] for i in ids[:3]]), sentinel)  # kept, not recomputed
    fresh = encode_texts(texts[3:], settings=settings)
    np.testing.assert_allclose(np.stack([got[i] for i in ids[3:]]), fresh, atol=1e-5)
    assert run.stage_record("index")["kind"] == "flat"

    seconds = embed["seconds"]
    index_run_chunks(run, settings, IndexConfig(kind="hnsw"))  # only the index changes
    assert run.stage_record("embed")["seconds"] == seconds
    assert run.stage_record("index")["kind"] == "hnsw" and run.stage_record("index")["out"] == len(ids)
    assert embed["where"] == "actor pool"  # it had staged rows to resume from

    # a fresh run this small is embedded on the driver (no pool start-up): the same vectors
    small = Run.open(tmp_path / "small", command="t", config={})
    with small.stage("dedupe", "a corpus"):
        small.path("chunks").mkdir()
        pq.write_table(pa.table({"chunk_id": ids, "text": texts}), small.path("chunks") / "part-0.parquet")
    index_run_chunks(small, settings, IndexConfig(kind="flat"))
    assert small.stage_record("embed")["where"] == "driver"
    mine = dict(pair for b, v in iter_embeddings(small.path("embeddings")) for pair in zip(b.to_pylist(), v))
    assert set(mine) == set(ids)
    np.testing.assert_allclose(np.stack([mine[i] for i in ids[3:]]), np.stack([got[i] for i in ids[3:]]), atol=1e-5)
    assert small.stage_record("index")["out"] == len(ids)
