"""`council eval` on a small question set writes metrics.json with every figure issue 4 asks for, and plots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from council.jobs import eval as council_eval
from council.jobs.eval_escalation import CONFIDENCE_GRID
from council.jobs.eval_scoreboard import HEADLINE
from council.jobs.specialize import Phase, Plan, specialize
from council.world import build_world, save_questions

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_council(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("council")
    tiny = {"reading_warmup": Phase(steps=1, batch=2), "general": Phase(steps=2, batch=2)}
    specialize(replace(Plan(), **tiny, branch=Phase(steps=1, batch=2), probe=False), out)
    return out


def test_eval_writes_every_metric(tiny_council: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    save_questions(build_world(0).all_questions, questions)
    rc = council_eval.main([
        "--config", str(tiny_council / "council.yaml"), "--generalist", str(tiny_council / "models" / "generalist"),
        "--questions", str(questions), "--n", "2", "--sweep-n", "2", "--selection-n", "2",
        "--out", str(tmp_path / "eval"),
    ])
    assert rc == 0
    m = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    acc = m["accuracy_answerable"]
    assert {"council", "generalist", "best_single_specialist", "legal-1", "medical-2"} <= set(acc)
    assert {"auroc_disagreement_for_wrong", "accuracy_at_80_coverage", "accuracy_at_90_coverage",
            "wrong_base_rate"} <= set(m["agreement"])
    assert {"recall_at_1", "recall_at_3", "recall_at_5", "answerable_get_gold_passage_alone",
            "unanswerable_get_no_passage", "filters"} == set(m["retrieval"])
    assert all(0 <= m["retrieval"][k] <= 1 for k in ("recall_at_1", "answerable_get_gold_passage_alone"))
    assert set(m["fresh"]) == {"with_retrieval", "without_retrieval"}
    assert set(m["abstention"]) == {"unanswerable_abstained", "answerable_wrongly_abstained"}
    assert {"flip_rate_any_of_4", "accuracy_1_ordering", "accuracy_4_orderings_voted"} <= set(m["order_sensitivity"])
    assert [r["budget_tokens"] for r in m["budget_sweep"]] == [64, 128, 256, 512, 1024]
    assert [r["k"] for r in m["k_sweep"]] == [1, 2, 3, 4, 5, 6]
    assert {"accuracy", "p50_latency_ms", "mean_tokens"} <= set(m["k_sweep"][0])
    for name in ("accuracy", "coverage", "budget_sweep", "k_sweep"):
        assert (tmp_path / "eval" / f"{name}.png").stat().st_size > 0


SCORE_FIELDS = {"questions", "accuracy", "hallucination_rate", "coverage", "selective_accuracy", "answerable_abstained",
                "aurc"}


def external_questions(path: Path, per_kind: int) -> Path:
    """World 0's facts in a phrasing no template uses, with ids of their own: an external question file."""
    world = build_world(0)
    rows = []
    for kind in ("trained", "fresh", "unanswerable"):
        for q in world.questions(kind)[:: 7][:per_kind]:
            rows.append(replace(q, id=f"ext-{q.id}", question=f"tell me , {q.question}", held_out=True))
    save_questions(rows, path)
    return path


def test_demo_eval_scores_an_external_question_file_on_the_scoreboard(tmp_path: Path) -> None:
    """`council eval --questions FILE` on the committed demo council: every scoreboard field, per system, and the
    best single chosen on selection questions that are never scored."""
    questions = external_questions(tmp_path / "external.jsonl", per_kind=5)
    out = tmp_path / "eval"
    rc = council_eval.main(["--questions", str(questions), "--n", "3", "--sweep-n", "1", "--selection-n", "2",
                            "--calibration-n", "2", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    board = m["scoreboard"]
    specialists = ["legal-1", "legal-2", "finance-1", "finance-2", "medical-1", "medical-2"]
    assert set(board["systems"]) == {"council", "best_single", "generalist", *specialists}
    for name, row in board["systems"].items():
        assert set(row["all"]) == SCORE_FIELDS, name
        assert set(row["by_kind"]) == {"trained", "fresh", "unanswerable"}, name
        assert row["all"]["questions"] == 9 and all(k["questions"] == 3 for k in row["by_kind"].values())
        assert set(row["ci95"]) == set(HEADLINE)
        for key in ("accuracy", "hallucination_rate", "coverage"):
            lo, hi = row["ci95"][key]
            assert lo <= row["all"][key] <= hi, (name, key)
        answered = round(row["all"]["coverage"] * 9)
        assert len(row["risk_coverage"]) == answered, name
    # The scored questions are the file's, and the selection questions are others from the same file.
    scored = {r["id"] for r in m["records"]}
    picked = set(board["questions"]["selection_ids"])
    assert len(scored) == 9 and len(picked) == 6
    assert all(i.startswith("ext-") for i in scored | picked)
    assert not scored & picked
    assert board["questions"]["scored"] == {"trained": 3, "fresh": 3, "unanswerable": 3}
    sel = board["best_single"]["selection_accuracy"]
    assert board["best_single"]["name"] == min(sel, key=lambda n: (-sel[n], n))
    assert board["systems"]["best_single"]["all"] == board["systems"][board["best_single"]["name"]]["all"]
    auroc = board["council_disagreement_for_wrong"]
    assert auroc["answered"] == round(board["systems"]["council"]["all"]["coverage"] * 9)
    assert auroc["auroc"] is None or 0 <= auroc["auroc"] <= 1
    matched = board["best_single_at_council_coverage"]
    assert matched["coverage"] >= board["systems"]["council"]["all"]["coverage"] - 1e-9 or matched["coverage"] == (
        board["systems"]["best_single"]["all"]["coverage"])
    # Fixed k vs escalation (the default 1::1) on the same 9 scored questions: fixed k asks all 3 every time.
    esc = board["escalation"]
    assert esc["questions"] == 9 and esc["settings"]["first"] == 1 and esc["settings"]["step"] == 1
    assert esc["fixed_k"]["member_calls_mean"] == 3.0
    assert 1.0 <= esc["escalation"]["member_calls_mean"] <= 3.0
    assert esc["call_reduction"] == 1 - esc["escalation"]["member_calls_mean"] / 3.0
    assert set(esc["escalation"]["scoreboard"]["all"]) == SCORE_FIELDS
    # The same, widening on the top member's own low confidence too: its threshold chosen on unscored questions.
    conf = board["escalation_confidence"]
    assert conf["chosen_on"] == "calibration" and conf["questions"] == 6
    grid = [r["min_confidence"] for r in conf["grid"]]
    assert grid == sorted(CONFIDENCE_GRID)
    fitting = [r["min_confidence"] for r in conf["grid"] if r["fits"]]
    assert conf["min_confidence"] == (fitting[0] if fitting else grid[-1])
    assert conf["table"]["settings"]["min_confidence"] == conf["min_confidence"] and conf["table"]["questions"] == 9
    # The k sweep asks every kind, so its hallucination rate counts answers to unanswerable questions too.
    assert [r["k"] for r in m["k_sweep"]] == [1, 2, 3, 4, 5, 6]
    assert all(0 <= r["hallucination_rate"] <= 1 - r["accuracy"] for r in m["k_sweep"])
    for name in ("risk_coverage", "k_sweep", "accuracy"):
        assert (out / f"{name}.png").stat().st_size > 0
