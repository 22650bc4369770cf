"""The data model: one Arrow schema per table, shared by every method (DESIGN.md).

Rows are built with :func:`to_table`, which casts to the schema and checks required fields, so
a table that reaches Parquet is valid by construction. Method-specific fields that do not have a
column yet go into ``meta`` (a JSON string) rather than into new ad-hoc columns.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Iterable, Mapping

import pyarrow as pa

CITATION = pa.struct([("chunk_id", pa.string()), ("sentence_id", pa.string())])
SPAN = pa.struct([("start", pa.int32()), ("end", pa.int32())])
CLUE = pa.struct(  # M2: a clue and the (document, chunk, sentences) it was read from
    [("clue_id", pa.string()), ("text", pa.string()), ("sentence_ids", pa.list_(pa.string())),
     ("chunk_id", pa.string()), ("doc_id", pa.string())]
)
# A per-question criterion (RAGSynth): an answer must "cover" a fact, or "acknowledge" that a
# fact is missing from the documents it was given.
CRITERION = pa.struct([("kind", pa.string()), ("text", pa.string())])
LINEAGE = [
    pa.field("stage", pa.string()),
    pa.field("prompt_id", pa.string()),
    pa.field("model", pa.string()),
    pa.field("seed", pa.int64()),
]

DOCUMENTS = pa.schema(
    [
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("meta", pa.string()),  # JSON object
    ]
)

CHUNKS = pa.schema(
    [
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("title", pa.string()),
        pa.field("text", pa.string(), nullable=False),
        pa.field("token_count", pa.int32(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),
        pa.field("char_end", pa.int64(), nullable=False),
        pa.field("sentences", pa.list_(pa.string()), nullable=False),  # sentence_ids, in order
        pa.field("sentence_spans", pa.list_(SPAN), nullable=False),  # their offsets in `text`
    ]
)

SENTENCES = pa.schema(
    [
        pa.field("sentence_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("doc_id", pa.string(), nullable=False),
        pa.field("text", pa.string(), nullable=False),
        pa.field("char_start", pa.int64(), nullable=False),  # offsets in the document
        pa.field("char_end", pa.int64(), nullable=False),
    ]
)

EXAMPLES = pa.schema(
    [
        pa.field("example_id", pa.string(), nullable=False),
        pa.field("method", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("answer", pa.string()),
        # who wrote ``answer``: "model" (the LLM, from the clues), "facts" (the clues' sentences
        # verbatim) or "template" (a fixed text, e.g. a refusal); null where a method does not say
        pa.field("answer_source", pa.string()),
        pa.field("citations", pa.list_(CITATION), nullable=False),
        pa.field("positives", pa.list_(pa.string()), nullable=False),
        pa.field("references", pa.list_(pa.string())),
        pa.field("clues", pa.list_(CLUE)),
        pa.field("hop", pa.int32()),
        pa.field("variant_of", pa.string()),
        pa.field("variant_kind", pa.string()),
        pa.field("rubric", pa.list_(CRITERION)),
        pa.field("strategy", pa.string()),
        pa.field("reasoning", pa.string()),
        pa.field("distractors", pa.list_(pa.string())),
        pa.field("sql", pa.string()),
        pa.field("meta", pa.string()),
        *LINEAGE,
    ]
)

RETRIEVAL_LISTS = pa.schema(
    [
        pa.field("query_id", pa.string(), nullable=False),
        pa.field("query", pa.string(), nullable=False),
        pa.field("query_type", pa.string()),
        pa.field("positive", pa.string(), nullable=False),
        pa.field("candidates", pa.list_(pa.string()), nullable=False),
        pa.field("teacher_scores", pa.list_(pa.float32())),
        pa.field("false_negative", pa.list_(pa.bool_())),
        pa.field("labels", pa.list_(pa.float32())),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "documents": DOCUMENTS,
    "chunks": CHUNKS,
    "sentences": SENTENCES,
    "examples": EXAMPLES,
    "retrieval_lists": RETRIEVAL_LISTS,
}

# Every stage may drop rows; a dropped row carries these two columns into rejects/<stage>/.
REJECT_REASON = "reject_reason"
REJECT_DETAIL = "reject_detail"


def staging(schema: pa.Schema, *extra: pa.Field) -> pa.Schema:
    """A stage's output schema: ``schema``'s columns (all nullable, since a rejected row may
    lack them) plus ``extra`` and the two reject columns."""
    return pa.schema([f.with_nullable(True) for f in schema] + list(extra) +
                     [pa.field(REJECT_REASON, pa.string()), pa.field(REJECT_DETAIL, pa.string())])


class SchemaError(ValueError):
    pass


def to_table(rows: Iterable[Mapping[str, Any]], schema: pa.Schema) -> pa.Table:
    """Build a table of ``schema`` from dict rows; unknown keys are an error, missing optional
    fields become null, and a null in a non-nullable field raises :class:`SchemaError`."""
    rows = list(rows)
    names = set(schema.names)
    for row in rows:
        extra = set(row) - names
        if extra:
            raise SchemaError(f"unknown fields {sorted(extra)} for schema {schema.names}")
    try:
        table = pa.Table.from_pylist([dict(r) for r in rows], schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise SchemaError(str(e)) from e
    validate(table, schema)
    return table


def validate(table: pa.Table, schema: pa.Schema) -> None:
    """Check that ``table`` has the columns of ``schema`` with their types and no nulls where
    the schema forbids them."""
    for field in schema:
        if field.name not in table.column_names:
            raise SchemaError(f"missing column {field.name!r}")
        col = table.column(field.name)
        if not col.type.equals(field.type):
            raise SchemaError(f"column {field.name!r} is {col.type}, expected {field.type}")
        if not field.nullable and col.null_count:
            raise SchemaError(f"column {field.name!r} has {col.null_count} nulls")


def stable_id(*parts: Any, n: int = 16) -> str:
    """A short id derived from content, so reruns agree."""
    h = hashlib.blake2b(digest_size=n // 2)
    for p in parts:
        h.update(str(p).encode("utf-8", "surrogatepass"))
        h.update(b"\x1f")
    return h.hexdigest()


def dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True, default=str)
