"""Judge the council on held-out questions: accuracy, agreement, retrieval, abstention, orderings, sweeps."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.agreement import normalise
from council.config import CouncilConfig, SpecialistConfig
from council.jobs.eval_escalation import choose_min_confidence, escalation_table, parse_settings
from council.jobs.eval_report import Record, accuracy, agreement_metrics, plot
from council.jobs.eval_sample import DEMO_DIR, TENANT, open_store, sample_questions
from council.jobs.eval_scoreboard import from_record, scoreboard
from council.jobs.scoreboard import Outcome, score
from council.types import AskRequest, CouncilAnswer
from council.world.generator import Question, World, build_world, load_questions
from council.world.judge import abstains, is_correct

if TYPE_CHECKING:
    from council.backends.chroma import ChromaRetriever
    from council.pipeline import Council

log = logging.getLogger(__name__)

BUDGETS = (64, 128, 256, 512, 1024)


def to_record(q: Question, ans: CouncilAnswer) -> Record:
    tokens = sum(m.prompt_tokens + m.completion_tokens for m in ans.members)
    return Record(
        q.id, q.split, q.answer, ans.answer, abstains(ans), ans.agreement, is_correct(q, ans), tokens,
        float(ans.timings.get("total", 0.0)), {m.name: m.answer or "" for m in ans.members},
    )


async def ask_all(council: Council, questions: Sequence[Question], **options: Any) -> list[Record]:
    """Ask every question (one at a time: timings stay per question) with the same AskRequest options."""
    out = []
    for q in questions:
        ans = await council.ask(AskRequest(question=q.question, tenant=TENANT, **options))
        out.append(to_record(q, ans))
    return out


@contextmanager
def unfiltered(retriever: ChromaRetriever) -> Iterator[None]:
    """The store's ranking without the relevance filters (`min_score`, `score_margin`) for a while."""
    saved = retriever.config
    retriever.config = saved.model_copy(update={"min_score": None, "score_margin": None})
    try:
        yield
    finally:
        retriever.config = saved


def retrieval_recall(
    retriever: ChromaRetriever, questions: Sequence[Question], unanswerable: Sequence[Question] = ()
) -> dict[str, Any]:
    """Share of answerable questions whose gold passage is among the top 1, 3 and 5 chunks of the ranking
    (relevance filters off), and what the filters then hand the members: the gold passage alone, and
    nothing at all for unanswerable questions."""
    hits = {1: 0, 3: 0, 5: 0}
    asked = [q for q in questions if q.doc_id and q.split != "unanswerable"]
    with unfiltered(retriever):  # the ranking itself, once per question; the filters are applied to it below
        ranked = [retriever.query(q.question, tenant=TENANT, top_n=5) for q in [*asked, *unanswerable]]
    for q, chunks in zip(asked, ranked, strict=False):
        for k in hits:
            hits[k] += q.doc_id in [c.source for c in chunks[:k]]
    gold_alone = sum(
        [c.source for c in retriever.relevant(chunks)] == [q.doc_id] for q, chunks in zip(asked, ranked, strict=False)
    )
    empty = sum(not retriever.relevant(chunks) for chunks in ranked[len(asked) :])
    return {
        **{f"recall_at_{k}": v / max(1, len(asked)) for k, v in hits.items()},
        "filters": {"min_score": retriever.config.min_score, "score_margin": retriever.config.score_margin},
        "answerable_get_gold_passage_alone": gold_alone / max(1, len(asked)),
        "unanswerable_get_no_passage": empty / len(unanswerable) if unanswerable else None,
    }


async def order_sensitivity(council: Council, questions: Sequence[Question], retriever: ChromaRetriever) -> dict:
    """How often a member's answer changes across the 4 orderings, and accuracy with 1 vs 4 orderings voted,
    with the retrieval's relevance filters off (one passage has one ordering)."""
    flips, pairs_differ, n_members = 0, 0.0, 0
    single, voted = [], []
    for q in questions:
        with unfiltered(retriever):
            one = await council.ask(AskRequest(question=q.question, tenant=TENANT, orderings=1))
            four = await council.ask(AskRequest(question=q.question, tenant=TENANT, orderings=4))
        single.append(to_record(q, one))
        voted.append(to_record(q, four))
        for m in four.members:
            answers = [normalise(a) for a in m.ordering_answers]
            if len(answers) < 2:
                continue
            n_members += 1
            flips += len(set(answers)) > 1
            pairs = [(a, b) for i, a in enumerate(answers) for b in answers[i + 1 :]]
            pairs_differ += sum(a != b for a, b in pairs) / len(pairs)
    return {
        "member_answers": n_members,
        "flip_rate_any_of_4": flips / max(1, n_members),
        "pairwise_flip_rate_1_ordering": pairs_differ / max(1, n_members),
        "accuracy_1_ordering": accuracy(single),
        "accuracy_4_orderings_voted": accuracy(voted),
        "relevance_filters": "off",
    }


async def budget_sweep(council: Council, questions: Sequence[Question]) -> list[dict[str, Any]]:
    """Accuracy and tokens spent as the context budget shrinks."""
    rows = []
    for budget in BUDGETS:
        recs = await ask_all(council, questions, budget_tokens=budget)
        rows.append({"budget_tokens": budget, "accuracy": accuracy(recs),
                     "mean_tokens": statistics.fmean(r.tokens for r in recs)})
    return rows


async def k_sweep(council: Council, questions: Sequence[Question]) -> list[dict[str, Any]]:
    """Accuracy, hallucination rate (the scoreboard's, over every kind asked), latency and tokens for councils
    of 1..N members."""
    rows = []
    for k in range(1, len(council.config.specialists) + 1):
        recs = await ask_all(council, questions, k=k)
        board = score([from_record(r) for r in recs])["all"]
        rows.append({"k": k, "accuracy": accuracy(recs), "hallucination_rate": board["hallucination_rate"],
                     "coverage": board["coverage"], "mean_tokens": statistics.fmean(r.tokens for r in recs),
                     "p50_latency_ms": statistics.median(r.latency_ms for r in recs)})
    return rows


def generalist_council(config: CouncilConfig, path: Path, retriever: ChromaRetriever) -> Council:
    """A one-member council of the generalist, with the same retrieval, template and decoding."""
    from council.local import build_local_council

    first = config.specialists[0]
    member = SpecialistConfig(
        name="generalist", model=str(path), domain="general", description="every domain",
        context_window=first.context_window, generation=first.generation, dtype=first.dtype,
        prompt_template=first.prompt_template,
    )
    router = config.router.model_copy(update={"k": 1, "quorum": 1})
    solo = config.model_copy(update={"specialists": [member], "router": router})
    return build_local_council(solo, retriever=retriever)


def accuracy_table(
    config: CouncilConfig, outcomes: dict[str, list[Outcome]], every: Sequence[Question]
) -> dict[str, Any]:
    """Accuracy on the answerable questions of the council, the generalist and each specialist alone (and on its
    own domain), from the scoreboard's outcomes on `every` question. `best_single_specialist` is the highest of
    them on these same questions (the scoreboard's `best_single` is chosen on a separate split)."""

    def acc(name: str, domain: str | None = None) -> float:
        pairs = zip(every, outcomes[name], strict=True)
        return statistics.fmean([o.correct for q, o in pairs if o.answerable and domain in (None, q.domain)] or [0])

    table: dict[str, Any] = {name: acc(name) for name in ("council", "generalist") if name in outcomes}
    for s in config.specialists:
        table[s.name] = acc(s.name)
        table[f"{s.name}@own_domain"] = acc(s.name, s.domain)
    table["best_single_specialist"] = max(table[s.name] for s in config.specialists)
    return table


async def evaluate(config: CouncilConfig, world: World, questions: Sequence[Question], args: argparse.Namespace,
                   store: Path) -> dict[str, Any]:
    """Every metric of issue 4 on one question sample; returns the metrics dict."""
    from council.local import build_local_council

    config, retriever = open_store(config, world, store)
    council = build_local_council(config, retriever=retriever)
    gen_path = args.generalist or DEMO_DIR / "models" / "generalist"
    generalist = generalist_council(config, gen_path, retriever) if (gen_path / "config.json").exists() else None
    qs = sample_questions(questions, world.seed, args.trained_seed, args.n, args.seed)
    answerable = qs["trained"] + qs["fresh"]
    every = answerable + qs["unanswerable"]
    # The best single specialist is chosen on questions the scoreboard never scores.
    taken = {q.id for q in every}
    rest = [q for q in questions if q.id not in taken]
    selection = [q for v in sample_questions(rest, world.seed, args.trained_seed, args.selection_n,
                                             args.seed + 1).values() for q in v]
    started = time.perf_counter()
    main = await ask_all(council, every)
    board, outcomes = await scoreboard(council, generalist, main, every, selection, tenant=TENANT, seed=args.seed)
    if args.escalation is not None:  # fixed k vs `router.escalation` on the scoreboard's own questions
        board["escalation"] = await escalation_table(council, every, escalation=args.escalation)
        if args.escalation.min_confidence is None and args.calibration_n:  # also widening on a low confidence
            calibration = [q for v in sample_questions(rest, world.seed, args.trained_seed, args.calibration_n,
                                                       args.seed + 2).values() for q in v]  # fmt: skip
            chosen = await choose_min_confidence(council, calibration, escalation=args.escalation)
            with_confidence = args.escalation.model_copy(update={"min_confidence": chosen["min_confidence"]})
            board["escalation_confidence"] = {
                **chosen, "table": await escalation_table(council, every, escalation=with_confidence),
            }
    by_split = {s: [r for r in main if r.split == s] for s in qs}
    no_retrieval = await ask_all(council, qs["fresh"], use_retrieval=False)
    small = answerable[: args.sweep_n]
    metrics: dict[str, Any] = {
        "world_seed": world.seed, "trained_world_seed": args.trained_seed,
        "questions": {s: len(v) for s, v in qs.items()},
        "accuracy_by_split": {s: accuracy(v) for s, v in by_split.items() if v},
        "scoreboard": board,
        "accuracy_answerable": accuracy_table(config, outcomes, every),
        "agreement": agreement_metrics([r for r in main if r.split != "unanswerable"]),
        "retrieval": retrieval_recall(retriever, answerable, qs["unanswerable"]),
        "fresh": {"with_retrieval": accuracy(by_split["fresh"]), "without_retrieval": accuracy(no_retrieval)},
        "abstention": {
            "unanswerable_abstained": statistics.fmean(r.abstained for r in by_split["unanswerable"])
            if by_split["unanswerable"] else None,
            "answerable_wrongly_abstained": statistics.fmean(r.abstained for r in main if r.split != "unanswerable"),
        },
        # Orderings only mean something with several passages: measured on the top-n without the filters.
        "order_sensitivity": await order_sensitivity(council, small, retriever),
        "budget_sweep": await budget_sweep(council, small),
        # The k sweet spot on the scoreboard's kinds: up to sweep_n questions of each kind.
        "k_sweep": await k_sweep(council, [q for v in qs.values() for q in v[: args.sweep_n]]),
    }
    metrics["seconds"] = round(time.perf_counter() - started, 1)
    metrics["records"] = [asdict(r) for r in main]
    return metrics


def _count(text: str) -> int:
    """A whole number >= 0 (argparse type)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{n} is negative: give 0 or more questions per kind")
    return n


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="council eval", description=__doc__)
    p.add_argument("--config", type=Path, default=DEMO_DIR / "council.yaml", help="council config (yaml)")
    p.add_argument("--world-seed", type=int, default=0, help="world whose corpus is ingested and asked about")
    p.add_argument("--trained-seed", type=int, default=0, help="world seed the specialists were trained on")
    p.add_argument("--questions", type=Path, default=None, help="questions JSONL (default: the world's own)")
    p.add_argument("--generalist", type=Path, default=None, help="generalist checkpoint (default: demo's)")
    p.add_argument("--n", type=int, default=60, help="questions per kind (trained, fresh, unanswerable)")
    p.add_argument("--sweep-n", type=int, default=30, help="questions for the ordering, budget and k sweeps")
    p.add_argument("--selection-n", type=int, default=20,
                   help="questions per kind, apart from the scored ones, on which the best single specialist is chosen")
    p.add_argument("--calibration-n", type=_count, default=60,
                   help="questions per kind, not scored, on which escalation's min_confidence is chosen (0: skip)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--escalation", type=lambda t: None if t == "off" else parse_settings(t), default="1::1",
                   help="router.escalation compared with fixed k on the scored questions,"
                   " FIRST[:MIN_AGREEMENT[:STEP[:MIN_CONFIDENCE]]] (default 1::1: the top member first, then one more"
                   " at a time; without a MIN_CONFIDENCE it is also run with one chosen on --calibration-n"
                   " questions that are not scored); off: skip")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("runs/eval"), help="folder for metrics.json and plots")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m council.jobs.eval` and `council eval`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args(argv)
    config = CouncilConfig.from_yaml(args.config)
    world = build_world(args.world_seed)
    questions = load_questions(args.questions) if args.questions else list(world.all_questions)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="council-eval-") as store:
        metrics = asyncio.run(evaluate(config, world, questions, args, Path(store)))
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    plots = plot(metrics, args.out)
    log.info("metrics in %s; plots: %s", args.out / "metrics.json", ", ".join(p.name for p in plots))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
