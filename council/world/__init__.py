"""The synthetic knowledge world used by the demo and the evaluation (see generator.py for the format)."""

from council.world.generator import (
    Entity,
    Question,
    World,
    WorldDocument,
    WorldSize,
    build_world,
    load_questions,
    save_questions,
)
from council.world.tokenizer import build_tokenizer

__all__ = [
    "Entity",
    "Question",
    "World",
    "WorldDocument",
    "WorldSize",
    "build_tokenizer",
    "build_world",
    "load_questions",
    "save_questions",
]
