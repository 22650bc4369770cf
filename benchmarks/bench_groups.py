"""Group-by on small inputs: Ray Data's shuffle (default partitions, scaled partitions) next to the
driver path of ``pipelines.core.groups``, and the ingest dedupe both ways, on the same rows.

    .venv/bin/python benchmarks/bench_groups.py [--rows 8 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _first(group: pa.Table) -> pa.Table:
    return group.slice(0, 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, nargs="+", default=[8, 2000])
    args = ap.parse_args()
    import ray

    from cluster.runtime import connect
    from pipelines.core.groups import group_map
    from pipelines.stages.ingest import IngestConfig, dedupe_chunks, normalise

    connect(num_cpus=4)
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(500)]
    print(f"{'rows':>6}  {'what':<34}{'seconds':>8}  result")
    for n in args.rows:
        table = pa.table({"k": [i % max(1, n // 3) for i in range(n)], "v": list(range(n))})
        ds = ray.data.from_arrow(table)
        for label, fn in (
            ("ray groupby, default partitions", lambda: len(ds.groupby("k").map_groups(_first, batch_format="pyarrow").take_all())),
            ("ray groupby, scaled partitions", lambda: len(group_map(ds, "k", _first, n_rows=n, driver_max_rows=-1).take_all())),
            ("group_map (driver)", lambda: group_map(ds, "k", _first, n_rows=n).num_rows),
        ):
            t = time.perf_counter()
            out = fn()
            print(f"{n:>6}  {label:<34}{time.perf_counter() - t:>8.2f}  {out} groups")
        texts = [" ".join(rng.choice(vocab) for _ in range(80)) for _ in range(n)]
        texts[1::5] = [t[: len(t) // 2] for t in texts[0::5]][: len(texts[1::5])]  # contained copies
        chunks = ray.data.from_arrow(pa.table({"chunk_id": [f"c{i:06d}" for i in range(n)], "text": texts,
                                               "norm": [normalise(t) for t in texts]}))
        for label, limit in (("dedupe, Ray Data shuffles + join", -1), ("dedupe, driver", n)):
            t = time.perf_counter()
            out = dedupe_chunks(chunks, IngestConfig(), n, driver_max_rows=limit)
            rows = out.to_pylist() if isinstance(out, pa.Table) else out.take_all()
            dups = sum(r["reject_reason"] is not None for r in rows)
            print(f"{n:>6}  {label:<34}{time.perf_counter() - t:>8.2f}  {dups} duplicates")


if __name__ == "__main__":
    main()
