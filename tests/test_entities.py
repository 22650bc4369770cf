"""Entity resolution, the clue graph and bridges (pipelines/stages/entities.py), with real spaCy NER."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipelines.stages.entities import (
    alias_pairs,
    clue_graph,
    coarse_label,
    normalise_name,
    resolve,
    sample_bridges,
    similar_pairs,
)


def test_normalise_name_ignores_case_accents_articles_and_suffixes():
    assert normalise_name("The Harbor Instruments, Inc.") == "harbor instruments"
    assert normalise_name("Gdańsk") == "gdansk"
    assert normalise_name("Kowalczyk's") == "kowalczyk"
    assert coarse_label("GPE") == "PLACE" and coarse_label("org") == "ORG" and coarse_label("DATE") is None


def test_aliases_link_only_unambiguous_parts_and_acronyms():
    forms = [("PERSON", "marta kowalczyk"), ("PERSON", "kowalczyk"), ("PERSON", "anna nowak"),
             ("PERSON", "jan nowak"), ("PERSON", "nowak"),
             ("ORG", "gdansk university of technology"), ("ORG", "gut"), ("PLACE", "kowalczyk")]
    pairs = set(alias_pairs(forms))
    assert (("PERSON", "kowalczyk"), ("PERSON", "marta kowalczyk")) in pairs
    assert (("ORG", "gut"), ("ORG", "gdansk university of technology")) in pairs
    assert not any(a == ("PERSON", "nowak") for a, _ in pairs)  # two Nowaks: ambiguous
    assert not any(a == ("PLACE", "kowalczyk") for a, _ in pairs)  # never across labels


def test_similar_pairs_stay_within_a_label_and_above_the_threshold():
    forms = [("ORG", "a"), ("ORG", "b"), ("PLACE", "c"), ("ORG", "d")]
    v = np.array([[1, 0], [0.99, 0.14], [1, 0], [0, 1]], dtype=np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    pairs = similar_pairs(forms, v, threshold=0.95)
    assert [(a, b) for a, b, _ in pairs] == [(("ORG", "a"), ("ORG", "b"))]


def test_resolve_unions_links_into_stable_canonical_ids():
    forms = {("PERSON", "marta kowalczyk"): 3, ("PERSON", "kowalczyk"): 1, ("ORG", "harbor instruments"): 5}
    canon = resolve(forms, [(("PERSON", "kowalczyk"), ("PERSON", "marta kowalczyk"))])
    assert canon[("PERSON", "kowalczyk")] == canon[("PERSON", "marta kowalczyk")]
    assert canon[("ORG", "harbor instruments")] != canon[("PERSON", "kowalczyk")]
    assert resolve(dict(reversed(list(forms.items()))),
                   [(("PERSON", "marta kowalczyk"), ("PERSON", "kowalczyk"))]) == canon


def _clues():
    return [{"clue_id": "a1", "doc_id": "A", "entities": ["harbor", "marta"]},
            {"clue_id": "a2", "doc_id": "A", "entities": ["harbor"]},
            {"clue_id": "b1", "doc_id": "B", "entities": ["marta", "poland"]},
            {"clue_id": "c1", "doc_id": "C", "entities": ["poland"]},
            {"clue_id": "d1", "doc_id": "D", "entities": ["harbor"]}]


def test_graph_links_clues_of_different_documents_sharing_an_entity():
    g = clue_graph(_clues(), max_degree=50)
    assert set(map(frozenset, g.edges())) == {frozenset(e) for e in
                                              [("a1", "b1"), ("b1", "c1"), ("a1", "d1"), ("a2", "d1")]}
    assert g.edges["a1", "b1"]["entities"] == ["marta"]
    # an entity on too many clues is too generic to bridge on
    assert not clue_graph(_clues(), max_degree=2).has_edge("a1", "d1")


def test_bridges_use_each_document_once_and_are_reproducible():
    g = clue_graph(_clues(), max_degree=50)
    paths = sample_bridges(g, [2, 3], 10, seed=0, max_per_clue=2)
    assert paths == sample_bridges(g, [2, 3], 10, seed=0, max_per_clue=2)
    assert paths and any(len(p) == 3 for p in paths)
    for p in paths:
        docs = [g.nodes[c]["doc_id"] for c in p]
        assert len(docs) == len(set(docs)) and 2 <= len(p) <= 3
        assert all(g.has_edge(x, y) for x, y in zip(p, p[1:]))
    used = [c for p in paths for c in p]
    assert max(used.count(c) for c in set(used)) <= 2
    assert len(sample_bridges(g, [2], 1, seed=0)) == 1


def test_ner_actor_finds_entities_with_offsets():
    from actors.ner import NER

    text = "Harbor Instruments was founded in 1987 by Marta Kowalczyk in Gdansk."
    out = NER(labels=["PERSON", "ORG", "GPE"])(pa.table({"text": [text, ""]})).column("mentions").to_pylist()
    found = {(m["text"], m["label"]) for m in out[0]}
    assert ("Marta Kowalczyk", "PERSON") in found and ("Gdansk", "GPE") in found
    assert all(text[m["start"]:m["end"]] == m["text"] for m in out[0])
    assert out[1] == [] and all(m["label"] != "DATE" for m in out[0])
