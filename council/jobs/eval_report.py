"""What an evaluation's records add up to: accuracy, agreement as a wrong-answer detector, and the plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Record:
    """One question asked once, and what came back."""

    id: str
    split: str
    gold: str
    answer: str
    abstained: bool
    agreement: float
    correct: bool
    tokens: int
    latency_ms: float
    members: dict[str, str]


def accuracy(records: Sequence[Record]) -> float:
    return sum(r.correct for r in records) / max(1, len(records))


def auroc(scores: Sequence[float], positives: Sequence[bool]) -> float | None:
    """Probability a random positive scores above a random negative (ties count half); None if one class."""
    pos = [s for s, p in zip(scores, positives, strict=True) if p]
    neg = [s for s, p in zip(scores, positives, strict=True) if not p]
    if not pos or not neg:
        return None
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def agreement_metrics(records: Sequence[Record]) -> dict[str, Any]:
    """(1 - agreement) as a wrong-answer detector on answered questions, and accuracy when covering the surest."""
    answered = [r for r in records if not r.abstained]
    ranked = sorted(answered, key=lambda r: -r.agreement)

    def at(coverage: float) -> float | None:
        n = round(coverage * len(ranked))
        return accuracy(ranked[:n]) if n else None

    return {
        "answered": len(answered),
        "wrong_base_rate": 1 - accuracy(answered) if answered else None,
        "auroc_disagreement_for_wrong": auroc([1 - r.agreement for r in answered], [not r.correct for r in answered]),
        "accuracy_at_80_coverage": at(0.8),
        "accuracy_at_90_coverage": at(0.9),
        "accuracy_at_full_coverage": at(1.0),
    }


def plot(metrics: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots of the accuracy table, coverage curve, budget and k sweeps (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    acc = {k: v for k, v in metrics["accuracy_answerable"].items() if "@" not in k and v is not None}
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.bar(list(acc), list(acc.values()), color=["tab:green" if k == "council" else "tab:blue" for k in acc])
    ax.set_ylabel("accuracy (answerable)")
    ax.tick_params(axis="x", rotation=45)
    paths.append(_save(fig, out / "accuracy.png"))
    answered = sorted((r for r in metrics["records"] if not r["abstained"] and r["split"] != "unanswerable"),
                      key=lambda r: -r["agreement"])
    cov = [(i + 1) / len(answered) for i in range(len(answered))]
    run = [sum(r["correct"] for r in answered[: i + 1]) / (i + 1) for i in range(len(answered))]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(cov, run)  # empty when the council abstained on everything
    ax.set_xlabel("coverage (most agreed first)")
    ax.set_ylabel("accuracy of answered questions")
    paths.append(_save(fig, out / "coverage.png"))
    for key, x in (("budget_sweep", "budget_tokens"), ("k_sweep", "k")):
        rows = metrics[key]
        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r[x] for r in rows], [r["accuracy"] for r in rows], marker="o", label="accuracy")
        ax.set_xlabel(x)
        ax.set_ylabel("accuracy")
        ax2 = ax.twinx()
        ax2.plot([r[x] for r in rows], [r["mean_tokens"] for r in rows], "--", color="gray", label="tokens")
        ax2.set_ylabel("tokens per question")
        paths.append(_save(fig, out / f"{key}.png"))
    return paths


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
