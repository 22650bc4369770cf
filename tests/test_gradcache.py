"""GradCache is exact: parameter gradients equal the uncached full-batch computation, for every
loss, on one worker and on two gloo workers under DDP (in-batch negatives gathered across them).

The model is a tiny BERT built from a config (with the packaged MiniLM tokenizer) wrapped as a
SentenceTransformer, without dropout so the uncached reference sees the same network, in float64 so that the
comparison is tight (rtol 1e-7) despite the 1/0.01 temperature. With dropout on (train mode), the
second forward of each chunk must replay the first's dropout masks: gradients then equal those of
an uncached forward that draws the same masks, and do not without the RNG replay.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.gradcache import GradCache, TextBatch, assemble, encode, full_batch_loss
from training.losses import make_loss

LOSSES = ["contrastive", "listwise", "combined", "pairwise"]
QUERIES = ["who wrote the origin of species", "boiling point of water at sea level",
           "largest planet in the solar system", "what do bees make"]
PASSAGES = [
    ["Charles Darwin published On the Origin of Species in 1859.", "Alfred Wallace studied islands.",
     "The Beagle sailed around the world.", "Gregor Mendel bred peas."],
    ["Water boils at 100 degrees Celsius at sea level.", "Ice melts at zero degrees.",
     "Mountains have lower air pressure.", ""],
    ["Jupiter is the largest planet of the solar system.", "Saturn has rings.",
     "Charles Darwin published On the Origin of Species in 1859.", "Mars is red."],
    ["Bees make honey from nectar.", "Wasps eat insects.", "Flowers produce nectar.",
     "Honey never spoils, archaeologists say."],
]


def tiny_sentence_transformer(path: Path) -> str:
    """A 2-layer, 32-dim BERT sentence-transformer saved under ``path`` (seeded, no dropout)."""
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoTokenizer, BertConfig, BertModel

    from actors.models import embedded_embedder_dir

    tok = AutoTokenizer.from_pretrained(str(embedded_embedder_dir()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(path / "bert")
    tok.save_pretrained(path / "bert")
    st = SentenceTransformer(modules=[models.Transformer(str(path / "bert"), max_seq_length=64),
                                      models.Pooling(32, "mean")], device="cpu")
    st.save(str(path / "st"))
    return str(path / "st")


def make_batch(rows: slice = slice(None)) -> TextBatch:
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 1, 1]], dtype=torch.bool)
    ids = torch.arange(16).reshape(4, 4)
    ids[2, 2] = ids[0, 0]  # query 2's candidate is query 0's positive: not a negative for query 0
    g = torch.Generator().manual_seed(1)
    teacher = torch.rand(4, 4, generator=g)
    teacher[:, 0] = 1.0
    labels = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 0.0, 0.0],
                           [1.0, 0.5, 0.0, 0.0], [1.0, 0.0, 0.0, 0.2]])
    fn = torch.zeros(4, 4, dtype=torch.bool)
    fn[3, 3] = True  # embedded, in query 3's listwise target, no contrastive negative for anyone
    return TextBatch(queries=QUERIES[rows], passages=PASSAGES[rows], mask=mask[rows],
                     passage_ids=ids[rows], teacher=teacher[rows], labels=labels[rows],
                     false_negative=fn[rows])


def reference_grads(model, loss_name: str) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    full_batch_loss(model, make_loss(loss_name), make_batch()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def cached_grads(model, loss_name: str, chunk_size: int, rows=slice(None),
                 loss_chunk_size: int | None = None) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    gc = GradCache(model, make_loss(loss_name), chunk_size=chunk_size, loss_chunk_size=loss_chunk_size)
    loss = gc.step(make_batch(rows))
    assert loss == pytest.approx(gc.loss_value(make_batch(rows)), rel=1e-9)
    inner = model.module if hasattr(model, "module") else model
    return {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None}


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for name in want:
        assert torch.allclose(got[name], want[name], rtol=1e-7, atol=1e-9), name
    assert any(w.abs().max() > 0 for w in want.values())


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return tiny_sentence_transformer(tmp_path_factory.mktemp("tiny"))


@pytest.mark.parametrize("loss_name", LOSSES)
def test_one_worker_gradients_equal_uncached(model_dir, loss_name):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu").double().eval()
    want = reference_grads(model, loss_name)
    for chunk_size, loss_chunk_size in ((1, None), (5, None), (5, 1), (7, 3)):
        assert_same(cached_grads(model, loss_name, chunk_size, loss_chunk_size=loss_chunk_size), want)


def test_train_mode_dropout_is_replayed_exactly(model_dir):
    """Dropout p=0.1 in train mode. The uncached reference embeds the same chunks in the same order
    with a graph from the same seed, so it draws the masks of GradCache's first (cached) pass;
    with one chunk it is exactly ``full_batch_loss``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu").double().train()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts
    for m in dropouts:
        m.p = 0.1
    batch, loss = make_batch(), make_loss("combined")
    texts, _ = batch.texts()
    with torch.no_grad():  # dropout is on: two forwards differ
        assert not torch.allclose(encode(model, texts[:3]), encode(model, texts[:3]))

    def grads():
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    for chunk_size in (len(texts), 5):
        torch.manual_seed(0)
        model.zero_grad(set_to_none=True)
        if chunk_size == len(texts):
            ref = full_batch_loss(model, loss, batch)
        else:
            chunks = [texts[i : i + chunk_size] for i in range(0, len(texts), chunk_size)]
            ref = loss(assemble(torch.cat([encode(model, c) for c in chunks]), batch))
        ref.backward()
        want = grads()
        for replay in (True, False):
            torch.manual_seed(0)
            model.zero_grad(set_to_none=True)
            got = GradCache(model, loss, chunk_size=chunk_size, replay_rng=replay).step(batch)
            assert got == pytest.approx(ref.item(), rel=1e-9)  # the first pass draws the same masks
            if replay:
                assert_same(grads(), want)
            else:  # fresh masks in the second pass: the gradients are those of another network
                worst = max(float((g - want[n]).abs().max() / want[n].abs().max().clamp(min=1e-12))
                            for n, g in grads().items())
                assert worst > 1e-2, (chunk_size, worst)


def _ddp_worker(config: dict) -> None:
    """One Ray Train worker: its half of the batch through GradCache under DDP (gloo)."""
    import ray.train
    from sentence_transformers import SentenceTransformer
    from torch.nn.parallel import DistributedDataParallel as DDP

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(1)
    model = SentenceTransformer(config["model_dir"], device="cpu").double().eval()
    ddp = DDP(model, find_unused_parameters=True)
    half = 4 // world
    rows = slice(rank * half, (rank + 1) * half)
    grads = {(name, loss_chunk): cached_grads(ddp, name, chunk_size=3, rows=rows,
                                              loss_chunk_size=loss_chunk)
             for name in LOSSES for loss_chunk in (None, 1)}
    if rank == 0:
        torch.save(grads, config["out"])


def test_two_workers_ddp_gradients_equal_single_process_full_batch(ray_local, model_dir, tmp_path):
    """Two workers started by Ray Train's TorchTrainer, the way ``synthrag train retriever``
    runs them: gloo process group, DDP, embeddings gathered across the workers."""
    import sys

    import ray.cloudpickle
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer
    from sentence_transformers import SentenceTransformer

    # the workers cannot import this test module: ship its functions by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    out = tmp_path / "grads.pt"
    TorchTrainer(
        _ddp_worker,
        train_loop_config={"model_dir": model_dir, "out": str(out)},
        torch_config=TorchConfig(backend="gloo", timeout_s=120),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(name="gradcache-ddp", storage_path=str(tmp_path / "ray")),
    ).fit()
    got = torch.load(out)
    model = SentenceTransformer(model_dir, device="cpu").double().eval()
    for (name, _), grads in got.items():
        assert_same(grads, reference_grads(model, name))
    assert len(got) == 2 * len(LOSSES)
