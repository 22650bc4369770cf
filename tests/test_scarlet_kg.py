"""SCARLet's knowledge graphs (pipelines/scarlet/kg.py): the corpus co-mention graph, and the
SPARQL client against a real local HTTP server answering in the SPARQL JSON results format."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from pipelines.scarlet.kg import (
    CorpusGraph,
    KnowledgeGraph,
    Lookup,
    SparqlKG,
    make_kg,
    one_hop_query,
    resolve_query,
    sparql_literal,
)
from pipelines.stages.entities import normalise_name


# ----------------------------------------------------------------------------- corpus graph
def test_corpus_neighbours_are_ordered_by_co_mention_weight_then_name():
    rows = [("c1", "Paris"), ("c1", "France"), ("c1", "Seine"),
            ("c2", "Paris"), ("c2", "France"), ("c2", "Louvre"),
            ("c3", "Paris"), ("c3", "Louvre"),
            {"chunk_id": "c4", "entity_text": "Paris"}, {"chunk_id": "c4", "text": "Eiffel Tower"},
            ("c5", "Paris"), ("c5", "Paris"), ("c5", "Berlin")]  # a repeat in one chunk counts once
    g = CorpusGraph(rows, limit=10)
    assert g.neighbour_names("Paris") == ["France", "Louvre", "Berlin", "Eiffel Tower", "Seine"]
    assert g.neighbour_names("paris", limit=2) == ["France", "Louvre"]
    lk = g.neighbours("Paris")
    assert lk.error is None and lk.item == "paris" and lk.relations[0] == ("co_mentioned", "France")
    assert g.graph["paris"]["france"]["weight"] == 2 and g.graph["paris"]["seine"]["weight"] == 1
    assert g.neighbour_names("Seine") == ["France", "Paris"]  # ties by name
    assert isinstance(g, KnowledgeGraph)


def test_corpus_normalisation_merges_forms_and_keeps_the_most_frequent_name():
    assert normalise_name("The Beatles") == normalise_name("Beatles")
    rows = [("a", "The Beatles"), ("a", "Liverpool"), ("b", "Beatles"), ("b", "Liverpool"),
            ("c", "The Beatles"), ("c", "John Lennon")]
    g = CorpusGraph(rows)
    assert len(g) == 3 and "beatles" in g
    assert g.name("beatles") == "The Beatles"
    assert g.neighbour_names("Liverpool") == ["The Beatles"]
    assert g.neighbour_names("Beatles") == ["Liverpool", "John Lennon"]


def test_corpus_unknown_entity_gives_no_names_and_no_error():
    g = CorpusGraph([("a", "Paris"), ("a", "France")])
    assert g.neighbours("Atlantis") == Lookup(names=[], relations=[], error=None, item=None)
    assert g.neighbour_names("Atlantis") == [] and g.neighbour_names("") == []


def test_corpus_hubs_are_skipped_as_neighbours():
    rows = [(f"c{i}", "United States") for i in range(5)]
    rows += [("c0", "Ohio"), ("c0", "Cleveland"), ("c1", "Ohio"), ("c2", "Texas"),
             ("c3", "Canada"), ("c4", "Canada"), ("c3", "Mexico"), ("c4", "Mexico"), ("c3", "Ottawa")]
    for chunk in ("x1", "x2", "x3"):  # Canada and Mexico are hubs too, co-mentioned with each other
        rows += [(chunk, "Canada"), (chunk, "Mexico")]
    free = CorpusGraph(rows)
    assert free.neighbour_names("Ohio") == ["United States", "Cleveland"]
    capped = CorpusGraph(rows, max_degree=4)
    assert capped.neighbour_names("Ohio") == ["Cleveland"]
    assert capped.neighbour_names("United States") == ["Ohio", "Cleveland", "Ottawa", "Texas"]
    assert capped.neighbour_names("Canada") == ["Ottawa"]
    assert "united states" in capped and capped.graph.nodes["united states"]["hub"]
    assert not capped.graph.has_edge("canada", "mexico") and free.graph.has_edge("canada", "mexico")


def test_corpus_from_ner_rows_drops_dates_and_numbers():
    rows = [{"chunk_id": "a", "mentions": [{"text": "Marie Curie", "label": "PERSON", "start": 0, "end": 11},
                                           {"text": "1903", "label": "DATE", "start": 20, "end": 24},
                                           {"text": "Warsaw", "label": "GPE", "start": 30, "end": 36}]},
            {"chunk_id": "b", "mentions": None}]
    g = CorpusGraph.from_ner_rows(rows)
    assert g.neighbour_names("Marie Curie") == ["Warsaw"] and "1903" not in g


# ----------------------------------------------------------------------------- a SPARQL endpoint
WD = "http://www.wikidata.org/entity/"
LABELS = {"Q1": "The Beatles", "Q2": "Liverpool", "Q3": "John Lennon", "Q4": 'Guns "N" Roses \\ Co',
          "Q5": "Los Angeles", "P1": "location of formation", "P2": "has member", "P3": "instance of"}
TRIPLES = [("Q1", "P1", "Q2"), ("Q1", "P2", "Q3"), ("Q1", "P3", "Q9"),  # Q9 has no label: filtered
           ("Q4", "P1", "Q5")]
_STRING = re.compile(r'"((?:[^"\\\n\r]|\\[tbnrf"\'\\])*)"@en')
_ECHARS = {"t": "\t", "b": "\b", "n": "\n", "r": "\r", "f": "\f", '"': '"', "'": "'", "\\": "\\"}


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: _ECHARS[m.group(1)], body)


def _lit(v: str) -> dict:
    return {"type": "literal", "xml:lang": "en", "value": v}


def _answer(query: str) -> dict:
    """A tiny SPARQL engine for the two query shapes the client sends."""
    if "SELECT ?item" in query:
        m = _STRING.search(query)
        assert m, f"no well-formed literal in {query!r}"
        name = _unescape(m.group(1))
        items = [k for k, v in LABELS.items() if v == name and k.startswith("Q")]
        return {"head": {"vars": ["item"]}, "results": {"bindings": [{"item": {"type": "uri", "value": WD + i}}
                                                                     for i in items[:1]]}}
    m = re.search(r"<([^>]+)> \?property \?object", query)
    assert m and "FILTER(LANG(?objectLabel) = \"en\")" in query
    limit = int(re.search(r"LIMIT (\d+)", query).group(1))
    subject = m.group(1).removeprefix(WD)
    rows = [{"property": {"type": "uri", "value": WD + p}, "propertyLabel": _lit(LABELS[p]),
             "object": {"type": "uri", "value": WD + o}, "objectLabel": _lit(LABELS[o])}
            for s, p, o in TRIPLES if s == subject and o in LABELS]
    return {"head": {"vars": ["property", "propertyLabel", "object", "objectLabel"]},
            "results": {"bindings": rows[:limit]}}


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        srv = self.server
        srv.log.append((urlsplit(self.path).path, self.headers.get("Accept"), self.headers.get("User-Agent")))
        query = parse_qs(urlsplit(self.path).query)["query"][0]
        srv.queries.append(query)
        path = urlsplit(self.path).path
        if path == "/slow":
            time.sleep(1.0)
        if path == "/error":
            self.send_error(500, "boom")
            return
        body = b"<html>not json</html>" if path == "/html" else json.dumps(_answer(query)).encode()
        if path == "/notsparql":
            body = b'{"rows": []}'
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/sparql-results+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout test)
            pass

    def log_message(self, *args):
        pass


@pytest.fixture
def endpoint():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.log, srv.queries = [], []
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def test_sparql_literal_and_queries_are_escaped_and_parameterised():
    assert sparql_literal('a "b" \\ c\nd', "en") == '"a \\"b\\" \\\\ c\\nd"@en'
    q = one_hop_query(WD + "Q1", limit=7, language="de")
    assert f"<{WD}Q1> ?property ?object" in q and "LIMIT 7" in q and 'FILTER(LANG(?propertyLabel) = "de")' in q
    assert "wikibase:directClaim" in one_hop_query(WD + "Q1", direct_claims=True)
    assert 'rdfs:label "x"@en' in resolve_query("x")
    with pytest.raises(ValueError):
        one_hop_query("http://x/> } DROP ALL {")


def test_sparql_one_hop_neighbours_and_cache(endpoint, tmp_path):
    srv, url = endpoint
    cache = tmp_path / "kg" / "wikidata.json"
    kg = SparqlKG(url + "/sparql", cache_path=cache, timeout_s=5)
    lk = kg.neighbours("The Beatles")
    assert lk.error is None and lk.item == WD + "Q1"
    assert lk.names == ["Liverpool", "John Lennon"]
    assert lk.relations == [("location of formation", "Liverpool"), ("has member", "John Lennon")]
    assert srv.log[0][1] == "application/sparql-results+json" and srv.log[0][2].startswith("synthrag")
    none = kg.neighbours("Atlantis")  # no item: not in the graph, and cached as such
    assert none == Lookup(names=[], relations=[], error=None, item=None)
    assert len(srv.queries) == 3 and kg.requests == 3
    assert isinstance(kg, KnowledgeGraph)

    doc = json.loads(cache.read_text())
    assert set(doc["buckets"][kg.cache_key]) == {"The Beatles", "Atlantis"}
    assert not list(cache.parent.glob("*.tmp"))
    again = SparqlKG(url + "/sparql", cache_path=cache, timeout_s=5)
    assert again.neighbours("The Beatles") == lk and again.neighbours("Atlantis") == none
    assert again.requests == 0 and len(srv.queries) == 3  # zero requests on the rerun
    other = SparqlKG(url + "/sparql", cache_path=cache, limit=1)  # other settings: its own bucket
    assert other.neighbours("The Beatles").names == ["Liverpool"] and len(srv.queries) == 5
    assert len(json.loads(cache.read_text())["buckets"]) == 2


def test_sparql_name_with_quotes_and_backslash_is_escaped(endpoint, tmp_path):
    srv, url = endpoint
    kg = SparqlKG(url, cache_path=tmp_path / "c.json")
    name = 'Guns "N" Roses \\ Co'
    lk = kg.neighbours(name)
    assert 'rdfs:label "Guns \\"N\\" Roses \\\\ Co"@en' in srv.queries[0]
    assert lk.error is None and lk.item == WD + "Q4" and lk.names == ["Los Angeles"]


def test_sparql_failures_are_reasons_and_not_cached(endpoint, tmp_path):
    srv, url = endpoint
    cache = tmp_path / "c.json"

    def ask(path: str, timeout_s: float = 5.0) -> Lookup:
        return SparqlKG(url + path, cache_path=cache, timeout_s=timeout_s).neighbours("The Beatles")

    assert ask("/error").error == "sparql_http_500"
    assert ask("/html").error.startswith("sparql_bad_reply")
    assert ask("/notsparql").error.startswith("sparql_bad_reply")
    t0 = time.monotonic()
    slow = ask("/slow", timeout_s=0.2)
    assert slow.error.startswith("sparql_timeout") and time.monotonic() - t0 < 0.9
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    down = SparqlKG(f"http://127.0.0.1:{closed}/sparql", cache_path=cache, timeout_s=2).neighbours("The Beatles")
    assert down.error.startswith("sparql_unreachable") and down.names == []
    assert not cache.exists()  # nothing cached: a rerun retries
    n = len(srv.queries)
    kg = SparqlKG(url + "/error", cache_path=cache)
    assert kg.neighbours("The Beatles").error == "sparql_http_500" == kg.neighbours("The Beatles").error
    assert len(srv.queries) == n + 2


def test_make_kg_builds_either():
    assert isinstance(make_kg("corpus", mentions=[("a", "X"), ("a", "Y")]), CorpusGraph)
    with pytest.raises(ValueError):
        make_kg("sparql", url="http://127.0.0.1:1/sparql")
    with pytest.raises(ValueError):
        SparqlKG("file:///etc/passwd", cache_path="x.json")
