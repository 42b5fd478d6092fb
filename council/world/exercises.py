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
    min_passages: int = 0
    domains: tuple[str, ...] = tuple(DOMAINS)  # domains of the questions asked
    same_domain_distractors: float = 0.7  # distractors mostly look like the answer's passage
    # Weights of the attributes a "read" turn asks about ((attribute, weight) pairs; unnamed ones weigh 1, none
    # given: uniform). A reading drill (council.jobs.drill) weights the attributes a reader gets wrong.
    read_focus: tuple[tuple[str, float], ...] = ()


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
        return self.episode(1)[0]

    def episode(self, questions: int) -> list[tuple[str, str]]:
        """Several questions over one set of passages, as (text, answer) turns.

        The first turn is the exact serving prompt; later turns only add "question : ...\nanswer :" after the
        previous answer. Serving stops at the first newline, so it never sees them, but training gets several
        supervised answers per forward pass: the cheapest way to more signal per CPU second.
        """
        rng, mx = self._rng, self.mixture
        domain = rng.choice(mx.domains)
        n = rng.randint(mx.min_passages, mx.max_passages)
        passages = self._distractors(domain, n, avoid="")
        if passages and self.known and rng.random() < 0.2:
            passages[0] = rng.choice(self.known)  # a retrieved passage that agrees with memory
        rng.shuffle(passages)
        turns = [self._turn(passages, domain) for _ in range(questions)]
        template = get_template(self.template)
        first = template.render(turns[0][0], [render_document(p) for p in passages])
        follow = template.body.split("{passages}", 1)[1]
        return [(first, turns[0][1])] + [(follow.format(question=q), a) for q, a in turns[1:]]

    def _turn(self, passages: list[Entity], domain: str) -> tuple[str, str]:
        mx, rng = self.mixture, self._rng
        kinds = ["read", "absent", "mismatch", "recall"]
        weights = [mx.read if passages else 0.0, mx.absent, mx.mismatch if passages else 0.0,
                   mx.recall if self.known else 0.0]
        kind = rng.choices(kinds, weights)[0]
        present = {p.name for p in passages}
        if kind == "read":
            target = rng.choice(passages)
            attrs = DOMAINS[target.domain].attributes
            focus = dict(mx.read_focus)
            attr = rng.choices(attrs, [focus.get(a, 1.0) for a in attrs])[0] if focus else rng.choice(attrs)
            return self._question(target, attr, target.domain), target.facts[attr]
        if kind == "absent":
            target = self._entity(domain)
            while target.name in present:
                target = self._entity(domain)
            return self._question(target, rng.choice(DOMAINS[domain].attributes), domain), UNKNOWN
        if kind == "mismatch":
            target = rng.choice(passages)
            other = rng.choice([d for d in DOMAINS if d != target.domain])
            return self._question(target, rng.choice(DOMAINS[other].attributes), other), UNKNOWN
        target = rng.choice(self.known)
        attr = rng.choice(DOMAINS[target.domain].attributes)
        return self._question(target, attr, target.domain), target.facts[attr]

    def reading(self, domain: str, attribute: str, passages: int = 1) -> tuple[str, str]:
        """(prompt, answer): `attribute` of a new entity of `domain`, its passage among `passages - 1` distractors
        (the drill's probe of one reading skill: random facts, never a world document or question)."""
        target = self._entity(domain)
        chosen = [target, *self._distractors(domain, passages - 1, avoid=target.name)]
        self._rng.shuffle(chosen)
        question = self._question(target, attribute, domain)
        prompt = get_template(self.template).render(question, [render_document(p) for p in chosen])
        return prompt, target.facts[attribute]

    def _question(self, entity: Entity, attribute: str, spec_domain: str) -> str:
        phr = self._rng.choice(train_phrasings(DOMAINS[spec_domain], attribute))
        return phr.format(m=entity.mention)

    def _entity(self, domain: str) -> Entity:
        return Entity(self._rng.choice(self._free), domain, "exercise", random_facts(self._rng, DOMAINS[domain]))

    def _distractors(self, domain: str, n: int, avoid: str) -> list[Entity]:
        out: list[Entity] = []
        while len(out) < n:
            same = self._rng.random() < self.mixture.same_domain_distractors
            e = self._entity(domain if same else self._rng.choice(list(DOMAINS)))
            if e.name != avoid and all(e.name != o.name for o in out):
                out.append(e)
        return out
