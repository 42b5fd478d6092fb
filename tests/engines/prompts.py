"""Demo-style prompts for the engine tests: legal questions of the demo world, closed-book and with a passage."""

from __future__ import annotations

from council.backends.tokens import TokenizerCounter
from council.world import build_world


def demo_prompts(tokens: TokenizerCounter, n: int = 2) -> list[str]:
    """`n` trained legal questions closed-book, `n` fresh ones with their gold passage, one unanswerable."""
    world = build_world(0)
    docs = {d.id: d.text for d in world.documents}
    trained = [q for q in world.questions("trained", held_out=False) if q.domain == "legal"][:n]
    fresh = [q for q in world.questions("fresh") if q.domain == "legal" and q.doc_id in docs][:n]
    unanswerable = [q for q in world.questions("unanswerable") if q.domain == "legal"][:1]
    prompts = [tokens.render_prompt(q.question, []) for q in trained]
    prompts += [tokens.render_prompt(q.question, [docs[q.doc_id or ""]]) for q in fresh]
    prompts += [tokens.render_prompt(q.question, []) for q in unanswerable]
    return prompts
