"""Build a seeded knowledge world: entities, one document per entity, questions with gold answers and splits."""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping
from dataclasses import MISSING, asdict, dataclass, field
from pathlib import Path
from typing import Any

from council.prompts import UNKNOWN
from council.world.schema import DOMAINS, HELD_OUT, DomainSpec, name_pool

FORMAT_VERSION = 1


@dataclass(frozen=True)
class WorldSize:
    """How many entities of each kind a world has per domain."""

    # Small on purpose: the demo's specialists are trained on 2 shared CPU cores.
    trained: int = 32  # entities whose facts the specialists learn in their weights
    fresh: int = 16  # entities whose facts exist only in the document store
    missing: int = 12  # names that exist nowhere: questions about them must be answered "unknown"
    mismatched: int = 6  # real entities asked about another domain's attribute: also "unknown"


@dataclass(frozen=True)
class Entity:
    """One fictional statute, company or drug with its facts."""

    name: str
    domain: str
    split: str
    facts: Mapping[str, str]

    @property
    def mention(self) -> str:
        return DOMAINS[self.domain].mention.format(n=self.name)


@dataclass(frozen=True)
class WorldDocument:
    """One passage of the corpus: every fact about one entity, as plain sentences."""

    id: str
    domain: str
    entity: str
    split: str
    text: str


@dataclass(frozen=True)
class Question:
    """A question with its gold answer. `held_out` marks a phrasing never used in training."""

    id: str
    domain: str
    entity: str
    attribute: str
    question: str
    answer: str
    split: str
    held_out: bool = False
    doc_id: str | None = None  # the gold passage, when one exists


@dataclass(frozen=True)
class World:
    """Everything one seed produces."""

    seed: int
    entities: tuple[Entity, ...]
    documents: tuple[WorldDocument, ...]
    all_questions: tuple[Question, ...] = field(repr=False)

    def questions(self, split: str | None = None, held_out: bool | None = None) -> list[Question]:
        """Questions of one split (all when None), optionally only held-out or only training phrasings."""
        return [
            q
            for q in self.all_questions
            if (split is None or q.split == split) and (held_out is None or q.held_out == held_out)
        ]

    def entities_of(self, split: str, domain: str | None = None) -> list[Entity]:
        """Entities of one split, optionally of one domain."""
        return [e for e in self.entities if e.split == split and (domain is None or e.domain == domain)]

    def save(self, folder: str | Path) -> Path:
        """Write world.json (seed, entities), documents.jsonl and questions.jsonl into `folder`."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT_VERSION, "seed": self.seed, "entities": [asdict(e) for e in self.entities]}
        (out / "world.json").write_text(json.dumps(meta, indent=1))
        _write_jsonl(out / "documents.jsonl", (asdict(d) for d in self.documents))
        _write_jsonl(out / "questions.jsonl", (asdict(q) for q in self.all_questions))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> World:
        """Read a folder written by `save`."""
        src = Path(folder)
        meta = json.loads((src / "world.json").read_text())
        entities = tuple(Entity(**e) for e in meta["entities"])
        docs = tuple(WorldDocument(**d) for d in _read_jsonl(src / "documents.jsonl"))
        return cls(meta["seed"], entities, docs, tuple(load_questions(src / "questions.jsonl")))


SPLITS = ("trained", "fresh", "unanswerable")


def load_questions(path: str | Path) -> list[Question]:
    """Read a questions JSONL file (one Question object per line; `held_out`/`doc_id` optional). A line that is
    not one raises ValueError naming the file, the line and what is wrong with it."""
    fields = set(Question.__dataclass_fields__)
    required = {n for n, f in Question.__dataclass_fields__.items() if f.default is MISSING}
    out = []
    lines = Path(path).read_text().splitlines()
    for no, line in ((i, s) for i, s in enumerate(lines, 1) if s.strip()):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{no}: not JSON ({e.msg})") from None
        problem = (
            "not a JSON object" if not isinstance(row, dict)
            else f"missing {sorted(required - set(row))}" if required - set(row)
            else f"unknown fields {sorted(set(row) - fields)}" if set(row) - fields
            else f"split {row['split']!r} is not one of {list(SPLITS)}" if row["split"] not in SPLITS
            else None
        )  # fmt: skip
        if problem:
            raise ValueError(f"{path}:{no}: {problem}; a question has the fields {sorted(fields)}")
        out.append(Question(**row))
    return out


def save_questions(questions: Iterable[Question], path: str | Path) -> None:
    """Write questions as JSONL, the format `council eval --questions` reads."""
    _write_jsonl(Path(path), (asdict(q) for q in questions))


def _write_jsonl(path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def random_facts(rng: random.Random, spec: DomainSpec) -> dict[str, str]:
    """One value per attribute, drawn from the domain's pools."""
    return {attr: rng.choice(vals) for attr, vals in spec.values.items()}


def render_document(entity: Entity) -> str:
    """The entity's passage: an intro sentence, then one sentence per fact, each naming the entity."""
    spec = DOMAINS[entity.domain]
    m = entity.mention
    big = m[0].upper() + m[1:]
    # No intro sentence ("X is a statute."): every token of context costs training time on a CPU.
    parts = [spec.sentences[a].format(m=m, M=big, v=v) for a, v in entity.facts.items()]
    return " ".join(parts)


def doc_id(entity: Entity) -> str:
    return f"{entity.domain}-{entity.name}"


def build_world(seed: int, size: WorldSize | None = None) -> World:
    """The world of one seed: same seed, same world; another seed, another world of the same shape."""
    size = size or WorldSize()
    rng = random.Random(seed)
    per_domain = size.trained + size.fresh + size.missing
    names = rng.sample(name_pool(), per_domain * len(DOMAINS))
    entities: list[Entity] = []
    for i, (dname, spec) in enumerate(DOMAINS.items()):
        mine = names[i * per_domain : (i + 1) * per_domain]
        for j, name in enumerate(mine):
            split = "trained" if j < size.trained else "fresh" if j < size.trained + size.fresh else "missing"
            entities.append(Entity(name, dname, split, random_facts(rng, spec)))
    real = [e for e in entities if e.split != "missing"]
    docs = tuple(WorldDocument(doc_id(e), e.domain, e.name, e.split, render_document(e)) for e in real)
    questions = _answerable(entities) + _unanswerable(rng, entities, size.mismatched)
    return World(seed, tuple(entities), docs, tuple(questions))


def _answerable(entities: list[Entity]) -> list[Question]:
    out = []
    for e in entities:
        if e.split == "missing":
            continue
        spec = DOMAINS[e.domain]
        for attr, value in e.facts.items():
            phr = spec.phrasings[attr]
            for k, template in enumerate(phr):
                out.append(
                    Question(
                        f"{e.split}-{e.domain}-{e.name}-{attr}-{k}", e.domain, e.name, attr,
                        template.format(m=e.mention), value, e.split,
                        held_out=k >= len(phr) - HELD_OUT, doc_id=doc_id(e),
                    )
                )
    return out


def _unanswerable(rng: random.Random, entities: list[Entity], mismatched: int) -> list[Question]:
    """Questions about names that exist nowhere, and about attributes another domain's entities have."""
    out = []
    for e in entities:
        if e.split != "missing":
            continue
        spec = DOMAINS[e.domain]
        for attr in spec.attributes:
            k = rng.randrange(len(spec.phrasings[attr]))
            q = spec.phrasings[attr][k].format(m=e.mention)
            out.append(Question(f"unanswerable-{e.domain}-{e.name}-{attr}-{k}", e.domain, e.name, attr, q,
                                UNKNOWN, "unanswerable", held_out=k >= len(spec.phrasings[attr]) - HELD_OUT))
    for dname in DOMAINS:
        real = [e for e in entities if e.domain == dname and e.split in ("trained", "fresh")]
        for e in rng.sample(real, mismatched):
            other = DOMAINS[rng.choice([d for d in DOMAINS if d != dname])]
            attr = rng.choice(other.attributes)
            k = rng.randrange(len(other.phrasings[attr]))
            q = other.phrasings[attr][k].format(m=e.mention)
            out.append(Question(f"unanswerable-{dname}-{e.name}-{attr}-{k}", dname, e.name, attr, q, UNKNOWN,
                                "unanswerable", held_out=k >= len(other.phrasings[attr]) - HELD_OUT,
                                doc_id=doc_id(e)))
    return out
