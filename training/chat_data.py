"""Chat records → token ids and assistant-only labels for generator SFT.

A record is ``{"messages": [{"role": ..., "content": ...}, ...]}`` (the SFT export of a run,
``RUN/exports/sft*.jsonl``, has exactly this shape). :func:`encode_chat` renders it with the
model's own chat template and labels only the assistant turns: every other token gets ``-100``.

Assistant spans are found by rendering prefixes, never by searching for the answer text: for
assistant message ``i`` the span starts where ``render(messages[:i], add_generation_prompt=True)``
ends and stops where ``render(messages[:i+1])`` ends (trailing whitespace after the end-of-turn
token is left out). The rendered text is tokenized once with offsets, and a token is an
assistant token when its first character lies in a span, so BPE merges at span edges cannot
shift the mask. The end-of-turn token (``<|im_end|>`` for ChatML) is labelled: the model learns to
stop.

:func:`build_examples` applies a maximum length (cutting from the right and *counting* every cut),
drops records left without assistant tokens (counted too), and :func:`pack` greedily fits whole
examples into rows of ``max_length`` tokens with ``position_ids`` restarting per example, which
transformers turns into a block-diagonal attention mask (no attention across examples).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

import torch
from pydantic import BaseModel, ConfigDict, field_validator

IGNORE_INDEX = -100


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant", "tool"]
    content: str


class ChatRecord(BaseModel):
    model_config = ConfigDict(extra="ignore")
    messages: list[Message]

    @field_validator("messages")
    @classmethod
    def _has_assistant(cls, v: list[Message]) -> list[Message]:
        if not any(m.role == "assistant" for m in v):
            raise ValueError("record has no assistant message")
        return v


# ---------------------------------------------------------------------------- loading
def sft_files(path: str | Path) -> list[Path]:
    """JSONL files behind ``path``: a file, a run directory (``exports/sft*.jsonl``) or a folder."""
    p = Path(path).expanduser()
    if p.is_file():
        return [p]
    if p.is_dir():
        for pattern in ("exports/sft*.jsonl", "sft*.jsonl", "*.jsonl"):
            found = sorted(p.glob(pattern))
            if found:
                return found
        raise FileNotFoundError(f"no SFT JSONL under {p} (looked for exports/sft*.jsonl, *.jsonl)")
    raise FileNotFoundError(f"SFT data {p} does not exist")


def load_records(path: str | Path, counts: Counter | None = None) -> list[list[dict]]:
    """Validated message lists from ``path``; invalid lines are counted under ``invalid_record``."""
    out: list[list[dict]] = []
    for f in sft_files(path):
        with open(f) as fh:
            for line in fh:
                if not line.strip():
                    continue
                try:
                    rec = ChatRecord.model_validate(json.loads(line))
                except Exception:  # noqa: BLE001 - counted, never silent
                    if counts is not None:
                        counts["invalid_record"] += 1
                    continue
                out.append([m.model_dump() for m in rec.messages])
    return out


def split_dev(records: list, dev_fraction: float, seed: int) -> tuple[list, list]:
    """Deterministic train/dev split (at least one dev record when there are two or more)."""
    if dev_fraction <= 0 or len(records) < 2:
        return list(records), []
    idx = list(range(len(records)))
    random.Random(seed).shuffle(idx)
    n_dev = min(len(records) - 1, max(1, round(len(records) * dev_fraction)))
    dev = set(idx[:n_dev])
    return ([r for i, r in enumerate(records) if i not in dev],
            [r for i, r in enumerate(records) if i in dev])


# ---------------------------------------------------------------------------- encoding
def _render(tokenizer, messages: list[dict], add_generation_prompt: bool = False) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the ``[start, end)`` character spans of assistant turns."""
    full = _render(tokenizer, messages)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        upto = _render(tokenizer, messages[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ValueError(
                "the chat template does not render conversations prefix by prefix (it rewrites "
                "earlier turns), so assistant spans cannot be located reliably")
        end = len(upto.rstrip())
        if end > len(before):
            spans.append((len(before), end))
    return full, spans


def encode_chat(tokenizer, messages: list[dict]) -> dict[str, list[int]]:
    """``input_ids`` and ``labels`` (``-100`` outside assistant turns) for one conversation."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = [IGNORE_INDEX] * len(ids)
    s = 0
    for t, (start, end) in enumerate(offsets):
        while s < len(spans) and start >= spans[s][1]:
            s += 1
        if s == len(spans):
            break
        if end > start and spans[s][0] <= start < spans[s][1]:
            labels[t] = ids[t]
    return {"input_ids": list(ids), "labels": labels}


@dataclass
class EncodeStats:
    """What happened to the records on their way to examples (goes into metrics.json)."""

    records: int = 0
    examples: int = 0
    truncated: int = 0
    truncated_tokens: int = 0
    dropped: Counter = field(default_factory=Counter)
    tokens: int = 0
    assistant_tokens: int = 0

    def to_json(self) -> dict:
        return {"records": self.records, "examples": self.examples, "truncated": self.truncated,
                "truncated_tokens": self.truncated_tokens, "dropped": dict(self.dropped),
                "tokens": self.tokens, "assistant_tokens": self.assistant_tokens}


def build_examples(tokenizer, records: Iterable[list[dict]], max_length: int,
                   stats: EncodeStats | None = None) -> list[dict[str, list[int]]]:
    """Encode, truncate to ``max_length`` (counted) and drop examples with nothing to learn."""
    stats = stats if stats is not None else EncodeStats()
    out = []
    for messages in records:
        stats.records += 1
        try:
            ex = encode_chat(tokenizer, messages)
        except ValueError:
            stats.dropped["template_error"] += 1
            continue
        n = len(ex["input_ids"])
        if n > max_length:
            stats.truncated += 1
            stats.truncated_tokens += n - max_length
            ex = {k: v[:max_length] for k, v in ex.items()}
        n_asst = sum(1 for x in ex["labels"] if x != IGNORE_INDEX)
        if n_asst == 0:
            stats.dropped["no_assistant_tokens_after_truncation"] += 1
            continue
        stats.examples += 1
        stats.tokens += len(ex["input_ids"])
        stats.assistant_tokens += n_asst
        out.append(ex)
    return out


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """First-fit-decreasing packing of whole examples into rows of at most ``max_length`` tokens.

    Each row carries ``position_ids`` that restart at every example; with no attention mask,
    transformers builds a block-diagonal causal mask from them, so packed examples do not see
    each other. (transformers only does so without a KV cache: train with ``use_cache=False``.)
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[dict[str, list[int]]] = []
    for i in order:
        ex = examples[i]
        n = len(ex["input_ids"])
        for row in rows:
            if len(row["input_ids"]) + n <= max_length:
                break
        else:
            row = {"input_ids": [], "labels": [], "position_ids": []}
            rows.append(row)
        row["input_ids"] += ex["input_ids"]
        row["labels"] += ex["labels"]
        row["position_ids"] += list(range(n))
    return rows


class Collator:
    """Right-pads a list of examples into a batch.

    Unpacked rows get an ``attention_mask``; packed rows (with ``position_ids``) get none, and
    their padding is a separate segment whose positions restart at 0 and whose labels are -100.
    """

    def __init__(self, pad_token_id: int):
        self.pad = pad_token_id

    def __call__(self, rows: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        width = max(len(r["input_ids"]) for r in rows)
        packed = "position_ids" in rows[0]
        ids, labels, extra = [], [], []
        for r in rows:
            gap = width - len(r["input_ids"])
            ids.append(list(r["input_ids"]) + [self.pad] * gap)
            labels.append(list(r["labels"]) + [IGNORE_INDEX] * gap)
            if packed:
                extra.append(list(r["position_ids"]) + list(range(gap)))
            else:
                extra.append([1] * len(r["input_ids"]) + [0] * gap)
        batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        batch["position_ids" if packed else "attention_mask"] = torch.tensor(extra)
        return batch
