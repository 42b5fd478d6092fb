"""The demo council's YAML, as the specialize job writes it: full specialists (`model:`) or adapters over a
shared base (`base:` + `adapter:`)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from council.world.schema import DOMAINS


class Named(Protocol):
    """A member to list: its name and domain (the specialize job's `Member`)."""

    @property
    def name(self) -> str: ...

    @property
    def domain(self) -> str | None: ...


_DESCRIPTIONS = {
    "legal": "Statutes: the penalty each act carries and the jurisdiction where it applies.",
    "finance": "Companies: the sector each corp works in, its revenue and its ceo.",
    "medical": "Drugs: what each drug treats, its dose and its side effects.",
}


def write_council_yaml(
    path: Path, specialists: Sequence[Named], context_window: int = 192, base: str | None = None
) -> None:
    """The demo CouncilConfig; model paths are relative to the yaml's folder. With `base` (that folder's path
    to the shared base) each specialist is `base:` + `adapter: adapters/<name>` instead of `model:`."""
    import yaml

    from council.config import CouncilConfig
    from council.world.schema import train_phrasings

    rows = []
    for m in specialists:
        spec = DOMAINS[m.domain or "legal"]
        examples = [train_phrasings(spec, a)[0].format(m=spec.mention.format(n="kavo")) for a in spec.attributes]
        rows.append({
            "name": m.name,
            **({"model": f"models/{m.name}"} if base is None else {"base": base, "adapter": f"adapters/{m.name}"}),
            "domain": m.domain,
            "description": _DESCRIPTIONS[m.domain or "legal"], "examples": examples,
            "context_window": context_window, "dtype": "float32", "prompt_template": "qa",
            "generation": {"max_new_tokens": 8, "stop": ["\n"]},
            "deployment": {"num_cpus": 0.1},
        })
    # The members read one passage well and pick the right one among look-alikes badly (TRAINING.md): keep
    # only a clear winner and nothing that merely resembles the question. Thresholds chosen on world seed 2
    # (never evaluated): answerable top-1 fused score p2 0.54 / p10 0.63, unanswerable p50 0.50; the
    # top-1 minus top-2 gap of answerable questions p2 0.125.
    retrieval = {"top_n": 3, "min_score": 0.6, "score_margin": 0.1}
    data = {"specialists": rows, "router": {"k": 3}, "retrieval": retrieval}
    CouncilConfig.from_dict(data)  # refuse to write a config the council would not load
    how = "(see training-report.json)" if base is None else "--adapters (see adapters-report.json)"
    header = f"# The demo council; written by `python -m council.jobs.specialize` {how}.\n"
    path.write_text(header + yaml.safe_dump(data, sort_keys=False))
