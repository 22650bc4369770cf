"""PrismRAG's funnel for the manifest and the report: seeds, the distractor attempts histogram,
the pass rate per critique score, the strategization attempts histogram, and stochastic vs
revised successes. Computed from the attempt tables (every attempt is kept, so nothing is
inferred)."""

from __future__ import annotations

from collections import Counter

from pipelines.prismrag.loops import CRITIQUE_SCORES


def distractor_funnel(attempts: list[dict], max_attempts: int) -> dict:
    """``attempts``: every round's attempt rows (seed_id, attempt, status, passed, scores)."""
    by_seed: dict[str, list[dict]] = {}
    for a in attempts:
        by_seed.setdefault(a["seed_id"], []).append(a)
    hist: Counter = Counter()
    for rows in by_seed.values():
        ok = [a["attempt"] for a in rows if a["passed"]]
        hist[f"passed@{min(ok)}" if ok else "exhausted"] += 1
    per_score: dict[str, dict] = {}
    for k in CRITIQUE_SCORES:
        for v in range(1, 6):
            n = [a for a in attempts if a.get(k) == v]
            if n:
                per_score[f"{k}={v}"] = {"attempts": len(n), "pass_rate": round(sum(a["passed"] for a in n) / len(n), 3)}
    return {"seeds": len(by_seed), "attempts": len(attempts), "max_attempts": max_attempts,
            "passed": sum(v for k, v in hist.items() if k.startswith("passed")),
            "histogram": dict(sorted(hist.items(), key=_order)),
            "attempt_status": dict(Counter(a["status"] for a in attempts)), "pass_rate_per_score": per_score}


def strategize_funnel(attempts: list[dict], budget: int) -> dict:
    by_seed: dict[str, list[dict]] = {}
    for a in attempts:
        by_seed.setdefault(a["seed_id"], []).append(a)
    hist: Counter = Counter()
    modes: Counter = Counter()
    for rows in by_seed.values():
        ok = sorted((a for a in rows if a["passed"]), key=lambda a: a["attempt"])
        hist[f"passed@{ok[0]['attempt']}" if ok else "exhausted"] += 1
        if ok:
            modes[ok[0]["mode"]] += 1
    return {"seeds": len(by_seed), "attempts": len(attempts), "budget": budget,
            "passed": sum(modes.values()), "histogram": dict(sorted(hist.items(), key=_order)),
            "successes": {"stochastic": modes.get("stochastic", 0), "revision": modes.get("revision", 0)},
            "attempt_status": dict(Counter(a["status"] for a in attempts)),
            "thought_scores": dict(sorted(Counter(str(a["thought_score"]) for a in attempts).items())),
            "answer_scores": dict(sorted(Counter(str(a["answer_score"]) for a in attempts).items()))}


def _order(kv):
    k = kv[0]
    return (1, 0) if k == "exhausted" else (0, int(k.split("@")[1]))


def report_metrics(funnel: dict) -> dict[str, dict]:
    """The funnel as the report's evaluation table (one row per figure, one ``value`` column)."""
    out: dict[str, dict] = {}
    seeds = funnel.get("seeds", {})
    out["seed references"] = {"value": seeds.get("references")}
    out["seed QA kept"] = {"value": seeds.get("kept")}
    for reason, n in (seeds.get("rejected") or {}).items():
        out[f"seed rejected: {reason}"] = {"value": n}
    for task in ("distractor", "strategize"):
        f = funnel.get(task)
        if not f:
            continue
        out[f"{task}: seeds / attempts / passed"] = {"value": f"{f['seeds']} / {f['attempts']} / {f['passed']}"}
        for k, v in f["histogram"].items():
            out[f"{task} {k}"] = {"value": v}
    for k, v in (funnel.get("distractor") or {}).get("pass_rate_per_score", {}).items():
        out[f"distractor pass rate at {k}"] = {"value": f"{v['pass_rate']} of {v['attempts']}"}
    s = (funnel.get("strategize") or {}).get("successes")
    if s:
        out["strategize successes stochastic / revision"] = {"value": f"{s['stochastic']} / {s['revision']}"}
    for k, v in (funnel.get("sft") or {}).items():
        out[f"sft records: {k}"] = {"value": v}
    return out
