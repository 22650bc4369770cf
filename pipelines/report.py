"""``RUN/report.html``: one self-contained page that says what a run did.

Sections: a summary (status, command, table sizes, total time), the funnel of every stage
(rows in, kept, rejected by reason, as a table and a stacked bar chart), time per stage, the
distribution of every score found in the run's tables (judge scores, teacher scores, utilities:
numeric columns whose name says score/utility/judge/rating, and numeric fields of the examples'
``meta`` JSON), a sample of examples with their cited sentences highlighted inside the source
chunk, a sample of rejected rows per stage with reason and detail, and the run's config and
package versions.

Tables are read with ``pyarrow.dataset`` and only ever sampled: every read is bounded by
:class:`ReportConfig` (a few rows from each file, ``head`` stops early), except the id lookups
of the cited chunks and sentences, which stream the table with a filter and keep only matches.
Plots are plotly; plotly.js is embedded once, so the page needs no network.

Usage: ``synthrag report RUN`` or :func:`write_report` at the end of a run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from markupsafe import Markup, escape
from pydantic import BaseModel, Field

NOT_TABLES = {"rejects", "exports"}
SCORE_NAME = re.compile(r"score|utilit|judge|rating|grade|faithful|relevan|critique", re.I)
TEXT_COLUMNS = ("query", "text", "answer", "name", "title", "sql", "positive")


class ReportConfig(BaseModel):
    """Bounds on what the report reads and shows."""

    examples: int = Field(12, ge=0, description="examples shown with their citations")
    rejects: int = Field(5, ge=0, description="rejected rows shown per stage")
    score_rows: int = Field(20_000, ge=10, description="rows sampled per table for score plots")
    example_pool: int = Field(400, ge=1, description="examples read to choose the shown ones from")
    max_score_plots: int = Field(16, ge=1)


# ---------------------------------------------------------------------------- reading

def _dataset(path: Path) -> pads.Dataset | None:
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith("."))
    return pads.dataset(files, format="parquet") if files else None


def table_dirs(run: Path) -> dict[str, Path]:
    """The run's tables: top-level folders holding Parquet files (not rejects or exports)."""
    out = {}
    for p in sorted(run.iterdir()):
        if (p.is_dir() and p.name not in NOT_TABLES and not p.name.startswith(".")
                and not p.name.endswith(".tmp") and next(p.rglob("*.parquet"), None)):
            out[p.name] = p
    return out


def sample(ds: pads.Dataset, columns: list[str], n: int) -> pa.Table:
    """Up to ``n`` rows spread over the dataset's files (each file read only as far as needed)."""
    frags = list(ds.get_fragments())
    if not frags or n <= 0:
        return ds.schema.empty_table().select(columns)
    per = max(1, math.ceil(n / len(frags)))
    parts, got = [], 0
    for frag in frags:
        t = frag.head(min(per, n - got), columns=columns)
        parts.append(t)
        got += t.num_rows
        if got >= n:
            break
    return pa.concat_tables(parts).combine_chunks()


def lookup(ds: pads.Dataset, key: str, ids: set[str], columns: list[str]) -> dict[str, dict]:
    """Rows whose ``key`` is in ``ids`` (a filtered scan: memory holds only the matches)."""
    if not ids:
        return {}
    cols = [c for c in columns if c in ds.schema.names]
    t = ds.to_table(columns=cols, filter=pc.field(key).isin(sorted(ids)))
    return {r[key]: r for r in t.to_pylist()}


# ---------------------------------------------------------------------------- scores

def _numeric(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t)


def _flatten(prefix: str, obj: Any, out: dict[str, list[float]]) -> None:
    if isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(obj, bool):
        return
    elif isinstance(obj, (int, float)) and SCORE_NAME.search(prefix) and math.isfinite(obj):
        out[prefix].append(float(obj))
    elif isinstance(obj, list) and obj and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in obj):
        if SCORE_NAME.search(prefix):
            out[prefix].extend(float(x) for x in obj if math.isfinite(x))


def score_series(run: Path, tables: dict[str, Path], cfg: ReportConfig) -> dict[str, np.ndarray]:
    """``"table.column" -> values`` for every score-like numeric column (lists flattened)."""
    found: dict[str, np.ndarray] = {}
    for name, path in tables.items():
        ds = _dataset(path)
        if ds is None:
            continue
        cols = [f.name for f in ds.schema if SCORE_NAME.search(f.name) and (
            _numeric(f.type) or (pa.types.is_list(f.type) and _numeric(f.type.value_type)))]
        has_meta = "meta" in ds.schema.names and pa.types.is_string(ds.schema.field("meta").type)
        if not cols and not has_meta:
            continue
        t = sample(ds, cols + (["meta"] if has_meta else []), cfg.score_rows)
        for c in cols:
            col = t.column(c)
            if pa.types.is_list(col.type):
                col = pc.list_flatten(col)
            vals = np.asarray(col.drop_null().to_numpy(zero_copy_only=False), dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            if vals.size:
                found[f"{name}.{c}"] = vals
        if has_meta:
            meta: dict[str, list[float]] = defaultdict(list)
            for s in t.column("meta").drop_null().to_pylist():
                try:
                    _flatten("", json.loads(s), meta)
                except (ValueError, TypeError):
                    continue
            for k, v in meta.items():
                if v:
                    found[f"{name}.meta.{k}"] = np.asarray(v, dtype=np.float64)
    return found


# ---------------------------------------------------------------------------- examples

@dataclass
class Source:
    chunk_id: str
    title: str | None
    html: Markup
    cited: int
    missing: list[str] = field(default_factory=list)


@dataclass
class ShownExample:
    row: dict
    sources: list[Source]


def highlight(text: str, spans: list[tuple[int, int, str]]) -> Markup:
    """``text`` escaped, with each (start, end, sentence_id) span wrapped in ``<mark>``."""
    spans = sorted((s, e, sid) for s, e, sid in spans if 0 <= s < e <= len(text))
    out, pos = [], 0
    for s, e, sid in spans:
        if s < pos:  # overlapping citation: extend the previous mark instead of nesting
            s = pos
            if s >= e:
                continue
        out.append(escape(text[pos:s]))
        out.append(Markup('<mark title="{}">{}</mark>').format(sid, text[s:e]))
        pos = e
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def _find(haystack: str, needle: str) -> tuple[int, int] | None:
    if not needle:
        return None
    i = haystack.find(needle)
    if i >= 0:
        return i, i + len(needle)
    # tolerate whitespace differences (sentence text normalised, chunk text not)
    words = needle.split()
    if not words:
        return None
    m = re.search(r"\s+".join(map(re.escape, words)), haystack)
    return (m.start(), m.end()) if m else None


def sentence_span(chunk: dict, sid: str, sentence: dict | None) -> tuple[int, int] | None:
    """Where sentence ``sid`` sits in ``chunk['text']``: the chunk's own spans if it has them,
    else the document offsets of both, else the sentence text found in the chunk text."""
    text = chunk.get("text") or ""
    ids, spans = chunk.get("sentences") or [], chunk.get("sentence_spans") or []
    if sid in ids and len(spans) == len(ids):
        sp = spans[ids.index(sid)]
        if sp and 0 <= sp["start"] < sp["end"] <= len(text):
            return sp["start"], sp["end"]
    if sentence is None:
        return None
    s_text = sentence.get("text") or ""
    if chunk.get("char_start") is not None and sentence.get("char_start") is not None:
        a = sentence["char_start"] - chunk["char_start"]
        b = a + len(s_text)
        if 0 <= a < b <= len(text) and text[a:b] == s_text:
            return a, b
    return _find(text, s_text)


def pick_examples(ds: pads.Dataset, cfg: ReportConfig) -> list[dict]:
    """Up to ``cfg.examples`` examples, alternating over (method, task, variant kind), cited
    ones first."""
    want = ["example_id", "method", "task", "query", "answer", "citations", "hop",
            "variant_kind", "model", "stage"]
    cols = [c for c in want if c in ds.schema.names]
    rows = sample(ds, cols, cfg.example_pool).to_pylist()
    rows.sort(key=lambda r: not r.get("citations"))
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r.get("method"), r.get("task"), r.get("variant_kind"))].append(r)
    picked: list[dict] = []
    while len(picked) < cfg.examples and any(groups.values()):
        for key in list(groups):
            if groups[key] and len(picked) < cfg.examples:
                picked.append(groups[key].pop(0))
    return picked


def examples_with_sources(tables: dict[str, Path], cfg: ReportConfig) -> list[ShownExample]:
    ex_ds = _dataset(tables["examples"]) if "examples" in tables else None
    if ex_ds is None or cfg.examples == 0:
        return []
    picked = pick_examples(ex_ds, cfg)
    cites = [(c.get("chunk_id"), c.get("sentence_id"))
             for r in picked for c in (r.get("citations") or [])]
    sent_ds = _dataset(tables["sentences"]) if "sentences" in tables else None
    chunk_ds = _dataset(tables["chunks"]) if "chunks" in tables else None
    sentences = lookup(sent_ds, "sentence_id", {s for _, s in cites if s},
                       ["sentence_id", "chunk_id", "text", "char_start", "char_end"]) \
        if sent_ds is not None else {}
    chunk_ids = {c for c, _ in cites if c} | {s["chunk_id"] for s in sentences.values()}
    chunks = lookup(chunk_ds, "chunk_id", chunk_ids,
                    ["chunk_id", "title", "text", "char_start", "sentences", "sentence_spans"]) \
        if chunk_ds is not None else {}
    shown = []
    for r in picked:
        by_chunk: dict[str, list[str]] = defaultdict(list)
        for c in r.get("citations") or []:
            sid = c.get("sentence_id")
            cid = c.get("chunk_id") or (sentences.get(sid) or {}).get("chunk_id")
            if cid and sid not in by_chunk[cid]:
                by_chunk[cid].append(sid)
        sources = []
        for cid, sids in by_chunk.items():
            chunk = chunks.get(cid)
            if chunk is None:
                sources.append(Source(cid, None, Markup("<em>chunk not found in this run</em>"),
                                      0, list(sids)))
                continue
            spans, missing = [], []
            for sid in sids:
                sp = sentence_span(chunk, sid, sentences.get(sid))
                if sp:
                    spans.append((sp[0], sp[1], sid))
                else:
                    missing.append(sid)
            sources.append(Source(cid, chunk.get("title"), highlight(chunk["text"], spans),
                                  len(spans), missing))
        shown.append(ShownExample(r, sources))
    return shown


# ---------------------------------------------------------------------------- rejects

def reject_samples(run: Path, cfg: ReportConfig) -> dict[str, list[dict]]:
    """A few rejected rows per stage: reason, detail and the row's main text."""
    root = run / "rejects"
    out: dict[str, list[dict]] = {}
    if not root.is_dir() or cfg.rejects == 0:
        return out
    for stage_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        ds = _dataset(stage_dir)
        if ds is None:
            continue
        names = ds.schema.names
        text_col = next((c for c in TEXT_COLUMNS if c in names
                         and pa.types.is_string(ds.schema.field(c).type)), None)
        cols = [c for c in ("reject_reason", "reject_detail") if c in names]
        id_col = next((c for c in names if c.endswith("_id")), None)
        cols += [c for c in (id_col, text_col) if c and c not in cols]
        rows = []
        # one of each reason first, so rare reasons are seen too
        t = sample(ds, cols, max(cfg.rejects * 20, 100))
        seen: set = set()
        for r in t.to_pylist():
            if r.get("reject_reason") not in seen:
                seen.add(r.get("reject_reason"))
                rows.append(r)
        for r in t.to_pylist():
            if len(rows) >= cfg.rejects:
                break
            if r not in rows:
                rows.append(r)
        out[stage_dir.name] = [{
            "reason": r.get("reject_reason"),
            "detail": _clip(r.get("reject_detail"), 400),
            "id": r.get(id_col) if id_col else None,
            "text": _clip(r.get(text_col), 300) if text_col else None,
        } for r in rows[:max(cfg.rejects, 1)]]
    return out


def _clip(s: Any, n: int) -> str | None:
    if s is None:
        return None
    s = str(s)
    return s if len(s) <= n else s[: n - 1] + "…"


# ---------------------------------------------------------------------------- plots

PALETTE = ["#2563eb", "#dc2626", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d",
           "#ea580c", "#4f46e5", "#be123c"]
_LAYOUT = dict(template="plotly_white", margin=dict(l=10, r=10, t=40, b=10),
               font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12))


def _html(fig) -> Markup:
    return Markup(fig.to_html(full_html=False, include_plotlyjs=False,
                              config={"displaylogo": False, "responsive": True}))


def funnel_figure(stages: list[dict]):
    import plotly.graph_objects as go

    names = [s["name"] for s in stages][::-1]  # first stage on top
    fig = go.Figure()
    fig.add_bar(y=names, x=[s.get("out", 0) for s in stages][::-1], name="kept",
                orientation="h", marker_color="#16a34a")
    reasons = sorted({r for s in stages for r in (s.get("rejected") or {})})
    for i, reason in enumerate(reasons):
        fig.add_bar(y=names, x=[(s.get("rejected") or {}).get(reason, 0) for s in stages][::-1],
                    name=f"rejected: {reason}", orientation="h",
                    marker_color=PALETTE[i % len(PALETTE)])
    fig.update_layout(barmode="stack", height=max(240, 90 + 38 * len(stages)),
                      legend=dict(orientation="h", yanchor="bottom", y=1.02, x=0), **_LAYOUT)
    fig.update_xaxes(title="rows")
    return fig


def timing_figure(stages: list[dict]):
    import plotly.graph_objects as go

    names = [s["name"] for s in stages][::-1]
    secs = [float(s.get("seconds") or 0) for s in stages][::-1]
    fig = go.Figure(go.Bar(y=names, x=secs, orientation="h", marker_color="#2563eb",
                           text=[_fmt_seconds(x) for x in secs], textposition="auto"))
    fig.update_layout(height=max(200, 70 + 32 * len(stages)), **_LAYOUT)
    fig.update_xaxes(title="seconds")
    return fig


def score_figures(series: dict[str, np.ndarray], cfg: ReportConfig) -> list[tuple[str, str, Markup]]:
    """One small histogram per score series: (name, summary line, plot). Values are binned here,
    so the page carries 30 bars, not the sampled values."""
    import plotly.graph_objects as go

    out = []
    for i, (name, vals) in enumerate(sorted(series.items())[: cfg.max_score_plots]):
        color = PALETTE[i % len(PALETTE)]
        distinct = np.unique(vals)
        if distinct.size <= 12 and np.all(distinct == np.round(distinct)):
            # a rating scale (1-5, 1-4, 0/1): one bar per value
            counts = [int((vals == d).sum()) for d in distinct]
            fig = go.Figure(go.Bar(x=[str(int(d)) for d in distinct], y=counts, marker_color=color))
            fig.update_xaxes(type="category")
        else:
            counts, edges = np.histogram(vals, bins=30)
            fig = go.Figure(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                                   marker_color=color, marker_line_width=0))
        fig.update_layout(height=230, bargap=0.08, **{**_LAYOUT, "margin": dict(l=10, r=10, t=10, b=10)})
        fig.update_yaxes(title="rows")
        summary = (f"n={vals.size:,} · mean {vals.mean():.3g} · median {np.median(vals):.3g} · "
                   f"min {vals.min():.3g} · max {vals.max():.3g}")
        html = Markup(fig.to_html(full_html=False, include_plotlyjs=False,
                                  config={"displayModeBar": False, "responsive": True}))
        out.append((name, summary, html))
    return out


def _fmt_seconds(x: float) -> str:
    if x < 60:
        return f"{x:.1f} s"
    if x < 3600:
        return f"{x / 60:.1f} min"
    return f"{x / 3600:.2f} h"


# ---------------------------------------------------------------------------- page

def _table_sizes(tables: dict[str, Path]) -> dict[str, int]:
    out = {}
    for name, path in tables.items():
        ds = _dataset(path)
        out[name] = ds.count_rows() if ds is not None else 0  # from Parquet footers
    return out


def _section(warnings: list[str], name: str, fn, default):
    """Build one section; a failure becomes a warning on the page, never a failed run."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the report must not take a finished run down
        warnings.append(f"{name}: {type(e).__name__}: {e}")
        return default


def csg_tables(run: Path) -> list[tuple[str, str, dict]]:
    """``synthrag eval generator`` results saved in ``RUN/evals/``: CSG per completeness level."""
    out = []
    for path in sorted((run / "evals").glob("csg_*.json")):
        s = json.loads(path.read_text())
        levels = {"all": s, **(s.get("by_level") or {})}
        cols = ("examples", "c_comp", "c_under", "c_cite", "csg")
        out.append((f"CSG of {Path(s.get('answers') or path.stem).name} ({s.get('judge')} judge)", "level",
                    {k: {c: v.get(c) for c in cols} for k, v in levels.items()}))
    return out


def build_context(run: Path, cfg: ReportConfig) -> dict:
    run = Path(run)
    mpath = run / "manifest.json"
    manifest = json.loads(mpath.read_text()) if mpath.exists() else {}
    stages = [s for s in manifest.get("stages") or [] if isinstance(s, dict) and "name" in s]
    warnings: list[str] = []
    tables = _section(warnings, "tables", lambda: table_dirs(run), {})
    series = _section(warnings, "scores", lambda: score_series(run, tables, cfg), {})
    return {
        "run_name": run.resolve().name,
        "manifest": manifest,
        "stages": stages,
        "total_seconds": sum(float(s.get("seconds") or 0) for s in stages),
        "sizes": _section(warnings, "table sizes", lambda: _table_sizes(tables), {}),
        "funnel_plot": _html(funnel_figure(stages)) if stages else None,
        "timing_plot": _html(timing_figure(stages)) if stages else None,
        "score_plots": _section(warnings, "score plots", lambda: score_figures(series, cfg), []),
        "examples": _section(warnings, "examples",
                             lambda: examples_with_sources(tables, cfg), []),
        "rejects": _section(warnings, "rejects", lambda: reject_samples(run, cfg), {}),
        "evaluations": [(s["name"], "model", s["metrics"]) for s in stages
                        if isinstance(s.get("metrics"), dict) and all(isinstance(v, dict) for v in s["metrics"].values())]
                       + _section(warnings, "generator evaluations", lambda: csg_tables(run), []),
        "config_json": json.dumps(manifest.get("config", {}), indent=2, default=str),
        "fmt_seconds": _fmt_seconds,
        "warnings": warnings,
    }


def render(run: str | Path, config: ReportConfig | None = None) -> str:
    """The report page of ``run`` as one HTML string (plotly.js inlined)."""
    import jinja2
    from plotly.offline import get_plotlyjs

    ctx = build_context(Path(run), config or ReportConfig())
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(TEMPLATE).render(plotly_js=Markup(get_plotlyjs()), css=Markup(CSS),
                                            **ctx)


def write_report(run_dir: str | Path, *, out: str | Path | None = None,
                 config: ReportConfig | None = None) -> Path:
    """Write ``run_dir/report.html`` (or ``out``) atomically; returns its path."""
    run_dir = Path(run_dir)
    path = Path(out) if out is not None else run_dir / "report.html"
    html = render(run_dir, config)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, path)
    return path


CSS = """
:root { --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --bg:#f8fafc; --card:#fff;
        --accent:#2563eb; --ok:#16a34a; --bad:#dc2626; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { background:#0f172a; color:#f8fafc; padding:22px 32px; }
header h1 { margin:0 0 4px; font-size:22px; font-weight:600; }
header .sub { color:#cbd5e1; font-size:13px; }
header code { color:#e2e8f0; background:#1e293b; padding:1px 6px; border-radius:4px; }
nav { position:sticky; top:0; z-index:5; background:#fff; border-bottom:1px solid var(--line);
      padding:8px 32px; font-size:13px; }
nav a { color:var(--accent); text-decoration:none; margin-right:18px; }
main { max-width:1180px; margin:0 auto; padding:20px 32px 60px; }
section { background:var(--card); border:1px solid var(--line); border-radius:10px;
          padding:18px 22px; margin:18px 0; }
section.warn { border-color:#fca5a5; background:#fef2f2; }
h2 { font-size:17px; margin:0 0 12px; }
h3 { font-size:14px; margin:14px 0 6px; }
.muted { color:var(--muted); }
.kpis { display:flex; flex-wrap:wrap; gap:12px; }
.kpi { flex:1 1 150px; border:1px solid var(--line); border-radius:8px; padding:10px 14px; }
.kpi .v { font-size:20px; font-weight:600; } .kpi .k { color:var(--muted); font-size:12px; }
table { border-collapse:collapse; width:100%; font-size:13px; }
th, td { text-align:left; padding:6px 10px; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; background:#f9fafb; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
tr:hover td { background:#f9fafb; }
.badge { display:inline-block; padding:1px 8px; border-radius:999px; font-size:12px;
         background:#eef2ff; color:#3730a3; margin-right:4px; }
.badge.reason { background:#fef2f2; color:#991b1b; }
.badge.ok { background:#f0fdf4; color:#166534; }
.badge.bad { background:#fef2f2; color:#991b1b; }
.plot { border:1px solid var(--line); border-radius:8px; padding:8px 10px 0; }
.plot .pt { font-weight:600; font-size:13px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.plot .ps { font-size:12px; }
.grid { display:grid; grid-template-columns:repeat(auto-fill, minmax(340px, 1fr)); gap:12px; }
.example { border:1px solid var(--line); border-radius:8px; padding:12px 16px; margin:12px 0; }
.example .q { font-weight:600; font-size:15px; }
.example .a { margin:6px 0 8px; }
.source { background:#fafaf9; border-left:3px solid #d6d3d1; padding:8px 12px; margin:8px 0;
          white-space:pre-wrap; font-size:13px; }
.source .cid { display:block; color:var(--muted); font-size:11px; margin-bottom:4px;
               white-space:normal; }
mark { background:#fde68a; padding:0 1px; border-radius:2px; }
pre { background:#0f172a; color:#e2e8f0; padding:12px; border-radius:8px; overflow:auto;
      font-size:12px; }
details summary { cursor:pointer; color:var(--accent); }
.detail { font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size:12px;
          color:#374151; word-break:break-word; }
"""

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>synthrag report · {{ run_name }}</title>
<style>{{ css }}</style>
<script type="text/javascript">{{ plotly_js }}</script>
</head><body>
<header>
  <h1>synthrag run · {{ run_name }}</h1>
  <div class="sub">
    status <b>{{ manifest.get("status", "unknown") }}</b>
    {% if manifest.get("command") %} · command <code>{{ manifest.command }}</code>{% endif %}
    {% if manifest.get("created") %} · created {{ manifest.created }}{% endif %}
    {% if manifest.get("updated") %} · updated {{ manifest.updated }}{% endif %}
    {% if manifest.get("host") %} · host {{ manifest.host }}{% endif %}
  </div>
</header>
<nav><a href="#summary">Summary</a><a href="#funnel">Funnel</a><a href="#timings">Timings</a>
<a href="#scores">Scores</a><a href="#examples">Examples</a><a href="#rejects">Rejects</a>
<a href="#config">Config</a></nav>
<main>
{% if warnings %}<section class="warn"><h2>Report warnings</h2><ul>
  {% for w in warnings %}<li class="detail">{{ w }}</li>{% endfor %}</ul></section>{% endif %}
<section id="summary"><h2>Summary</h2>
  <div class="kpis">
    <div class="kpi"><div class="v">{{ stages|length }}</div><div class="k">stages</div></div>
    <div class="kpi"><div class="v">{{ fmt_seconds(total_seconds) }}</div><div class="k">stage time</div></div>
    {% for name, n in sizes.items() %}
    <div class="kpi"><div class="v">{{ "{:,}".format(n) }}</div><div class="k">{{ name }}</div></div>
    {% endfor %}
  </div>
  {% for stage, row_label, models in evaluations %}
  <h3>{{ stage }}</h3>
  {% set keys = (models.values()|first).keys()|list %}
  <table><tr><th>{{ row_label }}</th>{% for k in keys %}<th class="num">{{ k }}</th>{% endfor %}</tr>
  {% for name, m in models.items() %}<tr><td>{{ name }}</td>{% for k in keys %}<td class="num">{{ m.get(k) }}</td>{% endfor %}</tr>{% endfor %}
  </table>
  {% endfor %}
</section>

<section id="funnel"><h2>Funnel</h2>
{% if stages %}
  <table>
    <tr><th>stage</th><th>status</th><th class="num">in</th><th class="num">kept</th>
        <th class="num">rejected</th><th>reject reasons</th><th class="num">time</th><th>LLM</th></tr>
    {% for s in stages %}
    {% set rej = s.get("rejected") or {} %}
    <tr><td><b>{{ s.name }}</b></td>
      <td><span class="badge {{ 'ok' if s.get('status') == 'done' else 'bad' }}">{{ s.get("status", "") }}</span></td>
      <td class="num">{{ "{:,}".format(s.get("in", 0)) }}</td>
      <td class="num">{{ "{:,}".format(s.get("out", 0)) }}</td>
      <td class="num">{{ "{:,}".format(rej.values()|sum) }}</td>
      <td>{% for r, n in rej.items() %}<span class="badge reason">{{ r }}: {{ "{:,}".format(n) }}</span>{% else %}<span class="muted">none</span>{% endfor %}</td>
      <td class="num">{{ fmt_seconds(s.get("seconds") or 0) }}</td>
      <td class="muted">{% if s.get("llm") %}{% set c = s["llm"] %}{{ "{:,}".format(c.calls) }} calls
        ({{ c.retries }} retries) · {{ "{:,}".format(c.prompt_tokens) }} prompt tok,
        {{ "{:.0%}".format(c.cached_prompt_tokens / c.prompt_tokens if c.prompt_tokens else 0) }} reused ·
        {{ "{:,}".format(c.generated_tokens) }} generated · {{ "%.2f"|format(c.seconds_per_row) }} s/row{% endif %}</td></tr>
    {% endfor %}
  </table>
  {{ funnel_plot }}
{% else %}<p class="muted">The manifest records no stages.</p>{% endif %}
</section>

<section id="timings"><h2>Timings</h2>
{% if timing_plot %}{{ timing_plot }}{% else %}<p class="muted">No timings recorded.</p>{% endif %}
</section>

<section id="scores"><h2>Score distributions</h2>
{% if score_plots %}
  <p class="muted">Sampled rows of every table column (and <code>meta</code> field) whose name marks it as a score.</p>
  <div class="grid">{% for name, summary, plot in score_plots %}
    <div class="plot"><div class="pt">{{ name }}</div><div class="muted ps">{{ summary }}</div>{{ plot }}</div>
  {% endfor %}</div>
{% else %}<p class="muted">No score columns in this run's tables.</p>{% endif %}
</section>

<section id="examples"><h2>Examples</h2>
{% if examples %}
  <p class="muted">A sample across methods and tasks; cited sentences are <mark>highlighted</mark> in their source chunk.</p>
  {% for e in examples %}
  <div class="example">
    <div>{% for k in ["method", "task", "variant_kind"] %}{% if e.row.get(k) %}<span class="badge">{{ e.row[k] }}</span>{% endif %}{% endfor %}
      {% if e.row.get("hop") %}<span class="badge">{{ e.row.hop }}-hop</span>{% endif %}
      <span class="muted" style="font-size:11px">{{ e.row.example_id }}</span></div>
    <div class="q">{{ e.row.get("query") }}</div>
    <div class="a"><span class="muted">Answer:</span> {{ e.row.get("answer") if e.row.get("answer") is not none else "—" }}</div>
    {% for src in e.sources %}
    <div class="source"><span class="cid">chunk {{ src.chunk_id }}{% if src.title %} · {{ src.title }}{% endif %} · {{ src.cited }} cited sentence{{ "" if src.cited == 1 else "s" }}{% if src.missing %} · not located: {{ src.missing|join(", ") }}{% endif %}</span>{{ src.html }}</div>
    {% else %}<div class="muted">No citations.</div>{% endfor %}
  </div>
  {% endfor %}
{% else %}<p class="muted">No examples table in this run.</p>{% endif %}
</section>

<section id="rejects"><h2>Rejected rows</h2>
{% if rejects %}
  {% for stage, rows in rejects.items() %}
  <h3>{{ stage }}</h3>
  <table><tr><th>reason</th><th>row</th><th>detail</th></tr>
  {% for r in rows %}
    <tr><td><span class="badge reason">{{ r.reason }}</span></td>
      <td>{% if r.id %}<div class="muted" style="font-size:11px">{{ r.id }}</div>{% endif %}{{ r.text or "" }}</td>
      <td class="detail">{{ r.detail or "" }}</td></tr>
  {% endfor %}</table>
  {% endfor %}
{% else %}<p class="muted">Nothing was rejected.</p>{% endif %}
</section>

<section id="config"><h2>Config and versions</h2>
  <details><summary>config</summary><pre>{{ config_json }}</pre></details>
  {% if manifest.get("versions") %}
  <table style="margin-top:10px">{% for k, v in manifest.versions.items() %}
    <tr><td>{{ k }}</td><td>{{ v }}</td></tr>{% endfor %}</table>
  {% endif %}
</section>
</main></body></html>
"""
