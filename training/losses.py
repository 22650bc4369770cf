"""Retriever losses on embeddings: contrastive, listwise distillation, combined, pairwise.

Every loss is a small callable on a :class:`ListBatch` of embeddings, in the manner of
sentence-transformers' ``compute_loss_from_embeddings``: the maths stands alone, so GradCache
(training/gradcache.py) can compute embeddings in chunks, gather them across workers, call the
loss once and back-propagate into the cached embeddings.

A batch holds ``B`` queries, each with a list of ``n`` passages whose column 0 is the query's
positive and columns 1..n-1 its candidates (mined hard negatives, teacher-scored). Lists are
padded to a fixed width; ``mask`` marks real passages (not padding). ``false_negative`` marks
candidates that are likely relevant (Tamber et al. §3.3.3: above 60% of the positive's teacher
score): they are no negatives for the contrastive and pairwise losses, but the listwise
distillation keeps them with their soft teacher scores (``fn_scope="contrastive"``, the paper's);
with ``fn_scope="all"`` they are dropped from the lists altogether and never reach a loss.
Under data parallelism the batch holds the queries and passages of *all* workers and ``local``
selects the rows this worker owns: a loss is the mean over its local queries, so the
DDP-averaged gradient equals the gradient of the full-batch mean.

| loss | uses | from |
|---|---|---|
| :class:`ContrastiveLoss` | every passage in the batch, ``passage_ids`` | positive-aware InfoNCE, tau 0.01 (Tamber et al.) |
| :class:`ListwiseKLLoss` | own list, ``teacher`` | KL(teacher ‖ student), tau_s 0.05, tau_t 0.3 (Tamber et al.) |
| :class:`CombinedLoss` | both | listwise + 0.1 × contrastive (Tamber et al.) |
| :class:`PairwiseLoss` | own list, ``labels`` | pairwise cross-entropy over utility pairs (SCARLet) |

Example::

    import torch
    from training.losses import ListBatch, CombinedLoss
    q, p = torch.randn(4, 8), torch.randn(4, 20, 8)
    batch = ListBatch(queries=q, passages=p, mask=torch.ones(4, 20, dtype=torch.bool),
                      teacher=torch.rand(4, 20))
    CombinedLoss()(batch)  # a scalar tensor
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from training.retriever_config import LossName


@dataclass
class ListBatch:
    """Embeddings of one training step.

    queries: ``[B, d]``; passages: ``[B, n, d]`` (column 0 = positive); mask: ``[B, n]`` bool;
    passage_ids: ``[B, n]`` int64, equal ids = the same passage (for positive-aware masking);
    teacher: ``[B, n]`` normalised teacher scores; labels: ``[B, n]`` utilities (pairwise);
    false_negative: ``[B, n]`` bool, candidates left out as negatives (contrastive, pairwise) but
    kept in the listwise target; local: the rows whose loss this worker computes (all rows on one
    worker).
    """

    queries: Tensor
    passages: Tensor
    mask: Tensor
    passage_ids: Tensor | None = None
    teacher: Tensor | None = None
    labels: Tensor | None = None
    false_negative: Tensor | None = None
    local: slice = field(default_factory=lambda: slice(None))


class RetrievalLoss(Protocol):
    def __call__(self, batch: ListBatch) -> Tensor: ...


def teacher_false_negatives(teacher: Tensor, fraction: float = 0.6, positive_index: int = 0) -> Tensor:
    """Candidates whose teacher score exceeds ``fraction`` × the positive's (normalised) score.

    ``teacher`` is ``[..., n]``; returns a bool mask of the same shape, never set on the positive.
    Tamber et al. drop these as likely false negatives (fraction 0.6).
    """
    teacher = torch.as_tensor(teacher, dtype=torch.float32)
    pos = teacher[..., positive_index : positive_index + 1]
    out = teacher > fraction * pos
    out[..., positive_index] = False
    return out


def negatives_mask(batch: ListBatch) -> Tensor:
    """``mask`` less the false negatives: the passages a contrastive or pairwise loss may use."""
    if batch.false_negative is None:
        return batch.mask
    return batch.mask & ~batch.false_negative.to(torch.bool)


def _embed(batch: ListBatch, normalize: bool) -> tuple[Tensor, Tensor]:
    q, p = batch.queries, batch.passages
    if normalize:  # cosine similarity: the temperatures of the papers assume it
        q, p = F.normalize(q, dim=-1), F.normalize(p, dim=-1)
    return q, p


def _list_scores(batch: ListBatch, normalize: bool) -> Tensor:
    """Similarity of each local query with its own list: ``[b, n]``."""
    q, p = _embed(batch, normalize)
    return torch.einsum("bd,bnd->bn", q[batch.local], p[batch.local])


@dataclass
class ContrastiveLoss:
    """Positive-aware InfoNCE over all passages in the batch.

    Each local query is scored against every positive and every hard negative of every query in
    the (gathered) batch, ``B × n`` passages, at temperature ``tau``; the target is its own
    positive. Masked passages (padding) and false negatives (of any list in the batch, as if they
    had been removed from the hard negatives) are left out, and so is any other in-batch copy of
    its positive (same ``passage_ids``), which would otherwise be a false negative.
    """

    tau: float = 0.01
    normalize: bool = True

    def __call__(self, batch: ListBatch) -> Tensor:
        q, p = _embed(batch, self.normalize)
        B, n, d = p.shape
        rows = torch.arange(B, device=q.device)[batch.local]  # global row index of local queries
        scores = q[batch.local] @ p.reshape(B * n, d).T / self.tau  # [b, B*n]
        allowed = negatives_mask(batch).reshape(1, B * n).expand(len(rows), -1).clone()
        if batch.passage_ids is not None:
            ids = batch.passage_ids.reshape(B * n)
            pos_ids = batch.passage_ids[rows, 0]
            allowed &= ids.unsqueeze(0) != pos_ids.unsqueeze(1)
        target = rows * n
        allowed[torch.arange(len(rows), device=q.device), target] = True
        scores = scores.masked_fill(~allowed, float("-inf"))
        return F.cross_entropy(scores, target)


@dataclass
class ListwiseKLLoss:
    """Listwise distillation: KL(teacher ‖ student) over the positive and its candidates.

    Student distribution: softmax of similarities at ``tau_student`` (0.05); teacher
    distribution: softmax of normalised teacher scores at ``tau_teacher`` (0.3). Masked
    candidates (padding) are excluded from both softmaxes; false negatives are not: the teacher's
    soft scores say how relevant they are, which is what the distillation learns from.
    """

    tau_student: float = 0.05
    tau_teacher: float = 0.3
    normalize: bool = True

    def __call__(self, batch: ListBatch) -> Tensor:
        if batch.teacher is None:
            raise ValueError("the listwise loss needs teacher scores")
        mask = batch.mask[batch.local]
        s = _list_scores(batch, self.normalize) / self.tau_student
        t = batch.teacher[batch.local].to(s.dtype) / self.tau_teacher
        log_ps = torch.log_softmax(s.masked_fill(~mask, float("-inf")), dim=-1)
        log_pt = torch.log_softmax(t.masked_fill(~mask, float("-inf")), dim=-1)
        terms = torch.where(mask, log_pt.exp() * (log_pt - log_ps), torch.zeros_like(s))
        return terms.sum(-1).mean()


@dataclass
class CombinedLoss:
    """``listwise_weight`` × listwise KL + ``contrastive_weight`` × contrastive (1.0 and 0.1)."""

    listwise: ListwiseKLLoss = field(default_factory=ListwiseKLLoss)
    contrastive: ContrastiveLoss = field(default_factory=ContrastiveLoss)
    listwise_weight: float = 1.0
    contrastive_weight: float = 0.1

    def __call__(self, batch: ListBatch) -> Tensor:
        return (self.listwise_weight * self.listwise(batch)
                + self.contrastive_weight * self.contrastive(batch))


@dataclass
class PairwiseLoss:
    """Pairwise cross-entropy over (positive, negative) pairs of each query's list.

    A pair (i, j) is every two unmasked passages with ``labels[i] > labels[j]`` (SCARLet's
    utility positives over its negatives); without labels the positive (column 0) is paired with
    each candidate. False negatives are in no pair. Each pair contributes ``-log softmax([s_i, s_j] / tau)[0]``; a query's loss is
    the mean over its pairs (0 if it has none) and the batch loss the mean over queries.
    """

    tau: float = 0.05
    normalize: bool = True

    def __call__(self, batch: ListBatch) -> Tensor:
        mask = negatives_mask(batch)[batch.local]
        s = _list_scores(batch, self.normalize) / self.tau  # [b, n]
        if batch.labels is not None:
            labels = batch.labels[batch.local].to(s.dtype)
        else:
            labels = torch.zeros_like(s)
            labels[:, 0] = 1.0
        pairs = (labels.unsqueeze(2) > labels.unsqueeze(1)) & mask.unsqueeze(2) & mask.unsqueeze(1)
        # -log sigmoid(s_i - s_j) is the two-way softmax cross-entropy of the pair
        nll = F.softplus(s.unsqueeze(1) - s.unsqueeze(2))  # [b, i, j] = softplus(s_j - s_i)
        nll = torch.where(pairs, nll, torch.zeros_like(nll))
        per_query = nll.sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
        return per_query.mean()


def make_loss(name: LossName, *, tau: float = 0.01, tau_student: float = 0.05,
              tau_teacher: float = 0.3, listwise_weight: float = 1.0,
              contrastive_weight: float = 0.1, pairwise_tau: float = 0.05,
              normalize: bool = True) -> RetrievalLoss:
    """The loss called ``name`` with the papers' defaults."""
    if name == "contrastive":
        return ContrastiveLoss(tau=tau, normalize=normalize)
    if name == "listwise":
        return ListwiseKLLoss(tau_student, tau_teacher, normalize=normalize)
    if name == "combined":
        return CombinedLoss(ListwiseKLLoss(tau_student, tau_teacher, normalize=normalize),
                            ContrastiveLoss(tau=tau, normalize=normalize),
                            listwise_weight, contrastive_weight)
    if name == "pairwise":
        return PairwiseLoss(tau=pairwise_tau, normalize=normalize)
    raise ValueError(f"unknown loss {name!r}; choose contrastive, listwise, combined or pairwise")


def needs_teacher(name: LossName) -> bool:
    return name in ("listwise", "combined")
