"""The `council` command line: fast help, clear errors, answers rendered, Serve configs read."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from council.backends.files import find_files
from council.cli import app
from council.render import render_answer
from council.serving.lifecycle import serve_target
from council.types import Chunk, CouncilAnswer, MemberAnswer, TrimReport

COUNCIL = Path(sys.executable).parent / "council"
COMMANDS = ("serve", "ask", "ingest", "status", "demo", "specialize", "eval")


def _run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([str(COUNCIL), *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_is_fast_and_lists_every_command() -> None:
    out = _run("--help")
    assert out.returncode == 0, out.stderr
    for command in COMMANDS:
        assert command in out.stdout
    # Fast because nothing heavy is imported: torch, ray, chromadb and transformers stay out of `council.cli`.
    code = "import sys, council.cli; heavy = {'ray', 'torch', 'chromadb', 'transformers'} & set(sys.modules); "
    code += "assert not heavy, heavy"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_ask_unreachable_is_one_clear_line_and_nonzero() -> None:
    out = _run("ask", "what is the penalty under the kavo act ?", "--url", "http://127.0.0.1:9", "--timeout", "3")
    assert out.returncode != 0
    assert "Traceback" not in out.stderr + out.stdout
    assert "cannot reach the council at http://127.0.0.1:9" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_status_unreachable_exits_nonzero() -> None:
    result = CliRunner().invoke(app, ["status", "--url", "http://127.0.0.1:9"])
    assert result.exit_code == 1
    assert "unreachable" in result.output


def test_render_answer_shows_members_verdict_sources_and_trims() -> None:
    from rich.console import Console

    answer = CouncilAnswer(
        question="q",
        answer="the council could not agree",
        agreement=0.33,
        entropy=1.1,
        abstained=True,
        degraded=True,
        members=(
            MemberAnswer("legal-a", 0.91, answer="fine", prompt_tokens=30, completion_tokens=2, latency_s=0.04),
            MemberAnswer("legal-b", 0.52, error="member_timeout: timed out after 5s", error_code="member_timeout"),
            MemberAnswer("finance-a", 0.11, cancelled=True),
        ),
        sources=(Chunk("c1", "the kavo act carries a fine .", source="legal.md", score=0.77),),
        trims=(TrimReport("legal-a", 120, 40, kept=("c1",), dropped=("c2",)),),
        timings={"total": 80.0},
    )
    console = Console(record=True, width=160)
    render_answer(answer, out=console, trims=True)
    text = console.export_text()
    for piece in ("legal-a", "0.91", "fine", "30+2", "member_timeout: timed out after 5s", "cancelled",
                  "agreement 0.33", "abstained", "degraded", "legal.md", "legal-a: 40/120 tokens",
                  "dropped 1"):  # fmt: skip
        assert piece in text, piece


def test_serve_target_reads_serve_and_council_configs(tmp_path: Path) -> None:
    (tmp_path / "clusters").mkdir()
    (tmp_path / "council.yaml").write_text("specialists: []\n")
    serve_yaml = tmp_path / "clusters" / "local.yaml"
    serve_yaml.write_text(
        "http_options: {host: 127.0.0.1, port: 8123}\n"
        "applications:\n"
        "  - name: council\n    route_prefix: /\n    import_path: council.serving.app:build_app\n"
        "    args: {config: council.yaml}\n"
    )
    args, settings = serve_target(serve_yaml)
    assert args == {"config": str(tmp_path / "council.yaml")}
    assert settings == {"name": "council", "route_prefix": "/", "host": "127.0.0.1", "port": 8123}
    args, settings = serve_target(tmp_path / "council.yaml")
    assert args == {"config": str((tmp_path / "council.yaml").resolve())} and settings == {}


def test_find_files_and_missing_path_error(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("y")
    (tmp_path / "sub" / "c.bin").write_text("z")
    assert [p.name for p in find_files([tmp_path])] == ["a.md", "b.txt"]
    result = CliRunner().invoke(app, ["ingest", str(tmp_path / "nope"), "--tenant", "acme"])
    assert result.exit_code == 1 and "no such file or folder" in result.output


def test_ingest_without_a_tenant_is_refused_and_stores_nothing(tmp_path: Path) -> None:
    """A write names its tenant (issue 16, finding 1): before, the documents went to `public`, read by everyone."""
    (tmp_path / "notes.txt").write_text("The Varn ledger is kept by the amber guild.")
    store = tmp_path / "store"
    (tmp_path / "council.yaml").write_text(
        f"specialists: [{{name: solo, model: unused}}]\nretrieval: {{path: {store}}}\n"
    )
    for extra in ([], ["--tenant-column"]):
        result = CliRunner().invoke(app, ["ingest", str(tmp_path / "notes.txt"), "--config",
                                          str(tmp_path / "council.yaml"), *extra])
        assert result.exit_code == 1, result.output
        assert "(invalid_request): council ingest needs --tenant" in " ".join(result.output.split())
        assert not store.exists(), "nothing may be opened or stored"


def test_demo_without_its_council_config_is_a_clear_error(tmp_path: Path) -> None:
    serve_yaml = tmp_path / "local.yaml"
    serve_yaml.write_text("applications:\n  - name: council\n    args: {config: /nowhere/council.yaml}\n")
    result = CliRunner().invoke(app, ["demo", "--once", "--config", str(serve_yaml)])
    assert result.exit_code == 1
    assert "/nowhere/council.yaml" in result.output and "does not exist" in result.output


def test_keys_add_stores_only_the_hash_and_prints_the_key_once(tmp_path: Path) -> None:
    from council.credentials import KEYS_FILE_ENV, load_table

    table = tmp_path / "keys.yaml"
    runner = CliRunner()
    made = runner.invoke(app, ["keys", "add", "--file", str(table), "--name", "acme", "--tenant", "acme",
                               "--rights", "read,write"])  # fmt: skip
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    assert key.startswith("ck-") and key not in table.read_text() and oct(table.stat().st_mode)[-3:] == "600"
    grant = load_table({KEYS_FILE_ENV: str(table)}).lookup(key)
    assert grant is not None and grant.tenants == {"acme"} and grant.rights == {"read", "write"}
    again = runner.invoke(app, ["keys", "add", "--file", str(table), "--name", "acme", "--tenant", "b"])
    assert again.exit_code == 1 and "keys[1].name" in again.output
    bad = runner.invoke(app, ["keys", "add", "--file", str(table), "--name", "x", "--tenant", "a", "--rights", "own"])
    assert bad.exit_code == 1 and "rights" in bad.output
