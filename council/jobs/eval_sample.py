"""What an eval asks: a sample of a world's questions per kind, and a fresh store holding the world's corpus.

Shared by `council.jobs.eval` and `council.jobs.eval_escalation`, so both ask the same questions of the same store.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from council.config import CouncilConfig
from council.world.generator import Question, World

if TYPE_CHECKING:
    from council.backends.chroma import ChromaRetriever

__all__ = ["DEMO_DIR", "TENANT", "open_store", "sample_questions"]

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"
TENANT = "public"


def sample_questions(questions: Sequence[Question], world_seed: int, trained_seed: int, n: int, seed: int) -> dict:
    """Up to `n` questions per kind. On the training world, trained facts are asked in held-out phrasings only;
    on any other world every fact is new to the models, so its trained split counts as fresh."""
    rng = random.Random(seed)
    same = world_seed == trained_seed

    def pick(split: str, held: bool | None = None) -> list[Question]:
        pool = [q for q in questions if q.split == split and (held is None or q.held_out == held)]
        return rng.sample(pool, min(n, len(pool)))

    if same:
        return {"trained": pick("trained", True), "fresh": pick("fresh"), "unanswerable": pick("unanswerable")}
    fresh = [replace(q, split="fresh") for q in pick("trained") + pick("fresh")]
    return {"trained": [], "fresh": rng.sample(fresh, min(n, len(fresh))), "unanswerable": pick("unanswerable")}


def open_store(config: CouncilConfig, world: World, folder: Path) -> tuple[CouncilConfig, ChromaRetriever]:
    """A fresh embedded Chroma in `folder` holding the world's corpus (source = document id)."""
    from council.backends.chroma import ChromaRetriever

    retrieval = config.retrieval.model_copy(update={"path": str(folder), "host": None})
    config = config.model_copy(update={"retrieval": retrieval})
    retriever = ChromaRetriever(retrieval)
    for domain in sorted({d.domain for d in world.documents}):
        docs = [(d.id, d.text) for d in world.documents if d.domain == domain]
        retriever.ingest_texts(docs, tenant=TENANT, domain=domain)
    return config, retriever
