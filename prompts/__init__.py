"""Prompt templates as files: ``prompts/<method>/<name>.yaml``.

Each file holds::

    id: ragsynth/clues@1          # name@version, recorded as lineage on every produced row
    system: ...                   # optional system message
    user: |                       # Jinja2 template over the row's columns
      ...
    response_prefix: '{"clues": [' # optional: the reply is forced to start with this
    schema: {...}                 # JSON Schema of the reply (guided decoding + validation)
    sampling: {temperature: 0.2, max_tokens: 256}

A file may hold ``variants``: named overrides of any of the fields above, for models that need
another wording (``variants: {small: {user: ..., schema: ...}}``; see ``llm.prompt_variant``).
``load(name, variant="small")`` gives the file with that variant's fields in place and its id
suffixed (``ragsynth/qa@3+small``); a file without the variant gives its default.

A *scoring* prompt has ``continuations`` (Jinja2 templates) instead of a schema: nothing is
generated; the engine returns the log-probability of each rendered continuation as the reply
(teacher-forced), e.g. ``["Yes", "No"]`` for a judge or ``["{{ answer }}"]`` for the likelihood
of a reference answer under a given context. With ``per_token: true`` the reply also holds each
token's log-probability and raw logit (``token_logprobs``, ``token_logits``: SCARLet's attribution).

:func:`load` returns a :class:`Prompt`; rendering is strict (an unknown variable is an error).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

ROOT = Path(__file__).resolve().parent
_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=False,
                          trim_blocks=True, lstrip_blocks=True)


class Sampling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(256, ge=1, le=32768)
    # candidates per row and attempt, the first that parses and passes the stage's check kept
    # (llm.best_of, when set, overrides it for every prompt)
    best_of: int = Field(1, ge=1, le=16)


class Prompt(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    description: str = ""
    system: str | None = None
    user: str = ""
    messages_field: str | None = None  # take the conversation from this row column instead
    response_prefix: str = ""
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    sampling: Sampling = Sampling()
    continuations: list[str] | None = None  # a scoring prompt: log-probs of these, no generation
    per_token: bool = False  # a scoring prompt's reply also holds each token's log-prob and raw logit
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict)  # name -> fields that replace these

    @model_validator(mode="after")
    def _variants(self):
        for name, fields in self.variants.items():
            bad = set(fields) - (set(type(self).model_fields) | {"schema"}) | ({"id", "variants"} & set(fields))
            if bad:
                raise ValueError(f"variant {name!r}: unknown or fixed field(s) {sorted(bad)}")
        return self

    def variant(self, name: str | None) -> "Prompt":
        """This prompt with variant ``name``'s fields in place (itself when it has no such variant)."""
        if not name or name not in self.variants:
            return self
        data = {**self.model_dump(by_alias=True, exclude={"variants"}), **self.variants[name]}
        return Prompt.model_validate({**data, "id": f"{self.id}+{name}"})

    @model_validator(mode="after")
    def _one_kind(self):
        if self.continuations is not None and (self.schema_ is not None or not self.continuations):
            raise ValueError("a scoring prompt has a non-empty `continuations` list and no `schema`")
        return self

    def render_continuations(self, variables: dict[str, Any]) -> list[str]:
        return [_ENV.from_string(c).render(**variables) for c in self.continuations or []]

    @property
    def schema(self) -> dict[str, Any] | None:
        return self.schema_

    def messages(self, variables: dict[str, Any]) -> list[dict[str, str]]:
        if self.messages_field:
            convo = [{"role": m["role"], "content": m["content"]} for m in variables[self.messages_field]]
            if self.system and not any(m["role"] == "system" for m in convo):
                convo.insert(0, {"role": "system", "content": self.system})
            return convo
        msgs = []
        if self.system:
            msgs.append({"role": "system", "content": _ENV.from_string(self.system).render(**variables).strip()})
        msgs.append({"role": "user", "content": _ENV.from_string(self.user).render(**variables).strip()})
        return msgs

    def validate_reply(self, obj: Any) -> None:
        """Raise ``jsonschema.ValidationError`` if ``obj`` does not follow the schema."""
        if self.schema_ is not None:
            jsonschema.validate(obj, self.schema_)


@lru_cache(maxsize=None)
def _load_file(path: str) -> Prompt:
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    prompt = Prompt.model_validate(data)
    for p in [prompt, *(prompt.variant(v) for v in prompt.variants)]:
        if p.schema_ is not None:
            jsonschema.Draft202012Validator.check_schema(p.schema_)
    return prompt


def load(name: str, *, search: list[str | Path] | None = None, variant: str | None = None) -> Prompt:
    """Load ``method/name`` (or a path to a .yaml file), as its ``variant`` when it has one.
    ``search`` lists extra folders that override the packaged prompts, so users can replace a
    prompt without forking."""
    candidates = []
    p = Path(name)
    if p.suffix in (".yaml", ".yml"):
        candidates.append(p)
    for folder in [*(search or []), ROOT]:
        candidates.append(Path(folder) / f"{name}.yaml")
    for c in candidates:
        if c.is_file():
            return _load_file(str(c.resolve())).variant(variant)
    raise FileNotFoundError(f"prompt {name!r} not found (looked in {[str(c) for c in candidates]})")
