"""SCARLet: the exact 1-D split, the ridge attribution, the task pool and seeds, the method's
CLI flags, the attribution evaluator's metrics, and one end-to-end run on the embedded models."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import yaml

from pipelines.scarlet.attribution import (
    fit_ridge,
    loo_masks,
    passage_budget,
    sample_masks,
    target_value,
)
from pipelines.scarlet.gti import ndcg_at, rank, read_questions, recall_at
from pipelines.scarlet.split import (
    DegenerateUtilities,
    optimal_1d_kmeans,
    three_clusters,
    top1_bottom5,
)
from pipelines.scarlet.tasks import PoolError, load_pool, read_seeds

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "corpus"


def _sse(x, labels):
    return sum(float(np.sum((x[labels == c] - x[labels == c].mean()) ** 2)) for c in set(labels.tolist()))


def test_1d_kmeans_is_the_exact_optimum():
    rng = np.random.default_rng(3)
    for _ in range(30):
        x = rng.normal(size=int(rng.integers(3, 9))) * rng.choice([0.1, 1, 10])
        labels = np.asarray(optimal_1d_kmeans(x, 3))
        # brute force over every contiguous 3-way partition of the sorted values
        s = np.sort(x)
        best = min(_sse(s, np.repeat([0, 1, 2], [i, j - i, len(s) - j]))
                   for i, j in itertools.combinations(range(1, len(s)), 2))
        assert _sse(x, labels) == pytest.approx(best, abs=1e-9)
        assert sorted(set(labels.tolist())) == [0, 1, 2]
        # clusters are ordered: every value of cluster 2 is above every value of cluster 1
        assert x[labels == 2].min() > x[labels == 1].max() > x[labels == 0].min() - 1e-12


def test_three_clusters_takes_the_top_group_as_positives():
    u = [2.0, 1.9, 0.1, 0.0, 0.05, -1.5, -1.6, 0.12, 2.1, -1.4]
    s = three_clusters(u)
    assert s.positives == [8, 0, 1] and sorted(s.negatives) == [5, 6, 9]
    assert sorted(s.positives + s.middle + s.negatives) == list(range(10))
    with pytest.raises(DegenerateUtilities):
        three_clusters([1.0, 1.0, 0.0, 0.0])
    t = top1_bottom5(u)
    assert t.positives == [8] and set(t.negatives) == {6, 5, 9, 3, 4}  # the five lowest


def test_ridge_recovers_passage_utilities_from_masked_scores():
    k, n = 6, 64
    masks = sample_masks(k, n, 0.5, seed=1)
    assert masks.shape == (n, k) and 0.3 < masks.mean() < 0.7
    assert np.array_equal(masks, sample_masks(k, n, 0.5, seed=1))  # seeded
    true = np.array([3.0, 0.0, -1.0, 0.5, 0.0, 2.0])
    z = 7.0 + masks @ true + np.random.default_rng(0).normal(scale=0.01, size=n)
    intercept, alpha = fit_ridge(masks, z, lam=1e-6)
    assert alpha == pytest.approx(true, abs=0.05) and intercept == pytest.approx(7.0, abs=0.05)
    # λ shrinks the utilities (their norm), keeping their order at the top
    _, shrunk = fit_ridge(masks, z, lam=50.0)
    assert np.linalg.norm(shrunk) < np.linalg.norm(alpha) and np.argmax(shrunk) == 0
    assert loo_masks(3).tolist() == [[True] * 3, [False, True, True], [True, False, True], [True, True, False]]


def test_the_target_is_the_sum_of_logits_or_log_probs():
    s = {"token_logits": [[10.0, 12.0]], "token_logprobs": [[-0.5, -0.25]]}  # one continuation
    assert target_value(s, "logit") == 22.0 and target_value(s, "logprob") == -0.75
    with pytest.raises(ValueError, match="logprobs_mode"):
        target_value({"token_logits": [None], "token_logprobs": [[-1.0]]}, "logit")


def test_passages_are_cut_to_fit_the_window_by_one_rule():
    assert passage_budget(10, 20, 5, 4096, 120) == 120
    small = passage_budget(10, 20, 5, 1024, 120)
    assert 8 <= small < 120 and (small * 10 + 25) * 1.6 + 64 <= 1024


def test_task_pool_ships_six_tasks_and_takes_a_users_file(tmp_path):
    pool = load_pool()
    assert {"single_hop_qa", "multi_hop_qa", "long_form_qa", "fact_checking", "dialogue", "slot_filling"} <= set(pool)
    assert pool["fact_checking"].normalise_answer("supports.") == "SUPPORTS"
    assert pool["fact_checking"].normalise_answer("maybe") is None
    extra = tmp_path / "tasks.yaml"
    extra.write_text("- name: title_gen\n  instruction: Write a title.\n  retrieval_instruction: Find it.\n"
                     "  input_format: a passage\n  output_format: a title\n  example: {input: x, answer: y}\n")
    assert "title_gen" in load_pool(extra) and list(load_pool(extra, ["title_gen"])) == ["title_gen"]
    with pytest.raises(PoolError, match="unknown task"):
        load_pool(None, ["nope"])
    extra.write_text("- name: Bad Name\n")
    with pytest.raises(PoolError, match="task 1"):
        load_pool(extra)


def test_bad_seed_lines_are_rejects_with_their_line_number(tmp_path):
    f = tmp_path / "seeds.jsonl"
    f.write_text('{"task": "single_hop_qa", "input": "Who built it?", "answer": "Marta"}\n'
                 'not json\n\n{"task": "cooking", "input": "x", "answer": "y"}\n{"task": "fact_checking", "input": ""}\n')
    rows = read_seeds(f, load_pool())
    assert [r["reject_reason"] for r in rows] == [None, "bad_seed_line", "unknown_task", "bad_seed_line"]
    assert json.loads(rows[1]["reject_detail"])["line"] == 2 and json.loads(rows[3]["reject_detail"])["line"] == 5


def test_expansion_rejects_unknown_entities_and_unreachable_graphs(tmp_path):
    import socket

    from pipelines.scarlet import expand_row
    from pipelines.scarlet.kg import CorpusGraph, SparqlKG

    graph = CorpusGraph([("c1", "Marta Kowalczyk"), ("c1", "Gdansk"), ("c2", "Gdansk"), ("c2", "Olsztyn")], limit=5)
    seed = {"seed_id": "s", "entities": ["Gdansk"]}
    r = expand_row(seed, graph, max_entities=10, require_known=True)
    assert not r.get("reject_reason")
    assert r["entity_list"][0] == "Gdansk" and set(r["neighbours"]) == {"Marta Kowalczyk", "Olsztyn"}
    assert expand_row(seed, graph, max_entities=2, require_known=True)["entity_list"] == ["Gdansk", r["neighbours"][0]]
    unknown = expand_row({"seed_id": "u", "entities": ["Atlantis"]}, graph, 10, True)
    assert unknown["reject_reason"] == "entity_not_in_graph"
    assert "reject_reason" not in expand_row({"seed_id": "u", "entities": ["Atlantis"]}, graph, 10, False)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kg = SparqlKG(f"http://127.0.0.1:{port}/sparql", cache_path=tmp_path / "kg.json", timeout_s=1)
    down = expand_row(seed, kg, 10, True)
    assert down["reject_reason"] == "sparql_unreachable" and "Gdansk" in down["reject_detail"]


def test_synthetic_examples_pass_cheap_checks_first():
    from pipelines.scarlet import check_example

    pool = load_pool()
    qa, fc = pool["single_hop_qa"], pool["fact_checking"]
    src = "Marta Kowalczyk founded Harbor Instruments in Gdansk in 1998."
    assert check_example(qa, {}, {"input": "Who founded Harbor Instruments?", "answer": "Marta Kowalczyk"}, src) is None
    assert check_example(qa, {}, {"input": "Who founded it?", "answer": "Elon Musk of Tesla"}, src).startswith("answer_not_grounded")
    assert check_example(qa, {}, {"input": qa.example.input, "answer": "x"}, src).startswith("copied_example")
    loop = "the answer is Gdansk, the answer is Gdansk, the answer is Gdansk, the answer is Gdansk"
    assert check_example(qa, {}, {"input": loop, "answer": "Gdansk"}, src).startswith("repetitive")
    assert check_example(qa, {}, {"input": "The new example must be correct. Who?", "answer": "Gdansk"},
                         src).startswith("copied_instruction")
    assert check_example(fc, {}, {"input": "Harbor Instruments is in Gdansk.", "answer": "SUPPORTS"}, src) is None
    assert check_example(fc, {}, {"input": "Harbor Instruments is in Gdansk.", "answer": "TRUE"}, src).startswith("bad_answer")
    assert check_example(fc, {}, {"input": "True, refutes the claim about Gdansk.", "answer": "SUPPORTS"},
                         src).startswith("label_in_input")
    for meta in ("What is the answer to the question?", "What does the passage say about pumps?",
                 "How to add your answer to this answer?"):
        assert check_example(qa, {}, {"input": meta, "answer": "Marta Kowalczyk"}, src).startswith("generic_input")
    # a QA input must be a question, a slot-filling input must hold [SEP] (the pool's input_pattern)
    assert check_example(qa, {}, {"input": "The founder of Harbor Instruments", "answer": "Marta Kowalczyk"},
                         src).startswith("bad_input_format")
    slot = pool["slot_filling"]
    assert check_example(slot, {}, {"input": "Harbor Instruments [SEP] founder", "answer": "Marta Kowalczyk"}, src) is None
    assert check_example(slot, {}, {"input": "Harbor Instruments founder", "answer": "Marta Kowalczyk"},
                         src).startswith("bad_input_format")


def test_each_task_narrows_the_reply_schema_it_is_decoded_under():
    """A task's rows carry their own reply schema (``llm_schema``): fixed labels as an enum, and
    for the small model the input grammar; every shipped example fits its task's grammar."""
    import jsonschema

    import prompts
    from actors.llm import LLMConfig
    from pipelines.registry import RunConfig
    from pipelines.scarlet import task_schemas

    pool = load_pool()
    base = prompts.load("scarlet/synthesize", variant="small").schema
    for t in pool.values():
        jsonschema.validate(t.example.model_dump(), t.reply_schema(base, grammar=True))
    qa, fc = pool["single_hop_qa"], pool["fact_checking"]
    assert qa.reply_schema(base, grammar=False) == base
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": "The founder of Harbor Instruments", "answer": "x"}, qa.reply_schema(base, grammar=True))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"input": "Pumps move water.", "answer": "true"}, fc.reply_schema(base, grammar=False))
    # the embedded model gets the grammars, a named model only the labels
    small = {k: json.loads(v) for k, v in task_schemas(RunConfig(), "scarlet/synthesize", pool.values()).items()}
    big = {k: json.loads(v) for k, v in task_schemas(RunConfig(llm=LLMConfig(model="/models/any")),
                                                      "scarlet/synthesize", pool.values()).items()}
    assert small["single_hop_qa"]["properties"]["input"]["pattern"] == qa.input_grammar
    assert "pattern" not in big["single_hop_qa"]["properties"]["input"]
    assert big["fact_checking"]["properties"]["answer"]["enum"] == ["SUPPORTS", "REFUTES"]


def test_a_task_pool_with_a_bad_input_pattern_is_refused(tmp_path):
    task = {"name": "qa", "instruction": "i", "retrieval_instruction": "r", "input_format": "q",
            "output_format": "a", "example": {"input": "Who?", "answer": "x"}}
    for field, pattern, why in [("input_pattern", "(", "not a regular expression"),
                                ("input_grammar", "[a-", "not a regular expression"),
                                ("input_pattern", "^A:", "does not match input_pattern")]:
        f = tmp_path / "tasks.yaml"
        f.write_text(yaml.safe_dump([{**task, field: pattern}]))
        with pytest.raises(PoolError, match=why):
            load_pool(extra=f)


def test_ranking_metrics():
    assert rank([0.1, 0.9, 0.5]) == [1, 2, 0]
    assert ndcg_at([1, 0, 2], {1}, 1) == 1.0 and ndcg_at([0, 1, 2], {1}, 1) == 0.0
    assert ndcg_at([0, 1, 2], {1, 2}, 5) == pytest.approx((1 / np.log2(3) + 0.5) / (1 + 1 / np.log2(3)))
    assert recall_at([2, 0, 1], {1, 2}, 2) == 0.5


def test_hotpotqa_rows_mark_the_supporting_paragraphs_gold(shared_data):
    qs = read_questions(shared_data / "hotpotqa" / "dev_distractor_sample_a300.jsonl", limit=5)
    assert len(qs) == 5
    for q in qs:
        assert len(q["passages"]) == 10 and 1 <= len(q["gold"]) <= 2 and q["answer"]


def test_method_flags_become_config_overrides():
    from pipelines.cli.run import method_flags

    opts = {"--seeds": "scarlet.seeds_file", "--kg": "scarlet.kg.kind"}
    assert method_flags("scarlet", opts, ["--seeds", "s.jsonl", "--kg=sparql"]) == \
        ["scarlet.seeds_file=s.jsonl", "scarlet.kg.kind=sparql"]
    import typer
    with pytest.raises(typer.BadParameter, match="unknown option '--nope'"):
        method_flags("scarlet", opts, ["--nope", "1"])


E2E = ["--set", "llm.max_retries=1", "--set", "llm.best_of=2", "--set", "scarlet.tasks=[single_hop_qa,fact_checking]",
       "--set", "scarlet.masks=12", "--set", "scarlet.context_size=4", "--set", "scarlet.per_entity=4",
       "--set", "scarlet.max_passage_words=50"]


@pytest.fixture(scope="module")
def run_dir(ray_local, tmp_path_factory):
    from typer.testing import CliRunner

    import pipelines.cli.run  # noqa: F401
    from pipelines.cli.app import app

    tmp = tmp_path_factory.mktemp("scarlet")
    seeds = tmp / "seeds.jsonl"
    seeds.write_text(
        '{"task": "single_hop_qa", "input": "Where did Marta Kowalczyk study engineering?", "answer": "Gdansk"}\n'
        '{"task": "fact_checking", "input": "Harbor Instruments makes pumps in Olsztyn.", "answer": "SUPPORTS"}\n'
        '{"task": "single_hop_qa", "input": "How often should a seal be replaced?", "answer": "every year"}\n'
        "broken line\n")
    out = tmp / "run"
    res = CliRunner().invoke(app, ["run", "scarlet", "--corpus", str(CORPUS), "--out", str(out),
                                   "--seeds", str(seeds), *E2E])
    assert res.exit_code == 0, res.output
    return out


@pytest.mark.slow
def test_scarlet_end_to_end_accounts_for_every_row(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    stages = {s["name"]: s for s in manifest["stages"]}
    for s in stages.values():
        assert s["in"] == s["out"] + sum(s["rejected"].values()), s
    assert stages["scarlet_seeds"]["rejected"] == {"bad_seed_line": 1}
    assert stages["scarlet_entities"]["in"] == 3
    # every surviving example was scored under every mask, one engine call per example's masks
    masks = stages["scarlet_attribution"]
    assert masks["in"] == 12 * stages["scarlet_filter"]["out"]
    funnel = stages["scarlet_lists"]["funnel"]
    assert funnel["seeds"] == 4 and funnel["valid_seeds"] == 3 and set(funnel["synthesised_per_task"]) <= {"single_hop_qa", "fact_checking"}
    utils = pads.dataset(run_dir / "scarlet_utilities").to_table().to_pylist() if (run_dir / "scarlet_utilities").is_dir() else []
    for u in utils:
        k = len(u["passage_ids"])
        assert len(u["utilities"]) == k and u["masks_scored"] == 12 and sum(u["is_noise"]) <= 1
        assert set(u["positives"]).isdisjoint(u["negatives"])
        assert min(u["utilities"][i] for i in u["positives"]) > max(u["utilities"][i] for i in u["negatives"])
    lists = pads.dataset(run_dir / "retrieval_lists").to_table().to_pylist() if (run_dir / "retrieval_lists").is_dir() else []
    for row in lists:
        assert row["positive"] == row["candidates"][0] and len(row["labels"]) == len(row["candidates"])
        assert row["labels"][0] == 1.0 and 0.0 in row["labels"]
    exported = (run_dir / "exports" / "scarlet_pairs.jsonl").read_text().splitlines()
    assert len(exported) == len(utils)


def test_eval_attribution_runs_every_method_side_by_side(tiny_llm, tmp_path):
    from actors.llm import LLMConfig
    from pipelines.scarlet.gti import Attributor, evaluate, table

    data = tmp_path / "q.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in [
        {"question": "Where was Marta born?", "answer": "Elblag",
         "passages": ["Marta was born in Elblag.", "Pumps move water.", "Seals wear out."], "gold": [0]},
        {"id": "x", "question": "What moves water?", "answer": "pumps",
         "passages": ["Seals wear out.", "Pumps move water.", "Gdansk is a port."], "gold": [1]}]) + "\n")
    qs = read_questions(data)
    att = Attributor(LLMConfig(engine="transformers", model=str(tiny_llm), dtype="fp32"), masks=6)
    assert len(att.perturbation(qs[0])) == 3 and len(att.loo(qs[0])) == 3
    results = evaluate(qs, att, ["perturbation", "loo", "random"])
    assert set(results) == {"perturbation", "loo", "random"}
    for r in results.values():
        assert 0 <= r["ndcg@1"] <= 100 and 0 <= r["recall@2"] <= 100 and r["questions"] == 2
    assert results["perturbation"]["forward_passes_per_second"] > 0  # 6 masks x 2 questions were scored
    assert "| perturbation |" in table(results)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "a", "passages": ["p"], "gold": [3]}\n')
    with pytest.raises(ValueError, match="gold indices"):
        read_questions(bad)
