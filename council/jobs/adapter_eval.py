"""Adapter specialists vs full-copy specialists on the same probes: each adapter merged into its base
(`merge_and_unload`) and each full checkpoint, asked the questions the specialize job reports, plus sizes on disk.

    python -m council.jobs.adapter_eval --out runs/adapter-eval

It also writes `council-adapters.yaml` there: the adapter council in the form this version's config loads
(`model: <base>` + `adapter:`, absolute paths), for `python -m council.jobs.eval --config` of it.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from council.jobs.lm import exact_match, load_checkpoint, probe_pairs
from council.jobs.lora import folder_bytes, load_merged
from council.jobs.specialize import DEMO_DIR, Member, Plan, member_report, members
from council.world.generator import World, build_world

log = logging.getLogger(__name__)

METRICS = (
    "closed_book_trained", "closed_book_heldout_phrasing", "fresh_1_passage", "fresh_3_passages",
    "fresh_no_passages_says_unknown", "unanswerable_3_passages_abstains",
)  # fmt: skip


def probe(model: Any, tok: Any, world: World, m: Member) -> dict[str, float]:
    """The job's own report of one member, plus reading its fresh fact's passage alone (own domain, 60)."""
    one = probe_pairs(world, "fresh", passages=1, domains=(m.domain,) if m.domain else (), limit=60)
    return {**member_report(model, tok, world, m), "fresh_1_passage": exact_match(model, tok, one)}


def compare(demo: Path, world_seed: int = 0) -> dict[str, Any]:
    """Per specialist that has an adapter: the full checkpoint's and the merged adapter's accuracies and sizes
    on disk."""
    world = build_world(world_seed)
    plan = Plan(world_seed=world_seed)
    rows: dict[str, Any] = {}
    for m in (m for m in members(plan, world) if m.domain):
        if not (demo / "adapters" / m.name / "adapter_config.json").exists():
            log.warning("%s has no adapter in %s: left out", m.name, demo / "adapters")
            continue
        full, tok = load_checkpoint(demo / "models" / m.name)
        adapter = load_merged(demo / "general", demo / "adapters" / m.name)
        rows[m.name] = {
            "full": probe(full, tok, world, m), "adapter": probe(adapter, tok, world, m),
            "full_bytes": folder_bytes(demo / "models" / m.name),
            "adapter_bytes": folder_bytes(demo / "adapters" / m.name),
        }
        log.info("%s: %s", m.name, rows[m.name])
    if not rows:
        raise FileNotFoundError(f"no adapter in {demo / 'adapters'}: train them first (train_adapters.sh)")
    mean = {
        side: {k: sum(r[side][k] for r in rows.values()) / len(rows) for k in METRICS} for side in ("full", "adapter")
    }
    return {"members": rows, "mean": mean, "base_bytes": folder_bytes(demo / "general")}


def markdown(result: dict[str, Any]) -> str:
    """The comparison as a markdown table: full / adapter per metric, one row per specialist and the mean."""
    head = "| model | " + " | ".join(METRICS) + " | size on disk |"
    lines = [head, "|---|" + "---:|" * (len(METRICS) + 1)]
    for name, r in result["members"].items():
        cells = [f"{r['full'][k]:.2f} / {r['adapter'][k]:.2f}" for k in METRICS]
        size = f"{r['full_bytes'] / 1e6:.2f} MB / {r['adapter_bytes'] / 1e6:.2f} MB"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {size} |")
    mean = result["mean"]
    cells = [f"{mean['full'][k]:.3f} / {mean['adapter'][k]:.3f}" for k in METRICS]
    lines.append("| mean | " + " | ".join(cells) + " | |")
    return "\n".join(lines) + "\n"


def loadable_yaml(demo: Path, out: Path) -> Path:
    """The adapter council (demo's adapters.yaml) with absolute paths: `council eval --config` runs it as it
    stands (one deployment for the base)."""
    import yaml

    from council.config import CouncilConfig
    data = yaml.safe_load((demo / "adapters.yaml").read_text())
    for row in data["specialists"]:
        for key in ("model", "base", "adapter"):
            if key in row:
                row[key] = str((demo / row[key]).resolve())
    CouncilConfig.from_dict(data)
    path = out / "council-adapters.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `python -m council.jobs.adapter_eval`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    p = argparse.ArgumentParser(prog="adapter_eval", description=__doc__)
    p.add_argument("--demo", type=Path, default=DEMO_DIR, help="folder with general/, models/, adapters/")
    p.add_argument("--world-seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=Path("runs/adapter-eval"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    result = compare(args.demo, args.world_seed)
    (args.out / "comparison.json").write_text(json.dumps(result, indent=1))
    (args.out / "comparison.md").write_text(markdown(result))
    log.info("comparison in %s; council config %s", args.out / "comparison.md", loadable_yaml(args.demo, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
