"""The retriever losses against hand-written formulas on small tensors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from training.losses import (
    CombinedLoss,
    ContrastiveLoss,
    ListBatch,
    ListwiseKLLoss,
    PairwiseLoss,
    make_loss,
    teacher_false_negatives,
)


def _batch(B=3, n=4, d=5, seed=0, **kw) -> ListBatch:
    g = torch.Generator().manual_seed(seed)
    return ListBatch(queries=torch.randn(B, d, generator=g), passages=torch.randn(B, n, d, generator=g),
                     mask=torch.ones(B, n, dtype=torch.bool),
                     passage_ids=torch.arange(B * n).reshape(B, n),
                     teacher=torch.rand(B, n, generator=g), **kw)


def test_contrastive_matches_infonce_over_all_batch_passages():
    b = _batch()
    loss = ContrastiveLoss(tau=0.01)(b)
    q = F.normalize(b.queries, dim=-1)
    p = F.normalize(b.passages, dim=-1).reshape(-1, 5)
    expected = 0.0
    for i in range(3):
        logits = q[i] @ p.T / 0.01
        expected += -(logits[i * 4] - torch.logsumexp(logits, 0))
    assert loss.item() == pytest.approx(expected.item() / 3, rel=1e-5)


def test_contrastive_is_positive_aware_and_respects_mask():
    def q0_loss(b):
        return ContrastiveLoss()(ListBatch(**{**b.__dict__, "local": slice(0, 1)})).item()

    b = _batch()
    b.queries[0] = b.passages[0, 0]  # query 0 sits on its positive: its loss is ~0
    assert q0_loss(b) < 0.01
    # another query's hard negative is query 0's positive: as a negative it ties with the
    # target (loss ~ log 2); with the shared passage id it is not a negative for query 0
    dup = _batch()
    dup.queries[0] = dup.passages[0, 0]
    dup.passages[1, 2] = dup.passages[0, 0]
    assert q0_loss(dup) == pytest.approx(math.log(2), abs=0.01)
    dup.passage_ids[1, 2] = dup.passage_ids[0, 0]
    assert q0_loss(dup) < 0.01
    # a masked passage changes nothing, whatever its embedding
    masked = _batch()
    masked.mask[1, 2] = False
    other = _batch()
    other.mask[1, 2] = False
    other.passages[1, 2] = other.queries[2] * 5
    assert ContrastiveLoss()(other).item() == pytest.approx(ContrastiveLoss()(masked).item(), rel=1e-6)
    other.mask[1, 2] = True  # unmasked, the same passage is a strong negative for query 2
    assert ContrastiveLoss()(other).item() > ContrastiveLoss()(masked).item() + 1.0


def test_local_rows_average_to_the_full_batch_loss():
    b = _batch(B=4)
    for loss in (ContrastiveLoss(), ListwiseKLLoss(), CombinedLoss(), PairwiseLoss()):
        full = loss(b).item()
        halves = [loss(ListBatch(**{**b.__dict__, "local": s})).item()
                  for s in (slice(0, 2), slice(2, 4))]
        assert sum(halves) / 2 == pytest.approx(full, rel=1e-5)


def test_listwise_is_kl_teacher_to_student():
    b = _batch()
    b.mask[2, 3] = False
    loss = ListwiseKLLoss(tau_student=0.05, tau_teacher=0.3)(b).item()
    q = F.normalize(b.queries, dim=-1)
    p = F.normalize(b.passages, dim=-1)
    total = 0.0
    for i in range(3):
        keep = b.mask[i]
        s = torch.softmax((p[i][keep] @ q[i]) / 0.05, 0)
        t = torch.softmax(b.teacher[i][keep] / 0.3, 0)
        total += float((t * (t.log() - s.log())).sum())
    assert loss == pytest.approx(total / 3, rel=1e-4)


def test_listwise_is_zero_when_student_matches_teacher():
    # unnormalised embeddings whose dot products are teacher * tau_s / tau_t
    teacher = torch.tensor([[0.9, 0.5, 0.1]])
    q = torch.tensor([[1.0, 0.0, 0.0]])
    p = torch.zeros(1, 3, 3)
    p[0, :, 0] = teacher[0] * 0.05 / 0.3
    b = ListBatch(q, p, torch.ones(1, 3, dtype=torch.bool), teacher=teacher)
    assert ListwiseKLLoss(normalize=False)(b).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="teacher"):
        ListwiseKLLoss()(ListBatch(q, p, b.mask))


def test_combined_weights():
    b = _batch()
    expected = ListwiseKLLoss()(b) + 0.1 * ContrastiveLoss()(b)
    assert CombinedLoss()(b).item() == pytest.approx(expected.item(), rel=1e-6)
    custom = make_loss("combined", listwise_weight=0.5, contrastive_weight=2.0)
    assert custom(b).item() == pytest.approx(
        (0.5 * ListwiseKLLoss()(b) + 2.0 * ContrastiveLoss()(b)).item(), rel=1e-6)


def test_pairwise_cross_entropy_over_label_pairs():
    q = torch.tensor([[1.0, 0.0]])
    p = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [-1.0, 0.0]]])
    labels = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    mask = torch.tensor([[True, True, True, False]])
    b = ListBatch(q, p, mask, labels=labels)
    s = torch.tensor([1.0, 0.0, 0.6]) / 0.5
    pairs = [(0, 1), (2, 1)]  # positives 0 and 2 over negative 1; 3 is masked
    expected = sum(-math.log(torch.softmax(torch.stack([s[i], s[j]]), 0)[0].item()) for i, j in pairs) / 2
    assert PairwiseLoss(tau=0.5)(b).item() == pytest.approx(expected, rel=1e-4)
    # without labels: the positive against every candidate
    nolab = ListBatch(q, p, mask)
    expected = sum(-math.log(torch.softmax(torch.stack([s[0], s[j]]), 0)[0].item()) for j in (1, 2)) / 2
    assert PairwiseLoss(tau=0.5)(nolab).item() == pytest.approx(expected, rel=1e-4)


def test_teacher_false_negative_mask():
    teacher = torch.tensor([[0.8, 0.5, 0.3, 0.9], [0.5, 0.31, 0.29, 0.0]])
    fn = teacher_false_negatives(teacher, fraction=0.6)
    assert fn.tolist() == [[False, True, False, True], [False, True, False, False]]


def test_losses_train_embeddings_towards_the_positive():
    torch.manual_seed(0)
    b = _batch(B=4, n=5, d=8)
    b.teacher = torch.zeros(4, 5)
    b.teacher[:, 0] = 1.0
    for name in ("contrastive", "listwise", "combined", "pairwise"):
        q = b.queries.clone().requires_grad_()
        opt = torch.optim.SGD([q], lr=0.05)
        loss_fn = make_loss(name)
        first = loss_fn(ListBatch(**{**b.__dict__, "queries": q})).item()
        for _ in range(50):
            opt.zero_grad()
            loss_fn(ListBatch(**{**b.__dict__, "queries": q})).backward()
            opt.step()
        assert loss_fn(ListBatch(**{**b.__dict__, "queries": q})).item() < first, name


def _fn_batch():
    """Query 0's candidate 2 scores 0.8 > 0.6 × its positive's 1.0: a teacher false negative."""
    b = _batch()
    b.teacher[:, 0] = 1.0
    b.teacher[:, 1:] = 0.3
    b.teacher[0, 2] = 0.8
    return b


def test_false_negative_is_no_contrastive_negative_but_stays_in_the_listwise_target():
    """Tamber §3.3.3: the passage above 60% of the positive's teacher score is removed as a
    contrastive negative only; the listwise KL keeps its soft teacher score."""
    b = _fn_batch()
    fn = teacher_false_negatives(b.teacher, 0.6)
    assert fn.nonzero().tolist() == [[0, 2]]
    scoped = ListBatch(**{**b.__dict__, "false_negative": fn})  # fn_scope="contrastive"
    dropped = ListBatch(**{**b.__dict__, "mask": b.mask & ~fn})  # fn_scope="all" (masked)

    # contrastive: the denominator is every batch passage but the false negative
    q = F.normalize(b.queries, dim=-1)
    p = F.normalize(b.passages, dim=-1).reshape(-1, 5)
    keep = torch.ones(12, dtype=torch.bool)
    keep[0 * 4 + 2] = False
    expected = 0.0
    for i in range(3):
        logits = q[i] @ p.T / 0.01
        expected += -(logits[i * 4] - torch.logsumexp(logits[keep], 0)) / 3
    assert ContrastiveLoss()(scoped).item() == pytest.approx(expected.item(), rel=1e-5)
    assert ContrastiveLoss()(scoped).item() == pytest.approx(ContrastiveLoss()(dropped).item(), rel=1e-6)
    assert ContrastiveLoss()(b).item() != pytest.approx(ContrastiveLoss()(scoped).item(), rel=1e-3)

    # listwise: query 0's teacher distribution still spans all 4 passages, the false negative
    # with its 0.8 score; hand computation of query 0's KL term
    pl = F.normalize(b.passages, dim=-1)
    per_query = []
    for i in range(3):
        t = torch.softmax(b.teacher[i] / 0.3, 0)
        s = torch.softmax(pl[i] @ q[i] / 0.05, 0)
        per_query.append(float((t * (t.log() - s.log())).sum()))
    assert ListwiseKLLoss()(scoped).item() == pytest.approx(sum(per_query) / 3, rel=1e-4)
    assert ListwiseKLLoss()(scoped).item() == pytest.approx(ListwiseKLLoss()(b).item(), rel=1e-6)
    # the old scope ("all"): absent from the listwise target too, a different loss
    assert ListwiseKLLoss()(dropped).item() != pytest.approx(ListwiseKLLoss()(scoped).item(), rel=1e-3)
    t0 = torch.softmax(b.teacher[0, [0, 1, 3]] / 0.3, 0)
    s0 = torch.softmax(pl[0, [0, 1, 3]] @ q[0] / 0.05, 0)
    old = (float((t0 * (t0.log() - s0.log())).sum()) + sum(per_query[1:])) / 3
    assert ListwiseKLLoss()(dropped).item() == pytest.approx(old, rel=1e-4)

    # combined = listwise with it + 0.1 × contrastive without it; pairwise pairs skip it
    assert CombinedLoss()(scoped).item() == pytest.approx(
        ListwiseKLLoss()(b).item() + 0.1 * ContrastiveLoss()(dropped).item(), rel=1e-6)
    assert PairwiseLoss()(scoped).item() == pytest.approx(PairwiseLoss()(dropped).item(), rel=1e-6)
