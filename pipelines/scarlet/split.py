"""SCARLet's sampling of positives and negatives from passage utilities (paper §3.5, Figure 3).

Sorted by utility, a context's scores fall on an inverse S: a few passages clearly help, a few
clearly hurt or do nothing, the rest sit in between. :func:`three_clusters` splits the list into
three groups with *optimal* one-dimensional k-means (k = 3, minimum within-cluster sum of
squares, found exactly by dynamic programming over the sorted values, as Jenks natural breaks
or ``Ckmeans.1d.dp`` do; no random initialisation), so the number of positives adapts to each
example. The top cluster is the positives, the middle one is dropped, the bottom one is the
negatives. :func:`top1_bottom5` is the paper's ablation (§4.4): the best passage as the only
positive and the five worst as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import numpy as np

SplitName = Literal["clusters", "top1-bottom5"]


class DegenerateUtilities(ValueError):
    """The utilities cannot be split (fewer than three distinct values)."""


@dataclass(frozen=True)
class Split:
    positives: list[int]  # indices into the utility list, best first
    middle: list[int]
    negatives: list[int]  # worst last


def optimal_1d_kmeans(values: Sequence[float], k: int) -> list[int]:
    """Cluster labels 0..k-1 (0 = lowest values) minimising the within-cluster sum of squares.

    Clusters of optimal 1-D k-means are contiguous in sorted order, so the best partition of
    the first ``i`` sorted values into ``m`` clusters extends a best partition of a shorter
    prefix: ``D[m][i] = min_j D[m-1][j] + cost(j, i)``, O(k n²) with prefix sums (n is ten or so
    passages here). Ties break towards the earliest split, so the result is deterministic."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters need at least k values (got {n})")
    order = np.argsort(x, kind="stable")
    s = x[order]
    c1 = np.concatenate([[0.0], np.cumsum(s)])
    c2 = np.concatenate([[0.0], np.cumsum(s * s)])

    def cost(j: int, i: int) -> float:  # sum of squares of s[j:i] around its mean
        m = i - j
        return float(c2[i] - c2[j] - (c1[i] - c1[j]) ** 2 / m)

    inf = float("inf")
    D = np.full((k + 1, n + 1), inf)
    B = np.zeros((k + 1, n + 1), dtype=int)
    D[0][0] = 0.0
    for m in range(1, k + 1):
        for i in range(m, n + 1):
            best, arg = inf, m - 1
            for j in range(m - 1, i):
                v = D[m - 1][j] + cost(j, i)
                if v < best - 1e-12:
                    best, arg = v, j
            D[m][i], B[m][i] = best, arg
    labels_sorted = np.zeros(n, dtype=int)
    i = n
    for m in range(k, 0, -1):
        j = B[m][i]
        labels_sorted[j:i] = m - 1
        i = j
    labels = np.empty(n, dtype=int)
    labels[order] = labels_sorted
    return labels.tolist()


def three_clusters(utilities: Sequence[float]) -> Split:
    """Positives / dropped / negatives by optimal 1-D 3-means (paper §3.5)."""
    u = np.asarray(utilities, dtype=np.float64)
    distinct = len(np.unique(np.round(u, 12)))
    if distinct < 3:
        raise DegenerateUtilities(f"{distinct} distinct utilities among {len(u)} passages: three clusters need 3")
    labels = np.asarray(optimal_1d_kmeans(u, 3))
    by_score = list(np.argsort(-u, kind="stable"))
    return Split([int(i) for i in by_score if labels[i] == 2], [int(i) for i in by_score if labels[i] == 1],
                 [int(i) for i in by_score if labels[i] == 0])


def top1_bottom5(utilities: Sequence[float], negatives: int = 5) -> Split:
    """The ablation of §4.4: the highest-utility passage positive, the ``negatives`` lowest negative."""
    u = np.asarray(utilities, dtype=np.float64)
    if len(np.unique(np.round(u, 12))) < 2 or len(u) < 2:
        raise DegenerateUtilities(f"{len(u)} passages with equal utilities: nothing to rank")
    by_score = [int(i) for i in np.argsort(-u, kind="stable")]
    neg = by_score[1:][-negatives:]
    return Split(by_score[:1], [i for i in by_score[1:] if i not in neg], neg)


def split_utilities(utilities: Sequence[float], how: SplitName = "clusters") -> Split:
    return three_clusters(utilities) if how == "clusters" else top1_bottom5(utilities)
