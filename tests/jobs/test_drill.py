"""The reading drill on a specialist the specialize job just trained (a few steps, in-process)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from council.jobs.drill import DrillPlan, drill_member, main
from council.jobs.specialize import main as specialize_main
from council.world.schema import DOMAINS

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """finance-1 after a few steps of the specialize job's command line (no probes)."""
    out = tmp_path_factory.mktemp("drill")
    few = ["--warmup-steps", "2", "--general-steps", "2", "--branch-steps", "2", "--batch", "4", "--no-probe"]
    assert specialize_main(["--out", str(out), "--only", "finance-1", *few]) == 0
    return out / "models"


def test_drill_measures_every_skill_trains_and_records_itself(models: Path, tmp_path: Path) -> None:
    plan = DrillPlan(phase=replace(DrillPlan.phase, steps=2, batch=4), alone=replace(DrillPlan.alone, steps=2, batch=4),
                     alone_below=1.01, probes=4)  # fmt: skip
    report = drill_member(models / "finance-1", tmp_path / "finance-1", plan)
    attributes = set(DOMAINS["finance"].attributes)
    assert set(report["reading_before"]) == set(report["reading_after"]) == attributes
    assert report["alone"] == sorted(attributes, key=list(DOMAINS["finance"].attributes).index)  # all below 1.01
    assert report["steps"] == 4
    meta = json.loads((tmp_path / "finance-1" / "training.json").read_text())
    assert meta["member"]["name"] == "finance-1" and meta["drills"][-1]["reading_after"] == report["reading_after"]
    assert meta["closed_book_trained"] == report["closed_book_trained"]  # the checkpoint's report is the drilled one
    assert (tmp_path / "finance-1" / "model.safetensors").exists()


def test_a_folder_without_checkpoints_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "nothing").mkdir()
    with pytest.raises(SystemExit, match="no training.json"):
        main(["--models", str(tmp_path), "--only", "nothing"])


def test_the_generalist_is_refused(models: Path, tmp_path: Path) -> None:
    meta = json.loads((models / "finance-1" / "training.json").read_text())
    fake = tmp_path / "generalist"
    fake.mkdir()
    (fake / "training.json").write_text(json.dumps({**meta, "member": {**meta["member"], "domain": None}}))
    with pytest.raises(ValueError, match="the drill is for specialists"):
        drill_member(fake, tmp_path / "out", DrillPlan())
