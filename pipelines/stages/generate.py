"""Answer held-back chat records with a (trained) generator through the LLM actor pool.

A record is ``{"messages": [...]}`` whose last turn is the assistant's reference answer; the model
sees every turn before it and its reply is kept next to the reference, so method pipelines can
score a trained generator (e.g. RAGSynth's CSG, PrismRAG's answer grades).
"""

from __future__ import annotations

import json
from pathlib import Path

from actors.llm import LLMConfig, llm_map


def load_records(path: str | Path, limit: int | None = None) -> list[dict]:
    """Chat records from a JSONL file (or a run directory's ``exports/sft*.jsonl``)."""
    path = Path(path)
    if path.is_dir():
        found = sorted((path / "exports").glob("sft*.jsonl")) if (path / "exports").is_dir() else []
        if not found:
            raise FileNotFoundError(f"{path} has no exports/sft*.jsonl")
        path = found[0]
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                msgs = rec["messages"]
                assert isinstance(msgs, list) and all({"role", "content"} <= set(m) for m in msgs)
            except (json.JSONDecodeError, KeyError, AssertionError, TypeError) as e:
                raise ValueError(f"{path}:{n}: not a chat record {{'messages': [{{role, content}}, ...]}}: {e}") from None
            if msgs[-1]["role"] == "assistant":
                prompt, reference = msgs[:-1], msgs[-1]["content"]
            else:
                prompt, reference = msgs, None
            rows.append({"record_id": str(rec.get("id", n)), "messages": prompt, "reference": reference})
            if limit and len(rows) >= limit:
                break
    return rows


def generate(records: list[dict], llm: LLMConfig) -> list[dict]:
    """The model's reply to each record (``prediction``), in the records' order."""
    import ray.data

    ds = llm_map(ray.data.from_items(records), llm=llm, prompt="generic/chat", stage="generate")
    by_id = {r["record_id"]: r for r in ds.take_all()}
    out = []
    for rec in records:
        r = by_id[rec["record_id"]]
        pred = json.loads(r["llm_output"])["text"] if r["llm_output"] else None
        out.append({**rec, "prediction": pred, "model": r["model"], "reject_reason": r["reject_reason"]})
    return out
