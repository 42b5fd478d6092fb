"""Fixed k against confidence escalation on the same questions (issue 19): member calls, latency, the scoreboard.

`python -m council.jobs.eval_escalation` runs it on the demo council (world 0, the eval's question sample) for a
few escalation settings and logs the table as JSON (`--out` also writes it to a file).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from council.config import CouncilConfig, EscalationConfig
from council.errors import QuestionTooLong
from council.jobs.eval_sample import DEMO_DIR, TENANT, open_store, sample_questions
from council.jobs.eval_scoreboard import outcome
from council.jobs.scoreboard import score
from council.types import AskRequest, CouncilAnswer
from council.world.generator import Question
from council.world.judge import abstains

if TYPE_CHECKING:
    from council.pipeline import Council

log = logging.getLogger(__name__)

__all__ = ["CONFIDENCE_GRID", "choose_min_confidence", "escalation_table", "main", "parse_settings"]

# The goal: at least this share of member calls saved, at no worse hallucination rate, and accuracy
# within this many points (as a share) of fixed k.
GOAL_CALL_REDUCTION = 0.40
GOAL_ACCURACY_POINTS = 0.02
# `min_confidence` values tried on the calibration sample (a member's geometric-mean token probability).
CONFIDENCE_GRID = (0.5, 0.7, 0.8, 0.9, 0.95)


def no_worse(fixed: dict[str, Any], escalated: dict[str, Any]) -> dict[str, bool]:
    """The goal's quality half on two scoreboard rows: hallucination no worse, accuracy within the goal's points."""
    return {
        "hallucination_no_worse": escalated["hallucination_rate"] <= fixed["hallucination_rate"],
        "accuracy_within_2_points": escalated["accuracy"] >= fixed["accuracy"] - GOAL_ACCURACY_POINTS,
    }


def member_calls(ans: CouncilAnswer) -> int:
    """Members the council asked for this answer (one whose context window the question overflowed was not)."""
    return sum(m.error_code != QuestionTooLong.type for m in ans.members)


@contextmanager
def escalating(council: Council, escalation: EscalationConfig) -> Iterator[None]:
    """The council with `router.escalation` set to `escalation` for a while (checked like a config file's)."""
    saved = council.config
    data = saved.model_dump()
    data["router"]["escalation"] = escalation.model_dump()
    council.config = CouncilConfig.model_validate(data)
    try:
        yield
    finally:
        council.config = saved


async def _run(council: Council, questions: Sequence[Question], *, escalation: bool) -> dict[str, Any]:
    """Every question asked once (one at a time, so latencies stay per question)."""
    outcomes, calls, latencies, how = [], [], [], Counter[str]()
    for q in questions:
        ans = await council.ask(AskRequest(question=q.question, tenant=TENANT, escalation=escalation))
        # Its confidence is its agreement, as on the scoreboard.
        outcomes.append(outcome(q.split, q.answer, abstains(ans), ans.answer or "", ans.agreement))
        calls.append(member_calls(ans))
        latencies.append(float(ans.timings.get("total", 0.0)))
        how[ans.escalation or "off"] += 1
    return {
        "member_calls_mean": statistics.fmean(calls),
        "p50_latency_ms": statistics.median(latencies),
        "escalation": dict(sorted(how.items())),
        "scoreboard": score(outcomes),
    }


async def escalation_table(
    council: Council, questions: Sequence[Question], *, escalation: EscalationConfig
) -> dict[str, Any]:
    """The same questions asked with every one of the top-k members (fixed k) and with `escalation`: member calls
    per question (mean), p50 latency, the scoreboard row of each; the reduction in calls and the issue's goal."""
    if not questions:
        raise ValueError("escalation_table needs at least one question")
    fixed = await _run(council, questions, escalation=False)
    with escalating(council, escalation):
        escalated = await _run(council, questions, escalation=True)
    f, e = fixed["scoreboard"]["all"], escalated["scoreboard"]["all"]
    reduction = 1 - escalated["member_calls_mean"] / fixed["member_calls_mean"]
    return {
        "k": council.config.router.k,
        "settings": escalation.model_dump(),
        "questions": len(questions),
        "fixed_k": fixed,
        "escalation": escalated,
        "call_reduction": reduction,
        "goal": {"calls_at_least_40pct_fewer": reduction >= GOAL_CALL_REDUCTION, **no_worse(f, e)},
    }


async def choose_min_confidence(
    council: Council, calibration: Sequence[Question], *, escalation: EscalationConfig,
    grid: Sequence[float] = CONFIDENCE_GRID,
) -> dict[str, Any]:
    """`escalation`'s `min_confidence` chosen on `calibration` (questions the scoreboard does not score): of the
    grid's thresholds whose hallucination rate is no worse than fixed k's and accuracy within the goal's points, the
    lowest (the fewest calls); none such: the highest tried. Returns the choice and every threshold's figures."""
    if not calibration or not grid:
        raise ValueError("choose_min_confidence needs calibration questions and a grid of thresholds")
    fixed = (await _run(council, calibration, escalation=False))["scoreboard"]["all"]
    rows = []
    for t in sorted(grid):
        with escalating(council, escalation.model_copy(update={"min_confidence": t})):
            run = await _run(council, calibration, escalation=True)
        board = run["scoreboard"]["all"]
        rows.append({
            "min_confidence": t, "member_calls_mean": run["member_calls_mean"], "accuracy": board["accuracy"],
            "hallucination_rate": board["hallucination_rate"],
            "fits": all(no_worse(fixed, board).values()),
        })  # fmt: skip
    fitting = [r for r in rows if r["fits"]]
    chosen = min(fitting, key=lambda r: r["min_confidence"]) if fitting else rows[-1]
    return {
        "chosen_on": "calibration", "questions": len(calibration), "min_confidence": chosen["min_confidence"],
        "fixed_k": {"accuracy": fixed["accuracy"], "hallucination_rate": fixed["hallucination_rate"]}, "grid": rows,
    }  # fmt: skip


def parse_settings(text: str) -> EscalationConfig:
    """FIRST[:MIN_AGREEMENT[:STEP[:MIN_CONFIDENCE]]] (an empty field: its default)."""
    fields = text.split(":")
    if len(fields) > 4:
        raise ValueError(f"escalation settings {text!r}: at most FIRST:MIN_AGREEMENT:STEP:MIN_CONFIDENCE")
    first, agreement, step, confidence = (fields + ["", "", ""])[:4]
    given = {"first": first, "min_agreement": agreement, "step": step, "min_confidence": confidence}
    return EscalationConfig.model_validate({k: v for k, v in given.items() if v})


async def _demo(args: argparse.Namespace) -> list[dict[str, Any]]:
    from council.local import build_local_council
    from council.world.generator import build_world

    world = build_world(args.world_seed)
    config = CouncilConfig.from_yaml(args.config or DEMO_DIR / "council.yaml")
    with tempfile.TemporaryDirectory(prefix="council-escalation-") as store:
        config, retriever = open_store(config, world, Path(store))
        council = build_local_council(config, retriever=retriever)
        kinds = sample_questions(world.all_questions, world.seed, args.trained_seed, args.n, args.seed)
        questions = [q for qs in kinds.values() for q in qs]
        return [await escalation_table(council, questions, escalation=s) for s in args.settings]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m council.jobs.eval_escalation", description=__doc__)
    p.add_argument("--config", type=Path, default=None, help="council config (default: the demo's)")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--trained-seed", type=int, default=0)
    p.add_argument("--n", type=int, default=40, help="questions per kind (trained, fresh, unanswerable)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--settings", type=parse_settings, nargs="+", default=[parse_settings("1"), parse_settings("2:1.0")],
        help="escalation settings as FIRST[:MIN_AGREEMENT[:STEP[:MIN_CONFIDENCE]]], e.g. 1 2:0.6 1::1 1::1:0.8",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="also write the tables to this JSON file")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    tables = asyncio.run(_demo(args))
    text = json.dumps(tables, indent=1)
    if args.out is not None:
        args.out.write_text(text)
    log.info("fixed k vs escalation%s:\n%s", f" (also in {args.out})" if args.out else "", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
