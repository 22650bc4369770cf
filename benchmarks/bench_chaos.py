"""Chaos: a RAGSynth run while LLM servers and embedder actors are SIGKILLed, and once the driver.

Makes a corpus of the first ``--docs`` SciFact abstracts (a few hundred chunks: more than the 256
that ``embed`` does on the driver, so the embedder is an actor pool that can be killed), starts a
private Ray head for each run (``ray start --head --block`` in its own session, free ports, a
private temp dir: nobody else's Ray is touched, and it is always stopped), then

1. clean: ``synthrag run ragsynth --corpus C --out W/clean --config CONFIG --limit L --address A``,
   timed (``--clean-runs 2`` runs it twice, to see whether the outputs are deterministic);
2. chaos: the same command into ``W/chaos`` while a bounded loop SIGKILLs a random alive actor
   whose class is an LLM server or an embedder (``--targets``; at most ``--max-kills``, one every
   ``--kill-every`` seconds, the least-killed class first, one kill kept for each class not killed
   yet: the embedder pool lives only ~15-40 s near the end) and, once, the driver itself (by
   default when the first LLM stage has staged rows, ``--driver-kill``); the same command is then
   started again (resume) and runs to the end, actor kills going on. A driver that fails on its
   own is rerun too (``--max-restarts``), and the failure is reported as a problem;
3. compares the two run directories: rows per table (clean = expected, chaos = written), duplicate
   keys and duplicate rows in chaos, every stage's funnel (in == out + rejected), each row-level
   stage's kept + rejected keys against its ``in``, the stage the driver died in (rows it had staged,
   rows the resume kept, rows recomputed), and wall time against the clean run.

    .venv/bin/python benchmarks/bench_chaos.py --workdir /tmp/chaos          # ~15-25 min on 2 cores
    .venv/bin/python benchmarks/bench_chaos.py --workdir /tmp/chaos --reuse-clean --kill-every 60

Prints one table and writes ``W/chaos.json``. Exit status 1 when the chaos run failed (also once,
then rerun), timed out, duplicated rows, or left a funnel or a row-level stage that does not add
up. Rows the chaos run lacks are reported (with how many are ``actor_crashed`` rejects), not failed:
a row in flight during ``llm.max_crashes`` worker deaths is rejected by design.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from cluster.local_head import VENV_BIN, private_head

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"

# row-level stages (llm_stage and embed): stage -> (table of kept rows, key column)
STAGE_TABLES = {
    "ragsynth_clues": ("ragsynth_clues", "chunk_id"),
    "ragsynth_qa": ("ragsynth_qa", "chunk_id"),
    "ragsynth_entities_llm": ("ragsynth_llm_entities", "chunk_id"),
    "ragsynth_multihop": ("ragsynth_multihop_qa", "bridge_id"),
    "ragsynth_single_doc_scores": ("ragsynth_single_doc_scores", "score_key"),
    "ragsynth_rewrite": ("ragsynth_rewrite_qa", "rewrite_key"),
    "ragsynth_rewrite_scores": ("ragsynth_rewrite_scores", "score_key"),
    "ragsynth_variants": ("ragsynth_variant_qa", "variant_key"),
    "ragsynth_variant_answers": ("ragsynth_variant_answers", "variant_key"),
    "querygen_generate": ("querygen_queries", "gen_key"),
    "embed": ("embeddings", "chunk_id"),
}
# the id column of the shared tables (pipelines/core/schema.py) and of the other stage tables
TABLE_KEYS = {"documents": "doc_id", "chunks": "chunk_id", "sentences": "sentence_id",
              "examples": "example_id", "retrieval_lists": "query_id", "embeddings": "chunk_id",
              **{t: k for t, k in STAGE_TABLES.values()}}
# columns that differ between two computations of the same row (engine seconds; prompt tokens served
# from a reused prefix, which depends on what else was in the batch): left out of row comparisons
VOLATILE = {"llm_seconds", "llm_cached_tokens"}
DEFAULT_TARGETS = "LLMServer,LLMActor,Embedder"


# --------------------------------------------------------------------------- corpus and Ray head
def make_corpus(workdir: Path, docs: int) -> Path:
    out = workdir / f"scifact_{docs}.jsonl"
    with open(SHARED / "scifact" / "corpus.jsonl") as f:
        lines = [next(f) for _ in range(docs)]
    out.write_text("".join(lines))
    return out


def ray_env() -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", SYNTHRAG_PROGRESS="0",
               PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("RAY_ADDRESS", None)
    return env


def ray_head(num_cpus: int, log_dir: Path):
    """A private Ray head with the dashboard (the state API lists actors through it); yields
    (GCS address, dashboard URL)."""
    return private_head(num_cpus, log_dir / "ray-start.log", ray_env(), prefix="srchaos-", timeout_s=180)


# --------------------------------------------------------------------------- the run and its kills
def synthrag_cmd(args, corpus: Path, out: Path, address: str) -> list[str]:
    cmd = [str(VENV_BIN / "synthrag"), "run", args.method, "--corpus", str(corpus), "--out", str(out),
           "--config", str(args.config), "--address", address]
    if args.limit:
        cmd += ["--limit", str(args.limit)]
    for s in args.sets:
        cmd += ["--set", s]
    return cmd


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    f = open(log, "a")
    f.write(f"\n$ {' '.join(cmd)}\n")
    f.flush()
    # its own session: a driver kill takes the driver's process group and nothing else
    return subprocess.Popen(cmd, cwd=REPO, env=ray_env(), stdout=f, stderr=subprocess.STDOUT,
                            start_new_session=True)


def killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except (OSError, ValueError):
        return None


def running_stage(out: Path) -> str | None:
    m = manifest(out)
    if not m:
        return None
    running = [s["name"] for s in m.get("stages", []) if s.get("status") == "running"]
    return running[-1] if running else None


def staged_rows(out: Path, stage: str) -> tuple[int, int, set]:
    """(complete staged files, rows in them, their keys) of ``stage``'s staging folder."""
    import pyarrow.parquet as pq

    folder = out / ".staging" / stage
    files = rows = 0
    keys: set = set()
    key = STAGE_TABLES.get(stage, (None, None))[1]
    for f in sorted(folder.glob("*.parquet")) if folder.is_dir() else []:
        try:
            t = pq.read_table(f, columns=[key] if key else None)
        except Exception:  # cut off mid-write: a resume drops it
            continue
        files += 1
        rows += t.num_rows
        if key and key in t.column_names:
            keys.update(t.column(key).to_pylist())
    return files, rows, keys


def inflight_keys(out: Path, stage: str) -> int:
    """Distinct rows named by the stage's crash journal at this moment: those its LLM workers
    hold, plus those left by attempts that died (actor kills) since the stage started."""
    keys: set = set()
    for f in (out / ".journal" / stage).glob("*.inflight"):
        try:
            keys.update(json.loads(f.read_text()))
        except (OSError, ValueError):
            pass
    return len(keys)


def alive_targets(dash: str, targets: list[str]) -> list[dict]:
    from ray.util.state import list_actors

    try:
        actors = list_actors(address=dash, filters=[("state", "=", "ALIVE")], limit=10_000,
                             raise_on_missing_output=False, timeout=10)
    except Exception as e:  # the dashboard busy or restarting: try again on the next tick
        print(f"  list_actors failed: {type(e).__name__}: {e}", flush=True)
        return []
    out = []
    for a in actors:
        a = a if isinstance(a, dict) else a.__dict__
        cls = a.get("class_name") or ""
        if a.get("pid") and any(t in cls for t in targets):
            out.append({"class": cls, "pid": int(a["pid"]), "actor_id": a.get("actor_id"),
                        "restarts": a.get("num_restarts")})
    return out


def short_class(cls: str) -> str:
    for t in ("LLMServer", "LLMActor", "Embedder", "NER"):
        if t in cls:
            return t
    return cls


class Chaos:
    """The kill loop's state for one chaos run (across its driver restart)."""

    def __init__(self, args, dash: str, out: Path):
        self.args = args
        self.dash = dash
        self.out = out
        self.rng = random.Random(args.seed)
        self.targets = [t for t in args.targets.split(",") if t]
        self.kills: list[dict] = []
        self.driver_kill: dict | None = None
        self.t0 = time.monotonic()
        self.next_kill = self.t0 + args.first_kill
        self.next_look = self.t0
        self.last_kill = self.t0
        self.first_seen: dict[str, float] = {}

    def tick(self) -> None:
        """Kill one target actor when the interval is up, or sooner a class not killed yet that
        has been alive ``--eager-after`` seconds (the embedder pool lives ~15-30 s of a run)."""
        now = time.monotonic()
        if len(self.kills) >= self.args.max_kills:
            return
        # interval kills leave one kill for each target class not killed yet (the embedder pool
        # appears only near the end of a run)
        reserve = len({short_class(t) for t in self.targets} - {k["class"] for k in self.kills})
        due = now >= self.next_kill and len(self.kills) < self.args.max_kills - reserve
        eager = self.args.eager_after >= 0 and now >= self.next_look and now - self.last_kill >= 5
        if not (due or eager):
            return
        self.next_look = now + 3.0
        alive = alive_targets(self.dash, self.targets)
        by_class = Counter(k["class"] for k in self.kills)
        for a in alive:
            self.first_seen.setdefault(short_class(a["class"]), now)
        fresh = [a for a in alive if not by_class[short_class(a["class"])]
                 and now - self.first_seen[short_class(a["class"])] >= self.args.eager_after]
        if not due and not (eager and fresh):
            return
        if not alive:
            self.next_kill = now + 1.0  # nothing to kill yet: look again in a second
            return
        pool = alive if due else fresh
        fewest = min(by_class[short_class(a["class"])] for a in pool)
        pick = self.rng.choice([a for a in pool if by_class[short_class(a["class"])] == fewest])
        stage = running_stage(self.out)
        try:
            os.kill(pick["pid"], signal.SIGKILL)
            ok = True
        except ProcessLookupError:
            ok = False
        rec = {"t": round(now - self.t0, 1), "class": short_class(pick["class"]), "actor_class": pick["class"],
               "pid": pick["pid"], "stage": stage, "why": "interval" if due else "first of its class"}
        if ok:
            self.kills.append(rec)
            self.last_kill = now
            print(f"  kill #{len(self.kills)} at {rec['t']}s: {rec['actor_class']} pid {rec['pid']} "
                  f"(stage {stage}, {rec['why']})", flush=True)
        self.next_kill = now + (self.args.kill_every if ok else 1.0)

    def driver_due(self) -> bool:
        if self.driver_kill is not None or self.args.driver_kill == "never":
            return False
        now = time.monotonic() - self.t0
        mode = self.args.driver_kill
        if mode.replace(".", "", 1).isdigit():
            return now >= float(mode)
        stage = running_stage(self.out)
        if stage is None:
            return False
        if mode == "first-llm":  # a row-level LLM stage (it journals its rows) with rows on disk
            wanted = (self.out / ".journal" / stage).is_dir() and stage in STAGE_TABLES
        else:
            wanted = stage == mode
        return wanted and staged_rows(self.out, stage)[0] >= self.args.driver_kill_files


def run_until(proc: subprocess.Popen, deadline: float, chaos: Chaos | None = None,
              driver: bool = False, census: dict | None = None, dash: str | None = None) -> str:
    """Wait for ``proc``: 'exit' when it ends, 'driver' when the driver kill is due (``driver``),
    'timeout' at the deadline; ticks the kill loop meanwhile. With ``census``, records every 5 s
    which target actor classes are alive (first and last second seen): where kills can land."""
    t0, last = time.monotonic(), 0.0
    while True:
        if proc.poll() is not None:
            return "exit"
        if time.monotonic() > deadline:
            return "timeout"
        if census is not None and time.monotonic() - last >= 5:
            last = time.monotonic()
            for a in alive_targets(dash, DEFAULT_TARGETS.split(",")):
                seen = census.setdefault(a["class"], [round(last - t0), 0])
                seen[1] = round(last - t0)
        if chaos is not None:
            chaos.tick()
            if driver and chaos.driver_due():
                return "driver"
        time.sleep(0.5)


# --------------------------------------------------------------------------- comparing run dirs
def tables(run: Path) -> list[str]:
    skip = {"rejects", "exports", "index", ".staging", ".journal", "evals"}
    return sorted(p.name for p in run.iterdir()
                  if p.is_dir() and p.name not in skip and not p.name.endswith(".tmp") and any(p.glob("*.parquet")))


def read(path: Path):
    import pyarrow.dataset as pads

    return pads.dataset(path, format="parquet").to_table()


def row_hash(row: dict) -> str:
    return hashlib.blake2b(json.dumps({k: v for k, v in row.items() if k not in VOLATILE}, sort_keys=True,
                                      default=str).encode(), digest_size=12).hexdigest()


def table_facts(run: Path, name: str) -> dict:
    t = read(run / name)
    key = TABLE_KEYS.get(name)
    if key is None or key not in t.column_names:
        key = next((c for c in t.column_names if c.endswith(("_id", "_key"))), None)
    keys = t.column(key).to_pylist() if key else []
    rows = t.to_pylist()
    return {"rows": t.num_rows, "key": key, "keys": keys, "hashes": dict(zip(keys, map(row_hash, rows))),
            "dup_keys": sum(n - 1 for n in Counter(keys).values() if n > 1),
            "dup_rows": sum(n - 1 for n in Counter(row_hash(r) for r in rows).values() if n > 1)}


def stage_checks(run: Path) -> tuple[list[dict], list[str]]:
    """Every stage's funnel, and for row-level stages kept + rejected keys against ``in``."""
    m = manifest(run) or {"stages": []}
    out, problems = [], []
    for s in m["stages"]:
        rej = sum(s["rejected"].values())
        rec = {"stage": s["name"], "in": s["in"], "out": s["out"], "rejected": rej, "status": s["status"],
               "resumed_rows": s.get("resumed_rows"), "actor_crashed": s["rejected"].get("actor_crashed", 0),
               "recovered_after_crash": s.get("recovered_after_crash")}
        if s["in"] != s["out"] + rej:
            problems.append(f"{s['name']}: funnel in={s['in']} != out={s['out']} + rejected={rej}")
        if s["status"] != "done":
            problems.append(f"{s['name']}: status {s['status']}")
        if s["name"] in STAGE_TABLES:
            table, key = STAGE_TABLES[s["name"]]
            kept = read(run / table).column(key).to_pylist() if (run / table).is_dir() and any(
                (run / table).glob("*.parquet")) else []
            rp = run / "rejects" / s["name"]
            rejected = read(rp).column(key).to_pylist() if rp.is_dir() and any(rp.glob("*.parquet")) else []
            both = set(kept) & set(rejected)
            dups = len(kept) + len(rejected) - len(set(kept) | set(rejected))
            rec.update(kept_keys=len(kept), rejected_keys=len(rejected), dup_keys=dups, kept_and_rejected=len(both))
            if dups:
                problems.append(f"{s['name']}: {dups} duplicate keys over {table} + rejects ({len(both)} both kept and rejected)")
            if len(set(kept) | set(rejected)) != s["in"]:
                problems.append(f"{s['name']}: {len(set(kept) | set(rejected))} distinct keys written, in={s['in']}")
        out.append(rec)
    if m.get("status") != "done":
        problems.append(f"manifest status {m.get('status')!r}")
    return out, problems


def lost_rows(clean: Path, chaos: Path) -> dict:
    """Per row-level stage: keys the clean run kept that the chaos run did not, and how many of
    those the chaos run rejected as ``actor_crashed`` (a row in flight during max_crashes deaths)."""
    out = {}
    for stage, (table, key) in STAGE_TABLES.items():
        if not (clean / table).is_dir() or not any((clean / table).glob("*.parquet")):
            continue
        kept_c = set(read(clean / table).column(key).to_pylist())
        kept_x = set(read(chaos / table).column(key).to_pylist()) if (chaos / table).is_dir() and any(
            (chaos / table).glob("*.parquet")) else set()
        rp = chaos / "rejects" / stage
        crashed = set()
        if rp.is_dir() and any(rp.glob("*.parquet")):
            t = read(rp)
            crashed = {k for k, r in zip(t.column(key).to_pylist(), t.column("reject_reason").to_pylist())
                       if r == "actor_crashed"}
        lost = kept_c - kept_x
        if lost or crashed:
            out[stage] = {"lost": len(lost), "lost_as_actor_crashed": len(lost & crashed),
                          "actor_crashed": len(crashed), "gained": len(kept_x - kept_c)}
    return out


def compare(clean: Path, chaos: Path) -> dict:
    names = sorted(set(tables(clean)) | set(tables(chaos)))
    rows = {}
    for n in names:
        c = table_facts(clean, n) if (clean / n).is_dir() else {"rows": None, "keys": [], "hashes": {}}
        x = table_facts(chaos, n) if (chaos / n).is_dir() else {"rows": None, "keys": [], "dup_keys": None,
                                                                  "dup_rows": None, "key": None, "hashes": {}}
        common = set(c["hashes"]) & set(x["hashes"])
        rows[n] = {"expected": c["rows"], "written": x["rows"], "key": x["key"], "dup_keys": x["dup_keys"],
                   "dup_rows": x["dup_rows"], "changed": sum(c["hashes"][k] != x["hashes"][k] for k in common),
                   "only_clean": len(set(c["keys"]) - set(x["keys"])), "only_chaos": len(set(x["keys"]) - set(c["keys"]))}
    return rows


# --------------------------------------------------------------------------- main
def timed_clean(args, corpus: Path, out: Path, deadline: float) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    census: dict = {}
    with ray_head(args.num_cpus, args.workdir) as (address, dash):
        proc = start(synthrag_cmd(args, corpus, out, address), args.workdir / f"{out.name}.log")
        t = time.monotonic()
        how = run_until(proc, deadline, census=census if args.census else None, dash=dash)
        wall = time.monotonic() - t
        if how == "timeout":
            killpg(proc)
        return {"wall_s": round(wall, 1), "rc": proc.returncode if how == "exit" else "timeout",
                **({"target_actors_seen_s": census} if args.census else {})}


def failure_of(out: Path, log: Path) -> dict:
    """The stage a failed driver left failed, and the last exception line of its log."""
    m = manifest(out) or {"stages": []}
    failed = [s for s in m["stages"] if str(s.get("status", "")).startswith("failed")]
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines()
             if re.match(r"\s*[A-Za-z_][\w.]*(Error|Exception): ", ln)]
    return {"stage": failed[-1]["name"] if failed else None,
            "status": failed[-1]["status"][:300] if failed else None, "error": " | ".join(dict.fromkeys(lines[-3:]))[:400] or None}


def chaos_run(args, corpus: Path, out: Path, deadline: float) -> dict:
    """The chaos run: one driver kill (then the same command again) and, when a driver fails on
    its own, up to ``--max-restarts`` reruns of the same command (what an operator would do)."""
    shutil.rmtree(out, ignore_errors=True)
    log = args.workdir / "chaos.log"
    res: dict = {"attempts": 0, "failures": []}
    with ray_head(args.num_cpus, args.workdir) as (address, dash):
        cmd = synthrag_cmd(args, corpus, out, address)
        chaos = Chaos(args, dash, out)
        t = time.monotonic()
        while True:
            proc = start(cmd, log)
            res["attempts"] += 1
            how = run_until(proc, deadline, chaos, driver=chaos.driver_kill is None)
            if how == "driver":
                stage = running_stage(out)
                held = inflight_keys(out, stage)
                killpg(proc)
                # what survived the kill: complete staged files (measured after the process is gone)
                files, rows, _ = staged_rows(out, stage)
                chaos.driver_kill = {"t": round(time.monotonic() - chaos.t0, 1), "stage": stage,
                                     "staged_files": files, "staged_rows": rows, "rows_in_flight": held}
                print(f"  driver killed at {chaos.driver_kill['t']}s in {stage}: {rows} rows staged in "
                      f"{files} files, {held} rows in flight", flush=True)
                continue
            if how == "timeout":
                killpg(proc)
                break
            if proc.returncode != 0:
                f = {"t": round(time.monotonic() - chaos.t0, 1), "rc": proc.returncode, **failure_of(out, log)}
                res["failures"].append(f)
                print(f"  driver failed on its own at {f['t']}s (rc {f['rc']}) in {f['stage']}: {f['error']}",
                      flush=True)
                if len(res["failures"]) <= args.max_restarts:
                    continue
            break
        wall = time.monotonic() - t
        res.update(wall_s=round(wall, 1), rc=proc.returncode if how == "exit" else "timeout",
                   kills=chaos.kills, driver_kill=chaos.driver_kill)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--method", default="ragsynth", choices=["ragsynth", "querygen"])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "demo.yaml")
    ap.add_argument("--docs", type=int, default=160, help="first N SciFact abstracts (~2 chunks each)")
    ap.add_argument("--limit", type=int, default=24, help="chunks sent to the LLM (synthrag --limit)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for both runs")
    ap.add_argument("--num-cpus", type=int, default=4,
                    help="logical CPUs of the Ray head (synthrag's own local Ray takes max(4, cores))")
    ap.add_argument("--targets", default=DEFAULT_TARGETS, help="actor class names (substrings) that may be killed")
    ap.add_argument("--kill-every", type=float, default=40.0, help="seconds between actor kills")
    ap.add_argument("--first-kill", type=float, default=30.0, help="seconds after the chaos run starts")
    ap.add_argument("--max-kills", type=int, default=8)
    ap.add_argument("--eager-after", type=float, default=5.0,
                    help="kill a target class not killed yet once it has been alive this long, without waiting "
                         "for the interval (-1: interval only)")
    ap.add_argument("--driver-kill", default="first-llm",
                    help="when to SIGKILL the driver once: first-llm (the first row-level LLM stage has "
                         "--driver-kill-files staged files), a stage name, a number of seconds, or never")
    ap.add_argument("--driver-kill-files", type=int, default=1)
    ap.add_argument("--max-restarts", type=int, default=2,
                    help="chaos: rerun the command after a driver fails on its own, at most this many times")
    ap.add_argument("--reuse-clean", action="store_true",
                    help="take the clean run(s) and their wall time from an earlier run in this workdir")
    ap.add_argument("--clean-runs", type=int, default=1, help="2: a second clean run checks determinism")
    ap.add_argument("--census", action="store_true",
                    help="clean runs: list the target actors alive every 5 s (first/last second seen)")
    ap.add_argument("--skip-chaos", action="store_true", help="clean run(s) only (to size --docs/--limit)")
    ap.add_argument("--max-minutes", type=float, default=45.0, help="the whole benchmark; then everything is killed")
    ap.add_argument("--seed", type=int, default=0, help="the kill loop's random choices")
    args = ap.parse_args()
    args.workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="bench_chaos_"))).resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.max_minutes * 60
    corpus = make_corpus(args.workdir, args.docs)
    print(f"workdir {args.workdir}; corpus {corpus} ({args.docs} docs); limit {args.limit}", flush=True)

    result: dict = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                    "clean": [], "status": "ok"}
    cleans = [args.workdir / ("clean" if i == 0 else f"clean{i + 1}") for i in range(args.clean_runs)]
    saved = args.workdir / "clean_runs.json"
    reuse = json.loads(saved.read_text()) if args.reuse_clean and saved.exists() else {}
    for out in cleans:
        if out.name in reuse and (manifest(out) or {}).get("status") == "done":
            result["clean"].append(reuse[out.name])
            print(f"clean run {out.name}: reused {reuse[out.name]}", flush=True)
            continue
        r = timed_clean(args, corpus, out, deadline)
        reuse[out.name] = r
        saved.write_text(json.dumps(reuse, indent=2))
        print(f"clean run {out.name}: {r}", flush=True)
        result["clean"].append(r)
        if r["rc"] != 0:
            result["status"] = f"clean run {out.name} failed ({r['rc']}); see {args.workdir / (out.name + '.log')}"
            break
    if result["status"] == "ok" and len(cleans) > 1:
        det = compare(cleans[0], cleans[1])
        result["determinism"] = {n: {"rows": (v["expected"], v["written"]), "only_first": v["only_clean"],
                                     "only_second": v["only_chaos"]} for n, v in det.items()}
        diff = {n: v for n, v in result["determinism"].items()
                if v["rows"][0] != v["rows"][1] or v["only_first"] or v["only_second"]}
        print(f"determinism (two clean runs): {'identical keys and counts' if not diff else diff}", flush=True)
    if result["status"] == "ok" and not args.skip_chaos:
        r = chaos_run(args, corpus, args.workdir / "chaos", deadline)
        result["chaos"] = r
        print(f"chaos run: rc {r['rc']}, {r['attempts']} driver starts, {len(r['kills'])} actor kills, "
              f"{r['wall_s']}s", flush=True)
        if r["rc"] != 0:
            result["status"] = f"chaos run failed ({r['rc']}); see {args.workdir / 'chaos.log'}"
        chaos_dir = args.workdir / "chaos"
        if (chaos_dir / "manifest.json").exists():
            result["tables"] = compare(cleans[0], chaos_dir)
            result["lost_rows"] = lost_rows(cleans[0], chaos_dir)
            result["stages"], result["problems"] = stage_checks(chaos_dir)
            result["clean_stages"], clean_problems = stage_checks(cleans[0])
            result["problems"] += [f"clean: {p}" for p in clean_problems]
            result["problems"] += [f"the driver failed on its own in {f['stage']} ({f['error']}); rerun by hand"
                                   for f in r["failures"]]
    report(result)
    (args.workdir / "chaos.json").write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {args.workdir / 'chaos.json'}")
    bad = result["status"] != "ok" or result.get("problems") or any(
        (v.get("dup_keys") or 0) > 0 for v in result.get("tables", {}).values())
    sys.exit(1 if bad else 0)


def report(result: dict) -> None:
    clean_wall = result["clean"][0]["wall_s"] if result["clean"] else None
    print("\n== chaos benchmark ==")
    print(f"status: {result['status']}")
    if len(result["clean"]) > 1:
        print("clean runs wall s: " + ", ".join(str(c["wall_s"]) for c in result["clean"]))
    ch = result.get("chaos")
    if not ch:
        print(f"clean wall s: {clean_wall}")
        return
    by_class = Counter(k["class"] for k in ch["kills"])
    by_stage = Counter(k["stage"] or "-" for k in ch["kills"])
    print(f"actor kills injected: {len(ch['kills'])} ({', '.join(f'{c} {n}' for c, n in sorted(by_class.items()))}); "
          f"by running stage: {dict(by_stage)}")
    for f in ch.get("failures", []):
        print(f"driver FAILED on its own at {f['t']}s (rc {f['rc']}) in {f['stage']}: {f['error']}; rerun")
    print(f"driver starts: {ch['attempts']}")
    dk = ch.get("driver_kill")
    print(f"driver kills: {1 if dk else 0}" + (f" (at {dk['t']}s in {dk['stage']}: {dk['staged_rows']} rows staged, "
                                             f"{dk['rows_in_flight']} named by the crash journal)" if dk else ""))
    stages = {s["stage"]: s for s in result.get("stages", [])}
    if dk and dk["stage"] in stages:
        s = stages[dk["stage"]]
        kept = s.get("resumed_rows") or 0
        print(f"  {dk['stage']} after resume: in {s['in']}, resumed (kept) {kept}, computed after the restart "
              f"{s['in'] - kept}; staged rows recomputed: {max(0, dk['staged_rows'] - kept)}")
    crashed = {n: s["actor_crashed"] for n, s in stages.items() if s["actor_crashed"]}
    recovered = {n: s["recovered_after_crash"] for n, s in stages.items() if s.get("recovered_after_crash")}
    print(f"rows rejected as actor_crashed: {crashed or 0}; batches rerun row by row after a crash: {recovered or 0}")
    lost = result.get("lost_rows") or {}
    print("rows the clean run kept that the chaos run did not: " + (", ".join(
        f"{st} {v['lost']} ({v['lost_as_actor_crashed']} of them actor_crashed rejects)" for st, v in lost.items())
        or "none"))
    print(f"\n{'table':<28} {'key':<12} {'expected':>8} {'written':>8} {'dup keys':>8} {'dup rows':>8} "
          f"{'only clean':>10} {'only chaos':>10} {'changed':>8}")
    for n, v in result.get("tables", {}).items():
        print(f"{n:<28} {str(v['key']):<12} {str(v['expected']):>8} {str(v['written']):>8} {str(v['dup_keys']):>8} "
              f"{str(v['dup_rows']):>8} {v['only_clean']:>10} {v['only_chaos']:>10} {v['changed']:>8}")
    print("(expected: the clean run's rows; changed: rows under the same key whose content differs, "
          f"{', '.join(sorted(VOLATILE))} aside)")
    clean_st = {s["stage"]: s for s in result.get("clean_stages", [])}
    print(f"\n{'stage':<28} {'clean in/out':>14} {'chaos in/out':>14} {'resumed':>8} {'crashed':>8}")
    for n, s in stages.items():
        c = clean_st.get(n, {})
        print(f"{n:<28} {str(c.get('in', '-')) + '/' + str(c.get('out', '-')):>14} {str(s['in']) + '/' + str(s['out']):>14} "
              f"{str(s['resumed_rows'] if s['resumed_rows'] is not None else '-'):>8} {s['actor_crashed']:>8}")
    if ch["wall_s"] and clean_wall:
        print(f"\nclean wall s {clean_wall}, chaos wall s {ch['wall_s']} (both driver starts), overhead "
              f"{100 * (ch['wall_s'] - clean_wall) / clean_wall:+.0f}%")
    print(f"problems: {result.get('problems') or 'none'}")


if __name__ == "__main__":
    main()
