"""The reading drill's pieces: attribute weights for read turns, error-weighted focus, one-skill probes."""

from __future__ import annotations

from collections import Counter

from council.jobs.drill import focus
from council.world.exercises import ExerciseMaker, Mixture
from council.world.generator import build_world
from council.world.schema import DOMAINS

READ_ONLY = Mixture(read=1.0, absent=0.0, mismatch=0.0, recall=0.0, min_passages=1, max_passages=1,
                    domains=("finance",), same_domain_distractors=1.0)  # fmt: skip


def _asked(mixture: Mixture, n: int = 300) -> Counter[str]:
    """Which finance attribute each read turn's answer is (values of the three attributes never overlap)."""
    values = {v: a for a, vs in DOMAINS["finance"].values.items() for v in vs}
    maker = ExerciseMaker(build_world(0), [], mixture, seed=1)
    return Counter(values[maker.example()[1]] for _ in range(n))


def test_read_focus_weights_the_attributes_read_turns_ask() -> None:
    assert set(_asked(READ_ONLY)) == {"sector", "revenue", "ceo"}
    only_ceo = Mixture(**{**READ_ONLY.__dict__, "read_focus": (("ceo", 1.0), ("sector", 0.0), ("revenue", 0.0))})
    assert _asked(only_ceo) == Counter(ceo=300)
    # An attribute the focus does not name weighs 1: ceo 1, revenue 1, sector 0.
    mostly = _asked(Mixture(**{**READ_ONLY.__dict__, "read_focus": (("sector", 0.0),)}))
    assert set(mostly) == {"revenue", "ceo"}


def test_focus_weights_each_skill_by_its_error_over_a_base() -> None:
    assert focus({"sector": 1.0, "revenue": 0.75, "ceo": 0.0}, base=0.5) == (
        ("sector", 0.5), ("revenue", 0.75), ("ceo", 1.5),
    )


def test_a_reading_probe_asks_a_new_entity_whose_passage_holds_the_answer() -> None:
    world = build_world(0)
    maker = ExerciseMaker(world, [], Mixture(domains=("medical",)), seed=3)
    names = {e.name for e in world.entities if e.split == "trained"}
    for n in (1, 3):
        prompt, answer = maker.reading("medical", "dose", passages=n)
        assert prompt.count("<passage") == n
        asked = prompt.rsplit("question :", 1)[1]
        assert not any(f" {name} " in asked for name in names)  # never a trained (memorised) entity
        subject = next(w for w in asked.split() if w not in {"what", "is", "the", "dose", "of", "how", "much",
                                                               "one", "?", "given", "usual"})
        assert f"The dose of {subject} is {answer}." in prompt  # its own passage, whatever the distractors say
