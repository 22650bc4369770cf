"""Source2Synth's evaluators: table QA by denotation accuracy, multi-hop QA by EM / F1 / soft EM.

- :func:`evaluate_tableqa`: WikiTableQuestions questions (the TSV) over their tables (any input of
  :mod:`pipelines.source2synth.tables`, built into a private SQLite copy). The model answers with
  ``source2synth/answer_table`` (an SQL query, then an answer); ``mode="answer"`` scores the answer
  text, ``mode="sql"`` executes the query in the sandbox and scores its result. Scoring is the WTQ
  convention (:func:`pipelines.eval.tableqa_metrics.denotation_accuracy`: value lists, order-free,
  numbers and dates as values); a question whose table is missing, whose reply failed or whose
  SQL failed counts as wrong, and the reasons are counted. The prompt shows the schema and the
  first ``rows`` rows (at most 10), so answer mode cannot see later rows; sql mode can.
- :func:`evaluate_multihop`: HotpotQA-format JSON lines (``question``, ``answer``, ``context``
  ``{title, sentences}``, optional ``supporting_facts``) answered with
  ``source2synth/answer_passages`` over the distractor paragraphs (or the gold ones only). Metrics:
  HotpotQA's EM and F1, and the paper's soft EM (§4: the normalised reference contained in the
  prediction; :func:`pipelines.source2synth.match.soft_match`).
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

from actors.llm import LLMConfig
from pipelines.eval.tableqa_metrics import (
    context_to_table_id,
    denotation_accuracy,
    denotation_correct,
    index_table_ids,
    read_questions,
)
from pipelines.source2synth.match import em_f1, soft_match


def _answer(rows: list[dict], llm: LLMConfig, prompt: str, stage: str) -> dict[str, dict]:
    """Replies by ``id`` through the LLM actor pool (None when the row was rejected)."""
    import ray.data

    from actors.llm import llm_map

    if not rows:
        return {}
    ds = llm_map(ray.data.from_items(rows), llm=llm, prompt=prompt, stage=stage, rows=len(rows))
    return {r["id"]: {"reply": json.loads(r["llm_output"]) if r["llm_output"] else None,
                      "reject_reason": r["reject_reason"]} for r in ds.take_all()}


def evaluate_tableqa(questions: str | Path, tables: str | Path, *, llm: LLMConfig, mode: str = "answer",
                     limit: int | None = None, rows: int = 10) -> tuple[dict, list[dict]]:
    """``(summary, per_question)``: WTQ denotation accuracy of a model's answers (module doc)."""
    from pipelines.source2synth.sandbox import SqlSandbox, denotation
    from pipelines.source2synth.tables import describe, prepare_database

    if mode not in ("answer", "sql"):
        raise ValueError(f"mode must be 'answer' or 'sql', got {mode!r}")
    qs = read_questions(questions)[: limit or None]
    with tempfile.TemporaryDirectory(prefix="synthrag-tableqa-") as tmp:
        db = Path(tmp) / "tables.sqlite"
        infos = prepare_database(tables, db)
        index = index_table_ids(infos)
        table_of = {q.id: context_to_table_id(q.context, index) for q in qs}
        items = [{"id": q.id, "question": q.utterance, "table": describe(infos[table_of[q.id]], rows)}
                 for q in qs if table_of[q.id]]
        replies = _answer(items, llm, "source2synth/answer_table", "eval_tableqa")
        predictions, per, why = {}, [], Counter()
        with SqlSandbox(db, timeout_s=2.0, max_rows=1000) as box:
            for q in qs:
                got = replies.get(q.id)
                rec = {"id": q.id, "question": q.utterance, "targets": q.targets, "table_id": table_of[q.id]}
                if not table_of[q.id]:
                    why["no_table"] += 1
                elif got is None or got["reply"] is None:
                    why[(got or {}).get("reject_reason") or "no_reply"] += 1
                elif mode == "answer":
                    predictions[q.id] = [got["reply"]["answer"].strip()]
                    rec["answer"] = got["reply"]["answer"]
                else:
                    res = box.run(got["reply"]["sql"])
                    rec.update(sql=got["reply"]["sql"], sql_reason=res.reason)
                    if res.ok:
                        predictions[q.id] = denotation(res)
                    else:
                        why[f"sql_{res.reason}"] += 1
                rec["prediction"] = predictions.get(q.id)
                per.append(rec)
    acc = denotation_accuracy(predictions, qs)
    for rec in per:
        rec["correct"] = rec["prediction"] is not None and denotation_correct(rec["prediction"], rec["targets"])
    summary = {"task": "tableqa", "mode": mode, "model": llm.model, **acc, "failed": dict(sorted(why.items()))}
    return summary, per


def read_hotpot(path: str | Path, limit: int | None = None) -> list[dict]:
    """HotpotQA-format questions (one JSON object a line); a malformed line names file and line."""
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                ctx = r["context"]
                titles, sents = (ctx["title"], ctx["sentences"]) if isinstance(ctx, dict) else \
                    ([c[0] for c in ctx], [c[1] for c in ctx])  # the original [[title, sentences], ...]
                out.append({"id": str(r.get("id") or r.get("_id") or n), "question": r["question"],
                            "answer": r["answer"], "titles": titles, "sentences": sents,
                            "gold": set((r.get("supporting_facts") or {}).get("title", [])
                                        if isinstance(r.get("supporting_facts"), dict)
                                        else [s[0] for s in r.get("supporting_facts") or []])})
            except (json.JSONDecodeError, KeyError, TypeError, IndexError) as e:
                raise ValueError(f"{path}:{n}: not a HotpotQA record (question, answer, context): {e}") from None
            if limit and len(out) >= limit:
                break
    return out


def evaluate_multihop(path: str | Path, *, llm: LLMConfig, limit: int | None = None, passages: str = "all",
                      passage_chars: int = 500) -> tuple[dict, list[dict]]:
    """``(summary, per_question)``: EM, F1 and soft EM of a model's answers on HotpotQA jsonl."""
    from pipelines.source2synth.multihop import cut

    if passages not in ("all", "gold"):
        raise ValueError(f"passages must be 'all' or 'gold', got {passages!r}")
    qs = read_hotpot(path, limit)
    items = []
    for q in qs:
        ps = [{"title": t, "text": cut("".join(s), passage_chars)} for t, s in zip(q["titles"], q["sentences"])
              if passages == "all" or t in q["gold"]]
        items.append({"id": q["id"], "question": q["question"], "passages": ps})
    replies = _answer(items, llm, "source2synth/answer_passages", "eval_multihop")
    per, why = [], Counter()
    sums = {"em": 0.0, "f1": 0.0, "soft_em": 0.0}
    for q in qs:
        got = replies.get(q["id"]) or {}
        pred = (got.get("reply") or {}).get("answer")
        if pred is None:
            why[got.get("reject_reason") or "no_reply"] += 1
        em, f1 = em_f1(pred or "", q["answer"])
        soft = float(soft_match(pred or "", q["answer"]))
        for k, v in (("em", em), ("f1", f1), ("soft_em", soft)):
            sums[k] += v
        per.append({"id": q["id"], "question": q["question"], "answer": q["answer"], "prediction": pred,
                    "em": em, "f1": round(f1, 4), "soft_em": soft})
    n = len(qs)
    summary = {"task": "multihop", "model": llm.model, "passages": passages, "n": n,
               **{k: round(v / n, 4) if n else 0.0 for k, v in sums.items()}, "failed": dict(sorted(why.items()))}
    return summary, per


def table_text(summary: dict, keys: list[str]) -> str:
    """A two-column text table of ``summary``'s ``keys`` for the terminal."""
    width = max(len(k) for k in keys)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    for k in keys:
        v = summary.get(k)
        lines.append(f"{k.ljust(width)}  {v:.4f}" if isinstance(v, float) else f"{k.ljust(width)}  {v}")
    return "\n".join(lines)
