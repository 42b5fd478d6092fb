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
    rows = metrics["budget_sweep"]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot([r["budget_tokens"] for r in rows], [r["accuracy"] for r in rows], marker="o", label="accuracy")
    ax.set_xlabel("budget_tokens")
    ax.set_ylabel("accuracy")
    ax2 = ax.twinx()
    ax2.plot([r["budget_tokens"] for r in rows], [r["mean_tokens"] for r in rows], "--", color="gray")
    ax2.set_ylabel("tokens per question")
    paths.append(_save(fig, out / "budget_sweep.png"))
    paths.append(_k_sweep(plt, metrics["k_sweep"], out))
    if "scoreboard" in metrics:
        paths.append(_risk_coverage(plt, metrics["scoreboard"]["systems"], out))
    return paths


def _k_sweep(plt: Any, rows: Sequence[dict[str, Any]], out: Path) -> Path:
    """Accuracy and hallucination rate (left) and median latency (right) against k, on one figure."""
    ks = [r["k"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    ax.plot(ks, [r["accuracy"] for r in rows], marker="o", label="accuracy")
    ax.plot(ks, [r["hallucination_rate"] for r in rows], marker="s", color="tab:red", label="hallucination rate")
    ax.set_xlabel("k (members asked)")
    ax.set_ylabel("share of questions")
    ax.set_ylim(0, 1)
    ax2 = ax.twinx()
    ax2.plot(ks, [r["p50_latency_ms"] for r in rows], "--", marker=".", color="gray", label="p50 latency")
    ax2.set_ylabel("p50 latency, ms")
    lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="center right", fontsize=8)
    return _save(fig, out / "k_sweep.png")


def _risk_coverage(plt: Any, systems: dict[str, Any], out: Path) -> Path:
    """Each system's risk–coverage curve (its answers, surest first); the council and the best single bold."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, row in systems.items():
        curve = row["risk_coverage"]
        label = f"best single ({row['name']})" if name == "best_single" else name
        main = name in ("council", "best_single", "generalist")
        ax.plot([c for c, _ in curve], [r for _, r in curve], label=f"{label}, AURC {_fmt(row['all']['aurc'])}",
                linewidth=2.2 if main else 0.9, alpha=1.0 if main else 0.6)
    ax.set_xlabel("coverage (share of all questions answered, surest first)")
    ax.set_ylabel("risk (wrong among answered)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7)
    return _save(fig, out / "risk_coverage.png")


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
