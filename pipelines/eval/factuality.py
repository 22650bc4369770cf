"""Factuality of a RAG generator, as PrismRAG measures it (§5.1.2, after CRAG): each answer is
*accurate*, *hallucinated* or *missing* (a refusal or an incomplete answer), and

    factuality = accuracy − hallucination rate        (rates over every evaluated answer)

so a hallucination costs twice what a missing answer costs. ``--references 1,2,5,10`` repeats
the evaluation with the top N references shown (the paper's Figure 1).

Labels come from two places, recorded per answer (``label_source``):

- rules first (as CRAG's own scorer): no answer, or a refusal ("I don't know", "cannot answer",
  ...) → missing; an answer equal to the ground truth or an alternative after normalisation
  (lower case, punctuation and articles removed) → accurate;
- otherwise the judge. ``--judge rule`` (the default) is :func:`rule_judge`: accurate when a ground
  truth's words appear, in order, in the answer, or the answer is at least half of a ground truth
  (e.g. "Tulsa" for "Tulsa, Oklahoma"); hallucinated otherwise. With a model, an LLM judge
  (``prompts/prismrag/factuality_judge.yaml``) compares the answer with the ground truth.
  SmolLM2-135M as judge labelled every answer it saw accurate (RESULTS.md, issue 17), so the
  embedded model is a judge only when asked for (``--judge embedded``). An LLM judge's raw reply
  is saved; a reply outside {accurate, hallucinated, missing}, or none, makes the answer
  *unlabelled*: counted and reported, never dropped (it counts in the denominator of every rate,
  as neither accurate nor hallucinated; ``factuality_labelled`` gives the figure over labelled
  answers only).

Context budget: every reference is cut to ``min(max_reference_words, context_words // N)``
words by :func:`pipelines.stages.truncate.truncate_words` (leading whole sentences), so the
prompt stays inside the model's window for every N; each cut is counted (``references_truncated``).
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from pathlib import Path

from actors.llm import LLMConfig
from pipelines.core.schema import stable_id
from pipelines.stages.truncate import truncate_words

LABELS = ("accurate", "hallucinated", "missing")
_REFUSAL = re.compile(r"\b(i don'?t know|i do not know|not (?:sure|known|mentioned|provided|available)|"
                      r"cannot (?:answer|find|determine)|can'?t (?:answer|find|determine)|no (?:information|answer)|"
                      r"unable to|sorry|does not (?:say|mention|contain|provide)|do not (?:say|mention|contain|provide))\b",
                      re.I)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalise(text: str) -> str:
    t = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(_ARTICLES.sub(" ", t).split())


def rule_label(prediction: str | None, answers: list[str]) -> str | None:
    """missing / accurate by rule, or None: the judge decides."""
    if prediction is None or not prediction.strip(" .\n\t"):
        return "missing"
    p = normalise(prediction)
    if any(p == normalise(a) for a in answers):
        return "accurate"
    if _REFUSAL.search(prediction):
        return "missing"
    return None


def rule_judge(prediction: str, answers: list[str]) -> str:
    """accurate / hallucinated for an answer the rules of :func:`rule_label` left open."""
    p = normalise(prediction).split()
    for a in answers:
        t = normalise(a).split()
        if not t:
            continue
        if any(p[i:i + len(t)] == t for i in range(len(p) - len(t) + 1)):
            return "accurate"
        if p and set(p) <= set(t) and len(p) * 2 >= len(t):
            return "accurate"
    return "hallucinated"


def judge_label(reply: dict | None) -> str | None:
    """The judge's label if it is one of :data:`LABELS`, else None (unlabelled)."""
    if not isinstance(reply, dict):
        return None
    label = str(reply.get("label", "")).strip().lower()
    return label if label in LABELS else None


def shares_a_word(prediction: str | None, answers: list[str]) -> bool:
    """Whether the answer shares a content word with the ground truth or an alternative: a
    judge's *accurate* without one is suspect (reported as ``judge_accurate_no_overlap``)."""
    words = set(normalise(prediction or "").split())
    return any(words & set(normalise(a).split()) for a in answers)


def summarise(labels: list[str | None]) -> dict:
    """Counts and rates; ``None`` is an unlabelled answer (counted, in the denominator)."""
    c = Counter(lab if lab in LABELS else "unlabelled" for lab in labels)
    n = len(labels)
    labelled = n - c["unlabelled"]

    def rate(k, d=n):
        return round(c[k] / d, 4) if d else None

    out = {"n": n, **{k: c[k] for k in (*LABELS, "unlabelled")},
           "accuracy": rate("accurate"), "hallucination": rate("hallucinated"), "missing_rate": rate("missing"),
           "unlabelled_rate": rate("unlabelled")}
    out["factuality"] = round(out["accuracy"] - out["hallucination"], 4) if n else None
    out["factuality_labelled"] = (round((c["accurate"] - c["hallucinated"]) / labelled, 4) if labelled else None)
    return out


def shown_references(refs: list[str], n: int, max_reference_words: int, context_words: int) -> tuple[list[str], int]:
    budget = max(20, min(max_reference_words, context_words // max(1, n)))
    out, cut = [], 0
    for r in refs[:n]:
        t, rec = truncate_words(r, budget)
        cut += rec is not None
        out.append(t)
    return out, cut


def extract_answer(text: str | None) -> str | None:
    """A free-text reply's answer: what follows the last "## Answer:" (the SFT format), else all."""
    if text is None:
        return None
    m = re.split(r"#+\s*Answer\s*:", text)
    return (m[-1] if len(m) > 1 else text).strip() or None


def answer_rows(items: list[dict], sweep: list[int], max_reference_words: int, context_words: int,
                answer_format: str) -> tuple[list[dict], int]:
    import prompts

    user = prompts.load("prismrag/sft_user") if answer_format == "text" else None
    rows, cut_total = [], 0
    for n in sweep:
        for it in items:
            refs, cut = shown_references(it["references"], n, max_reference_words, context_words)
            cut_total += cut
            row = {"key": stable_id(it["id"], n), "item_id": it["id"], "k": n, "question": it["question"],
                   "references": refs, "answers": it["answers"], "shown": len(refs)}
            if user is not None:
                row["messages"] = user.messages({"question": it["question"], "references": refs,
                                                 "user_time": None, "user_location": None})
            rows.append(row)
    return rows, cut_total


def _llm(rows: list[dict], llm: LLMConfig, prompt: str, stage: str) -> dict[str, dict]:
    import ray.data

    from actors.llm import llm_map

    if not rows:
        return {}
    ds = llm_map(ray.data.from_items(rows), llm=llm, prompt=prompt, stage=stage, rows=len(rows))
    return {r["key"]: r for r in ds.take_all()}


def evaluate(items: list[dict], *, model: LLMConfig, judge: LLMConfig | None, sweep: list[int],
             max_reference_words: int = 300, context_words: int = 900, answer_format: str = "json") -> dict:
    """Answer, label and score every item at every N of ``sweep``; returns summary + verdicts.
    ``judge`` None: :func:`rule_judge` labels what the rules leave open."""
    rows, cut = answer_rows(items, sweep, max_reference_words, context_words, answer_format)
    prompt = "prismrag/factuality_answer" if answer_format == "json" else "generic/chat"
    answered = _llm(rows, model, prompt, "eval_factuality_answer")
    verdicts, to_judge = [], []
    for row in rows:
        out = answered[row["key"]]
        reply = json.loads(out["llm_output"]) if out.get("llm_output") else None
        pred = (reply or {}).get("answer") if answer_format == "json" else extract_answer((reply or {}).get("text"))
        v = {"item_id": row["item_id"], "k": row["k"], "references_shown": row["shown"], "question": row["question"],
             "truth": row["answers"][0], "alternatives": row["answers"][1:], "prediction": pred,
             "answer_error": out.get("reject_reason"), "label": rule_label(pred, row["answers"]),
             "label_source": "rule", "judge_raw": None, "judge_error": None, "key": row["key"]}
        if v["label"] is None and judge is None:
            v["label"], v["label_source"] = rule_judge(pred, row["answers"]), "rule_judge"
        elif v["label"] is None:
            v["label_source"] = "judge"
            to_judge.append({"key": row["key"], "question": row["question"], "truth": " | ".join(row["answers"]),
                             "prediction": pred})
        verdicts.append(v)
    judged = _llm(to_judge, judge, "prismrag/factuality_judge", "eval_factuality_judge")
    for v in verdicts:
        if v["label_source"] != "judge":
            continue
        out = judged[v["key"]]
        v["judge_raw"] = out.get("llm_raw")
        v["judge_error"] = out.get("reject_reason")
        v["label"] = judge_label(json.loads(out["llm_output"]) if out.get("llm_output") else None)
    curve = {}
    for n in sweep:
        vs = [v for v in verdicts if v["k"] == n]
        s = summarise([v["label"] for v in vs])
        s["judged"] = sum(v["label_source"] == "judge" for v in vs)
        s["answer_failed"] = sum(v["answer_error"] is not None for v in vs)
        s["judge_accurate_no_overlap"] = sum(v["label_source"] == "judge" and v["label"] == "accurate" and not
                                             shares_a_word(v["prediction"], [v["truth"], *v["alternatives"]])
                                             for v in vs)
        curve[str(n)] = s
    return {"curve": curve, "references_truncated": cut, "verdicts": verdicts}


def curve_table(curve: dict) -> str:
    """The Figure-1 curve as a Markdown table."""
    head = "| references | n | accurate | hallucinated | missing | unlabelled | factuality |\n|---|---|---|---|---|---|---|"
    lines = [head]
    for k, s in curve.items():
        lines.append(f"| {k} | {s['n']} | {s['accuracy']:.1%} | {s['hallucination']:.1%} | {s['missing_rate']:.1%} | "
                     f"{s['unlabelled']} | {s['factuality']:.1%} |" if s["n"] else f"| {k} | 0 | | | | | |")
    return "\n".join(lines)


def curve_svg(curve: dict, width: int = 420, height: int = 240) -> str:
    """Factuality, accuracy and hallucination against N as an inline SVG (no plotting library)."""
    ks = [int(k) for k in curve]
    if not ks:
        return ""
    pad, lo, hi = 40, -1.0, 1.0
    x0, x1 = min(ks), max(ks)

    def x(k):
        return pad + (0 if x1 == x0 else (k - x0) / (x1 - x0)) * (width - 2 * pad)

    def y(v):
        return height - pad - (v - lo) / (hi - lo) * (height - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-size="10">',
             f'<line x1="{pad}" y1="{y(0)}" x2="{width - pad}" y2="{y(0)}" stroke="#bbb"/>',
             f'<text x="4" y="{y(1) + 4}">100%</text><text x="4" y="{y(0) + 4}">0%</text>'
             f'<text x="4" y="{y(-1) + 4}">-100%</text>']
    for key, colour in (("factuality", "#1f77b4"), ("accuracy", "#2ca02c"), ("hallucination", "#d62728")):
        pts = [(x(int(k)), y(s[key])) for k, s in curve.items() if s.get(key) is not None]
        parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="'
                     + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        parts += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>' for a, b in pts]
    for k in ks:
        parts.append(f'<text x="{x(k) - 3:.1f}" y="{height - pad + 14}">{k}</text>')
    parts.append(f'<text x="{width / 2 - 40}" y="{height - 6}">references shown</text>'
                 f'<text x="{width - 150}" y="14" fill="#1f77b4">factuality</text>'
                 f'<text x="{width - 90}" y="14" fill="#2ca02c">accuracy</text>'
                 f'<text x="{width - 150}" y="26" fill="#d62728">hallucination</text></svg>')
    return "".join(parts)


def write_outputs(out: Path, summary: dict, verdicts: list[dict]) -> dict[str, str]:
    """summary.json, verdicts.jsonl (every answer with its label and the judge's raw reply),
    curve.md and report.html (table + inline SVG) under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with open(out / "verdicts.jsonl", "w", encoding="utf-8") as f:
        for v in verdicts:
            f.write(json.dumps({k: val for k, val in v.items() if k != "key"}, ensure_ascii=False) + "\n")
    table = curve_table(summary["curve"])
    (out / "curve.md").write_text(table + "\n")
    import html

    (out / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>factuality</title><h1>Factuality</h1>"
        f"<p>{html.escape(json.dumps({k: summary[k] for k in ('data', 'model', 'judge') if k in summary}))}</p>"
        f"{curve_svg(summary['curve'])}<pre>{html.escape(table)}</pre><p>{len(verdicts)} verdicts in verdicts.jsonl</p>")
    return {k: str(out / k) for k in ("summary.json", "verdicts.jsonl", "curve.md", "report.html")}
