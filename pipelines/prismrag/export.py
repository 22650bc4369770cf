"""SFT export: chat records ``{"messages": [...]}`` for both PrismRAG tasks, in the format
``synthrag train generator`` reads (training/chat_data.py labels the assistant turn only, so the
loss covers the whole assistant response — strategy, reasoning and answer — and not the prompt:
§5.1.3).

- distractor records (§4.2 step 3): the question, the golden and the distractor passage in the
  example's seeded order, and the golden passage's answer;
- strategization records (§4.3 step 5): the question and its references, and the kept attempt's
  strategy → reasoning → answer.

``export.distractor_share`` sets the share of distractor records (the more plentiful task is
subsampled, seeded); every record dropped that way is counted.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import prompts
from pipelines.core.schema import stable_id

USER_PROMPT = "prismrag/sft_user"


def assistant_text(strategy: list[str] | None, reasoning: list[str] | None, answer: str) -> str:
    """The assistant turn (Appendix 13.6's template); without a strategy, the answer alone."""
    parts = []
    if strategy:
        parts.append("## Strategy:\n" + "\n".join(f"- {s}" for s in strategy))
    if reasoning:
        parts.append("## Reasoning:\n" + "\n".join(f"- {s}" for s in reasoning))
    parts.append(f"## Answer: {answer}")
    return "\n\n".join(parts)


def user_messages(question: str, references: list[str], meta: dict, system: str | None,
                  search: list[str] | None = None) -> list[dict]:
    p = prompts.load(USER_PROMPT, search=search)
    msgs = p.messages({"question": question, "references": references, "user_time": meta.get("user_time"),
                       "user_location": meta.get("user_location")})
    return ([{"role": "system", "content": system}] if system else []) + msgs


def record(ex: dict, system: str | None = None, search: list[str] | None = None) -> dict:
    meta = json.loads(ex["meta"])
    if ex["task"] == "distractor":
        refs = [meta["reference"], ex["distractors"][0]]
        if meta["golden_position"] == 1:
            refs.reverse()
        reply = assistant_text(None, None, ex["answer"])
    else:
        refs = meta["reference_texts"]
        reply = assistant_text(meta["strategy_steps"], meta["reasoning_steps"], meta["candidate"])
    msgs = user_messages(ex["query"], refs, meta, system, search) + [{"role": "assistant", "content": reply}]
    return {"id": ex["example_id"], "task": ex["task"], "messages": msgs}


def mix(records: list[dict], share: float | None, seed: int) -> tuple[list[dict], dict]:
    """Subsample the more plentiful task so distractor records are ``share`` of the total."""
    d = [r for r in records if r["task"] == "distractor"]
    s = [r for r in records if r["task"] != "distractor"]
    if share is None or not records:
        return records, {}
    keep_d, keep_s = len(d), len(s)
    if share == 0:
        keep_d = 0
    elif share == 1:
        keep_s = 0
    elif len(d) / max(1, len(d) + len(s)) > share:
        keep_d = round(share * len(s) / (1 - share))
    else:
        keep_s = round((1 - share) * len(d) / share)

    def pick(rs, n):
        return sorted(sorted(rs, key=lambda r: stable_id(seed, r["id"]))[:n], key=lambda r: r["id"])

    out = pick(d, keep_d) + pick(s, keep_s)
    return out, {"dropped_by_mix": {"distractor": len(d) - keep_d, "strategize": len(s) - keep_s}}


def write_sft(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".jsonl.tmp")
    rnd = random.Random(0)
    records = list(records)
    rnd.shuffle(records)  # the tasks interleaved, the same on every rerun
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path
