"""Warm LLM servers: one pool per run and model, shared by every LLM stage of the run.

A Ray Data actor pool lives as long as its dataset, so a run of nine LLM stages started nine
pools: each paid a worker process, the torch/transformers imports and the model load (4-5 s on
2 cores for the 135M model; minutes for a 70B model on vLLM) before its first row. Inside
:func:`warm`, :func:`actors.llm.llm_map` instead sends each batch, from a light Ray Data task,
to a long-lived :class:`LLMServer` actor that holds the engine. The server runs the batch
through the same :class:`~actors.llm.LLMActor` (prompt rendering, parsing, checks, retries,
rejects, crash journal), so a stage behaves identically either way; only who holds the model
changes.

- Servers are keyed by the settings that make an engine (model, engine, dtype, resources, ...);
  a stage with other sampling or retry settings reuses the same model.
- The pool grows with the work, one server per batch up to ``llm.concurrency[1]`` (at least
  ``concurrency[0]``), and never shrinks within the scope; it is killed when the scope ends.
  One model is warm at a time (a stage on another model frees the first one's servers), and
  the servers leave at least one of the cluster's CPUs to the stages' other tasks.
- A server that dies (segfault, OOM kill, a poison row) is restarted by Ray and the batch
  retried, as a Ray Data actor would be; the journal reruns the rows it held one by one.
- Servers reserve the CPUs/GPUs they compute on: a step that needs them for something else
  (training inside a run) calls :func:`release` first.
"""

from __future__ import annotations

import contextvars
import json
import random
from contextlib import contextmanager
from typing import Any, Iterator

import pyarrow as pa

# LLMConfig fields that only change how a stage uses the engine, not the engine itself
STAGE_FIELDS = {"batch_size", "concurrency", "max_retries", "best_of", "max_crashes", "retry_temperature", "seed",
                "max_tokens"}

_ACTIVE: contextvars.ContextVar["Pool | None"] = contextvars.ContextVar("synthrag_llm_pool", default=None)


class LLMServer:
    """A Ray actor holding one engine; :meth:`run` serves any stage's batch with it (``key``
    names one ``llm_map`` call: its prompt, check and journal are set up once per server)."""

    def __init__(self, llm: dict):
        from actors.llm import LLMConfig, make_engine

        self.engine = make_engine(LLMConfig.model_validate(llm))
        self.stages: dict[str, Any] = {}

    def run(self, key: str, spec: dict, batch: pa.Table) -> pa.Table:
        from actors.llm import LLMActor

        actor = self.stages.pop(key, None) or LLMActor(**spec, engine=self.engine)
        self.stages[key] = actor  # most recent last; a run has a few dozen LLM stages at most
        while len(self.stages) > 64:
            self.stages.pop(next(iter(self.stages)))
        return actor(batch)

    def ready(self) -> bool:
        return True


def engine_key(llm: dict) -> str:
    return json.dumps({k: v for k, v in llm.items() if k not in STAGE_FIELDS}, sort_keys=True, default=str)


class Pool:
    """The servers of one scope, per engine key."""

    def __init__(self):
        self.servers: dict[str, list] = {}

    def get(self, llm: dict, wanted: int) -> list:
        import ray

        from actors.llm import crash_retries

        key = engine_key(llm)
        if key not in self.servers:  # one model warm at a time: another model's servers go first
            self.release()
        have = self.servers.setdefault(key, [])
        lo, hi = llm["concurrency"]
        n = max(lo, min(hi, wanted))
        if llm["num_cpus"] > 0:  # held between stages: leave a CPU for the stages' other tasks
            n = min(n, max(1, int((ray.cluster_resources().get("CPU", 1) - 1) // llm["num_cpus"])))
        if len(have) < n:
            cls = ray.remote(LLMServer).options(
                num_cpus=llm["num_cpus"], num_gpus=llm["num_gpus"] or None,
                # a dead server is restarted and its batch retried; the crash journal, not a
                # restart budget, bounds how often one row is retried
                # (servers outlive a stage: sized for batches of up to 32 rows or the first stage's)
                max_restarts=-1, max_task_retries=crash_retries(max(32, llm["batch_size"]), llm["max_crashes"]))
            new = [cls.remote(llm) for _ in range(n - len(have))]
            ray.get([s.ready.remote() for s in new])  # the model loads once, here
            have.extend(new)
        return have[:n] if n < len(have) else have

    def release(self) -> None:
        import ray

        for servers in self.servers.values():
            for s in servers:
                ray.kill(s)
        self.servers.clear()


@contextmanager
def warm() -> Iterator[Pool]:
    """Within this block, LLM stages of this process share warm servers (one pool per model);
    they are killed when it ends. Nested blocks share the outer pool."""
    outer = _ACTIVE.get()
    if outer is not None:
        yield outer
        return
    pool = Pool()
    token = _ACTIVE.set(pool)
    try:
        yield pool
    finally:
        _ACTIVE.reset(token)
        pool.release()


def active() -> Pool | None:
    return _ACTIVE.get()


def release() -> None:
    """Free the active scope's servers (their CPUs/GPUs) now; the next LLM stage starts new ones."""
    pool = _ACTIVE.get()
    if pool is not None:
        pool.release()


def serve_batch(batch: pa.Table, servers: list, key: str, spec: dict) -> pa.Table:
    """A Ray Data task: hand ``batch`` to one of the warm servers and wait for its rows."""
    import ray

    return ray.get(servers[random.randrange(len(servers))].run.remote(key, spec, batch))
