"""Both notebooks execute top to bottom with nbclient, in a kernel from this venv, and commit no outputs."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.jobs.conftest import REPO, VENV_BIN, cluster_env, council_dict

NOTEBOOKS = REPO / "notebooks"
CELL_TIMEOUT_S = 600


def execute(name: str, monkeypatch: pytest.MonkeyPatch, **env: str) -> tuple[str, int]:
    """Run notebooks/<name> (cwd notebooks/, the kernel inherits `env`); (all text output, number of images)."""
    import nbformat
    from nbclient import NotebookClient

    # The kernel is this interpreter (jupyter_client runs the python3 kernelspec's `python` as sys.executable),
    # with the venv first on PATH for anything it starts.
    monkeypatch.setenv("PATH", f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()
    texts, images = [], 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            texts.append(out.get("text", "") or data.get("text/plain", ""))
            images += "image/png" in data
    return "\n".join(texts), images


@pytest.mark.parametrize("name", ["01_quickstart.ipynb", "02_council_science.ipynb"])
def test_notebook_is_committed_without_outputs(name: str) -> None:
    nb = json.loads((NOTEBOOKS / name).read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            assert cell["outputs"] == [] and cell["execution_count"] is None, f"{name}: strip outputs before committing"


def test_quickstart_runs_in_process(monkeypatch: pytest.MonkeyPatch, tiny_models: list[Path], tmp_path: Path) -> None:
    config = tmp_path / "council.yaml"
    config.write_text(yaml.safe_dump(council_dict(tiny_models, tmp_path / "store")))
    out, _ = execute("01_quickstart.ipynb", monkeypatch, COUNCIL_NOTEBOOK_MODE="local", COUNCIL_CONFIG=str(config))
    assert "connected (local)" in out
    assert "acme now retrieves the new document: True; public sees it: False" in out, out[-3000:]


def test_council_science_plots_an_evaluation(
    monkeypatch: pytest.MonkeyPatch, tiny_models: list[Path], tmp_path: Path
) -> None:
    config = tmp_path / "council.yaml"
    config.write_text(yaml.safe_dump(council_dict(tiny_models, tmp_path / "store")))
    metrics = tmp_path / "eval" / "metrics.json"
    # `council eval` on a tiny sample: the notebook reads the metrics.json it writes.
    result = subprocess.run(
        [str(VENV_BIN / "python"), "-m", "council.jobs.eval", "--config", str(config), "--n", "2", "--sweep-n", "2",
         "--selection-n", "2", "--generalist", str(tmp_path / "no-generalist"), "--out", str(metrics.parent)],
        capture_output=True, text=True, timeout=900, env=cluster_env(), cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out, images = execute("02_council_science.ipynb", monkeypatch, COUNCIL_METRICS=str(metrics))
    assert str(metrics) in out
    assert images >= 5, f"expected the five figures, got {images}"
