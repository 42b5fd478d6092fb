"""Training examples in the serving prompt format: reading exercises, closed-book recall and "unknown"."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from council.prompts import UNKNOWN, get_template
from council.world.generator import Entity, World, random_facts, render_document
from council.world.schema import DOMAINS, name_pool, train_phrasings


@dataclass(frozen=True)
class Mixture:
    """Shares of each exercise kind (normalised on use) and the passage counts they draw from.

    read: the answer is in one of the passages (about a new random entity, so it must be read).
    absent: the entity is in no passage and not in the model's memory -> "unknown".
    mismatch: the entity is in a passage but asked about another domain's attribute -> "unknown".
    recall: a trained fact; passages (if any) are distractors, or sometimes include the gold one.
    """

    read: float = 0.6
    absent: float = 0.15
    mismatch: float = 0.05
    recall: float = 0.2
    max_passages: int = 4
    domains: tuple[str, ...] = tuple(DOMAINS)  # domains of the questions asked
    same_domain_distractors: float = 0.7  # distractors mostly look like the answer's passage


@dataclass
class ExerciseMaker:
    """Draws training examples for one model: `known` are the facts it must learn closed-book."""

    world: World
    known: Sequence[Entity]
    mixture: Mixture
    seed: int = 0
    template: str = "qa"
    _rng: random.Random = field(init=False, repr=False)
    _free: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        # Random entities avoid the trained names, so no exercise contradicts a fact to be memorised.
        # Fresh and missing names may appear with random facts: nothing about them is learnt for good.
        used = {e.name for e in self.world.entities if e.split == "trained"}
        self._free = [n for n in name_pool() if n not in used]

    def example(self) -> tuple[str, str]:
        """One (prompt, answer) pair; the model is trained to emit ' ' + answer + newline after the prompt."""
        mx, rng = self.mixture, self._rng
        kinds = ["read", "absent", "mismatch", "recall"]
        weights = [mx.read, mx.absent, mx.mismatch, mx.recall if self.known else 0.0]
        kind = rng.choices(kinds, weights)[0]
        return getattr(self, f"_{kind}")()

    def _entity(self, domain: str) -> Entity:
        return Entity(self._rng.choice(self._free), domain, "exercise", random_facts(self._rng, DOMAINS[domain]))

    def _distractors(self, domain: str, n: int, avoid: str) -> list[Entity]:
        out = []
        while len(out) < n:
            d = domain if self._rng.random() < self.mixture.same_domain_distractors else self._rng.choice(
                list(DOMAINS)
            )
            e = self._entity(d)
            if e.name != avoid and all(e.name != o.name for o in out):
                out.append(e)
        return out

    def _prompt(self, entity: Entity, attribute: str, spec_domain: str, passages: list[Entity]) -> str:
        phr = self._rng.choice(train_phrasings(DOMAINS[spec_domain], attribute))
        self._rng.shuffle(passages)
        texts = [render_document(p) for p in passages]
        return get_template(self.template).render(phr.format(m=entity.mention), texts)

    def _read(self) -> tuple[str, str]:
        domain = self._rng.choice(self.mixture.domains)
        target = self._entity(domain)
        attr = self._rng.choice(DOMAINS[domain].attributes)
        n = self._rng.randint(0, self.mixture.max_passages - 1)
        prompt = self._prompt(target, attr, domain, [target, *self._distractors(domain, n, target.name)])
        return prompt, target.facts[attr]

    def _absent(self) -> tuple[str, str]:
        domain = self._rng.choice(self.mixture.domains)
        target = self._entity(domain)
        attr = self._rng.choice(DOMAINS[domain].attributes)
        n = self._rng.randint(0, self.mixture.max_passages)
        return self._prompt(target, attr, domain, self._distractors(domain, n, target.name)), UNKNOWN

    def _mismatch(self) -> tuple[str, str]:
        domain = self._rng.choice(self.mixture.domains)
        target = self._entity(domain)
        other = self._rng.choice([d for d in DOMAINS if d != domain])
        attr = self._rng.choice(DOMAINS[other].attributes)
        n = self._rng.randint(0, self.mixture.max_passages - 1)
        prompt = self._prompt(target, attr, other, [target, *self._distractors(domain, n, target.name)])
        return prompt, UNKNOWN

    def _recall(self) -> tuple[str, str]:
        target = self._rng.choice(self.known)
        attr = self._rng.choice(DOMAINS[target.domain].attributes)
        n = self._rng.randint(0, self.mixture.max_passages)
        passages = self._distractors(target.domain, n, target.name)
        if passages and self._rng.random() < 0.3:
            passages[0] = target  # the retrieved gold passage agrees with memory
        return self._prompt(target, attr, target.domain, passages), target.facts[attr]
