"""Table QA scoring: WikiTableQuestions denotation accuracy, and reading WTQ question files.

The scorer follows the official ``evaluator.py`` of WikiTableQuestions (Pasupat & Liang 2015):

- ``targetValue`` holds the answers separated by ``|``, with the TSV escapes ``\\n`` (newline),
  ``\\p`` (``|``) and ``\\\\`` (backslash) (:func:`tsv_unescape_list`).
- each string becomes a value (:func:`to_value`): a :class:`NumberValue` if it parses as an
  int or a float ("3.0" is 3), else a :class:`DateValue` if it reads ``yyyy-mm-dd`` with ``xx``
  (or ``xxxx`` for the year) as wildcards (a date with only a year is the NumberValue of that
  year), else a :class:`StringValue`.
- :func:`normalize`: NFKD with combining marks removed, fancy quotes and dashes to ASCII, then
  repeatedly drop trailing citations (``[1]``, ``*``, ``†``, ...), trailing parentheticals
  (``" (2010)"``) and outermost double quotes; drop one final ``.``; collapse whitespace;
  lowercase.
- values match when their normalised strings are equal, or both are numbers within 1e-6, or both
  are dates with the same (year, month, day).
- :func:`check_denotation`: the predicted and target lists, each deduplicated as values, have
  the same size and every target matches some prediction (so order does not count).

Differences from the official script, on purpose:

- The official script reads the targets' CoreNLP canonical forms (``targetCanon`` of the
  ``.tagged`` files) for parsing, which turns e.g. "1,234" into a number. We have no CoreNLP;
  with ``canon=True`` (default) :func:`canonical` stands in for it on both sides: it strips
  thousands separators from well-formed numbers ("1,234" → "1234", "-3,729.7" → "-3729.7").
  Nothing else is canonicalised: "45%" and "January 5, 2001" stay strings (CoreNLP would make
  the latter a date), so write such answers as the table does. ``canon=False`` is the official
  behaviour without tagged files.
- A DateValue built without an original string prints ``xx`` for a missing day (the official
  code compares the day with the string ``'-1'`` and prints ``-1``); only ``str()`` differs.

Questions (:func:`read_questions`): the WTQ TSV with a header row naming at least ``id``,
``utterance``, ``context`` (the table file, e.g. ``csv/204-csv/590.csv``) and ``targetValue``.
In ``shared/data/wikitablequestions`` the ``table_id`` of ``tables.jsonl`` *is* the context; for
tables read from elsewhere (a folder of WTQ CSVs, ``.tsv``/``.table`` variants of the same table)
:func:`context_to_table_id` matches on the ``<batch>-csv/<n>`` part of both names.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping, Sequence


class QuestionsError(ValueError):
    """A malformed question file; the message names the file and line."""


# ----------------------------------------------------------------------------- normalisation
def normalize(x: str) -> str:
    """The official evaluator's string normalisation (module docstring)."""
    x = "".join(c for c in unicodedata.normalize("NFKD", x) if unicodedata.category(c) != "Mn")
    x = re.sub(r"[‘’´`]", "'", x)
    x = re.sub(r"[“”]", '"', x)
    x = re.sub(r"[‐‑‒–—−]", "-", x)
    while True:
        old_x = x
        x = re.sub(r"((?<!^)\[[^\]]*\]|\[\d+\]|[•♦†‡*#+])*$", "", x.strip())  # citations
        x = re.sub(r"(?<!^)( \([^)]*\))*$", "", x.strip())  # details in parentheses
        x = re.sub(r'^"([^"]*)"$', r"\1", x.strip())  # outermost quotation marks
        if x == old_x:
            break
    if x and x[-1] == ".":
        x = x[:-1]
    return re.sub(r"\s+", " ", x, flags=re.U).lower().strip()


class Value:
    """A denotation value; ``normalized`` is its normalised string."""

    _normalized: str = ""

    @property
    def normalized(self) -> str:
        return self._normalized

    def match(self, other: Value) -> bool:  # pragma: no cover - overridden
        raise NotImplementedError


class StringValue(Value):
    def __init__(self, content: str):
        self._normalized = normalize(content)
        self._hash = hash(self._normalized)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StringValue) and self.normalized == other.normalized

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"S{[self.normalized]}"

    def match(self, other: Value) -> bool:
        return self.normalized == other.normalized


class NumberValue(Value):
    def __init__(self, amount: int | float, original_string: str | None = None):
        self._amount: int | float = (int(amount) if abs(amount - round(amount)) < 1e-6
                                     else float(amount))
        self._normalized = normalize(original_string) if original_string else str(self._amount)
        self._hash = hash(self._amount)

    @property
    def amount(self) -> int | float:
        return self._amount

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberValue) and self.amount == other.amount

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"N({self.amount}){[self.normalized]}"

    def match(self, other: Value) -> bool:
        if self.normalized == other.normalized:
            return True
        return isinstance(other, NumberValue) and abs(self.amount - other.amount) < 1e-6

    @staticmethod
    def parse(text: str) -> int | float | None:
        """``int(text)``, else a finite ``float(text)``, else None (Python's own syntax)."""
        try:
            return int(text)
        except (ValueError, TypeError):
            try:
                amount = float(text)
            except (ValueError, TypeError):
                return None
            return amount if math.isfinite(amount) else None


class DateValue(Value):
    def __init__(self, year: int, month: int, day: int, original_string: str | None = None):
        """Placeholders (``xx``) are -1; not all three may be."""
        if year == month == day == -1:
            raise ValueError("a date needs a year, month or day")
        if not (month == -1 or 1 <= month <= 12) or not (day == -1 or 1 <= day <= 31):
            raise ValueError(f"bad date {year}-{month}-{day}")
        self._ymd = (year, month, day)
        if original_string:
            self._normalized = normalize(original_string)
        else:
            self._normalized = "-".join("xx" if v == -1 else str(v) for v in self._ymd)
        self._hash = hash(self._ymd)

    @property
    def ymd(self) -> tuple[int, int, int]:
        return self._ymd

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DateValue) and self.ymd == other.ymd

    def __hash__(self) -> int:
        return self._hash

    def __repr__(self) -> str:
        return f"D{self.ymd}{[self.normalized]}"

    def match(self, other: Value) -> bool:
        if self.normalized == other.normalized:
            return True
        return isinstance(other, DateValue) and self.ymd == other.ymd

    @staticmethod
    def parse(text: str) -> tuple[int, int, int] | None:
        """``yyyy-mm-dd`` with ``xx`` wildcards → (year, month, day), -1 for a wildcard."""
        try:
            ymd = text.lower().split("-")
            if len(ymd) != 3:
                return None
            year = -1 if ymd[0] in ("xx", "xxxx") else int(ymd[0])
            month = -1 if ymd[1] == "xx" else int(ymd[1])
            day = -1 if ymd[2] == "xx" else int(ymd[2])
        except ValueError:
            return None
        if year == month == day == -1:
            return None
        if not (month == -1 or 1 <= month <= 12) or not (day == -1 or 1 <= day <= 31):
            return None
        return year, month, day


_GROUPED = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def canonical(text: str) -> str:
    """Our stand-in for CoreNLP's canonical value: "1,234" → "1234"; anything else unchanged."""
    s = text.strip()
    return s.replace(",", "") if _GROUPED.match(s) else text


def to_value(original_string: str | Value, corenlp_value: str | None = None) -> Value:
    """The official ``to_value``: parse ``corenlp_value`` (default: the original) as a number,
    then a date, else a string; the original string is what gets normalised."""
    if isinstance(original_string, Value):
        return original_string
    if not corenlp_value:
        corenlp_value = original_string
    amount = NumberValue.parse(corenlp_value)
    if amount is not None:
        return NumberValue(amount, original_string)
    ymd = DateValue.parse(corenlp_value)
    if ymd is not None:
        if ymd[1] == ymd[2] == -1:
            return NumberValue(ymd[0], original_string)
        return DateValue(*ymd, original_string)
    return StringValue(original_string)


def to_value_list(original_strings: Iterable[str],
                  corenlp_values: Iterable[str] | None = None) -> list[Value]:
    """Values of the strings, deduplicated (official ``to_value_list``)."""
    originals = list(original_strings)
    if corenlp_values is None:
        return list(dict.fromkeys(to_value(x) for x in originals))
    canon = list(corenlp_values)
    if len(canon) != len(originals):
        raise ValueError("original and canonical lists differ in length")
    return list(dict.fromkeys(to_value(x, y) for x, y in zip(originals, canon)))


def check_denotation(target_values: Sequence[Value], predicted_values: Sequence[Value]) -> bool:
    """Same number of values, and every target matches some prediction (official)."""
    if len(target_values) != len(predicted_values):
        return False
    return all(any(t.match(p) for p in predicted_values) for t in target_values)


def tsv_unescape(x: str) -> str:
    return x.replace(r"\n", "\n").replace(r"\p", "|").replace("\\\\", "\\")


def tsv_unescape_list(x: str) -> list[str]:
    """A ``targetValue`` field → its answers (split on ``|``, then unescaped)."""
    return [tsv_unescape(y) for y in x.split("|")]


def _values(strings: Sequence[str], canon: bool) -> list[Value]:
    return to_value_list(strings, [canonical(s) for s in strings] if canon else None)


def denotation_correct(predicted: Sequence[str], target: str | Sequence[str], *,
                       canon: bool = True) -> bool:
    """Whether a predicted denotation (list of strings) answers ``target`` (a ``targetValue``
    string, or the list of answers)."""
    targets = tsv_unescape_list(target) if isinstance(target, str) else list(target)
    preds = [str(p) for p in predicted]
    return check_denotation(_values(targets, canon), _values(preds, canon))


# ----------------------------------------------------------------------------- questions
@dataclass
class Question:
    """One WTQ question; ``targets`` is ``target_value`` split and unescaped."""

    id: str
    utterance: str
    context: str
    target_value: str
    targets: list[str] = field(default_factory=list)


REQUIRED_COLUMNS = ("id", "utterance", "context", "targetValue")


def read_questions(path: str | Path) -> list[Question]:
    """Read a WTQ question TSV (fields split on tabs only; the file uses no CSV quoting)."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise QuestionsError(f"{path}: cannot read: {e}") from None
    if not lines:
        raise QuestionsError(f"{path}:1: empty file (no header)")
    header = lines[0].split("\t")
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise QuestionsError(f"{path}:1: header lacks {missing} (has {header})")
    col = {c: header.index(c) for c in REQUIRED_COLUMNS}
    out = []
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != len(header):
            raise QuestionsError(f"{path}:{n}: {len(f)} fields, the header has {len(header)}")
        tv = f[col["targetValue"]]
        out.append(Question(f[col["id"]], tsv_unescape(f[col["utterance"]]), f[col["context"]],
                            tv, tsv_unescape_list(tv)))
    return out


_CONTEXT = re.compile(r"(\d+)-csv/(\d+)(?:\.\w+)?$")


def context_key(name: str) -> str | None:
    """``csv/204-csv/590.csv`` (or ``.tsv``, ``.table``, ``204-csv/590``) → ``204-csv/590``."""
    m = _CONTEXT.search(name.strip().replace("\\", "/"))
    return f"{m[1]}-csv/{m[2]}" if m else None


def index_table_ids(table_ids: Iterable[str]) -> dict[str, str]:
    """Every table id, and its :func:`context_key` when that key is unambiguous → table id."""
    ids = list(table_ids)
    out = {t: t for t in ids}
    keys: dict[str, list[str]] = {}
    for t in ids:
        k = context_key(t)
        if k:
            keys.setdefault(k, []).append(t)
    for k, ts in keys.items():
        if len(ts) == 1:
            out.setdefault(k, ts[0])
    return out


def context_to_table_id(context: str, tables: Mapping[str, str] | Iterable[str]) -> str | None:
    """The table id of a question's ``context``: the same string, else the same ``<b>-csv/<n>``.

    ``tables``: the output of :func:`index_table_ids` (fast for many lookups) or table ids.
    """
    index = tables if isinstance(tables, Mapping) else index_table_ids(tables)
    if context in index:
        return index[context]
    k = context_key(context)
    return index.get(k) if k else None


def denotation_accuracy(predictions: Mapping[str, Sequence[str]], questions: Iterable[Question],
                        *, canon: bool = True) -> dict[str, float | int]:
    """Accuracy over ``questions``; a question without a prediction counts as wrong."""
    n = correct = missing = 0
    for q in questions:
        n += 1
        pred = predictions.get(q.id)
        if pred is None:
            missing += 1
        elif denotation_correct(pred, q.targets, canon=canon):
            correct += 1
    return {"n": n, "correct": correct, "missing": missing,
            "accuracy": correct / n if n else 0.0}
