"""GradCache: large-batch retriever training in the memory of a small chunk.

Gao et al. 2021 (https://arxiv.org/abs/2101.06983), as in Tevatron and sentence-transformers'
Cached* losses, for any loss of training/losses.py:

1. embed every query and passage of the step in chunks of ``chunk_size`` texts without a graph
   (remembering each chunk's RNG state, so dropout replays exactly);
2. gather the embeddings of all workers (differentiable all-gather, so in-batch negatives span
   workers), compute the loss once and back-propagate to the embeddings only;
3. embed each chunk again with a graph and back-propagate the cached embedding gradients
   (``(emb * grad).sum().backward()``), accumulating parameter gradients chunk by chunk.

Under DDP the parameter all-reduce runs once, on the last chunk (``no_sync`` before). Each
worker's loss is the mean over its own queries, so DDP's average equals the gradient of the
full-batch mean, which ``tests/test_gradcache.py`` checks against the uncached computation.

Peak activation memory is that of one chunk of texts. The loss needs the step's embeddings
(4,096 queries × 20 passages × 384 dims: 130 MB in fp32) and the ``[rows, B·n]`` score matrix;
with ``loss_chunk_size`` the loss is computed and back-propagated in blocks of that many query
rows (exact, since every loss is a mean of per-query terms), so 4,096 × 81,920 scores (1.3 GB)
never exist at once.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
import torch.distributed as dist
from sentence_transformers.base.losses.gradcache import RandContext
from torch import Tensor

from training.losses import ListBatch, RetrievalLoss


@dataclass
class TextBatch:
    """One worker's share of a step: ``b`` queries, each with a list of ``n`` passage texts.

    Column 0 of ``passages`` is the positive; ``mask`` marks real passages (padding is False and
    is never embedded). ``passage_ids`` identify passages across the batch (an in-batch copy of a
    query's positive is not a negative for it); ``false_negative`` marks embedded candidates that
    are no negatives (see :class:`training.losses.ListBatch`).
    """

    queries: list[str]
    passages: list[list[str]]
    mask: Tensor  # [b, n] bool
    passage_ids: Tensor  # [b, n] int64
    teacher: Tensor | None = None  # [b, n]
    labels: Tensor | None = None  # [b, n]
    false_negative: Tensor | None = None  # [b, n] bool

    def texts(self) -> tuple[list[str], Tensor]:
        """Queries then unmasked passages (row-major), and the flat indices of those passages."""
        flat = self.mask.reshape(-1).nonzero().squeeze(1)
        n = self.mask.shape[1]
        passages = [self.passages[i // n][i % n] for i in flat.tolist()]
        return list(self.queries) + passages, flat


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") else model


def encode(model: torch.nn.Module, texts: list[str]) -> Tensor:
    """Sentence embeddings of ``texts`` (graph kept if grad is enabled); ``model`` is a
    SentenceTransformer, possibly wrapped in DDP."""
    st = unwrap(model)
    features = st.preprocess(texts)
    device = next(st.parameters()).device
    features = {k: v.to(device) if isinstance(v, Tensor) else v for k, v in features.items()}
    return model(features)["sentence_embedding"]


def _loss_dtype(t: Tensor) -> Tensor:
    """Half-precision embeddings are promoted to fp32 for the loss; fp32/fp64 stay as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _gather(t: Tensor | None, *, grad: bool) -> Tensor | None:
    """Concatenate ``t`` from every worker along dim 0 (differentiable when ``grad``)."""
    rank, world = _world()
    if t is None or world == 1:
        return t
    if grad:
        import torch.distributed.nn.functional as dist_fn

        return torch.cat(dist_fn.all_gather(t), dim=0)
    parts = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)


def assemble(reps: Tensor, batch: TextBatch, *, gather: bool = True) -> ListBatch:
    """Turn flat embeddings (queries, then unmasked passages) into a :class:`ListBatch`,
    gathered across workers when ``gather`` and torch.distributed is initialised."""
    b, n = batch.mask.shape
    q = reps[:b]
    _, flat = batch.texts()
    p = reps.new_zeros(b * n, reps.shape[1]).index_copy(0, flat.to(reps.device), reps[b:])
    p = p.reshape(b, n, -1)  # [b, n, d], zeros where masked
    device = reps.device
    mask = batch.mask.to(device)
    ids = batch.passage_ids.to(device)
    teacher = None if batch.teacher is None else batch.teacher.to(device, torch.float32)
    labels = None if batch.labels is None else batch.labels.to(device, torch.float32)
    fn = None if batch.false_negative is None else batch.false_negative.to(device, torch.bool)
    rank, world = _world()
    if not gather or world == 1:
        return ListBatch(q, p, mask, ids, teacher, labels, fn)
    return ListBatch(
        queries=_gather(q, grad=True), passages=_gather(p, grad=True),
        mask=_gather(mask, grad=False), passage_ids=_gather(ids, grad=False),
        teacher=_gather(teacher, grad=False), labels=_gather(labels, grad=False),
        false_negative=_gather(fn, grad=False), local=slice(rank * b, (rank + 1) * b),
    )


class GradCache:
    """Chunked forward/backward around ``loss`` for a SentenceTransformer (or DDP of one).

    ``step(batch)`` accumulates parameter gradients and returns the loss; call the optimizer
    afterwards. ``loss_value(batch)`` gives the loss without gradients (dev evaluation).

    ``replay_rng=False`` skips restoring each chunk's RNG state before its second forward, so
    dropout draws fresh masks and the gradients no longer match the cached loss; it exists only
    so that tests can show the replay matters. Keep the default.
    """

    def __init__(self, model: torch.nn.Module, loss: RetrievalLoss, chunk_size: int = 32,
                 gather: bool = True, loss_chunk_size: int | None = None,
                 replay_rng: bool = True):
        if chunk_size < 1 or (loss_chunk_size is not None and loss_chunk_size < 1):
            raise ValueError("chunk sizes must be at least 1")
        self.model = model
        self.loss = loss
        self.chunk_size = chunk_size
        self.gather = gather
        self.loss_chunk_size = loss_chunk_size
        self.replay_rng = replay_rng

    def _chunks(self, texts: list[str]) -> list[list[str]]:
        return [texts[i : i + self.chunk_size] for i in range(0, len(texts), self.chunk_size)]

    @torch.no_grad()
    def _embed(self, chunks: list[list[str]]) -> tuple[Tensor, list[RandContext]]:
        reps, states = [], []
        device = next(unwrap(self.model).parameters()).device
        for chunk in chunks:
            # a tensor on the model's device makes RandContext snapshot that device's RNG too
            states.append(RandContext(torch.empty(0, device=device)))
            reps.append(encode(self.model, chunk))
        return _loss_dtype(torch.cat(reps)), states

    def _row_blocks(self, lb: ListBatch) -> list[slice]:
        """The local query rows in blocks of ``loss_chunk_size`` (one block if unset)."""
        start, stop, _ = lb.local.indices(lb.queries.shape[0])
        size = self.loss_chunk_size or (stop - start)
        return [slice(i, min(i + size, stop)) for i in range(start, stop, size)]

    def _blockwise_loss(self, lb: ListBatch, *, backward: bool) -> float:
        """The mean loss over local rows, one row block at a time.

        Every loss is a mean of per-query terms, so the blocks' losses weighted by their share of
        rows add up to it exactly; only one block's ``[rows, B·n]`` scores exist at a time.
        """
        blocks = self._row_blocks(lb)
        n_local = sum(b.stop - b.start for b in blocks)
        total = 0.0
        for block in blocks:
            part = self.loss(replace(lb, local=block)) * ((block.stop - block.start) / n_local)
            if backward:
                part.backward()
            total += float(part.detach())
        return total

    def loss_value(self, batch: TextBatch) -> float:
        texts, _ = batch.texts()
        with torch.no_grad():
            reps = _loss_dtype(torch.cat([encode(self.model, c) for c in self._chunks(texts)]))
            return self._blockwise_loss(assemble(reps, batch, gather=self.gather), backward=False)

    def step(self, batch: TextBatch) -> float:
        texts, _ = batch.texts()
        chunks = self._chunks(texts)
        # 1. embeddings without a graph
        reps, states = self._embed(chunks)
        reps = reps.detach().requires_grad_()
        # 2. loss on the (gathered) embeddings, gradients down to the embeddings only
        lb = assemble(reps, batch, gather=self.gather)
        if self.loss_chunk_size is None:
            loss = self.loss(lb)
            loss.backward()
            loss = float(loss.detach())
        else:  # row blocks into detached copies, then once through the gather to ``reps``
            q = lb.queries.detach().requires_grad_()
            p = lb.passages.detach().requires_grad_()
            loss = self._blockwise_loss(replace(lb, queries=q, passages=p), backward=True)
            pairs = [(t, g) for t, g in ((lb.queries, q.grad), (lb.passages, p.grad)) if g is not None]
            torch.autograd.backward([t for t, _ in pairs], [g for _, g in pairs])
        grads = reps.grad.split([len(c) for c in chunks])
        # 3. chunk by chunk: embed again with a graph, push the cached gradients through
        no_sync = getattr(self.model, "no_sync", None)
        for i, (chunk, state, grad) in enumerate(zip(chunks, states, grads)):
            last = i == len(chunks) - 1
            sync = nullcontext() if (last or no_sync is None) else no_sync()
            with sync, (state if self.replay_rng else nullcontext()):
                emb = encode(self.model, chunk)
                torch.dot(emb.to(grad.dtype).flatten(), grad.flatten()).backward()
        return loss


def full_batch_loss(model: torch.nn.Module, loss: RetrievalLoss, batch: TextBatch,
                    *, gather: bool = True) -> Tensor:
    """The uncached reference: one forward of every text with a graph, then the loss."""
    texts, _ = batch.texts()
    return loss(assemble(_loss_dtype(encode(model, texts)), batch, gather=gather))
