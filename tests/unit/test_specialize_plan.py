"""The training recipe's arithmetic: the generalist's curriculum and compute-parity step budget."""

from __future__ import annotations

import pytest

from council.jobs.specialize import READ_ONE, SKILLS, Plan, generalist_phases, generalist_steps


def test_the_recipe_reads_one_passage_first_then_learns_skills_then_facts() -> None:
    plan = Plan()
    assert plan.reading_warmup.mixture == READ_ONE and READ_ONE.max_passages == 1 and READ_ONE.read == 1.0
    assert plan.general.mixture == SKILLS and SKILLS.recall == 0.0  # the shared phase memorises no fact
    assert plan.branch.mixture.recall > 0 and plan.general_recall_fraction == 0.0
    assert plan.general_steps == plan.reading_warmup.steps + plan.general.steps


@pytest.mark.parametrize("steps", [3, 40, 325, 5000])
def test_generalist_follows_the_same_curriculum_scaled_to_its_budget(steps: int) -> None:
    plan = Plan()
    phases = generalist_phases(plan, steps)
    assert [p.mixture for p in phases] == [READ_ONE, SKILLS, plan.branch.mixture]
    assert sum(p.steps for p in phases) == steps and all(p.steps >= 1 for p in phases)
    council = plan.general_steps + plan.branch.steps * plan.specialists_per_domain * 3
    if steps >= 100:  # each phase gets its share of the council's schedule
        assert phases[0].steps == pytest.approx(steps * plan.reading_warmup.steps / council, abs=1)


def test_generalist_gets_the_councils_training_compute() -> None:
    plan = Plan()
    council = plan.general_steps + plan.branch.steps * 6
    # 8x the non-embedding parameters per step: an eighth of the council's steps.
    assert generalist_steps(plan, spec_flops=1_000, gen_flops=8_000) == round(council / 8)
