"""A CouncilAnswer printed for people (rich): the members, the verdict, the sources and the trims."""

from __future__ import annotations

from rich.console import Console

from council.types import CouncilAnswer


def render_answer(answer: CouncilAnswer, *, out: Console | None = None, trims: bool = False) -> None:
    """Print a CouncilAnswer: members table, the verdict with agreement/entropy/flags, sources, trims."""
    from rich.table import Table

    out = out or Console()
    table = Table(title=None, show_lines=False, expand=False, header_style="bold")
    for col, kw in [
        ("member", {}),
        ("route", {"justify": "right"}),
        ("answer", {"overflow": "fold"}),
        ("tokens", {"justify": "right"}),
        ("latency", {"justify": "right"}),
        ("error", {}),
    ]:
        table.add_column(col, **kw)  # type: ignore[arg-type]
    for m in answer.members:
        status = "cancelled" if m.cancelled else (m.error or "")
        if m.incident:  # the code and the id to look up in the ingress's log, whole (the reason is fixed)
            status = f"{m.error_code} (incident {m.incident})"
        table.add_row(
            m.name,
            f"{m.route_score:.2f}",
            _short(m.answer or "", 60),
            f"{m.prompt_tokens}+{m.completion_tokens}",
            f"{m.latency_s * 1000:.0f} ms",
            f"[red]{_short(status, 40)}[/]" if status else "",
        )
    out.print(table)
    flags = [f for f, on in (("abstained", answer.abstained), ("degraded", answer.degraded)) if on]
    colour = "yellow" if answer.abstained else "green"
    out.print(
        f"[bold {colour}]council:[/] {answer.answer}   [dim]agreement {answer.agreement:.2f} · "
        f"entropy {answer.entropy:.2f}{' · ' + ', '.join(flags) if flags else ''} · "
        f"{answer.timings.get('total', 0):.0f} ms[/]",
        highlight=False,
    )
    if answer.synthesis is not None:
        s = answer.synthesis
        out.print(
            f"  [dim]synthesis by[/] [bold]{s.chairman}[/] [dim]({s.latency_s * 1000:.0f} ms; voted: "
            f"{_short(s.voted_answer, 50)})[/]",
            highlight=False,
        )
    if answer.synthesis_failed:
        out.print(f"  [red]synthesis failed[/] {_short(answer.synthesis_failed, 200)}", highlight=False)
    for c in answer.sources:
        out.print(f"  [dim]source[/] {c.score:.2f} [cyan]{c.source or c.id}[/] {_short(c.text, 90)}", highlight=False)
    if trims:
        for t in answer.trims:
            out.print(
                f"  [dim]trim[/] {t.member}: {t.used_tokens}/{t.budget_tokens} tokens, {t.ordering}; kept "
                f"{len(t.kept)}, cut {len(t.cut)}, dropped {len(t.dropped)}",
                highlight=False,
            )


def _short(text: str, n: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
