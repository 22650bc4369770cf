"""Group-by for stage code: a Ray Data shuffle where the data is big, the driver where it is small.

A Ray Data ``groupby(...).map_groups(...)`` costs seconds however few the rows (shuffle operators,
their tasks and actors; about 4 s each on 2 cores, 3-8 s with the default 200 partitions:
``benchmarks/bench_groups.py``). A stage that groups a few thousand rows spent most of its time
there. So :func:`group_map` runs the same group function on the driver, over one Arrow table,
below ``DRIVER_MAX_ROWS`` rows, and shuffles with partitions scaled to the data above it. Either way
the function sees every row of one key together, in one ``pa.Table``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import pyarrow as pa

# Rows a driver groups in well under a second of Arrow sorting; above it the shuffle pays off.
DRIVER_MAX_ROWS = 50_000


def partitions(n_rows: int) -> int:
    """Shuffle partitions scale with the data (many tiny partitions cost seconds on small inputs)."""
    return max(1, min(200, n_rows // 50_000 + 1))


def apply_groups(table: pa.Table, key: str, fn: Callable[..., pa.Table], schema: pa.Schema | None = None,
                 **kwargs: Any) -> pa.Table:
    """``fn(group, **kwargs)`` for every distinct ``key`` of ``table`` (groups in key order), on
    this process. ``schema`` is what an input with no rows gives (``fn`` never sees an empty
    group); without it, an empty input comes back as it is."""
    if table.num_rows == 0:
        return schema.empty_table() if schema is not None else table
    table = table.sort_by(key)
    keys = table.column(key).to_numpy(zero_copy_only=False)
    cuts = [0, *(np.flatnonzero(keys[1:] != keys[:-1]) + 1).tolist(), table.num_rows]
    parts = [fn(table.slice(a, b - a), **kwargs) for a, b in zip(cuts, cuts[1:])]
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def to_table(ds) -> pa.Table:
    """A (small) Ray dataset as one Arrow table on the driver."""
    import ray

    refs = ds.to_arrow_refs()
    tables = [t for t in ray.get(refs) if t.num_columns]
    return pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})


def group_map(ds, key: str, fn: Callable[..., pa.Table], *, n_rows: int, schema: pa.Schema | None = None,
              fn_kwargs: dict | None = None, driver_max_rows: int = DRIVER_MAX_ROWS):
    """``ds.groupby(key).map_groups(fn)``: an Arrow table computed on the driver when ``n_rows``
    (the input's size, or an upper bound) is at most ``driver_max_rows``, else a lazy Ray dataset
    shuffled into :func:`partitions` partitions. :meth:`Run.commit` takes either."""
    kwargs = fn_kwargs or {}
    if n_rows <= driver_max_rows:
        return apply_groups(to_table(ds), key, fn, schema, **kwargs)
    return ds.groupby(key, num_partitions=partitions(n_rows)).map_groups(fn, fn_kwargs=kwargs,
                                                                         batch_format="pyarrow")
