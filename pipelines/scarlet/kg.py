"""Knowledge graphs for SCARLet's entity expansion (paper §3.3, Appendix A "Entities Retrieval").

Each seed example's spaCy entities are expanded with their one-hop neighbours, and the expanded
list retrieves the shared context's passages. Two graphs answer the same call,
``neighbours(entity) -> Lookup``:

- :class:`CorpusGraph` is the corpus's own entity graph: nodes are normalised entity names
  (:func:`~pipelines.stages.entities.normalise_name`), an edge joins two entities mentioned in
  the same chunk, weighted by the number of chunks they share. No network, deterministic.
- :class:`SparqlKG` asks a SPARQL 1.1 endpoint (Wikidata in the paper) with the paper's one-hop
  query, after resolving the name to an item by its label. Answers are cached in one JSON file
  so a rerun makes no requests for entities already looked up; failures come back as a reason
  (``sparql_timeout``, ``sparql_unreachable``, ``sparql_http_<code>``, ``sparql_bad_reply``),
  are never raised and never cached.

An entity the graph does not know gives ``names == []`` and ``error is None``; the caller
rejects it as ``entity_not_in_graph``.
"""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import tempfile
import threading
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Protocol, runtime_checkable
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode, urlsplit
from urllib.request import Request, urlopen

import networkx as nx

from pipelines.stages.entities import coarse_label, normalise_name


@dataclass
class Lookup:
    """One entity's neighbours: surface ``names`` (deduplicated, best first), the
    ``(relation, name)`` pairs they came from, ``error`` (a reason) when the graph could not be
    asked, and ``item``: what the entity resolved to (a SPARQL item IRI, a corpus node key), or
    ``None`` when the graph does not know it."""

    names: list[str] = field(default_factory=list)
    relations: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None
    item: str | None = None


@runtime_checkable
class KnowledgeGraph(Protocol):
    """What the pipeline calls: one-hop neighbours of an entity's surface name."""

    def neighbours(self, entity: str) -> Lookup: ...


# ----------------------------------------------------------------------------- the corpus's graph
CO_MENTIONED = "co_mentioned"


def _mention(row: tuple[Any, str] | Mapping[str, Any]) -> tuple[Any, str]:
    if isinstance(row, Mapping):
        text = row["entity_text"] if "entity_text" in row else row["text"]
        return row["chunk_id"], text
    chunk_id, text = row
    return chunk_id, text


class CorpusGraph:
    """Co-mention graph of a corpus's entities, built from mention rows ``(chunk_id,
    entity_text)`` (pairs, or dicts with ``chunk_id`` and ``entity_text`` or ``text``).

    Only an inverted index (entity → chunks, chunk → entities) is kept, so building is linear in
    the mentions; a query counts the co-mentions of one entity, so its cost is the size of that
    entity's chunks, never all pairs of the corpus. :attr:`graph` materialises the networkx graph
    on demand. Entities mentioned in more than ``max_degree`` chunks are hubs (too generic to
    expand on): they are never returned as neighbours, though their own neighbours are.
    """

    def __init__(self, mentions: Iterable[tuple[Any, str] | Mapping[str, Any]], *, limit: int = 20,
                 max_degree: int | None = None):
        if limit < 1 or (max_degree is not None and max_degree < 1):
            raise ValueError("limit and max_degree must be ≥ 1")
        self.limit, self.max_degree = limit, max_degree
        forms: dict[str, Counter[str]] = defaultdict(Counter)
        members: dict[Any, set[str]] = defaultdict(set)
        for row in mentions:
            chunk_id, text = _mention(row)
            key = normalise_name(text or "")
            if key:
                forms[key][" ".join(text.split())] += 1
                members[chunk_id].add(key)
        self._keys = sorted(forms)
        ids = {k: i for i, k in enumerate(self._keys)}
        # the most frequent surface form names the node (ties: the smallest, for determinism)
        self._names = [min(forms[k].items(), key=lambda kv: (-kv[1], kv[0]))[0] for k in self._keys]
        self._chunks: list[tuple[int, ...]] = [tuple(sorted(ids[k] for k in ents)) for ents in members.values()]
        self._by_entity: list[list[int]] = [[] for _ in self._keys]
        for c, ents in enumerate(self._chunks):
            for e in ents:
                self._by_entity[e].append(c)
        self._ids = ids
        self._hub = [max_degree is not None and len(cs) > max_degree for cs in self._by_entity]

    @classmethod
    def from_ner_rows(cls, rows: Iterable[Mapping[str, Any]], *, id_column: str = "chunk_id",
                      mentions_column: str = "mentions", **kwargs: Any) -> CorpusGraph:
        """From chunk rows carrying the NER actor's mentions (``[{text, label, start, end}]``);
        numbers, dates and amounts (:func:`coarse_label` ``None``) are not entities here."""
        pairs = ((row[id_column], m["text"]) for row in rows for m in (row.get(mentions_column) or [])
                 if coarse_label(m.get("label") or "") is not None)
        return cls(pairs, **kwargs)

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, entity: str) -> bool:
        return normalise_name(entity) in self._ids

    def name(self, entity: str) -> str | None:
        """The node's surface name (its most frequent form), ``None`` if not in the graph."""
        i = self._ids.get(normalise_name(entity))
        return None if i is None else self._names[i]

    def _weights(self, i: int) -> Counter[int]:
        counts: Counter[int] = Counter()
        for c in self._by_entity[i]:
            counts.update(self._chunks[c])
        del counts[i]
        return counts

    def neighbour_names(self, entity: str, limit: int | None = None) -> list[str]:
        """Surface names of the one-hop neighbours, highest co-mention weight first, ties by
        name; ``[]`` for an entity not in the graph."""
        return self.neighbours(entity, limit).names

    def neighbours(self, entity: str, limit: int | None = None) -> Lookup:
        """:class:`Lookup` of the one-hop neighbours (``limit`` defaults to the graph's)."""
        i = self._ids.get(normalise_name(entity))
        if i is None:
            return Lookup()
        ranked = sorted(((w, j) for j, w in self._weights(i).items() if not self._hub[j]),
                        key=lambda wj: (-wj[0], self._names[wj[1]], self._keys[wj[1]]))
        names = [self._names[j] for _, j in ranked[:limit or self.limit]]
        return Lookup(names=names, relations=[(CO_MENTIONED, n) for n in names], item=self._keys[i])

    @cached_property
    def graph(self) -> nx.Graph:
        """The networkx graph: nodes are normalised names (``name``, ``chunks``, ``hub``
        attributes), edges carry ``weight`` (shared chunks); hub-to-hub edges are left out."""
        g = nx.Graph()
        g.add_nodes_from((k, {"name": n, "chunks": len(cs), "hub": h})
                         for k, n, cs, h in zip(self._keys, self._names, self._by_entity, self._hub))
        pairs: Counter[tuple[int, int]] = Counter()
        for ents in self._chunks:
            pairs.update((a, b) for a, b in itertools.combinations(ents, 2) if not (self._hub[a] and self._hub[b]))
        g.add_weighted_edges_from((self._keys[a], self._keys[b], w) for (a, b), w in pairs.items())
        return g


# ----------------------------------------------------------------------------- SPARQL endpoint
RDFS = "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#>\n"
WIKIBASE = "PREFIX wikibase: <http://wikiba.se/ontology#>\n"
_ECHAR = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}
_LANG = re.compile(r"^[a-zA-Z]+(-[a-zA-Z0-9]+)*$")
_IRI = re.compile(r'^[^<>"{}|^`\\\x00-\x20]+$')


def sparql_literal(text: str, language: str | None = None) -> str:
    """``text`` as a SPARQL double-quoted string literal (ECHAR escapes), language-tagged."""
    body = "".join(_ECHAR.get(ch, ch) for ch in text)
    return f'"{body}"' + (f"@{language}" if language else "")


def resolve_query(name: str, language: str = "en") -> str:
    """The item whose ``rdfs:label`` is exactly ``name`` in ``language``."""
    return RDFS + f"SELECT ?item WHERE {{ ?item rdfs:label {sparql_literal(name, language)} }} LIMIT 1"


def one_hop_query(item: str, *, limit: int = 20, language: str = "en", direct_claims: bool = False) -> str:
    """The paper's one-hop query (Appendix A) for the item IRI ``item``, parameterised.

    As the paper writes it, ``?property`` is the predicate itself and must carry an
    ``rdfs:label``. On real Wikidata the predicates of ``wd:Q… ?property ?object`` are
    ``wdt:P…`` direct claims, whose labels live on the property entity ``wd:P…`` linked by
    ``wikibase:directClaim``, so the query as written finds few or no rows there;
    ``direct_claims=True`` adds that hop (``?prop wikibase:directClaim ?property``) and labels
    ``?prop`` instead. The default stays the paper's query."""
    if not _IRI.match(item):
        raise ValueError(f"not an IRI: {item!r}")
    if direct_claims:
        prefix = RDFS + WIKIBASE
        label = "  ?prop wikibase:directClaim ?property .\n  ?prop rdfs:label ?propertyLabel .\n"
    else:
        prefix, label = RDFS, "  ?property rdfs:label ?propertyLabel .\n"
    return (prefix + "SELECT ?property ?propertyLabel ?object ?objectLabel\nWHERE {\n"
            f"  <{item}> ?property ?object .\n" + label + "  ?object rdfs:label ?objectLabel .\n"
            f'  FILTER(LANG(?propertyLabel) = "{language}")\n'
            f'  FILTER(LANG(?objectLabel) = "{language}")\n'
            f"}}\nLIMIT {int(limit)}")


class SparqlError(Exception):
    """Internal: a request that failed, with its reason; :meth:`SparqlKG.neighbours` returns it."""


def parse_results(body: bytes, variables: tuple[str, ...]) -> list[dict[str, dict[str, str]]]:
    """Bindings of a SPARQL JSON results document (``application/sparql-results+json``) that
    bind all of ``variables``; :class:`SparqlError` ``sparql_bad_reply`` if it is not one."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SparqlError("sparql_bad_reply: not JSON") from None
    results = doc.get("results") if isinstance(doc, dict) else None
    bindings = results.get("bindings") if isinstance(results, dict) else None
    if not isinstance(bindings, list) or not isinstance(doc.get("head"), dict):
        raise SparqlError("sparql_bad_reply: not SPARQL JSON results")
    out = []
    for b in bindings:
        if not isinstance(b, dict) or not all(
                isinstance(t, dict) and isinstance(t.get("type"), str) and isinstance(t.get("value"), str)
                for t in b.values()):
            raise SparqlError("sparql_bad_reply: malformed binding")
        if all(v in b for v in variables):
            out.append(b)
    return out


class SparqlKG:
    """One-hop neighbours from a SPARQL 1.1 endpoint (GET ``?query=``, SPARQL JSON results).

    ``neighbours(name)`` resolves the name to an item by its exact label in ``language``
    (:func:`resolve_query`), then runs the paper's one-hop query (:func:`one_hop_query`, at most
    ``limit`` rows). Neighbour names are the objects' labels, deduplicated by normalised name,
    the entity itself left out. Successful answers, "no such item" included, are cached per
    name in ``cache_path`` (JSON, rewritten atomically every ``save_every`` new entries and by
    :meth:`save`; entries of other endpoints or query settings are kept apart in the same file);
    errors are not cached, so a rerun retries them. Thread-safe; several processes may share
    the file (a save merges what is on disk), though one may then miss another's latest entries.
    """

    def __init__(self, url: str, *, cache_path: str | Path, timeout_s: float = 10.0, limit: int = 20,
                 language: str = "en",
                 user_agent: str = "synthrag-scarlet/0.1 (RAG training data synthesis; one-hop entity lookups)",
                 direct_claims: bool = False, save_every: int = 1):
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"SPARQL endpoint must be an http(s) URL, not {url!r}")
        if not _LANG.match(language):
            raise ValueError(f"not a language tag: {language!r}")
        if limit < 1 or timeout_s <= 0 or save_every < 1:
            raise ValueError("limit, timeout_s and save_every must be positive")
        user_agent.encode("latin-1")  # HTTP headers are latin-1; fail here, not per request
        self.url, self.timeout_s, self.limit = url, float(timeout_s), int(limit)
        self.language, self.user_agent, self.direct_claims = language.lower(), user_agent, direct_claims
        self.cache_path, self.save_every = Path(cache_path), save_every
        self.requests = 0  # requests sent by this instance
        self._lock = threading.Lock()
        self._unsaved = 0
        self._entries: dict[str, dict[str, Any]] = dict(self._read_cache().get(self.cache_key, {}))

    @property
    def cache_key(self) -> str:
        """The bucket of the cache file this endpoint and these query settings use."""
        variant = "direct_claims" if self.direct_claims else "paper"
        return f"{self.url} lang={self.language} limit={self.limit} query={variant}"

    # -------------------------------------------------------------------------- cache
    def _read_cache(self) -> dict[str, dict[str, Any]]:
        if not self.cache_path.exists():
            return {}
        try:
            doc = json.loads(self.cache_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"SPARQL cache {self.cache_path} is not JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("buckets"), dict):
            raise ValueError(f"SPARQL cache {self.cache_path} is not a version-1 cache")
        return doc["buckets"]

    def save(self) -> None:
        """Write the cache now (merged with what is on disk), atomically."""
        with self._lock:
            self._save_locked()

    def _save_locked(self) -> None:
        try:
            buckets = self._read_cache()
        except ValueError:
            buckets = {}
        buckets[self.cache_key] = {**buckets.get(self.cache_key, {}), **self._entries}
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.cache_path.parent, prefix=self.cache_path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "buckets": buckets}, f, ensure_ascii=False, sort_keys=True)
            os.replace(tmp, self.cache_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self._unsaved = 0

    def _remember(self, name: str, entry: dict[str, Any]) -> None:
        with self._lock:
            self._entries[name] = entry
            self._unsaved += 1
            if self._unsaved >= self.save_every:
                self._save_locked()

    # -------------------------------------------------------------------------- requests
    def _select(self, query: str, variables: tuple[str, ...]) -> list[dict[str, dict[str, str]]]:
        sep = "&" if "?" in self.url else "?"
        req = Request(self.url + sep + urlencode({"query": query}),
                      headers={"Accept": "application/sparql-results+json", "User-Agent": self.user_agent})
        with self._lock:
            self.requests += 1
        try:
            with urlopen(req, timeout=self.timeout_s) as resp:
                body = resp.read()
        except HTTPError as e:
            e.close()
            raise SparqlError(f"sparql_http_{e.code}") from None
        except TimeoutError:
            raise SparqlError(f"sparql_timeout: no answer in {self.timeout_s:g}s") from None
        except URLError as e:
            if isinstance(e.reason, TimeoutError):
                raise SparqlError(f"sparql_timeout: no answer in {self.timeout_s:g}s") from None
            raise SparqlError(f"sparql_unreachable: {e.reason}") from None
        except http.client.IncompleteRead:
            raise SparqlError("sparql_bad_reply: truncated body") from None
        except (OSError, http.client.HTTPException, ValueError) as e:
            raise SparqlError(f"sparql_unreachable: {type(e).__name__}: {e}") from None
        return parse_results(body, variables)

    def _lookup(self, name: str, entry: dict[str, Any]) -> Lookup:
        own = normalise_name(name)
        names, seen = [], {own}
        for _, obj in entry["relations"]:
            key = normalise_name(obj)
            if key and key not in seen:
                seen.add(key)
                names.append(obj)
        return Lookup(names=names, relations=[(p, o) for p, o in entry["relations"]], item=entry["item"])

    def neighbours(self, entity: str) -> Lookup:
        """One-hop neighbours of the item labelled ``entity``; never raises for the endpoint's
        failures (they come back as ``error``), ``names == []`` with no error for no item."""
        name = " ".join(entity.split())
        if not name:
            return Lookup()
        with self._lock:
            hit = self._entries.get(name)
        if hit is not None:
            return self._lookup(name, hit)
        item = None
        try:
            rows = self._select(resolve_query(name, self.language), ("item",))
            if rows:
                binding = rows[0]["item"]
                if binding["type"] != "uri" or not _IRI.match(binding["value"]):
                    raise SparqlError("sparql_bad_reply: item is not an IRI")
                item = binding["value"]
                rows = self._select(one_hop_query(item, limit=self.limit, language=self.language,
                                                  direct_claims=self.direct_claims),
                                    ("property", "propertyLabel", "object", "objectLabel"))
        except SparqlError as e:
            return Lookup(error=str(e), item=item)
        relations: list[list[str]] = []
        if item is not None:
            seen: set[tuple[str, str]] = set()
            for r in rows:
                pair = (r["propertyLabel"]["value"], r["objectLabel"]["value"])
                if pair not in seen:
                    seen.add(pair)
                    relations.append(list(pair))
        entry = {"item": item, "relations": relations}
        self._remember(name, entry)
        return self._lookup(name, entry)


def make_kg(kind: Literal["corpus", "sparql"], *, mentions: Iterable[Any] | None = None, url: str | None = None,
            cache_path: str | Path | None = None, limit: int = 20, max_degree: int | None = None,
            **sparql: Any) -> KnowledgeGraph:
    """A :class:`CorpusGraph` from ``mentions`` or a :class:`SparqlKG` of ``url`` (caching in
    ``cache_path``; other keywords go to it)."""
    if kind == "corpus":
        if mentions is None:
            raise ValueError("kind='corpus' needs mentions")
        return CorpusGraph(mentions, limit=limit, max_degree=max_degree)
    if kind == "sparql":
        if url is None or cache_path is None:
            raise ValueError("kind='sparql' needs url and cache_path")
        return SparqlKG(url, cache_path=cache_path, limit=limit, **sparql)
    raise ValueError(f"unknown knowledge graph kind {kind!r}")
