"""Retriever training on Ray Train: GradCache + DDP over Ray Data shards of training lists.

    lists (run dirs or files, mixed by weight) ─► fixed-width lists, 90/10 split by query ─► OUT/data/{train,dev}.parquet
        ─► TorchTrainer(workers × train loop) ─► checkpoints in OUT/ray/retriever/
        ─► best checkpoint exported as a sentence-transformers directory in OUT, OUT/metrics.json
       (OUT/train_config.json: the resolved settings, preset applied, written at the start)

Each worker reads its shard of the Parquet lists through Ray Data, embeds and back-propagates
with :class:`training.gradcache.GradCache` (embeddings gathered across workers, so in-batch
negatives span the global batch), steps AdamW with linear warm-up and decay, and after every
epoch computes the dev loss and reports a checkpoint (model, optimizer, scheduler, history).
Ray Train keeps the best checkpoint (lowest dev loss, by the early-stopping criterion) and the
latest one; early stopping ends training
after ``patience`` epochs without improvement. Rerunning with the same ``OUT`` resumes from the
latest checkpoint (Ray Train restores it from ``storage_path``/``name``). ``Result.metrics``
is not relied upon (it came back None in this Ray): everything needed lives in the checkpoints.

Input lists, either shape:

- a run directory: ``retrieval_lists/`` (pipelines/core/schema.py RETRIEVAL_LISTS, chunk ids) and
  ``chunks/`` (chunk_id, text) of the same run;
- a ``.jsonl`` or ``.parquet`` file whose rows carry texts inline:
  ``{"query", "positive": text, "candidates": [texts], "teacher_scores": [...],
  "false_negative": [...], "labels": [...]}`` (the last three optional).
"""

from __future__ import annotations

import json
import math
import os
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel, Field, ValidationError, model_validator

from pipelines.core.schema import stable_id
from training.losses import needs_teacher, teacher_false_negatives
from training.retriever_config import PRESETS, RetrieverTrainConfig

RUN_NAME = "retriever"

# The fixed-width lists the workers read: column 0 of every list is the positive.
FIXED = pa.schema([
    pa.field("query_id", pa.string()),
    pa.field("query", pa.string()),
    pa.field("passages", pa.list_(pa.string())),
    pa.field("passage_ids", pa.list_(pa.int64())),
    pa.field("valid", pa.list_(pa.bool_())),
    pa.field("teacher", pa.list_(pa.float32())),
    pa.field("labels", pa.list_(pa.float32())),
    pa.field("false_negative", pa.list_(pa.bool_())),
])


LOG_EVERY_S = 30.0  # a progress line from rank 0 at most this often


class DataError(ValueError):
    """The training lists are missing, malformed or unsuitable for the chosen loss."""


# ---------------------------------------------------------------------------------- input lists
class InlineList(BaseModel):
    """One training list of the file shape (texts inline)."""

    query_id: str | None = None
    query: str = Field(min_length=1)
    query_type: str | None = None
    positive: str = Field(min_length=1)
    candidates: list[str]
    teacher_scores: list[float] | None = None
    false_negative: list[bool] | None = None
    labels: list[float] | None = None

    @model_validator(mode="after")
    def _aligned(self):
        n = len(self.candidates)
        for name in ("teacher_scores", "false_negative", "labels"):
            v = getattr(self, name)
            if v is not None and len(v) != n:
                raise ValueError(f"{name} has {len(v)} values for {n} candidates")
        if self.positive not in self.candidates:
            raise ValueError("the positive is not among the candidates")
        return self


def _pid(key: str) -> int:
    return int.from_bytes(bytes.fromhex(stable_id(key)), "big", signed=True)


def _read_file_rows(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
    else:
        raise DataError(f"{path}: expected a run directory, a .jsonl or a .parquet file")
    out = []
    for i, row in enumerate(rows):
        try:
            lst = InlineList.model_validate(row)
        except ValidationError as e:
            raise DataError(f"{path} row {i}: not a training list with inline texts "
                            f"(query, positive, candidates, teacher_scores, ...): {e}") from e
        out.append({
            "query_id": lst.query_id or stable_id("query", lst.query, i),
            "query": lst.query,
            "positive": lst.candidates.index(lst.positive),
            "texts": lst.candidates,
            "ids": [_pid(t) for t in lst.candidates],
            "teacher_scores": lst.teacher_scores, "false_negative": lst.false_negative,
            "labels": lst.labels,
        })
    return out


def _read_run_rows(run: Path) -> list[dict]:
    lists_dir, chunks_dir = run / "retrieval_lists", run / "chunks"
    for d in (lists_dir, chunks_dir):
        if not d.is_dir() or not any(d.glob("*.parquet")):
            raise DataError(f"{run} is not a run directory with retrieval_lists/ and chunks/ "
                            f"({d.name}/ has no Parquet files)")
    lists = pads.dataset(lists_dir, format="parquet").to_table().to_pylist()
    needed = sorted({c for row in lists for c in row["candidates"]} | {r["positive"] for r in lists})
    chunks = pads.dataset(chunks_dir, format="parquet").to_table(
        columns=["chunk_id", "text"], filter=pc.field("chunk_id").isin(needed))
    text = dict(zip(chunks.column("chunk_id").to_pylist(), chunks.column("text").to_pylist()))
    missing = [c for c in needed if c not in text]
    if missing:
        raise DataError(f"{len(missing)} chunk ids of retrieval_lists are not in chunks/ "
                        f"(e.g. {missing[:3]})")
    out = []
    for row in lists:
        cands = list(row["candidates"])
        n = len(cands)
        if row["positive"] not in cands:
            raise DataError(f"list {row['query_id']}: the positive {row['positive']} is not "
                            f"among its candidates")
        for name in ("teacher_scores", "false_negative", "labels"):
            if row.get(name) is not None and len(row[name]) != n:
                raise DataError(f"list {row['query_id']}: {name} is not aligned with candidates")
        out.append({"query_id": row["query_id"], "query": row["query"],
                    "positive": cands.index(row["positive"]), "texts": [text[c] for c in cands],
                    "ids": [_pid(c) for c in cands], "teacher_scores": row.get("teacher_scores"),
                    "false_negative": row.get("false_negative"), "labels": row.get("labels")})
    return out


def read_lists(path: Path) -> list[dict]:
    """Training lists with passage texts resolved; ``positive`` is an index into ``texts``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"training data {path} does not exist")
    rows = _read_run_rows(path) if path.is_dir() else _read_file_rows(path)
    if not rows:
        raise DataError(f"{path} holds no training lists")
    return rows


def mix_sources(paths: list[Path], weights: list[float] | None, seed: int) -> tuple[list[dict], list[dict]]:
    """The lists of every source, each scaled by its weight (``w`` = ``int(w)`` full copies plus a
    seeded sample of ``frac(w)`` of its lists), and one summary per source. With several sources
    query ids carry the source's index, and each copy of a repeated list gets its own id."""
    rows, summary = [], []
    for i, path in enumerate(paths):
        src = read_lists(path)
        w = 1.0 if weights is None else float(weights[i])
        copies, frac = int(w), w - int(w)
        extra = random.Random(f"{seed}:{i}").sample(src, round(frac * len(src)))
        picked = [(c, r) for c in range(copies) for r in src] + [(copies, r) for r in extra]
        for c, r in picked:
            qid = r["query_id"] if len(paths) == 1 else f"{i}:{r['query_id']}"
            rows.append({**r, "query_id": qid if c == 0 else f"{qid}#{c}"})
        summary.append({"data": str(path), "weight": w, "lists": len(src), "used": len(picked)})
    return rows, summary


def fixed_width(rows: list[dict], *, negatives: int, fn_fraction: float | None,
                need_teacher: bool, fn_scope: str = "contrastive") -> pa.Table:
    """Lists of exactly ``1 + negatives`` passages, the positive first.

    False negatives are candidates flagged in the data or above ``fn_fraction`` of the
    positive's teacher score. With ``fn_scope="contrastive"`` (Tamber et al. §3.3.3) the list is
    the first ``negatives`` candidates in order, false negatives included and flagged in
    ``false_negative``: the contrastive and pairwise losses skip them, the listwise KL keeps their
    teacher scores. With ``fn_scope="all"`` they are dropped before the first ``negatives``
    remaining candidates are kept, so no loss sees them. Shorter lists are padded with invalid
    entries.
    """
    if fn_scope not in ("contrastive", "all"):
        raise ValueError(f"fn_scope must be 'contrastive' or 'all', not {fn_scope!r}")
    n = 1 + negatives
    out = {name: [] for name in FIXED.names}
    for row in rows:
        k, m = row["positive"], len(row["texts"])
        teacher = row["teacher_scores"]
        if need_teacher and teacher is None:
            raise DataError(f"list {row['query_id']} has no teacher_scores, which the listwise "
                            f"and combined losses need (use --loss contrastive or pairwise)")
        fn = np.zeros(m, dtype=bool)
        if row["false_negative"] is not None:
            fn |= np.asarray(row["false_negative"], dtype=bool)
        if teacher is not None and fn_fraction is not None:
            fn |= teacher_false_negatives([teacher], fn_fraction, k).numpy()[0]
        fn[k] = False
        drop = fn if fn_scope == "all" else np.zeros(m, dtype=bool)
        order = [k] + [j for j in range(m) if j != k and not drop[j]][:negatives]
        pad = n - len(order)
        t = teacher if teacher is not None else [0.0] * m
        labels = row["labels"] if row["labels"] is not None else [1.0 if j == k else 0.0
                                                                  for j in range(m)]
        out["query_id"].append(row["query_id"])
        out["query"].append(row["query"])
        out["passages"].append([row["texts"][j] for j in order] + [""] * pad)
        out["passage_ids"].append([row["ids"][j] for j in order] + [-1 - i for i in range(pad)])
        out["valid"].append([True] * len(order) + [False] * pad)
        out["teacher"].append([float(t[j]) for j in order] + [0.0] * pad)
        out["labels"].append([float(labels[j]) for j in order] + [0.0] * pad)
        out["false_negative"].append([bool(fn[j]) for j in order] + [False] * pad)
    return pa.Table.from_pydict(out, schema=FIXED)


def split_by_query(table: pa.Table, *, dev_fraction: float, min_dev: int) -> tuple[pa.Table, pa.Table]:
    """Deterministic train/dev split by query text (a query never lands on both sides)."""
    queries = sorted(set(table.column("query").to_pylist()), key=lambda q: stable_id("split", q))
    n_dev = max(min_dev, round(dev_fraction * len(queries)))
    if n_dev >= len(queries):
        raise DataError(f"{len(queries)} distinct queries are too few for a train/dev split "
                        f"with {n_dev} dev queries")
    dev = pa.array(queries[:n_dev])
    is_dev = pc.is_in(table.column("query"), value_set=dev)
    return table.filter(pc.invert(is_dev)), table.filter(is_dev)


def prepare_data(cfg: RetrieverTrainConfig) -> dict[str, Any]:
    """Write OUT/data/{train,dev}.parquet; returns their paths and sizes."""
    rows, sources = mix_sources(cfg.data, cfg.data_weights, cfg.seed)
    table = fixed_width(rows, negatives=cfg.negatives, fn_fraction=cfg.fn_fraction,
                        need_teacher=needs_teacher(cfg.loss), fn_scope=cfg.fn_scope)
    train, dev = split_by_query(table, dev_fraction=cfg.dev_fraction, min_dev=cfg.workers)
    if train.num_rows < cfg.batch_size:
        raise DataError(f"only {train.num_rows} training lists for a batch of {cfg.batch_size} "
                        f"queries; lower --batch-size")
    data_dir = cfg.out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, t in (("train", train), ("dev", dev)):
        tmp = data_dir / f".{name}.parquet.tmp"
        pq.write_table(t, tmp)
        os.replace(tmp, data_dir / f"{name}.parquet")
    valid = np.array(table.column("valid").to_pylist(), dtype=bool)
    fn = np.array(table.column("false_negative").to_pylist(), dtype=bool)
    return {"train": str(data_dir / "train.parquet"), "dev": str(data_dir / "dev.parquet"),
            "n_train": train.num_rows, "n_dev": dev.num_rows, "sources": sources,
            "mean_negatives": float((valid & ~fn).sum(1).mean() - 1),
            "mean_false_negatives": float(fn.sum(1).mean())}


# ---------------------------------------------------------------------------------- worker side
def text_batch(batch: pa.Table, query_prefix: str = "", passage_prefix: str = ""):
    """A :class:`training.gradcache.TextBatch` from a batch of fixed-width rows."""
    import torch

    from training.gradcache import TextBatch

    queries = [query_prefix + q for q in batch.column("query").to_pylist()]
    passages = [[passage_prefix + p for p in row] for row in batch.column("passages").to_pylist()]

    def tensor(name, dtype):
        return torch.tensor(np.array(batch.column(name).to_pylist()), dtype=dtype)

    return TextBatch(queries=queries, passages=passages, mask=tensor("valid", torch.bool),
                     passage_ids=tensor("passage_ids", torch.int64),
                     teacher=tensor("teacher", torch.float32), labels=tensor("labels", torch.float32),
                     false_negative=tensor("false_negative", torch.bool))


def _lockstep(batches, device):
    """Yield batches while every worker still has one (collectives need equal step counts)."""
    import torch
    import torch.distributed as dist

    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    it = iter(batches)
    while True:
        batch = next(it, None)
        if distributed:
            flag = torch.tensor([0 if batch is None else 1], device=device)
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if flag.item() == 0:
                return
        elif batch is None:
            return
        yield batch


def _mean_across_workers(values: list[float], device) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([sum(values), len(values)], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)
    return float(t[0] / t[1]) if t[1] > 0 else float("nan")


def early_stopping(state: dict, dev_loss: float, epoch: int, *, patience: int,
                   min_delta: float = 0.0) -> bool:
    """Record an epoch's dev loss in ``state`` (``best_dev``, ``best_epoch``, ``bad_epochs``,
    ``stopped_early``); True when it improved on the best by more than ``min_delta``.

    Training stops once ``patience`` epochs in a row failed to improve (Tamber et al.: 2); the
    checkpoint of ``best_epoch`` is the one exported.
    """
    best = state["best_dev"]
    improved = best is None or dev_loss < best - min_delta  # a NaN dev loss never improves
    if improved:
        state.update(best_dev=dev_loss, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["stopped_early"] = state["bad_epochs"] >= patience
    return improved


def train_loop(config: dict) -> None:
    """The per-worker loop run by Ray Train's TorchTrainer."""
    import ray.train
    import ray.train.torch
    import torch
    from sentence_transformers import SentenceTransformer
    from transformers import get_linear_schedule_with_warmup

    from training.gradcache import GradCache, unwrap
    from training.losses import make_loss

    cfg = RetrieverTrainConfig.model_validate(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.cpus_per_worker)
    torch.manual_seed(cfg.seed)
    device = ray.train.torch.get_device()

    st = SentenceTransformer(config["base_path"], device=str(device))
    if cfg.max_length:
        st.max_seq_length = cfg.max_length
    model = ray.train.torch.prepare_model(
        st, parallel_strategy_kwargs={"find_unused_parameters": True})  # BERT pooler is unused
    optimizer = torch.optim.AdamW(unwrap(model).parameters(), lr=cfg.lr,
                                  weight_decay=cfg.weight_decay)
    local_batch = cfg.batch_size // world
    steps_per_epoch = max(1, config["n_train"] // world // local_batch)
    total = steps_per_epoch * cfg.epochs
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(cfg.warmup_ratio * total), total)

    state = {"epoch": 0, "step": 0, "history": [], "best_dev": None, "best_epoch": None,
             "bad_epochs": 0, "done": False, "stopped_early": False, "starts": []}
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", map_location=device, weights_only=False)
        unwrap(model).load_state_dict(saved.pop("model"))
        optimizer.load_state_dict(saved.pop("optimizer"))
        scheduler.load_state_dict(saved.pop("scheduler"))
        state.update(saved)
    if state["done"]:
        return
    state["starts"] = state["starts"] + [state["epoch"] + 1]

    gc = GradCache(model, make_loss(cfg.loss, **cfg.loss_kwargs()), chunk_size=cfg.chunk_size,
                   loss_chunk_size=cfg.loss_chunk_size)
    train_shard = ray.train.get_dataset_shard("train")
    dev_shard = ray.train.get_dataset_shard("dev")
    dev_batch = max(1, min(local_batch, config["n_dev"] // world))

    for epoch in range(state["epoch"] + 1, cfg.epochs + 1):
        t0 = last_log = time.perf_counter()
        model.train()
        losses = []
        batches = train_shard.iter_batches(batch_size=local_batch, drop_last=True,
                                           batch_format="pyarrow",
                                           local_shuffle_buffer_size=4 * local_batch,
                                           local_shuffle_seed=cfg.seed + epoch)
        for batch in _lockstep(batches, device):
            optimizer.zero_grad(set_to_none=True)
            losses.append(gc.step(text_batch(batch, cfg.query_prefix, cfg.passage_prefix)))
            torch.nn.utils.clip_grad_norm_(unwrap(model).parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            state["step"] += 1
            if rank == 0 and time.perf_counter() - last_log >= LOG_EVERY_S:
                last_log = time.perf_counter()
                print(f"[synthrag] epoch {epoch}: step {len(losses)}/{steps_per_epoch}, loss {losses[-1]:.4f}, "
                      f"{len(losses) / (last_log - t0):.2f} steps/s", flush=True)
            if cfg.max_steps and state["step"] >= cfg.max_steps:
                break
        train_loss = _mean_across_workers(losses, device)

        model.eval()
        dev_losses = []
        for batch in _lockstep(dev_shard.iter_batches(batch_size=dev_batch, batch_format="pyarrow"),
                               device):
            dev_losses.append(gc.loss_value(text_batch(batch, cfg.query_prefix, cfg.passage_prefix)))
        dev_loss = _mean_across_workers(dev_losses, device)

        improved = early_stopping(state, dev_loss, epoch, patience=cfg.patience,
                                  min_delta=cfg.min_delta)
        reached_max = bool(cfg.max_steps and state["step"] >= cfg.max_steps)
        state["done"] = state["stopped_early"] or reached_max or epoch == cfg.epochs
        state["epoch"] = epoch
        state["history"] = state["history"] + [{
            "epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss, "steps": state["step"],
            "seconds": round(time.perf_counter() - t0, 2)}]
        # Ray keeps the checkpoint with the highest "best" (the latest improving epoch) plus the
        # latest one, so retention follows the early-stopping criterion, min_delta included
        metrics = {"epoch": epoch, "train_loss": train_loss, "dev_loss": dev_loss,
                   "best": epoch if improved else 0}
        if rank == 0:
            print(f"[synthrag] epoch {epoch}: train loss {train_loss:.4f}, dev loss {dev_loss:.4f}"
                  f"{' (best)' if state['best_epoch'] == epoch else ''}", flush=True)
            with tempfile.TemporaryDirectory() as tmp:
                torch.save({**state, "model": unwrap(model).state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict()}, Path(tmp) / "state.pt")
                (Path(tmp) / "meta.json").write_text(json.dumps(
                    {k: v for k, v in state.items()} | metrics, indent=1))
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                                 checkpoint_dir_name=f"epoch_{epoch:04d}")
        else:
            ray.train.report(metrics, checkpoint=None, checkpoint_dir_name=f"epoch_{epoch:04d}")
        if state["done"]:
            break


# ---------------------------------------------------------------------------------- driver side
def _checkpoints(run_dir: Path) -> list[tuple[dict, Path]]:
    found = []
    for meta in run_dir.glob("epoch_*/meta.json"):
        if (meta.parent / "state.pt").exists():
            found.append((json.loads(meta.read_text()), meta.parent))
    return sorted(found, key=lambda x: x[0]["epoch"])


def export_best(cfg: RetrieverTrainConfig, base_path: Path, run_dir: Path, extra: dict | None = None) -> dict:
    """Save the best checkpoint as a sentence-transformers directory in OUT; write metrics.json."""
    import torch
    from sentence_transformers import SentenceTransformer

    found = _checkpoints(run_dir)
    if not found:
        raise RuntimeError(f"training left no checkpoint under {run_dir}")
    latest, _ = found[-1]
    best = [f for f in found if f[0]["epoch"] == latest["best_epoch"]]
    if not best:
        raise RuntimeError(f"the best checkpoint (epoch {latest['best_epoch']}) is missing "
                           f"under {run_dir}")
    best_meta, best_dir = best[-1]
    st = SentenceTransformer(str(base_path), device="cpu")
    saved = torch.load(best_dir / "state.pt", map_location="cpu", weights_only=False)
    st.load_state_dict(saved["model"])
    if cfg.max_length:
        st.max_seq_length = cfg.max_length
    if cfg.query_prefix or cfg.passage_prefix:
        st.prompts = {"query": cfg.query_prefix, "document": cfg.passage_prefix}
    st.save(str(cfg.out))
    metrics = {
        "loss": cfg.loss, "preset": cfg.preset, "history": latest["history"], "best_epoch": best_meta["epoch"],
        "best_dev_loss": best_meta["dev_loss"], "stopped_early": latest["stopped_early"],
        "epochs_run": latest["epoch"], "steps": latest["step"], "starts": latest["starts"],
        "checkpoint": str(best_dir), "config": json.loads(cfg.model_dump_json()), **(extra or {}),
    }
    (cfg.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return metrics


def train_retriever(cfg: RetrieverTrainConfig, *, address: str | None = None) -> dict:
    """Train (or resume) and export. The lists are checked before Ray starts; then Ray is joined
    at ``address`` or started locally (a no-op when already connected)."""
    import ray
    import ray.data
    import torch
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from actors.models import resolve_model
    from cluster.runtime import connect

    cfg = cfg.model_copy(update={"out": cfg.out.expanduser().resolve(),
                                 "data": [d.expanduser().resolve() for d in cfg.data]})
    base_path = resolve_model(cfg.base, "embedder").resolve()
    cfg.out.mkdir(parents=True, exist_ok=True)
    (cfg.out / "train_config.json").write_text(cfg.model_dump_json(indent=2))  # resolved settings
    if cfg.preset:
        resolved = {k: getattr(cfg, k) for k in PRESETS[cfg.preset]}
        print(f"[synthrag] train retriever: preset {cfg.preset}: "
              + ", ".join(f"{k}={v}" for k, v in resolved.items()), flush=True)
    data = prepare_data(cfg)
    print(f"[synthrag] train retriever: {data['n_train']} train / {data['n_dev']} dev lists, "
          f"{data['mean_negatives']:.1f} negatives + {data['mean_false_negatives']:.1f} false "
          f"negatives (scope {cfg.fn_scope}) per list, loss {cfg.loss}", flush=True)
    # a local Ray needs a CPU beyond the training workers for Ray Data's read tasks
    need = cfg.workers * cfg.cpus_per_worker + 1
    connect(address, num_cpus=None if address else max(os.cpu_count() or 1, need))
    use_gpu = cfg.use_gpu
    if use_gpu is None:
        use_gpu = ray.cluster_resources().get("GPU", 0) >= cfg.workers and torch.cuda.is_available()
    storage = cfg.out / "ray"
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": json.loads(cfg.model_dump_json()), "base_path": str(base_path),
                           "n_train": data["n_train"], "n_dev": data["n_dev"]},
        scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu,
                                     resources_per_worker={"CPU": cfg.cpus_per_worker}),
        run_config=RunConfig(
            name=RUN_NAME, storage_path=str(storage),
            checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="best",
                                               checkpoint_score_order="max")),
        datasets={"train": ray.data.read_parquet(data["train"]),
                  "dev": ray.data.read_parquet(data["dev"])},
    )
    trainer.fit()
    return export_best(cfg, base_path, storage / RUN_NAME,
                       {"sources": data["sources"], "n_train": data["n_train"], "n_dev": data["n_dev"]})
