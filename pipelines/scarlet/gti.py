"""`synthrag eval attribution`: how well utility scores find the passages an answer needs (SCARLet §3.4, Figure 2, Table 8).

Each question comes with its passages and the indices of the gold ones (HotpotQA distractor
setting: ten paragraphs, gold = the paragraphs of its supporting facts; or a generic jsonl
``{question, answer, passages: [...], gold: [indices]}``). A method scores every passage, the
passages are ranked by score, and NDCG@1, NDCG@5 (binary gains) and Recall@2 of the gold are
averaged over questions. Methods, side by side on the same questions:

- ``perturbation``: SCARLet's (random keep-masks, teacher-forced answer scores, ridge);
- ``loo``: leave-one-out (the drop in the answer's score when one passage alone is removed);
- ``similarity``: the embedder's cosine between the question and each passage;
- ``random``: a seeded shuffle (the floor).

The generator is called in-process through the same engine and the same prompt file
(``prompts/scarlet/answer.yaml``) as the pipeline's attribution stage.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Sequence

import numpy as np

import prompts
from pipelines.scarlet import attribution as attr

METHODS = ("perturbation", "loo", "similarity", "random")


class AttributionDataError(ValueError):
    pass


def read_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    """``{id, question, answer, passages, gold}`` rows from HotpotQA or the generic format."""
    out = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
                if "context" in r and "supporting_facts" in r:  # HotpotQA distractor setting
                    titles, sents = r["context"]["title"], r["context"]["sentences"]
                    gold_titles = set(r["supporting_facts"]["title"])
                    passages = [f"{t}: {''.join(s).strip()}" for t, s in zip(titles, sents)]
                    gold = [i for i, t in enumerate(titles) if t in gold_titles]
                    row = {"id": r.get("id", str(n)), "question": r["question"], "answer": r["answer"],
                           "passages": passages, "gold": gold}
                else:
                    row = {"id": str(r.get("id", n)), "question": r["question"], "answer": r["answer"],
                           "passages": list(r["passages"]), "gold": [int(i) for i in r["gold"]]}
            except (ValueError, KeyError, TypeError) as e:
                raise AttributionDataError(f"{path}:{n}: not a HotpotQA or {{question, answer, passages, gold}} "
                                           f"row: {type(e).__name__}: {e}") from e
            if not row["passages"] or any(not 0 <= g < len(row["passages"]) for g in row["gold"]):
                raise AttributionDataError(f"{path}:{n}: gold indices {row['gold']} outside {len(row['passages'])} passages")
            out.append(row)
            if limit and len(out) >= limit:
                break
    return out


def ndcg_at(ranking: Sequence[int], gold: set[int], k: int) -> float:
    dcg = sum(1 / math.log2(i + 2) for i, p in enumerate(ranking[:k]) if p in gold)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(k, len(gold))))
    return dcg / ideal if ideal else 0.0


def recall_at(ranking: Sequence[int], gold: set[int], k: int) -> float:
    return len(set(ranking[:k]) & gold) / len(gold) if gold else 0.0


def rank(scores: Sequence[float]) -> list[int]:
    return [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]


class Attributor:
    """Scores the passages of a question with each method, on one engine and one embedder."""

    def __init__(self, llm, *, masks: int = 64, keep_probability: float = 0.5, ridge_lambda: float = 1.0,
                 target: attr.Target = "logit", max_passage_words: int = 120, embedder=None, seed: int = 0,
                 instruction: str = "Answer the question based on the given passages."):
        from actors.llm import make_engine

        self.engine = make_engine(llm)
        self.llm = llm
        self.prompt = prompts.load("scarlet/answer")
        self.masks, self.p, self.lam, self.target = masks, keep_probability, ridge_lambda, target
        self.max_words, self.seed, self.instruction = max_passage_words, seed, instruction
        self.embedder = embedder
        self.forward_passes = 0

    def _passages(self, q: dict) -> list[str]:
        budget = attr.passage_budget(len(q["passages"]), len(q["question"].split()), len(q["answer"].split()),
                                     self.llm.max_input_tokens, self.max_words)
        return [attr.truncate_words(p, budget)[0] for p in q["passages"]]

    def z(self, q: dict, masks: np.ndarray) -> np.ndarray:
        """The answer's teacher-forced score under each mask, all masks in one engine call."""
        from pipelines.scarlet import render_context

        ps = self._passages(q)
        msgs = [self.prompt.messages({"task_instruction": self.instruction, "input": q["question"], "answer": q["answer"],
                                      "passages": render_context([{"text": p} for p, k in zip(ps, m) if k])})
                for m in masks]
        conts = [self.prompt.render_continuations({"answer": q["answer"]})] * len(msgs)
        scored = self.engine.score_tokens(msgs, conts)
        self.forward_passes += len(msgs)
        key = "logits" if self.target == "logit" else "logprobs"
        return np.array([sum(getattr(row[0], key)) for row in scored])

    def perturbation(self, q: dict) -> np.ndarray:
        k = len(q["passages"])
        seed = (self.seed * 1_000_003 + sum(map(ord, q["id"]))) % 2 ** 32
        masks = attr.sample_masks(k, self.masks, self.p, seed=seed)
        return attr.fit_ridge(masks, self.z(q, masks), self.lam)[1]

    def loo(self, q: dict) -> np.ndarray:
        z = self.z(q, attr.loo_masks(len(q["passages"])))
        return attr.leave_one_out(z[0], z[1:])

    def similarity(self, q: dict) -> np.ndarray:
        from actors.embedder import encode_texts, load_model

        if self.embedder is None:
            self.embedder = load_model("embedded")
        qv = encode_texts([q["question"]], kind="query", model=self.embedder)
        pv = encode_texts(q["passages"], kind="passage", model=self.embedder)
        return (pv @ qv[0]).astype(np.float64)

    def random(self, q: dict) -> np.ndarray:
        return np.random.default_rng((self.seed + sum(map(ord, q["id"]))) % 2 ** 32).random(len(q["passages"]))


def evaluate(questions: list[dict], attributor: Attributor, methods: Sequence[str] = METHODS,
             progress=None) -> dict:
    """Per method: NDCG@1, NDCG@5, Recall@2 (means over questions), seconds per question, and
    forward passes per second for the generator-based methods."""
    out = {}
    for m in methods:
        if m not in METHODS:
            raise ValueError(f"unknown attribution method {m!r}; choose from {', '.join(METHODS)}")
        fn = getattr(attributor, m)
        n1, n5, r2 = [], [], []
        attributor.forward_passes = 0
        t0 = time.perf_counter()
        for q in questions:
            ranking, gold = rank(fn(q)), set(q["gold"])
            n1.append(ndcg_at(ranking, gold, 1))
            n5.append(ndcg_at(ranking, gold, 5))
            r2.append(recall_at(ranking, gold, 2))
            if progress:
                progress(m)
        secs = time.perf_counter() - t0
        out[m] = {"ndcg@1": round(100 * float(np.mean(n1)), 2), "ndcg@5": round(100 * float(np.mean(n5)), 2),
                  "recall@2": round(100 * float(np.mean(r2)), 2), "questions": len(questions),
                  "seconds_per_question": round(secs / max(1, len(questions)), 3)}
        if attributor.forward_passes:
            out[m]["forward_passes_per_second"] = round(attributor.forward_passes / secs, 2)
    return out


def table(results: dict) -> str:
    head = "| method | NDCG@1 | NDCG@5 | Recall@2 | s/question |\n|---|---|---|---|---|\n"
    return head + "".join(f"| {m} | {r['ndcg@1']:.1f} | {r['ndcg@5']:.1f} | {r['recall@2']:.1f} | "
                          f"{r['seconds_per_question']:.2f} |\n" for m, r in results.items())
