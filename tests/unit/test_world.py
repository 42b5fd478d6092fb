"""The synthetic world: deterministic per seed, disjoint splits, and a tokenizer that covers every seed."""

from __future__ import annotations

from pathlib import Path

import pytest

from council.prompts import UNKNOWN, get_template
from council.world import build_tokenizer, build_world, load_questions, save_questions
from council.world.exercises import ExerciseMaker, Mixture
from council.world.generator import World


def test_same_seed_same_world_other_seed_other_world() -> None:
    a, b, c = build_world(3), build_world(3), build_world(4)
    assert a == b
    assert {e.name for e in a.entities} != {e.name for e in c.entities}
    assert len(a.documents) == len(c.documents) and len(a.all_questions) == len(c.all_questions)


def test_splits_do_not_overlap() -> None:
    w = build_world(0)
    by_split = {s: {e.name for e in w.entities if e.split == s} for s in ("trained", "fresh", "missing")}
    assert not by_split["trained"] & by_split["fresh"]
    assert not by_split["missing"] & (by_split["trained"] | by_split["fresh"])
    ids = [q.id for q in w.all_questions]
    assert len(ids) == len(set(ids))
    assert all(q.answer == UNKNOWN for q in w.questions("unanswerable"))
    assert {q.entity for q in w.questions("fresh")} == by_split["fresh"]
    assert w.questions("trained", held_out=True) and w.questions("trained", held_out=False)


def test_every_answer_is_in_its_gold_document() -> None:
    w = build_world(1)
    docs = {d.id: d.text.lower() for d in w.documents}
    for q in w.questions("trained") + w.questions("fresh"):
        assert q.answer in docs[q.doc_id]
        assert q.entity in q.question


@pytest.mark.parametrize("seed", [0, 1, 7, 12345])
def test_tokenizer_covers_every_world_without_unk(seed: int) -> None:
    tok, w = build_tokenizer(), build_world(seed)
    texts = [d.text for d in w.documents] + [q.question + " " + q.answer for q in w.all_questions]
    texts.append(get_template("qa").render(w.all_questions[0].question, [d.text for d in w.documents[:4]]))
    texts += [p + " " + a for p, a in (ExerciseMaker(w, w.entities_of("trained"), Mixture()).example()
                                       for _ in range(50))]
    for t in texts:
        assert tok.unk_token_id not in tok(t)["input_ids"], t


def test_entity_names_are_single_tokens() -> None:
    tok, w = build_tokenizer(), build_world(0)
    for e in w.entities:
        assert len(tok(e.name, add_special_tokens=False)["input_ids"]) == 1


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    w = build_world(2)
    w.save(tmp_path)
    assert World.load(tmp_path) == w
    assert load_questions(tmp_path / "questions.jsonl") == list(w.all_questions)


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"id": "q1", "question": "what ?"', "not JSON"),
        ('["q1"]', "not a JSON object"),
        ('{"id": "q1", "question": "what ?", "answer": "x"}', "missing ['attribute', 'domain', 'entity', 'split']"),
        ('{"id": "q1", "domain": "legal", "entity": "e", "attribute": "a", "question": "?", "answer": "x", '
         '"split": "trained", "gold": "x"}', "unknown fields ['gold']"),
        ('{"id": "q1", "domain": "legal", "entity": "e", "attribute": "a", "question": "?", "answer": "x", '
         '"split": "held-out"}', "split 'held-out' is not one of ['trained', 'fresh', 'unanswerable']"),
    ],
)
def test_a_bad_question_line_names_its_line_and_problem(tmp_path: Path, line: str, problem: str) -> None:
    good = build_world(0).all_questions[0]
    path = tmp_path / "q.jsonl"
    save_questions([good], path)
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError) as info:
        load_questions(path)
    assert str(info.value).startswith(f"{path}:2: {problem}")  # the first line is good: the second is named
