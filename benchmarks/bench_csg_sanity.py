"""CSG sanity: a RAGSynth run's own reference answers should score near 1, empty answers and
answers written for another question near 0 (RAGSynth Eq. 4-6, ``synthrag eval generator``).

    .venv/bin/python benchmarks/bench_csg_sanity.py --run RUN [--judge likelihood|yes-no] [--model embedded]

RUN is a finished ``synthrag run ragsynth`` directory (e.g. README command 1's ``runs/demo``).
Prints one row per answers file: overall C_comp / C_under / C_cite / CSG, then CSG per level.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def answer_files(run: Path, folder: Path) -> dict[str, Path]:
    """reference (the run's own), empty, and other-question: each example gets the answer (and
    citations) of the next example that rests on a different base question (``variant_of``)."""
    import pyarrow.dataset as pads

    ref_path = run / "exports" / "ragsynth_reference_answers.jsonl"
    refs = [json.loads(x) for x in ref_path.read_text().splitlines() if x.strip()]
    roots = {r["example_id"]: r["variant_of"] or r["example_id"] for r in pads.dataset(
        run / "examples", format="parquet").to_table(columns=["example_id", "variant_of"]).to_pylist()}
    empty, other = folder / "empty.jsonl", folder / "other_question.jsonl"
    with open(empty, "w") as f:
        for r in refs:
            f.write(json.dumps({"example_id": r["example_id"], "answer": "", "citations": []}) + "\n")
    with open(other, "w") as f:
        for i, r in enumerate(refs):
            donors = [d for d in refs[i + 1:] + refs[:i] if roots.get(d["example_id"]) != roots.get(r["example_id"])]
            if donors:
                f.write(json.dumps({"example_id": r["example_id"], "answer": donors[0]["answer"],
                                    "citations": donors[0]["citations"]}) + "\n")
    return {"reference": ref_path, "empty": empty, "other_question": other}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--judge", default="likelihood")
    ap.add_argument("--model", default="embedded")
    args = ap.parse_args()
    from actors.llm import LLMConfig
    from cluster.runtime import connect
    from pipelines.eval.generator import evaluate_generator

    connect(None)
    llm = LLMConfig(engine="embedded" if args.model == "embedded" else "transformers", model=args.model,
                    max_retries=0)
    fmt = lambda v: "  -  " if v is None else f"{v:.3f}"  # noqa: E731
    print(f"run {args.run}, judge {args.judge}, model {args.model}")
    print(f"{'answers':<16}{'n':>4}{'C_comp':>8}{'C_under':>8}{'C_cite':>8}{'CSG':>8}   CSG full / partial / none"
          f"   seconds")
    with tempfile.TemporaryDirectory() as tmp:
        for name, path in answer_files(args.run, Path(tmp)).items():
            t0 = time.perf_counter()
            s, _ = evaluate_generator(args.run, path, llm=llm, judge=args.judge)
            lv = s["by_level"]
            levels = " / ".join(fmt(lv.get(k, {}).get("csg")) for k in ("full", "partial", "none"))
            print(f"{name:<16}{s['examples']:>4}{fmt(s['c_comp']):>8}{fmt(s['c_under']):>8}{fmt(s['c_cite']):>8}"
                  f"{fmt(s['csg']):>8}   {levels}   {time.perf_counter() - t0:.0f}")


if __name__ == "__main__":
    main()
