"""SCARLet's task pool and seed data (paper §3.3, Appendix A, Table 6).

The pool is data: ``prompts/scarlet/tasks.yaml`` ships the paper's six in-domain tasks, and
``--tasks FILE`` adds or replaces tasks (same format). Seeds are a user's own task data
(``--seeds FILE``, jsonl ``{task, input, answer}``) or are written from corpus passages.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

import prompts

DEFAULT_POOL = Path(prompts.__file__).resolve().parent / "scarlet" / "tasks.yaml"


class TaskExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input: str = Field(min_length=1)
    answer: str = Field(min_length=1)


class Task(BaseModel):
    """One task of the pool: what the generator and the retriever are told, the shape of an
    input and an answer (said in the prompts, checked where ``answer_choices`` fixes labels)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z0-9_]+$")
    instruction: str = Field(min_length=1)
    retrieval_instruction: str = Field(min_length=1)
    input_format: str = Field(min_length=1)
    output_format: str = Field(min_length=1)
    answer_choices: list[str] | None = None
    input_pattern: str | None = None  # a regex the input must match (re.search), e.g. "\\?$" for questions
    # a regex the small model's input is decoded under (guided decoding, llm.prompt_variant small);
    # larger models are only checked against input_pattern
    input_grammar: str | None = None
    example: TaskExample

    @field_validator("input_pattern", "input_grammar")
    @classmethod
    def _regex(cls, v):
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"not a regular expression: {v!r}: {e}") from e
        return v

    @model_validator(mode="after")
    def _example_fits(self):
        if self.input_pattern and not re.search(self.input_pattern, self.example.input.strip()):
            raise ValueError(f"the example's input does not match input_pattern {self.input_pattern!r}")
        return self

    @field_validator("answer_choices")
    @classmethod
    def _nonempty(cls, v):
        if v is not None and not v:
            raise ValueError("answer_choices, when given, lists at least one label")
        return v

    def prompt_fields(self) -> dict:
        return {"task": self.name, "task_instruction": self.instruction, "input_format": self.input_format,
                "output_format": self.output_format, "example_input": self.example.input,
                "example_answer": self.example.answer}

    def reply_schema(self, schema: dict, grammar: bool) -> dict:
        """A prompt's ``{input, answer}`` reply schema narrowed to this task: the answer one of
        ``answer_choices`` when the task fixes labels, and, with ``grammar``, the input decoded
        under ``input_grammar``."""
        props = dict(schema["properties"])
        if grammar and self.input_grammar:
            props["input"] = {"type": "string", "pattern": self.input_grammar}
        if self.answer_choices:
            props["answer"] = {"type": "string", "enum": list(self.answer_choices)}
        return {**schema, "properties": props}

    def normalise_answer(self, answer: str) -> str | None:
        """The answer as the task wants it, or None when it breaks the task's format."""
        answer = answer.strip()
        if not answer:
            return None
        if self.answer_choices:
            for c in self.answer_choices:
                if answer.strip(" .\"'").upper() == c.upper():
                    return c
            return None
        return answer


class PoolError(ValueError):
    pass


def _read_pool(path: Path) -> list[Task]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PoolError(f"{path}: cannot read the task pool: {e}") from e
    if not isinstance(data, list):
        raise PoolError(f"{path}: a task pool is a YAML list of tasks (name, instruction, ...)")
    out = []
    for i, item in enumerate(data):
        try:
            out.append(Task.model_validate(item))
        except ValidationError as e:
            raise PoolError(f"{path}: task {i + 1}: {e}") from e
    return out


def load_pool(extra: str | Path | None = None, only: list[str] | None = None) -> dict[str, Task]:
    """The shipped pool, then ``extra``'s tasks (a same-named task replaces the shipped one),
    restricted to ``only`` (in that order) when given."""
    pool = {t.name: t for t in _read_pool(DEFAULT_POOL)}
    if extra:
        pool.update({t.name: t for t in _read_pool(Path(extra))})
    if only:
        missing = [n for n in only if n not in pool]
        if missing:
            raise PoolError(f"unknown task(s) {missing}; the pool has {sorted(pool)}")
        pool = {n: pool[n] for n in only}
    return pool


def read_seeds(path: str | Path, pool: dict[str, Task]) -> list[dict]:
    """Seed rows from a jsonl file of ``{task, input, answer}``. A bad line is not fatal: it is a
    row with ``reject_reason`` (``bad_seed_line`` with the line number, ``unknown_task``), so it
    lands in rejects/ with the rest of the funnel."""
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            base = {"seed_id": f"line-{n}", "source": f"{Path(path).name}:{n}", "chunk_id": None,
                    "task": None, "input": None, "answer": None, "reject_reason": None, "reject_detail": None}
            try:
                obj = json.loads(line)
                if not isinstance(obj, dict):
                    raise ValueError("not a JSON object")
                task, inp, ans = obj.get("task"), obj.get("input"), obj.get("answer")
                if not all(isinstance(v, str) and v.strip() for v in (task, inp, ans)):
                    raise ValueError("needs non-empty strings task, input, answer")
            except ValueError as e:
                rows.append(base | {"reject_reason": "bad_seed_line",
                                    "reject_detail": json.dumps({"line": n, "error": str(e), "raw": line[:300]})})
                continue
            row = base | {"task": task, "input": inp.strip(), "answer": ans.strip()}
            if task not in pool:
                row |= {"reject_reason": "unknown_task",
                        "reject_detail": json.dumps({"line": n, "task": task, "pool": sorted(pool)})}
            rows.append(row)
    return rows
