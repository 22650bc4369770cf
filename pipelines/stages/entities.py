"""Entities across documents: resolution into canonical ids, and the clue graph they induce.

Used by RAGSynth's multi-hop stage, generic otherwise:

- :func:`coarse_label` maps spaCy's and the LLM's entity types onto one small label set; numbers,
  dates and amounts are not bridge entities and map to ``None``.
- :func:`normalise_name` is the key of exact matching (case, accents, punctuation, a leading
  article and corporate suffixes ignored).
- :func:`resolve` unions surface forms into canonical entities: same normalised name; aliases
  (a name that is a whole-token part of exactly one longer name of the same label, e.g. a
  surname, or its acronym); and pairs whose name embeddings are similar within a label (found
  with faiss, optionally confirmed by an LLM before they are passed in as ``confirmed``).
- :func:`clue_graph` links clues of *different* documents that share a canonical entity
  (networkx); entities shared by too many clues (``max_degree``) are too generic to bridge on.
- :func:`sample_bridges` draws seeded paths of 2-4 clues, one per document, along the graph.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import defaultdict
from typing import Iterable, Sequence

import networkx as nx
import numpy as np

from pipelines.core.schema import stable_id

LABELS = ("PERSON", "ORG", "PLACE", "PRODUCT", "EVENT", "WORK", "OTHER")
_COARSE = {
    "PERSON": "PERSON", "PER": "PERSON",
    "ORG": "ORG", "ORGANIZATION": "ORG", "COMPANY": "ORG",
    "GPE": "PLACE", "LOC": "PLACE", "FAC": "PLACE", "PLACE": "PLACE", "LOCATION": "PLACE",
    "PRODUCT": "PRODUCT", "EVENT": "EVENT",
    "WORK_OF_ART": "WORK", "WORK": "WORK", "LAW": "WORK",
    "NORP": "OTHER", "LANGUAGE": "OTHER", "OTHER": "OTHER", "CONCEPT": "OTHER",
}


def coarse_label(label: str) -> str | None:
    """One label set for spaCy and LLM types; ``None`` for numbers, dates, amounts."""
    return _COARSE.get(label.strip().upper())


_ARTICLE = re.compile(r"^(the|a|an)\s+")
_SUFFIX = re.compile(r"\s+(inc|ltd|llc|plc|co|corp|corporation|company|gmbh|ag|sa|s\.a|sp\. z o\.o)\.?$")
_NON_WORD = re.compile(r"[^\w\s]+")
_SPACE = re.compile(r"\s+")
_POSSESSIVE = re.compile(r"'s\b")


def normalise_name(name: str) -> str:
    """Lower case, accents folded, punctuation dropped, a leading article and a corporate suffix
    removed: ``"The Harbor Instruments, Inc."`` → ``"harbor instruments"``."""
    s = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower().strip()
    s = _POSSESSIVE.sub("", _SPACE.sub(" ", s.replace("\u2019", "'")))
    s = _SUFFIX.sub("", _ARTICLE.sub("", s))
    return _SPACE.sub(" ", _NON_WORD.sub(" ", s)).strip()


def _acronym(tokens: Sequence[str]) -> str:
    return "".join(t[0] for t in tokens if t not in ("of", "and", "the", "for"))


def alias_pairs(forms: Iterable[tuple[str, str]]) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """(short, long) pairs of ``(label, normalised name)`` where the short name is a contiguous
    run of whole tokens of exactly one longer name of the same label, or its acronym."""
    by_label: dict[str, list[str]] = defaultdict(list)
    for label, norm in set(forms):
        by_label[label].append(norm)
    out = []
    for label, names in by_label.items():
        toks = {n: n.split() for n in names}
        for short in names:
            st = toks[short]
            hits = []
            for long in names:
                lt = toks[long]
                if long == short or len(lt) <= len(st):
                    continue
                if any(lt[i:i + len(st)] == st for i in range(len(lt) - len(st) + 1)):
                    hits.append(long)
                elif len(st) == 1 and len(short) >= 2 and _acronym(lt) == short:
                    hits.append(long)
            if len(hits) == 1:  # ambiguous aliases ("john" of two Johns) stay apart
                out.append(((label, short), (label, hits[0])))
    return out


def similar_pairs(forms: Sequence[tuple[str, str]], vectors: np.ndarray, threshold: float,
                  k: int = 5) -> list[tuple[tuple[str, str], tuple[str, str], float]]:
    """Pairs of forms of the same label whose (normalised) name vectors have cosine ≥
    ``threshold``; nearest neighbours by faiss within each label, never all pairs."""
    import faiss

    out = []
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, (label, _) in enumerate(forms):
        by_label[label].append(i)
    for idx in by_label.values():
        if len(idx) < 2:
            continue
        vec = np.ascontiguousarray(vectors[idx], dtype=np.float32)
        index = faiss.IndexFlatIP(vec.shape[1])
        index.add(vec)
        scores, nbrs = index.search(vec, min(k + 1, len(idx)))
        for a, (row_s, row_n) in enumerate(zip(scores, nbrs)):
            for s, b in zip(row_s, row_n):
                if b > a and s >= threshold:
                    out.append((forms[idx[a]], forms[idx[b]], float(s)))
    return out


def resolve(forms: dict[tuple[str, str], int], links: Iterable[tuple[tuple[str, str], tuple[str, str]]]
            ) -> dict[tuple[str, str], str]:
    """Canonical id of every ``(label, normalised name)`` form given the links to union.

    ``forms`` maps each form to its mention count. The representative of a group is its longest
    name (then the most mentioned), and the canonical id is derived from it, so reruns agree.
    """
    uf = nx.utils.UnionFind(forms)
    for a, b in links:
        if a in forms and b in forms:
            uf.union(a, b)
    out = {}
    for group in uf.to_sets():
        rep = max(group, key=lambda f: (len(f[1].split()), forms[f], f[1]))
        cid = stable_id("entity", *rep)
        for f in group:
            out[f] = cid
    return out


def clue_graph(clues: Sequence[dict], max_degree: int) -> nx.Graph:
    """Nodes are clues (``clue_id`` with ``doc_id`` and ``entities``: canonical ids); an edge
    joins two clues of different documents that share an entity, with those entities as the
    edge's ``entities`` attribute. Entities on more than ``max_degree`` clues are skipped."""
    g = nx.Graph()
    by_entity: dict[str, list[str]] = defaultdict(list)
    for c in clues:
        g.add_node(c["clue_id"], doc_id=c["doc_id"])
        for e in set(c["entities"]):
            by_entity[e].append(c["clue_id"])
    for e, members in sorted(by_entity.items()):
        if len(members) > max_degree or len({g.nodes[m]["doc_id"] for m in members}) < 2:
            continue
        for a, b in itertools.combinations(sorted(members), 2):
            if g.nodes[a]["doc_id"] != g.nodes[b]["doc_id"]:
                if g.has_edge(a, b):
                    g.edges[a, b]["entities"].append(e)
                else:
                    g.add_edge(a, b, entities=[e])
    return g


def sample_bridges(g: nx.Graph, hops: Sequence[int], max_paths: int, *, seed: int = 0,
                   max_per_clue: int = 2) -> list[list[str]]:
    """Up to ``max_paths`` paths along ``g`` whose clues all come from different documents.

    A seeded order over the edges gives each path its first two clues; the path then grows
    towards the next length in ``hops`` (taken in turn, 2-4 clues) by a seeded choice among the
    last clue's neighbours in a document not yet used, and is kept at the length it reached. A
    clue is in at most ``max_per_clue`` paths and a set of clues is used once.
    """
    edges = sorted(g.edges(), key=lambda e: stable_id(seed, *sorted(e)))
    rng = np.random.default_rng(seed)
    used: dict[str, int] = defaultdict(int)
    seen: set[frozenset] = set()
    out: list[list[str]] = []
    for a, b in edges:
        if len(out) >= max_paths or not hops:
            break
        if used[a] >= max_per_clue or used[b] >= max_per_clue:
            continue
        n = hops[len(out) % len(hops)]
        path = [a, b] if stable_id(seed, a) < stable_id(seed, b) else [b, a]
        docs = {g.nodes[c]["doc_id"] for c in path}
        while len(path) < n:
            nxt = sorted(c for c in g.neighbors(path[-1])
                         if g.nodes[c]["doc_id"] not in docs and used[c] < max_per_clue)
            if not nxt:
                break
            c = nxt[int(rng.integers(len(nxt)))]
            path.append(c)
            docs.add(g.nodes[c]["doc_id"])
        if frozenset(path) in seen:
            continue
        seen.add(frozenset(path))
        for c in path:
            used[c] += 1
        out.append(path)
    return out
