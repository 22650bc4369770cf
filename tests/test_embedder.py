"""The embedder: normalised vectors, prefixes, the Arrow actor and the Ray actor pool."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from actors.embedder import Embedder, EmbedderSettings, encode_texts

TEXTS = ["Cats are small domesticated carnivorous mammals.",
         "The central bank raised interest rates by half a point.",
         "Photosynthesis converts light energy into chemical energy in plants."]


def test_vectors_are_unit_length_and_meaningful():
    p = encode_texts(TEXTS, kind="passage")
    q = encode_texts(["what do cats eat", "monetary policy and inflation"], kind="query")
    assert p.shape == (3, 384) and p.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)
    assert (q @ p.T).argmax(axis=1).tolist() == [0, 1]  # cosine picks the right passage


def test_prefixes_are_prepended_to_their_kind_only():
    s = EmbedderSettings(query_prefix="query: ", passage_prefix="passage: ")
    q = encode_texts(["cats"], kind="query", settings=s)
    p = encode_texts(["cats"], kind="passage", settings=s)
    plain_q = encode_texts(["query: cats"], kind="query")  # embedded MiniLM has no prompts
    plain_p = encode_texts(["passage: cats"], kind="query")
    bare = encode_texts(["cats"], kind="query")
    np.testing.assert_allclose(q, plain_q, atol=1e-5)
    np.testing.assert_allclose(p, plain_p, atol=1e-5)
    assert float(q[0] @ bare[0]) < 0.99  # the prefix really changed the input
    assert float(q[0] @ p[0]) < 0.99


def test_actor_adds_fixed_size_list_column_and_keeps_the_rest():
    actor = Embedder(text_column="body", output_column="emb", settings={"kind": "passage"},
                     num_threads=1)
    out = actor(pa.table({"id": ["a", "b", "c"], "body": TEXTS}))
    assert out.column_names == ["id", "body", "emb"]
    assert out.schema.field("emb").type == pa.list_(pa.float32(), 384)
    vecs = np.asarray(out.column("emb").to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(vecs, encode_texts(TEXTS), atol=1e-5)
    # numpy-format batches (Ray's default) work too
    out2 = actor({"id": np.array(["a"]), "body": np.array([TEXTS[0]])})
    np.testing.assert_allclose(np.asarray(out2.column("emb").to_pylist()[0]), vecs[0], atol=1e-5)


@pytest.mark.slow
def test_ray_actor_pool_writes_the_same_embeddings(ray_local, tmp_path):
    from pipelines.stages.index import embed_passages, iter_embeddings

    chunks = tmp_path / "chunks"
    chunks.mkdir()
    ids = [f"c{i}" for i in range(40)]
    titles = [f"Title {i}" for i in range(40)]
    texts = [TEXTS[i % 3] + f" Item {i}." for i in range(40)]
    pq.write_table(pa.table({"chunk_id": ids, "title": titles, "text": texts}),
                   chunks / "part-0.parquet")
    out = embed_passages(chunks, tmp_path / "embeddings", use_ray=True, batch_size=16,
                         min_actors=1, max_actors=2)
    got = {}
    for batch_ids, vecs in iter_embeddings(out):
        got.update(zip(batch_ids.to_pylist(), vecs))
    assert sorted(got) == sorted(ids)
    schema = pq.ParquetDataset(out).schema
    assert schema.field("vector").type == pa.list_(pa.float32(), 384)
    expected = encode_texts([f"{t} {x}" for t, x in zip(titles, texts)])
    np.testing.assert_allclose(np.stack([got[i] for i in ids]), expected, atol=1e-4)


def test_cpu_bf16_autocast_stays_close_to_fp32():
    fp32 = encode_texts(TEXTS)
    bf16 = encode_texts(TEXTS, settings={"cpu_bf16": True})
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-3)
    assert float((fp32 * bf16).sum(axis=1).min()) > 0.999
