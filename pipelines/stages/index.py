"""Vector index: faiss over Parquet embeddings, built in shards, searched in batches.

Embeddings live as Parquet (``RUN/embeddings/``): ``chunk_id`` (string) and ``vector``
(``fixed_size_list<float32>[dim]``, L2-normalised, so inner product = cosine). The builder
streams the Parquet record batch by record batch and adds each batch to the index; at no point
are all vectors held in a Python list (only faiss's own storage grows).

Index kinds (:class:`IndexConfig`):

* ``flat``: exact inner-product search (``IndexFlatIP``); ``auto`` picks it below
  ``exact_threshold`` vectors.
* ``ivf``: inverted lists (``IVF{nlist},Flat`` by default), trained on a random sample of
  ``train_size`` vectors gathered in a first streaming pass; ``auto`` picks it above the
  threshold. ``factory`` overrides the faiss description (e.g. ``IVF65536,PQ64``).
* ``hnsw``: graph index (``IndexHNSWFlat``), no training.

With GPU faiss installed and a GPU visible, flat and IVF indexes are moved to the GPUs.
:meth:`VectorIndex.search` returns chunk ids and scores, ``k`` per query, searching the
queries in batches.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Iterable, Iterator, Literal, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

ID_COLUMN = "chunk_id"
VECTOR_COLUMN = "vector"


def embeddings_schema(dim: int, id_column: str = ID_COLUMN) -> pa.Schema:
    """Schema of an embeddings table: ids and ``fixed_size_list<float32>[dim]`` vectors."""
    return pa.schema([pa.field(id_column, pa.string(), nullable=False),
                      pa.field(VECTOR_COLUMN, pa.list_(pa.float32(), dim), nullable=False)])


class IndexConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["auto", "flat", "ivf", "hnsw"] = "auto"
    exact_threshold: int = Field(200_000, ge=0)  # auto: flat below, ivf at or above
    factory: str | None = None  # faiss index_factory string, overrides kind's default layout
    nlist: int | None = Field(None, ge=1)  # ivf lists; default ~4*sqrt(n), >= 39 points/list
    nprobe: int = Field(32, ge=1)
    train_size: int | None = Field(None, ge=1)  # ivf training sample; default 64 x nlist
    hnsw_m: int = Field(32, ge=4)
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(128, ge=8)
    use_gpu: bool | None = None  # None: when GPU faiss and a GPU are present
    add_batch_size: int = Field(65_536, ge=1)
    search_batch_size: int = Field(4_096, ge=1)
    seed: int = 0


# ---------------------------------------------------------------------------- Arrow helpers
def vectors_from_arrow(col: pa.Array | pa.ChunkedArray, dim: int | None = None) -> np.ndarray:
    """A vector column (fixed-size list, list, or a tensor extension) as ``float32[n, dim]``."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if isinstance(col.type, pa.ExtensionType):  # Ray's tensor type or arrow.fixed_shape_tensor
        arr = col.to_numpy_ndarray() if hasattr(col, "to_numpy_ndarray") else col.to_numpy()
        return np.ascontiguousarray(arr, dtype=np.float32).reshape(len(col), -1)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False)
    if dim is None:
        dim = col.type.list_size if pa.types.is_fixed_size_list(col.type) else (
            len(flat) // max(1, len(col)))
    return np.ascontiguousarray(flat, dtype=np.float32).reshape(len(col), dim)


def _files(source: str | Path | Sequence[str | Path]) -> list[str]:
    sources = [source] if isinstance(source, (str, Path)) else list(source)
    out: list[str] = []
    for s in sources:
        p = Path(s)
        out += [str(f) for f in sorted(p.rglob("*.parquet"))] if p.is_dir() else [str(p)]
    if not out:
        raise FileNotFoundError(f"no Parquet embeddings under {source}")
    return out


def iter_embeddings(source, *, batch_size: int = 65_536, id_column: str = ID_COLUMN,
                    vector_column: str = VECTOR_COLUMN) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """Stream ``(ids, float32[b, dim])`` batches from Parquet embeddings."""
    ds = pads.dataset(_files(source), format="parquet")
    for batch in ds.to_batches(columns=[id_column, vector_column], batch_size=batch_size):
        if batch.num_rows:
            yield batch.column(0).cast(pa.string()), vectors_from_arrow(batch.column(1))


def write_embeddings(batches: Iterable[tuple[Sequence[str], np.ndarray]], out_dir: str | Path,
                     *, id_column: str = ID_COLUMN, rows_per_file: int = 100_000) -> Path:
    """Write ``(ids, vectors)`` batches as a Parquet embeddings folder (atomically renamed)."""
    out = Path(out_dir)
    tmp = out.with_name(out.name + ".tmp")
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer, part, in_part = None, 0, 0
    try:
        for ids, vecs in batches:
            vecs = np.ascontiguousarray(vecs, dtype=np.float32)
            schema = embeddings_schema(vecs.shape[1], id_column)
            table = pa.table([pa.array(list(ids), pa.string()),
                              pa.FixedSizeListArray.from_arrays(pa.array(vecs.reshape(-1)),
                                                                vecs.shape[1])], schema=schema)
            if writer is None or in_part >= rows_per_file:
                if writer is not None:
                    writer.close()
                writer = pq.ParquetWriter(tmp / f"part-{part:05d}.parquet", schema)
                part, in_part = part + 1, 0
            writer.write_table(table)
            in_part += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# ---------------------------------------------------------------------------- faiss
def _gpu_available() -> bool:
    import faiss

    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def _default_nlist(n: int) -> int:
    return max(1, min(int(4 * math.sqrt(n)), n // 39 or 1))


def _make_index(kind: str, dim: int, n: int, cfg: IndexConfig):
    import faiss

    ip = faiss.METRIC_INNER_PRODUCT
    if cfg.factory:
        return faiss.index_factory(dim, cfg.factory, ip)
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, cfg.hnsw_m, ip)
        index.hnsw.efConstruction = cfg.ef_construction
        return index
    nlist = cfg.nlist or _default_nlist(n)
    return faiss.index_factory(dim, f"IVF{nlist},Flat", ip)


def _set_search_params(index, cfg: IndexConfig, k: int, on_gpu: bool = False) -> None:
    import faiss

    base = index
    if on_gpu:
        try:
            faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", cfg.nprobe)
        except Exception:
            pass
        return
    try:
        faiss.extract_index_ivf(base).nprobe = cfg.nprobe
    except (RuntimeError, AttributeError):
        pass
    hnsw = getattr(faiss.downcast_index(base), "hnsw", None)
    if hnsw is not None:
        hnsw.efSearch = max(cfg.ef_search, k)


class VectorIndex:
    """A faiss index plus the string ids of its rows (row i of faiss = ``ids[i]``)."""

    def __init__(self, index, ids: pa.Array, kind: str, config: IndexConfig,
                 on_gpu: bool = False):
        self.on_gpu = on_gpu
        self.index = index
        self.ids = ids
        self.kind = kind
        self.config = config

    @property
    def dim(self) -> int:
        return self.index.d

    def __len__(self) -> int:
        return self.index.ntotal

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, source, config: IndexConfig | dict | None = None, *,
              id_column: str = ID_COLUMN, vector_column: str = VECTOR_COLUMN) -> "VectorIndex":
        """Build from Parquet embeddings (a folder, a file, or a list of them), streaming."""
        cfg = config if isinstance(config, IndexConfig) else IndexConfig(**(config or {}))
        files = _files(source)
        ds = pads.dataset(files, format="parquet")
        n = ds.count_rows()
        vtype = ds.schema.field(vector_column).type
        dim = vtype.list_size if pa.types.is_fixed_size_list(vtype) else None
        if dim is None:  # peek one batch
            dim = next(iter_embeddings(files, batch_size=1, id_column=id_column,
                                       vector_column=vector_column))[1].shape[1]

        def batches():
            return iter_embeddings(files, batch_size=cfg.add_batch_size, id_column=id_column,
                                   vector_column=vector_column)

        return cls._build(batches, n, dim, cfg)

    @classmethod
    def from_vectors(cls, ids: Sequence[str], vectors: np.ndarray,
                     config: IndexConfig | dict | None = None) -> "VectorIndex":
        """Build from vectors already in memory (small sets, tests)."""
        cfg = config if isinstance(config, IndexConfig) else IndexConfig(**(config or {}))
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        ids_arr = pa.array(list(ids), pa.string())
        if len(ids_arr) != len(vectors):
            raise ValueError(f"{len(ids_arr)} ids for {len(vectors)} vectors")
        step = cfg.add_batch_size

        def batches():
            for s in range(0, len(vectors), step):
                yield ids_arr[s:s + step], vectors[s:s + step]

        return cls._build(batches, len(vectors), vectors.shape[1], cfg)

    @classmethod
    def _build(cls, batches, n: int, dim: int, cfg: IndexConfig) -> "VectorIndex":
        import faiss

        kind = cfg.kind
        if kind == "auto":
            kind = "flat" if n < cfg.exact_threshold else "ivf"
        index = _make_index(kind, dim, n, cfg)
        use_gpu = _gpu_available() if cfg.use_gpu is None else cfg.use_gpu
        if use_gpu and kind != "hnsw":
            index = faiss.index_cpu_to_all_gpus(index)
        if not index.is_trained:
            index.train(cls._training_sample(batches(), n, dim, cfg))
        id_parts: list[pa.Array] = []
        for ids, vecs in batches():  # the second (or only) streaming pass
            index.add(vecs)
            id_parts.append(ids)
        ids = pa.concat_arrays(id_parts) if id_parts else pa.array([], pa.string())
        return cls(index, ids, kind, cfg, on_gpu=bool(use_gpu and kind != "hnsw"))

    @staticmethod
    def _training_sample(batches, n: int, dim: int, cfg: IndexConfig) -> np.ndarray:
        nlist = cfg.nlist or _default_nlist(n)
        size = min(n, cfg.train_size or max(64 * nlist, 10_000))
        rng = np.random.default_rng(cfg.seed)
        wanted = np.sort(rng.choice(n, size=size, replace=False))
        sample = np.empty((size, dim), dtype=np.float32)
        start, filled = 0, 0
        for _, vecs in batches:
            lo, hi = np.searchsorted(wanted, [start, start + len(vecs)])
            take = wanted[lo:hi] - start
            sample[filled:filled + len(take)] = vecs[take]
            filled += len(take)
            start += len(vecs)
        return sample[:filled]

    # ------------------------------------------------------------------ search
    def search(self, queries: np.ndarray, k: int, *, batch_size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` for each query, searched ``batch_size`` queries at a time.

        Returns ``(ids, scores)``: ``object[nq, k]`` chunk ids and ``float32[nq, k]`` inner
        products, best first. Where the index has fewer than ``k`` hits for a query (tiny
        index, or IVF lists probed too few) the id is ``None`` and the score ``-inf``.
        """
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        nq = len(queries)
        k = int(k)
        out_ids = np.empty((nq, k), dtype=object)
        out_scores = np.full((nq, k), -np.inf, dtype=np.float32)
        if nq == 0 or k == 0 or len(self) == 0:
            return out_ids, out_scores
        _set_search_params(self.index, self.config, k, self.on_gpu)
        step = batch_size or self.config.search_batch_size
        kk = min(k, len(self))
        for s in range(0, nq, step):
            scores, rows = self.index.search(queries[s:s + step], kk)
            valid = rows >= 0
            taken = self.ids.take(pa.array(np.where(valid, rows, 0).ravel())).to_numpy(
                zero_copy_only=False).reshape(rows.shape)
            out_ids[s:s + step, :kk] = np.where(valid, taken, None)
            out_scores[s:s + step, :kk] = np.where(valid, scores, -np.inf)
        return out_ids, out_scores

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss``, ``ids.parquet`` and ``index.json`` into ``directory``."""
        import faiss

        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        cpu = faiss.index_gpu_to_cpu(self.index) if self.on_gpu else self.index
        faiss.write_index(cpu, str(d / "index.faiss.tmp"))
        os.replace(d / "index.faiss.tmp", d / "index.faiss")
        pq.write_table(pa.table({"id": self.ids}), d / "ids.parquet")
        (d / "index.json").write_text(json.dumps(
            {"kind": self.kind, "dim": self.dim, "ntotal": len(self),
             "config": self.config.model_dump()}, indent=2))
        return d

    @classmethod
    def load(cls, directory: str | Path, *, use_gpu: bool | None = None) -> "VectorIndex":
        import faiss

        d = Path(directory)
        meta = json.loads((d / "index.json").read_text())
        cfg = IndexConfig(**meta["config"])
        index = faiss.read_index(str(d / "index.faiss"))
        ids = pq.read_table(d / "ids.parquet").column("id").combine_chunks()
        on_gpu = bool((_gpu_available() if use_gpu is None else use_gpu)
                      and meta["kind"] != "hnsw")
        if on_gpu:
            index = faiss.index_cpu_to_all_gpus(index)
        if index.ntotal != len(ids):
            raise ValueError(f"{d}: index has {index.ntotal} rows but {len(ids)} ids")
        return cls(index, ids, meta["kind"], cfg, on_gpu=on_gpu)


# ---------------------------------------------------------------------------- embedding passages
def _joined_text(batch: pa.RecordBatch | pa.Table, text_columns: Sequence[str]) -> list[str]:
    cols = [batch.column(c).to_pylist() for c in text_columns]
    return [" ".join(str(v) for v in vals if v).strip() for vals in zip(*cols)]


def embed_passages(source: str | Path, out_dir: str | Path, *, settings=None, model=None,
                   id_column: str = ID_COLUMN, text_columns: Sequence[str] = ("title", "text"),
                   batch_size: int = 2048, use_ray: bool = False, min_actors: int = 1,
                   max_actors: int = 1, cpus_per_actor: float = 1,
                   gpus_per_actor: float = 0, staging: str | Path | None = None) -> Path:
    """Embed a Parquet table of passages (e.g. ``RUN/chunks``) into an embeddings folder.

    The embedded text is the ``text_columns`` present in the table joined by a space (title and
    text, as BEIR does). In-process by default (``model`` may be a loaded checkpoint); with
    ``use_ray`` an autoscaling pool of :class:`actors.embedder.Embedder` actors does the work:
    the input streams in blocks of ``batch_size`` rows and each finished block is written to
    ``staging`` at once. Given a ``staging`` folder (a run stage's, whose fingerprint covers the
    model and settings), rows an interrupted run already wrote there are kept and not embedded
    again; without one, a private folder next to ``out_dir`` starts empty. On success the folder
    becomes ``out_dir``.
    """
    from actors.embedder import EmbedderSettings, embed_dataset, encode_texts

    settings = settings if isinstance(settings, EmbedderSettings) else EmbedderSettings(
        **(settings or {}))
    files = _files(source)
    present = pads.dataset(files, format="parquet").schema.names
    wanted, text_columns = list(text_columns), [c for c in text_columns if c in present]
    if not text_columns:
        raise ValueError(f"{source}: none of the text columns {wanted} present")
    if not use_ray:
        def batches():
            ds = pads.dataset(files, format="parquet")
            for b in ds.to_batches(columns=[id_column, *text_columns], batch_size=batch_size):
                if b.num_rows:
                    yield (b.column(0).to_pylist(),
                           encode_texts(_joined_text(b, text_columns), kind="passage",
                                        settings=settings, model=model))

        return write_embeddings(batches(), out_dir, id_column=id_column)

    import shutil

    import ray.data

    from pipelines.core.run import drop_keys, finished_keys

    if settings.kind != "passage":
        settings = settings.model_copy(update={"kind": "passage"})

    def join(b: pa.Table) -> pa.Table:
        return pa.table({id_column: b.column(id_column).cast(pa.string()),
                         "_text": pa.array(_joined_text(b, text_columns), pa.string())})

    out = Path(out_dir)
    tmp = Path(staging) if staging is not None else out.with_name(out.name + ".tmp")
    if staging is None:
        shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True, exist_ok=True)
    ds = ray.data.read_parquet(files, columns=[id_column, *text_columns])
    ds = drop_keys(ds, id_column, finished_keys(tmp, id_column))
    # blocks of one batch: each reaches the writer (and disk) as soon as it is embedded; small
    # enough that every actor of the pool gets some (1,000 rows in one block of 2,048 kept the
    # second actor idle: 0.59x bare encode; benchmarks/RESULTS.md)
    rows = pads.dataset(files, format="parquet").count_rows()
    batch_size = max(64, min(batch_size, -(-rows // (4 * max_actors))))
    ds = ds.map_batches(join, batch_format="pyarrow").repartition(target_num_rows_per_block=batch_size)
    ds = embed_dataset(ds, text_column="_text", output_column=VECTOR_COLUMN, settings=settings,
                       min_actors=min_actors, max_actors=max_actors,
                       cpus_per_actor=cpus_per_actor, gpus_per_actor=gpus_per_actor,
                       batch_size=batch_size)
    ds.select_columns([id_column, VECTOR_COLUMN]).write_parquet(str(tmp))
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
    return out


# Up to this many chunks are embedded on the driver: starting a pool's actor (a new worker
# importing torch and loading the model, 10-19 s here) costs more than embedding them (~15/s).
DRIVER_EMBED_ROWS = 256


def index_run_chunks(run, settings, index_config: IndexConfig, *, actors: tuple[int, int] = (1, 2),
                     driver_rows: int = DRIVER_EMBED_ROWS) -> None:
    """Stages ``embed`` and ``index``: the run's chunks (title + text) embedded by an actor pool
    into ``RUN/embeddings/``, then indexed into ``RUN/index/``. Each is skipped when its inputs
    and settings are unchanged (a new index kind reuses the embeddings), and an interrupted
    ``embed`` resumes from the rows it had written. A run of at most ``driver_rows`` chunks (with
    nothing staged, no device named) is embedded in this process: same vectors, no pool start-up. Shared
    by every pipeline that retrieves over its own corpus; later stages depend on ``index``."""
    from pipelines.core.run import finished_keys

    with run.stage("embed", run.stage_record("dedupe")["fingerprint"], settings.model_dump()) as rec:
        if rec is not None:
            lo, hi = actors
            staging = run.staging_dir("embed")  # kept by a rerun after a crash: embedded rows are not redone
            rec.resumed_rows = len(finished_keys(staging, "chunk_id"))
            rec.in_ = run.count("chunks")
            # a device named in the settings is the pool's (a CPU head node has no cuda)
            pool = rec.in_ > driver_rows or rec.resumed_rows > 0 or settings.device not in (None, "cpu")
            rec.extra["where"] = "actor pool" if pool else "driver"
            embed_passages(run.path("chunks"), run.path("embeddings"), settings=settings, id_column="chunk_id",
                           text_columns=("title", "text"), use_ray=pool, min_actors=lo, max_actors=hi,
                           staging=staging)
            rec.out = run.count("embeddings")
    with run.stage("index", run.stage_record("embed")["fingerprint"], index_config.model_dump()) as rec:
        if rec is not None:
            index = VectorIndex.build(run.path("embeddings"), index_config, id_column="chunk_id")
            index.save(run.path("index"))
            rec.in_ = run.count("embeddings")
            rec.out = len(index)
            rec.extra["kind"] = index.kind
