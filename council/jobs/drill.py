"""A reading drill for trained specialists: measure each reading skill (one attribute read from one passage about
a new entity), then train on the skills the reader gets wrong, with recall and "unknown" kept in the mixture.

Why: the shared phase's mixture asks every attribute equally, and a skill the model has not picked up early can
stay missing for good. The demo's readers never read a person's name (a finance "ceo": 0 of 64 fresh facts with
their passage alone, every member and the general phase; the output did not depend on the passage at all),
while 150 steps asking only that attribute taught it (0.00 -> 0.83). The drill turns that into a rule:
`read_focus` weights each attribute by the reader's own error on exercise probes (entities with random facts, drawn
as the training exercises draw them: never a world document or question), on top of a base weight every skill keeps
so that none is forgotten.

    python -m council.jobs.drill --models council/demo/models --only finance-1 finance-2
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.jobs.lm import Phase, exact_match, load_checkpoint, save_checkpoint, train_phase
from council.jobs.specialize import Member as MemberSpec
from council.jobs.specialize import entities_named, member_report
from council.world.exercises import ExerciseMaker, Mixture
from council.world.generator import build_world
from council.world.schema import DOMAINS

if TYPE_CHECKING:
    from council.world.generator import World

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DrillPlan:
    """The drill's recipe: `phase.mixture` is kept except for `read_focus`, which the probes set per member."""

    phase: Phase = Phase(
        steps=250, batch=32, lr=1e-3, warmup=10,
        mixture=Mixture(read=0.5, absent=0.2, mismatch=0.05, recall=0.25, min_passages=0, max_passages=3),
    )  # fmt: skip
    # A skill read below `alone_below` first gets a phase of its own (with recall, so memory is kept), as reading
    # itself was first taught alone: weighted into the mixture at 55 % of the read turns, finance-1's ceo stayed
    # at 0.00 after 250 steps.
    alone: Phase = Phase(
        steps=150, batch=32, lr=1e-3, warmup=10,
        mixture=Mixture(read=0.75, absent=0.0, mismatch=0.0, recall=0.25, min_passages=1, max_passages=1),
    )  # fmt: skip
    alone_below: float = 0.5
    # The other skills' weight in that phase: at 0, finance-1 learnt ceo (0.00 -> 1.00) and lost sector (0.96 -> 0.10).
    alone_others: float = 0.25
    probes: int = 48  # reading probes per attribute
    # Every skill keeps this weight, plus its error: a skill read perfectly still gets a third of a missing one's
    # practice (at 0.05 a drill forgot what it did not practise: medical-1 side effects 0.98 -> 0.35).
    base: float = 0.5
    threads: int = 1


def reading_skills(model: Any, tok: Any, world: World, domain: str, n: int, seed: int) -> dict[str, float]:
    """Greedy exact-match of one passage read, per attribute of `domain` (new random entities)."""
    maker = ExerciseMaker(world, [], Mixture(domains=(domain,)), seed=seed)
    attributes = DOMAINS[domain].attributes
    return {a: exact_match(model, tok, [maker.reading(domain, a) for _ in range(n)]) for a in attributes}


def focus(skills: dict[str, float], base: float) -> tuple[tuple[str, float], ...]:
    """Each attribute weighted `base` + its reading error."""
    return tuple((a, round(base + 1.0 - acc, 3)) for a, acc in skills.items())


def drill_member(path: Path, out: Path, plan: DrillPlan) -> dict:
    """Drill one specialist checkpoint (its training.json names its domain, facts and seed); save it to `out`."""
    import torch

    torch.set_num_threads(plan.threads)
    started = time.time()
    meta = json.loads((path / "training.json").read_text())
    member = MemberSpec(**{**meta["member"], "known": tuple(meta["member"]["known"])})
    if member.domain is None:
        raise ValueError(f"{path}: the drill is for specialists; {member.name} has no domain")
    world = build_world(int(meta["plan"]["world_seed"]))
    model, tok = load_checkpoint(path)
    before = reading_skills(model, tok, world, member.domain, plan.probes, member.seed + 500)
    known = entities_named(world, member.known)
    losses: list[float] = []
    skills, alone = before, [a for a, acc in before.items() if acc < plan.alone_below]
    if alone:
        only = tuple((a, 1.0 if a in alone else plan.alone_others) for a in before)
        phase = replace(plan.alone, mixture=replace(plan.alone.mixture, domains=(member.domain,), read_focus=only))
        maker = ExerciseMaker(world, known, phase.mixture, seed=member.seed + 700)
        losses += train_phase(model, tok, maker, phase, f"drill {member.name} alone")
        # The mixture's weights follow the skills as they are now: learning one can unsettle another.
        skills = reading_skills(model, tok, world, member.domain, plan.probes, member.seed + 600)
    weights = focus(skills, plan.base)
    phase = replace(plan.phase, mixture=replace(plan.phase.mixture, domains=(member.domain,), read_focus=weights))
    maker = ExerciseMaker(world, known, phase.mixture, seed=member.seed + 700 + (1 if alone else 0))  # phases in turn
    losses += train_phase(model, tok, maker, phase, f"drill {member.name} mixed")
    after = reading_skills(model, tok, world, member.domain, plan.probes, member.seed + 500)
    probes = member_report(model, tok, world, member)  # the checkpoint's own report now describes the drilled model
    report = {
        "name": member.name, "steps": phase.steps + (plan.alone.steps if alone else 0), "alone": alone,
        "reading_after_alone": skills if alone else None, "read_focus": dict(weights), "reading_before": before,
        "reading_after": after, "train_seconds": round(time.time() - started, 1),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])), **probes,
    }
    drills = [*meta.get("drills", []), {"plan": asdict(plan), **report}]
    save_checkpoint(model, tok, out, {**meta, **probes, "drills": drills})
    log.info("drilled %s: %s", member.name, report)
    return report


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m council.jobs.drill", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--models", type=Path, required=True, help="folder of specialist checkpoints (<name>/)")
    p.add_argument("--out", type=Path, default=None, help="where the drilled checkpoints go (default: in place)")
    p.add_argument("--only", nargs="*", default=[], help="drill only these members (names)")
    p.add_argument("--steps", type=int, default=DrillPlan.phase.steps)
    p.add_argument("--lr", type=float, default=DrillPlan.phase.lr)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    a = parse_args(argv)
    plan = DrillPlan(phase=replace(DrillPlan.phase, steps=a.steps, lr=a.lr), threads=a.threads)
    names = a.only or sorted(
        p.name for p in a.models.iterdir()
        if (p / "training.json").exists() and json.loads((p / "training.json").read_text())["member"]["domain"]
    )  # every specialist (the generalist has no domain to drill)
    for name in names:
        path = a.models / name
        if not (path / "training.json").exists():
            raise SystemExit(f"{path}: no training.json (is --models a folder of specialist checkpoints?)")
        drill_member(path, (a.out or a.models) / name, plan)  # logs its report (reading before / after, seconds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
