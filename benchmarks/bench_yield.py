"""Yield of the embedded default, before and after the yield levers, on the same chunks.

For each corpus (SciFact abstracts, HotpotQA paragraphs, the bundled sample, and Python library
reference pages rendered by pydoc: the "documents that are not our samples" case) and each
variant, runs a method on the same ``--chunks`` chunks and prints, per stage, in / kept /
rejected by reason, then kept rows per chunk sent to the LLM and per minute of the run.

    .venv/bin/python benchmarks/bench_yield.py --chunks 8 --method ragsynth
    .venv/bin/python benchmarks/bench_yield.py --chunks 6 --method querygen --corpora bundled,pydoc

Variants (``--variants``, default ``before,previous,after``):
  before    no chunk filter, one try, the default prompt wording, LLM clues and answers (the first
            N chunks by seeded hash): synthrag before the yield issue
  previous  the chunk filter on (best N prose chunks, spread over documents), otherwise as before
  after     the defaults: for the embedded model the small prompt variant (sentence clues, the
            clue as the answer, question grammars, best-of-4 questions)
  and any ``name=key=value;key=value`` given on the command line.

RAGSynth runs single-hop only (its yield goal: a kept QA with resolving citations per chunk);
query distillation runs its default query types and filters.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pydoc
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

PREVIOUS = ["llm.best_of=1", "llm.prompt_variant=default", "ragsynth.clues=model", "ragsynth.single_hop_answer=model"]
VARIANTS = {"before": ["ingest.quality.enabled=false", *PREVIOUS], "previous": PREVIOUS, "after": []}
METHOD_SETS = {
    "ragsynth": ["ragsynth.multihop.enabled=false", "ragsynth.rewrites.enabled=false",
                 "ragsynth.variants.enabled=false", "ragsynth.export.lists=false", "ragsynth.export.sft=false",
                 "llm.max_retries=0"],
    "querygen": ["querygen.train.enabled=false", "llm.max_retries=0"],
}
PYDOC_MODULES = ["json", "collections", "pathlib", "textwrap", "shutil", "argparse", "statistics", "string"]


def corpora(tmp: Path, names: list[str]) -> dict[str, Path]:
    out = {}
    if "scifact" in names:
        p = tmp / "scifact.jsonl"
        lines = (SHARED / "scifact" / "corpus.jsonl").read_text().splitlines()[:200]
        p.write_text("\n".join(lines) + "\n")
        out["scifact"] = p
    if "hotpotqa" in names:
        p, seen = tmp / "hotpotqa.jsonl", set()
        with open(p, "w") as f:
            for line in (SHARED / "hotpotqa" / "dev_distractor_sample_a300.jsonl").read_text().splitlines()[:20]:
                q = json.loads(line)
                for title, sents in zip(q["context"]["title"], q["context"]["sentences"]):
                    if title not in seen:
                        seen.add(title)
                        f.write(json.dumps({"_id": title, "title": title, "text": "".join(sents)}) + "\n")
        out["hotpotqa"] = p
    if "bundled" in names:
        out["bundled"] = REPO / "examples" / "corpus"
    if "pydoc" in names:
        d = tmp / "pydoc"
        d.mkdir(exist_ok=True)
        for m in PYDOC_MODULES:
            (d / f"{m}.txt").write_text(pydoc.render_doc(importlib.import_module(m), renderer=pydoc.plaintext))
        out["pydoc"] = d
    return out


def run_one(method: str, corpus: Path, out: Path, chunks: int, sets: list[str]) -> dict:
    from cluster.runtime import connect
    from pipelines.cli.run import execute
    from pipelines.registry import METHODS

    connect(None)
    args = [*METHOD_SETS[method], *sets]
    t0 = time.perf_counter()
    execute(f"run {method}", corpus, out, None, args, None, method=METHODS[method].run, limit=chunks)
    wall = time.perf_counter() - t0
    manifest = json.loads((out / "manifest.json").read_text())
    return {"wall": wall, "stages": manifest["stages"]}


def summarise(method: str, res: dict) -> dict:
    st = {s["name"]: s for s in res["stages"]}
    first = "ragsynth_clues" if method == "ragsynth" else "querygen_generate"
    sent = st[first]["in"] if first in st else 0
    kept = st["ragsynth_examples"]["out"] if method == "ragsynth" and "ragsynth_examples" in st else \
        st.get("querygen_lists", st.get("querygen_filter", {})).get("out", 0)
    llm_s = sum(s.get("llm", {}).get("seconds", 0) for s in res["stages"])
    return {"sent": sent, "kept": kept, "per_chunk": kept / sent if sent else 0.0,
            "per_min": 60 * kept / res["wall"] if res["wall"] else 0.0, "wall": res["wall"], "llm_s": llm_s,
            "low_content": st.get("quality", {}).get("rejected", {}).get("low_content", 0),
            "chunks": st.get("quality", {}).get("in", 0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--method", choices=sorted(METHOD_SETS), default="ragsynth")
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--corpora", default="scifact,hotpotqa,bundled,pydoc")
    ap.add_argument("--variants", default="before,previous,after",
                    help="before, after, or name=key=value;key=value (extra --set overrides)")
    ap.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    a = ap.parse_args()
    tmp = a.out or Path(tempfile.mkdtemp(prefix="bench_yield_"))
    tmp.mkdir(parents=True, exist_ok=True)
    variants = {}
    for v in a.variants.split(","):
        name, _, extra = v.partition("=")
        variants[name] = VARIANTS.get(name, []) + [s for s in extra.split(";") if s]
    rows = []
    for cname, path in corpora(tmp, a.corpora.split(",")).items():
        for vname, sets in variants.items():
            res = run_one(a.method, path, tmp / f"{a.method}-{cname}-{vname}", a.chunks, sets)
            print(f"\n## {a.method} on {cname}, {vname} ({' '.join(sets) or 'defaults'})")
            print("| stage | in | kept | rejected |\n|---|---|---|---|")
            for s in res["stages"]:
                rej = ", ".join(f"{k} {n}" for k, n in sorted(s["rejected"].items(), key=lambda kv: -kv[1]))
                print(f"| {s['name']} | {s['in']} | {s['out']} | {rej} |")
            rows.append((cname, vname, summarise(a.method, res)))
            sys.stdout.flush()
    print(f"\n## {a.method}: kept rows per chunk sent to the LLM (--chunks {a.chunks})")
    print("| corpus | variant | chunks (low_content) | sent | kept | kept/chunk | kept/min | wall s | LLM s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for cname, vname, s in rows:
        print(f"| {cname} | {vname} | {s['chunks']} ({s['low_content']}) | {s['sent']} | {s['kept']} | "
              f"{s['per_chunk']:.2f} | {s['per_min']:.2f} | {s['wall']:.0f} | {s['llm_s']:.0f} |")


if __name__ == "__main__":
    main()
