"""RAGSynth's generator evaluation: CSG = (C_comp + C_under + C_cite) / 3, as the paper's Eq. 4-6.

For every example of a run that has an answer in the answers file:

- **C_comp** (completeness): the share of the example's ``cover`` criteria (the reference answer
  sentences) that a judge confirms the answer states;
- **C_under** (understanding of what is missing): the share of its ``acknowledge`` criteria (facts
  the generator was not given) that the answer acknowledges as missing instead of asserting;
- **C_cite**: the F1 of the sentence ids the answer cites against the reference citations (a
  refusal that cites nothing scores 1).

The dataset-level figures follow the paper's Eq. 4-6 (RAGSynth section 4.3): C_comp is averaged
over the queries that have answerable parts (``cover`` criteria: full and partial), C_under over
the partially or fully unanswerable ones (``acknowledge`` criteria: partial and refusal), C_cite
over all of them, and CSG = (C_comp + C_under + C_cite) / 3 of those three averages. The same
four are reported per completeness level (``full`` / ``partial`` / ``none``, the groups of the
paper's Table 5, where C_under is split into UN = ``none`` and PUN = ``partial``) and per variant
kind; a group without any query of a component (``full`` has no C_under) averages the components
it has. Each per-example row also carries ``csg_example``, the mean of the components that one
example has: a diagnostic for finding bad answers, not the paper's figure.

Two judges, both through the LLM actor (scoring prompts, no generation):

- ``yes-no`` (the seed's LLM judge): P(Yes) of ``ragsynth/judge_cover`` and
  ``ragsynth/judge_acknowledge`` must reach ``threshold``. Meant for strong models.
- ``likelihood`` (default; works on small models): pointwise mutual information of a text given
  the answer vs given no answer (``ragsynth/judge_likelihood``), in nats per token. A ``cover``
  criterion holds when the answer states the fact (PMI > ``margin``); an ``acknowledge``
  criterion holds when the answer does not state the missing fact (PMI ≤ ``margin``) and does
  make a statement of missing information more likely (PMI > ``missing_margin``). The defaults
  (1.0 and 0.5) were read off SmolLM2-135M on reference answers of the sample corpus: facts an
  answer states scored 1.5-3.0, facts it lacks -0.1-1.0, its "information is missing" sentence
  0.7-0.9.

Answers file: JSON lines with an id (``example_id``, ``record_id`` or ``id``), the answer text
(``answer`` or ``prediction``, as ``synthrag generate`` writes) and optionally ``citations``
(sentence ids, or ``{chunk_id, sentence_id}``). Without them, ``[n]`` markers in the text are read
against the numbering of ``RUN/exports/sft_ragsynth.jsonl``.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from pathlib import Path

from actors.llm import LLMConfig
from pipelines.core.schema import stable_id
from pipelines.stages.citations import f1

MARKER = re.compile(r"\[(\d+)\]")
NO_ANSWER = "(no answer)"
STATE = "State one fact that the answer gives."
MISSING = "Say what the answer tells about information that is missing."
MISSING_TEXT = "The documents do not contain all of the information needed."


def load_answers(path: str | Path) -> dict[str, dict]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not JSON: {e.msg}") from None
            key = row.get("example_id") or row.get("record_id") or row.get("id")
            text = row.get("answer", row.get("prediction"))
            if not key:
                raise ValueError(f"{path}:{n}: no example_id / record_id / id")
            cites = row.get("citations")
            if cites is not None:
                cites = [c["sentence_id"] if isinstance(c, dict) else str(c) for c in cites]
            out[str(key)] = {"answer": text, "citations": cites}
    return out


def load_numbering(run_dir: Path) -> dict[str, list[str]]:
    path = run_dir / "exports" / "sft_ragsynth.jsonl"
    if not path.is_file():
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            rec = json.loads(line)
            out[rec["id"]] = rec.get("sentence_ids") or []
    return out


def parse_citations(text: str, numbering: list[str]) -> tuple[str, list[str]]:
    """The answer without ``[n]`` markers, and the sentence ids they point to."""
    ids = []
    for m in MARKER.finditer(text):
        i = int(m.group(1))
        if 1 <= i <= len(numbering) and numbering[i - 1] not in ids:
            ids.append(numbering[i - 1])
    clean = re.sub(r"\s+", " ", MARKER.sub("", text)).strip()
    return clean, ids


def _row(prompt: str, question: str, answer: str, criterion: str, instruction: str = "") -> dict:
    return {"key": stable_id(prompt, question, answer, criterion, instruction), "prompt": prompt,
            "question": question, "answer": answer, "criterion": criterion, "instruction": instruction}


def judge_rows(items: list[dict], judge: str) -> list[dict]:
    """The unique scoring rows every criterion of every answered example needs."""
    rows: dict[str, dict] = {}
    for it in items:
        for c in it["rubric"]:
            if judge == "yes-no":
                r = _row(c["kind"], it["question"], it["answer"], c["text"])
                rows[r["key"]] = r
                continue
            for ans in (it["answer"], NO_ANSWER):
                r = _row("likelihood", it["question"], ans, c["text"], STATE)
                rows[r["key"]] = r
        if judge == "likelihood" and any(c["kind"] == "acknowledge" for c in it["rubric"]):
            for ans in (it["answer"], NO_ANSWER):
                r = _row("likelihood", it["question"], ans, MISSING_TEXT, MISSING)
                rows[r["key"]] = r
    return list(rows.values())


def score_rows(rows: list[dict], llm: LLMConfig) -> dict[str, dict]:
    """Scoring replies by row key, through the LLM actor pool."""
    import ray.data

    from actors.llm import llm_map

    if not rows:
        return {}
    prompts = {"cover": "ragsynth/judge_cover", "acknowledge": "ragsynth/judge_acknowledge",
               "likelihood": "ragsynth/judge_likelihood"}
    ds = llm_map(ray.data.from_items(rows), llm=llm, prompt=prompts, prompt_key="prompt", stage="eval_generator",
                 rows=len(rows))
    return {r["key"]: (json.loads(r["llm_output"]) if r["llm_output"] else None) for r in ds.take_all()}


def criterion_holds(it: dict, c: dict, replies: dict, judge: str, margin: float, threshold: float,
                    missing_margin: float = 0.5) -> bool | None:
    from pipelines.stages.judge import per_token, yes_probability

    if judge == "yes-no":
        reply = replies.get(_row(c["kind"], it["question"], it["answer"], c["text"])["key"])
        return None if reply is None else yes_probability(reply) >= threshold

    def pmi(criterion: str, instruction: str) -> float | None:
        a = replies.get(_row("likelihood", it["question"], it["answer"], criterion, instruction)["key"])
        b = replies.get(_row("likelihood", it["question"], NO_ANSWER, criterion, instruction)["key"])
        return None if a is None or b is None else per_token(a) - per_token(b)

    stated = pmi(c["text"], STATE)
    if stated is None:
        return None
    if c["kind"] == "cover":
        return stated > margin
    says_missing = pmi(MISSING_TEXT, MISSING)
    return None if says_missing is None else (stated <= margin and says_missing > missing_margin)


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def evaluate_generator(run_dir: str | Path, answers_path: str | Path, *, llm: LLMConfig | None = None,
                       judge: str = "likelihood", margin: float = 1.0, missing_margin: float = 0.5,
                       threshold: float = 0.5, limit: int | None = None) -> tuple[dict, list[dict]]:
    """``(summary, per_example)`` for the run's examples answered in ``answers_path``."""
    import pyarrow.dataset as pads

    run_dir = Path(run_dir)
    if judge not in ("likelihood", "yes-no"):
        raise ValueError(f"judge must be 'likelihood' or 'yes-no', got {judge!r}")
    if not (run_dir / "examples").is_dir():
        raise FileNotFoundError(f"{run_dir} has no examples/: run `synthrag run ragsynth` first")
    answers = load_answers(answers_path)
    numbering = load_numbering(run_dir)
    examples = pads.dataset(run_dir / "examples", format="parquet").to_table(
        columns=["example_id", "task", "variant_kind", "query", "citations", "rubric"]).to_pylist()
    items = []
    for ex in examples:
        got = answers.get(ex["example_id"])
        if got is None or got["answer"] is None:
            continue
        text, marked = parse_citations(got["answer"], numbering.get(ex["example_id"], []))
        items.append({"example_id": ex["example_id"], "question": ex["query"], "answer": text or NO_ANSWER,
                      "cited": got["citations"] if got["citations"] is not None else marked,
                      "reference": [c["sentence_id"] for c in ex["citations"]], "rubric": ex["rubric"] or [],
                      "kind": ex["variant_kind"] or "full", "task": ex["task"]})
        if limit and len(items) >= limit:
            break
    replies = score_rows(judge_rows(items, judge), llm or LLMConfig(max_retries=0))
    per_example = [example_scores(it, [(c["kind"], criterion_holds(it, c, replies, judge, margin, threshold,
                                                                    missing_margin)) for c in it["rubric"]])
                   for it in items]
    summary = {"examples": len(per_example), "unanswered": len(examples) - len(per_example), "judge": judge,
               **aggregate(per_example)}
    by_level = _grouped(per_example, lambda r: r["level"])
    summary["c_under_un"] = by_level.get("none", {}).get("c_under")
    summary["c_under_pun"] = by_level.get("partial", {}).get("c_under")
    summary["by_level"] = by_level
    summary["by_kind"] = _grouped(per_example, lambda r: r["kind"].split(":")[0])
    return summary, per_example


def example_scores(it: dict, verdicts: list[tuple[str, bool | None]]) -> dict:
    """One answer's components from its criteria verdicts (``None``: the judge gave no reply)."""
    comp = [1.0 if ok else 0.0 for kind, ok in verdicts if kind == "cover" and ok is not None]
    under = [1.0 if ok else 0.0 for kind, ok in verdicts if kind == "acknowledge" and ok is not None]
    parts = {"c_comp": _mean(comp), "c_under": _mean(under), "c_cite": f1(it["cited"], it["reference"])}
    defined = [v for v in parts.values() if v is not None]
    return {"example_id": it["example_id"], "kind": it["kind"], "level": level(it["kind"]), "task": it.get("task"),
            **parts, "csg_example": sum(defined) / len(defined),
            "judge_failures": sum(ok is None for _, ok in verdicts)}


def level(kind: str | None) -> str:
    """Clue completeness of a variant kind: ``full`` (originals, rewrites), ``partial`` or ``none``."""
    kind = (kind or "full").split(":")[0]
    return {"partial": "partial", "refusal": "none"}.get(kind, "full")


def aggregate(rows: list[dict]) -> dict:
    """Eq. 4-6: each component averaged over the queries that define it; CSG the mean of the three."""
    out = {}
    for k in ("c_comp", "c_under", "c_cite"):
        vals = [r[k] for r in rows if r[k] is not None]
        out[k] = round(sum(vals) / len(vals), 4) if vals else None
    defined = [v for v in out.values() if v is not None]
    return {"csg": round(sum(defined) / len(defined), 4) if defined else None, **out}


def _grouped(rows: list[dict], key) -> dict[str, dict]:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[key(r)].append(r)
    return {k: {"examples": len(v), **aggregate(v)} for k, v in sorted(groups.items())}
