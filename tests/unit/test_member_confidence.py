"""A member's own confidence (issue 19): the geometric-mean probability of its greedy answer's tokens, as generate
gives it, equals the one a step-by-step forward pass computes; a trained specialist is surer of a fact it learnt
than a random model is of anything."""

from __future__ import annotations

import asyncio
import math
from dataclasses import asdict
from pathlib import Path

import pytest

from council.backends.engine import EngineRequest, Sampling, sequence_confidence
from council.backends.hf_engine import TransformersEngine
from council.backends.transformers import TransformersSpecialist
from council.config import CouncilConfig
from council.testing.tiny import build_tiny_gpt2, tiny_specialist_config
from council.types import MemberAnswer
from council.world import build_world

DEMO = Path(__file__).resolve().parents[2] / "council" / "demo" / "council.yaml"
PROMPTS = ["the guild was founded by", "rain fell on the harbour town and", "what ?"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TransformersSpecialist:
    path = build_tiny_gpt2(tmp_path_factory.mktemp("tiny") / "gpt2", init_std=0.3)
    return TransformersSpecialist(tiny_specialist_config(path, generation={"max_new_tokens": 6, "stop": []}))


def manual_greedy(spec: TransformersSpecialist, prompt: str, steps: int) -> tuple[list[int], list[float]]:
    """Greedy decoding by one full forward pass per token: the chosen ids and their probabilities."""
    import torch

    ids = spec.encode_prompt(prompt)
    chosen: list[int] = []
    probs: list[float] = []
    with torch.inference_mode():
        for _ in range(steps):
            logits = spec.model(torch.tensor([ids + chosen])).logits[0, -1]
            p = torch.softmax(logits.double(), dim=-1)
            token = int(torch.argmax(p))
            if token == spec.tokenizer.eos_token_id:
                break
            chosen.append(token)
            probs.append(float(p[token]))
    return chosen, probs


def test_confidence_is_the_answer_tokens_probability_from_a_forward_pass(tiny: TransformersSpecialist) -> None:
    gens = tiny.generate_texts(PROMPTS)  # one padded batch: padding must not shift the probabilities
    seen = set()
    for prompt, gen in zip(PROMPTS, gens, strict=True):
        chosen, probs = manual_greedy(tiny, prompt, tiny.max_new_tokens)
        assert gen.completion_tokens == len(chosen)
        assert gen.text == tiny.tokenizer.decode(chosen, skip_special_tokens=True).strip()
        if not chosen:
            assert gen.confidence is None
            continue
        expected = math.exp(sum(math.log(p) for p in probs) / len(probs))
        assert gen.confidence is not None and 0 < gen.confidence <= 1
        assert gen.confidence == pytest.approx(expected, rel=1e-4)
        seen.add(round(gen.confidence, 6))
    assert len(seen) >= 2, "every prompt got the same confidence: it is not read from the answer"


def test_the_engine_reports_the_same_confidence(tiny: TransformersSpecialist) -> None:
    engine = TransformersEngine.from_specialist(tiny)
    outs = asyncio.run(engine.generate([EngineRequest(p, Sampling(max_tokens=6)) for p in PROMPTS]))
    for out, gen in zip(outs, tiny.generate_texts(PROMPTS), strict=True):
        assert out.to_generation().confidence == pytest.approx(gen.confidence, rel=1e-6)


def test_sequence_confidence_needs_a_token() -> None:
    assert sequence_confidence([math.log(0.5), math.log(0.125), -3.0], 2) == pytest.approx(0.25)
    assert sequence_confidence([-1.0], 0) is None


def test_a_trained_specialist_is_surer_of_its_fact_than_a_random_model(tiny: TransformersSpecialist) -> None:
    config = CouncilConfig.from_yaml(DEMO)
    legal = TransformersSpecialist(next(s for s in config.specialists if s.name == "legal-2"))
    world = build_world(0)
    passages = {d.id: d.text for d in world.documents}
    q = next(q for q in world.questions("trained", held_out=False) if q.domain == "legal")
    [trained] = legal.generate_batch([(q.question, [passages[q.doc_id or ""]])])
    [random_model] = tiny.generate_batch([(q.question, [passages[q.doc_id or ""]])])
    assert trained.text == q.answer
    assert trained.confidence > 0.9 > random_model.confidence  # a None confidence fails the comparison too


def test_member_answer_carries_confidence_through_its_dict() -> None:
    answer = MemberAnswer("legal-1", 0.8, answer="suspension", confidence=0.97)
    assert MemberAnswer.from_dict(asdict(answer)) == answer
    assert MemberAnswer.from_dict({"name": "x", "route_score": 0.1}).confidence is None


def test_the_council_answer_carries_each_members_confidence(tiny: TransformersSpecialist) -> None:
    """The pipeline copies the winning generation's confidence into the member's answer (what the eval reads)."""
    from council.local import build_local_council
    from council.types import AskRequest

    config = CouncilConfig.from_dict({
        "specialists": [tiny_specialist_config(Path(tiny.config.model), generation={"max_new_tokens": 6, "stop": []})
                        .model_dump(mode="json")],
        "router": {"k": 1},
    })  # fmt: skip
    council = build_local_council(config, specialists={tiny.name: tiny}, with_retrieval=False)
    answer = asyncio.run(council.ask(AskRequest(question=PROMPTS[0], use_retrieval=False)))
    [member] = answer.members
    [direct] = tiny.generate_batch([(PROMPTS[0], [])])
    assert member.answer == direct.text
    assert 0 < direct.confidence <= 1  # not None: approx(None) would match a None
    assert member.confidence == pytest.approx(direct.confidence, rel=1e-6)
