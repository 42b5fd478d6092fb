"""`council eval` on a small question set writes metrics.json with every figure issue 4 asks for, and plots."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from council.jobs import eval as council_eval
from council.jobs.specialize import Phase, Plan, specialize

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def tiny_council(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("council")
    tiny = {"reading_warmup": Phase(steps=1, batch=2), "general": Phase(steps=2, batch=2)}
    specialize(replace(Plan(), **tiny, branch=Phase(steps=1, batch=2), probe=False), out)
    return out


def test_eval_writes_every_metric(tiny_council: Path, tmp_path: Path) -> None:
    questions = tmp_path / "q.jsonl"
    from council.world import build_world, save_questions

    save_questions(build_world(0).all_questions, questions)
    rc = council_eval.main([
        "--config", str(tiny_council / "council.yaml"), "--generalist", str(tiny_council / "models" / "generalist"),
        "--questions", str(questions), "--n", "2", "--sweep-n", "2", "--out", str(tmp_path / "eval"),
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
