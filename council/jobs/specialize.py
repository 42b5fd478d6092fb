"""Train the demo council: a shared general phase, one branch per specialist (a full copy, or with
`--adapters` a LoRA adapter over the shared base), and a same-compute generalist."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from council.jobs.council_yaml import write_council_yaml
from council.jobs.lm import (
    ModelShape,
    Phase,
    count_params,
    exact_match,
    load_checkpoint,
    new_model,
    probe_pairs,
    save_checkpoint,
    train_phase,
)
from council.jobs.lora import LoraPlan, attach, lora_params, save_adapter
from council.world.exercises import ExerciseMaker, Mixture
from council.world.generator import Entity, World, build_world
from council.world.schema import DOMAINS

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parents[1] / "demo"


# Reading is learnt first, alone: one passage, every question answerable from it. Mixed with memorising and
# "unknown" from the start, the copy never appeared in 1,500 steps (TRAINING.md); alone it appears in ~200.
READ_ONE = Mixture(read=1.0, absent=0.0, mismatch=0.0, recall=0.0, min_passages=1, max_passages=1)
# Then the skills every specialist shares: read among distractors, say "unknown" when nothing answers.
SKILLS = Mixture(read=0.65, absent=0.2, mismatch=0.15, recall=0.0, min_passages=0, max_passages=4)


@dataclass(frozen=True)
class Plan:
    """The whole council's recipe; the defaults are the committed demo's (TRAINING.md)."""

    world_seed: int = 0
    seed: int = 0
    shape: ModelShape = ModelShape()
    # The shared general phase teaches skills, not facts: reading (one passage first) and abstaining.
    reading_warmup: Phase = Phase(steps=400, batch=32, lr=1e-3, mixture=READ_ONE)
    general: Phase = Phase(steps=1200, batch=32, lr=1e-3, warmup=20, mixture=SKILLS)
    # Each branch memorises its own share of its domain's facts and keeps reading and abstaining.
    branch: Phase = Phase(
        steps=400, batch=32, lr=1e-3, warmup=20, mixture=Mixture(read=0.35, absent=0.2, mismatch=0.05, recall=0.4)
    )
    specialists_per_domain: int = 2
    fact_fraction: float = 0.9  # share of its domain's trained entities each specialist learns
    # Facts the general phase memorises (0: none; every fact a specialist knows comes from its branch).
    general_recall_fraction: float = 0.0
    generalist_shape: ModelShape = ModelShape(n_layer=4, n_embd=256, n_head=8)  # ~ the 6 specialists' params
    probe_every: int = 100  # general phase: log accuracies and save a resumable checkpoint this often
    threads: int = 1
    probe: bool = True  # measure every member's accuracies after training (tests turn it off)
    adapters: LoraPlan | None = None  # each specialist a LoRA adapter over the general phase, not a full copy

    @property
    def general_steps(self) -> int:
        return self.reading_warmup.steps + self.general.steps


@dataclass(frozen=True)
class Member:
    """One model to train: a specialist branch (domain set) or the generalist (domain None)."""

    name: str
    domain: str | None
    known: tuple[str, ...]  # names of the trained entities it learns closed-book
    seed: int


def members(plan: Plan, world: World) -> list[Member]:
    """The specialists (each on its own random share of its domain's trained entities) and the generalist."""
    out = []
    for d_index, domain in enumerate(DOMAINS):
        names = [e.name for e in world.entities_of("trained", domain)]
        for i in range(plan.specialists_per_domain):
            seed = plan.seed * 1000 + d_index * 10 + i + 1
            share = random.Random(seed).sample(names, round(plan.fact_fraction * len(names)))
            out.append(Member(f"{domain}-{i + 1}", domain, tuple(sorted(share)), seed))
    everything = tuple(e.name for e in world.entities_of("trained"))
    out.append(Member("generalist", None, everything, plan.seed * 1000 + 999))
    return out


def generalist_steps(plan: Plan, spec_flops: int, gen_flops: int) -> int:
    """Steps that give the generalist the council's training compute (6 * non-embedding params * tokens)."""
    council = spec_flops * (plan.general_steps + plan.branch.steps * plan.specialists_per_domain * len(DOMAINS))
    return max(1, round(council / gen_flops))


def generalist_phases(plan: Plan, steps: int) -> list[Phase]:
    """The council's curriculum in one model, each phase scaled to the generalist's step budget: read one
    passage, the shared skills, then every domain's facts with the branches' mixture."""
    share = steps / max(1, plan.general_steps + plan.branch.steps * plan.specialists_per_domain * len(DOMAINS))
    warm = max(1, round(share * plan.reading_warmup.steps))
    skills = max(1, round(share * plan.general.steps))
    facts = max(1, steps - warm - skills)
    return [replace(plan.reading_warmup, steps=warm), replace(plan.general, steps=skills),
            replace(plan.branch, steps=facts)]  # fmt: skip


def entities_named(world: World, names: Sequence[str]) -> list[Entity]:
    wanted = set(names)
    return [e for e in world.entities if e.split == "trained" and e.name in wanted]


def member_report(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, world: World, m: Member) -> dict:
    """Greedy exact-match accuracies of one model on the kinds of question the council faces."""
    from council.prompts import UNKNOWN

    known = set(m.known)
    domains = (m.domain,) if m.domain else ()

    def closed(held: bool) -> float:
        pairs = probe_pairs(world, "trained", passages=0, held_out=held, domains=domains, entities=known)
        return exact_match(model, tok, pairs)

    fresh_closed = [(p, UNKNOWN) for p, _ in probe_pairs(world, "fresh", passages=0, domains=domains)]
    return {
        "closed_book_trained": closed(False),
        "closed_book_heldout_phrasing": closed(True),
        "fresh_3_passages": exact_match(model, tok, probe_pairs(world, "fresh", passages=3, domains=domains)),
        "fresh_no_passages_says_unknown": exact_match(model, tok, fresh_closed),
        "unanswerable_3_passages_abstains": exact_match(
            model, tok, probe_pairs(world, "unanswerable", passages=3, domains=domains)
        ),
    }



def _recall_logger(model: GPT2LMHeadModel, tok: PreTrainedTokenizerFast, world: World, m: Member) -> Callable:
    """Logs a branch's closed-book recall of its own facts (trained phrasings) as it trains."""
    pairs = probe_pairs(world, "trained", passages=0, held_out=False, domains=(m.domain,) if m.domain else (),
                        entities=set(m.known), limit=60)  # fmt: skip

    def log_recall(step: int) -> None:
        log.info("%s step %d: closed-book recall %.3f", m.name, step, exact_match(model, tok, pairs))

    return log_recall


def train_general(
    plan: Plan, world: World, tok: PreTrainedTokenizerFast, save_to: Path | None = None
) -> GPT2LMHeadModel:
    """The shared phase: reading one passage, then reading among distractors and abstaining, every domain.

    With `save_to`, the model is saved there at every probe, so a long run can be cut short and resumed
    from its latest state with `--general-from`.
    """
    trained = world.entities_of("trained")
    rng = random.Random(plan.seed)
    known = rng.sample(trained, round(plan.general_recall_fraction * len(trained)))
    model = new_model(plan.shape, tok, plan.seed)
    from council.prompts import UNKNOWN

    probes = {
        "fresh_1_passage": probe_pairs(world, "fresh", passages=1, limit=60),
        "fresh_3_passages": probe_pairs(world, "fresh", passages=3, limit=60),
        "fresh_no_passages_says_unknown": [(p, UNKNOWN) for p, _ in probe_pairs(world, "fresh", passages=0, limit=40)],
        "unanswerable_abstains": probe_pairs(world, "unanswerable", passages=3, limit=40),
    }
    done = 0

    def report(step: int) -> None:
        accs = {k: round(exact_match(model, tok, v), 3) for k, v in probes.items()}
        log.info("general step %d: %s", done + step, accs)
        if save_to is not None:
            save_checkpoint(model, tok, save_to, {"step": done + step, **accs})

    for i, phase in enumerate((plan.reading_warmup, plan.general)):
        if phase.steps:
            maker = ExerciseMaker(world, known, phase.mixture, seed=plan.seed + i)
            every = (plan.probe_every, report) if plan.probe else None
            train_phase(model, tok, maker, phase, f"general{i}", every=every)
            done += phase.steps
    return model


def train_member(plan: Plan, member: Member, base_state: dict | None, out: Path, base_dir: Path | None = None) -> dict:
    """Train one member (a branch from `base_state`, or the generalist from scratch), save it, report it.

    With `plan.adapters` a branch trains a LoRA adapter over the base (saved in `base_dir`) and saves only that.
    """
    import torch

    from council.world.tokenizer import build_tokenizer

    torch.set_num_threads(plan.threads)
    started = time.time()
    world, tok = build_world(plan.world_seed), build_tokenizer()
    known = entities_named(world, member.known)
    if member.domain is None:
        model = new_model(plan.generalist_shape, tok, member.seed)
        spec_flops = count_params(new_model(plan.shape, tok, 0), embeddings=False)
        phases = generalist_phases(plan, generalist_steps(plan, spec_flops, count_params(model, embeddings=False)))
    else:
        model = new_model(plan.shape, tok, member.seed)
        model.load_state_dict(base_state or {})
        phases = [replace(plan.branch, mixture=replace(plan.branch.mixture, domains=(member.domain,)))]
    peft = None
    if plan.adapters is not None and member.domain is not None:
        peft = attach(model, plan.adapters)
        model = peft.get_base_model()  # the same modules, LoRA layers in place: trained and probed as before
        phases = [replace(phases[0], lr=plan.adapters.lr)]
    losses: list[float] = []
    for i, phase in enumerate(phases):
        maker = ExerciseMaker(world, known if phase.mixture.recall else [], phase.mixture, seed=member.seed + i)
        every = (plan.probe_every, _recall_logger(model, tok, world, member)) if plan.probe else None
        losses += train_phase(model, tok, maker, phase, member.name, every=every)
    report = {
        "name": member.name, "domain": member.domain, "steps": sum(p.steps for p in phases),
        "params": count_params(model), **({"lora_params": lora_params(peft)} if peft is not None else {}),
        "known_entities": len(known), "train_seconds": round(time.time() - started, 1),
        "final_loss": sum(losses[-50:]) / max(1, len(losses[-50:])),
        **(member_report(model, tok, world, member) if plan.probe else {}),
    }
    meta = {"plan": asdict(plan), "member": asdict(member), **report}
    if peft is not None:
        save_adapter(peft, out / member.name, base_dir or out, meta)
    else:
        save_checkpoint(model, tok, out / member.name, meta)
    log.info("trained %s: %s", member.name, report)
    return report


def specialize(
    plan: Plan, out: Path = DEMO_DIR, *, use_ray: bool = False, only: Sequence[str] = (),
    general_from: Path | None = None, general_only: bool = False,
) -> dict:
    """Train the general phase (or load it), every branch and the generalist; write models and council.yaml.

    `general_only` stops after the general phase (saved in out/runs/general), for `--general-from` later.
    With `plan.adapters` the branches are LoRA adapters (out/adapters/<name>) over the base (`general_from`, else
    out/runs/general); out/adapters.yaml lists every adapter in out/adapters. The generalist (a model of its own
    shape) is not trained.
    """
    import torch

    from council.world.tokenizer import build_tokenizer

    torch.set_num_threads(plan.threads)
    started = time.time()
    world, tok = build_world(plan.world_seed), build_tokenizer()
    todo = [m for m in members(plan, world) if not only or m.name in only]
    if plan.adapters is not None:
        if any(m.domain is None for m in todo) and only:
            raise ValueError("--adapters trains specialists over the shared base; the generalist has its own "
                             "shape: train it without --adapters")
        todo = [m for m in todo if m.domain is not None]
    base_dir = Path(general_from) if general_from is not None else out / "runs" / "general"
    base_state = None
    if general_from is not None:
        # The generalist's compute budget follows the general steps really taken (also when it trains alone).
        done = json.loads((Path(general_from) / "training.json").read_text()).get("step", plan.general_steps)
        skills = max(0, int(done) - plan.reading_warmup.steps)
        plan = replace(plan, general=replace(plan.general, steps=skills))
    if general_only or any(m.domain for m in todo):
        if general_from is not None:
            base, _ = load_checkpoint(general_from)
            log.info("general phase loaded from %s (step %d)", general_from, plan.general_steps)
        else:
            base = train_general(plan, world, tok, out / "runs" / "general")
        general = Member("general", None, (), plan.seed)
        meta = {"plan": asdict(plan), "from": str(general_from), "step": plan.general_steps}
        save_checkpoint(base, tok, out / "runs" / "general", meta)
        if plan.adapters is not None:  # train each adapter over the very weights it is served with (fp16)
            base, _ = load_checkpoint(base_dir)
        base_state = {k: v.detach().float().clone() for k, v in base.state_dict().items()}
        if plan.probe:
            log.info("general phase: %s", member_report(base, tok, world, general))
    if general_only:
        return {"plan": asdict(plan), "wall_seconds": round(time.time() - started, 1), "members": []}
    specialists = [m for m in members(plan, world) if m.domain]
    if plan.adapters is None:
        reports = _run_members(plan, todo, base_state, out / "models", use_ray)
        write_council_yaml(out / "council.yaml", specialists)
        report_path = out / "training-report.json"
    else:
        reports = _run_members(plan, todo, base_state, out / "adapters", use_ray, base_dir)
        trained = [m for m in specialists if (out / "adapters" / m.name / "adapter_config.json").exists()]
        write_council_yaml(out / "adapters.yaml", trained, base=os.path.relpath(base_dir, out))
        report_path = out / "adapters-report.json"
        # Runs side by side (--only) share the report: each keeps the members the others wrote.
        if report_path.exists():
            done_by_others = json.loads(report_path.read_text()).get("members", [])
            reports = [r for r in done_by_others if r["name"] not in {m.name for m in todo}] + reports
        order = {m.name: i for i, m in enumerate(specialists)}  # the council's order, whichever run ended first
        reports.sort(key=lambda r: order.get(r["name"], len(order)))
    summary = {"plan": asdict(plan), "wall_seconds": round(time.time() - started, 1), "members": reports}
    report_path.write_text(json.dumps(summary, indent=1))
    return {**summary, "report": str(report_path)}


def _run_members(
    plan: Plan, todo: list[Member], base_state: dict | None, out: Path, use_ray: bool, base_dir: Path | None = None
) -> list[dict]:
    if not use_ray:
        return [train_member(plan, m, base_state, out, base_dir) for m in todo]
    import ray

    if not ray.is_initialized():
        ray.init()
    task = ray.remote(num_cpus=plan.threads)(train_member)
    state_ref = ray.put(base_state)
    return list(ray.get([task.remote(plan, m, state_ref, out, base_dir) for m in todo]))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="council specialize", description=__doc__)
    p.add_argument("--world-seed", type=int, default=0, help="world whose trained facts are learnt")
    p.add_argument("--seed", type=int, default=0, help="training seed")
    p.add_argument("--out", type=Path, default=DEMO_DIR, help="folder for models/, council.yaml, report")
    p.add_argument("--warmup-steps", type=int, default=Plan.reading_warmup.steps, help="one-passage reading")
    p.add_argument("--general-steps", type=int, default=Plan.general.steps, help="shared skills phase")
    p.add_argument("--branch-steps", type=int, default=Plan.branch.steps)
    p.add_argument("--batch", type=int, default=Plan.general.batch)
    p.add_argument("--n-layer", type=int, default=ModelShape.n_layer)
    p.add_argument("--n-embd", type=int, default=ModelShape.n_embd)
    p.add_argument("--arch", choices=["llama", "gpt2"], default=ModelShape.arch)
    p.add_argument("--only", nargs="*", default=[], help="train only these members (names)")
    p.add_argument("--general-from", type=Path, default=None, help="skip the general phase: start from this one")
    p.add_argument("--general-only", action="store_true", help="stop after the general phase (out/runs/general)")
    p.add_argument("--threads", type=int, default=1, help="torch threads per training process")
    p.add_argument("--ray", action="store_true", help="train the members as Ray tasks (num_cpus=threads)")
    lora = LoraPlan()
    p.add_argument("--no-probe", action="store_true", help="skip the accuracy probes (quick runs)")
    p.add_argument("--adapters", action="store_true", help="each specialist a LoRA adapter over the shared base")
    p.add_argument("--lora-rank", type=int, default=lora.rank)
    p.add_argument("--lora-alpha", type=int, default=lora.alpha)
    p.add_argument("--lora-dropout", type=float, default=lora.dropout)
    p.add_argument("--lora-targets", nargs="+", default=list(lora.target_modules), help="modules the LoRA adapts")
    p.add_argument("--lora-lr", type=float, default=lora.lr, help="the adapters' learning rate")
    return p.parse_args(argv)


def plan_from_args(a: argparse.Namespace) -> Plan:
    """The Plan the command line describes (defaults: the committed demo's)."""
    base = Plan()
    shape = replace(base.shape, n_layer=a.n_layer, n_embd=a.n_embd, arch=a.arch)
    lora = LoraPlan(a.lora_rank, a.lora_alpha, a.lora_dropout, tuple(a.lora_targets), a.lora_lr)
    return replace(
        base, world_seed=a.world_seed, seed=a.seed, shape=shape, threads=a.threads, probe=not a.no_probe,
        generalist_shape=replace(base.generalist_shape, arch=a.arch),
        reading_warmup=replace(base.reading_warmup, steps=a.warmup_steps, batch=a.batch),
        general=replace(base.general, steps=a.general_steps, batch=a.batch),
        branch=replace(base.branch, steps=a.branch_steps, batch=a.batch), adapters=lora if a.adapters else None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m council.jobs.specialize` and `council specialize`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    plan = plan_from_args(args)
    summary = specialize(
        plan, args.out, use_ray=args.ray, only=args.only, general_from=args.general_from,
        general_only=args.general_only,
    )  # fmt: skip
    log.info("done in %.0f s; report in %s", summary["wall_seconds"], summary.get("report", args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
