"""The `council` command line (typer + rich): serve, ask, ingest, status, demo, specialize, eval."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console

from council.backends.files import KINDS, find_files
from council.cli_ingest import IngestJob, ingest_here, ingest_served
from council.errors import CouncilError, InvalidRequest
from council.render import render_answer
from council.serving.lifecycle import block_until_signal, serve_target, start_serve, stop_serve

app = typer.Typer(
    name="council",
    help="A council of specialist LLMs with retrieval, served on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
F = TypeVar("F", bound=Callable[..., Any])

URL = Annotated[str, typer.Option("--url", envvar="COUNCIL_URL", help="The council's HTTP address.")]
CONFIG = Annotated[
    Path | None, typer.Option("--config", "-c", help="Council config YAML, or a Serve config (clusters/*.yaml).")
]

ENGINE = Annotated[
    Literal["transformers", "vllm"],
    typer.Option(
        "--engine",
        help="What runs the members' models. transformers: each member on the engine its config names (the demo: "
        "all six on Hugging Face transformers). vllm: --vllm-members of them on vLLM's engine (Ray Serve only; "
        "needs `make vllm`), the rest on transformers. One vLLM-CPU engine on a demo checkpoint is ~2.9 GiB "
        "resident and ~30 s to load.",
    ),
]
VLLM_MEMBERS = Annotated[
    str | None,
    typer.Option(
        "--vllm-members",
        help="With --engine vllm: how many members run on vLLM (taken in turn over the domains, so each sits "
        "beside a transformers member of its domain), 'all', or their names, comma-separated. Default 2: "
        "legal-1 and finance-1 of the demo council.",
    ),
]


def friendly(fn: F) -> F:
    """Council errors become one red line on stderr and exit code 1; no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CouncilError as e:
            err_console.print(f"[bold red]error[/] ({e.type}): {e.message}", markup=True, highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


# ---------------------------------------------------------------- serving


@app.command()
@friendly
def serve(
    config: CONFIG = None,
    host: Annotated[str | None, typer.Option(help="Bind address (default: the config's, else 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: the config's, else 8000).")] = None,
    engine: ENGINE = "transformers",
    vllm_members: VLLM_MEMBERS = None,
) -> None:
    """Deploy the council on Ray Serve and serve HTTP until Ctrl-C or SIGTERM."""
    args, settings = serve_target(config)
    settings.update({k: v for k, v in (("host", host), ("port", port)) if v is not None})
    if engine != "transformers" or vllm_members is not None:
        args = _on_engine(args, engine, vllm_members)
    with console.status("starting Ray Serve and loading the specialists…"):
        url = start_serve(args, **settings)
    console.print(f"[bold green]council serving[/] at {url}  (POST /v1/council, /v1/chat/completions)")
    console.print(f"  the page: {url}/", highlight=False)
    console.print(f'  curl -s {url}/v1/council -d \'{{"question": "..."}}\'', highlight=False)
    try:
        block_until_signal()
    finally:
        console.print("shutting down…")
        stop_serve()


def _on_engine(args: dict[str, Any], engine: str, vllm_members: str | None) -> dict[str, Any]:
    """build_app args with the council's members moved to `engine` (council.demo.engines); says which."""
    from council.config import CouncilConfig
    from council.demo.engines import app_args, with_engine

    if "config_dict" in args:
        council = CouncilConfig.from_dict(args["config_dict"])
    else:
        council = CouncilConfig.from_yaml(args["config"])
    moved, on_vllm = with_engine(council, engine, vllm_members)
    console.print(f"[dim]on vLLM: {', '.join(on_vllm) or 'none'}[/]", highlight=False)
    return app_args(moved, args)


# ---------------------------------------------------------------- asking and status


@app.command()
@friendly
def ask(
    question: Annotated[str, typer.Argument(help="The question to put to the council.")],
    url: URL = "http://127.0.0.1:8000",
    k: Annotated[int | None, typer.Option(help="Specialists to ask (default: the config's).")] = None,
    tenant: Annotated[str, typer.Option(help="Whose documents to retrieve from.")] = "public",
    doc: Annotated[list[str] | None, typer.Option("--doc", help="An ephemeral document (repeatable).")] = None,
    specialist: Annotated[
        list[str] | None, typer.Option("--specialist", "-s", help="Force these specialists (repeatable).")
    ] = None,
    budget: Annotated[int | None, typer.Option("--budget", help="Context token budget per member.")] = None,
    no_retrieval: Annotated[bool, typer.Option("--no-retrieval", help="Skip the document store.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the raw JSON answer.")] = False,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 120.0,
) -> None:
    """Ask the council a question over HTTP and show every member's answer, the verdict and the sources."""
    from council.client import Client, documents_from

    with Client(url, timeout_s=timeout) as client:
        answer = client.ask(
            question,
            k=k,
            tenant=tenant,
            documents=documents_from(doc or []),
            specialists=specialist or None,
            budget_tokens=budget,
            use_retrieval=False if no_retrieval else None,
        )
    if as_json:
        console.print_json(json.dumps(answer.to_dict()))
    else:
        render_answer(answer, out=console, trims=True)


@app.command()
@friendly
def status(url: URL = "http://127.0.0.1:8000") -> None:
    """Show the served council: app state, each deployment's replicas, the store's size, the models."""
    from rich.table import Table

    from council.client import Client

    with Client(url, timeout_s=15) as client:
        info = client.status()
        models = client.models()
    colour = "green" if info.get("status") == "RUNNING" else "yellow"
    console.print(f"[bold {colour}]{info.get('status', '?')}[/] app {info.get('app', '?')!r} at {url}", highlight=False)
    table = Table("deployment", "status", "replicas", header_style="bold")
    for name, dep in (info.get("deployments") or {}).items():
        replicas = ", ".join(f"{n} {state.lower()}" for state, n in (dep.get("replicas") or {}).items())
        table.add_row(name, str(dep.get("status", "?")), replicas)
    console.print(table)
    console.print(f"  chunks in the store: {info.get('chunks')}", highlight=False)
    console.print(f"  models: {', '.join(models)}", highlight=False)


@app.command()
@friendly
def ingest(
    paths: Annotated[list[Path], typer.Argument(help=f"Files or folders of {KINDS} files.")],
    tenant: Annotated[
        str | None,
        typer.Option(help="The tenant that owns these documents (required: `public` is read by every request, so "
                     "it is never a default)."),
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Domain tag stored with each chunk.")] = None,
    tenant_column: Annotated[
        bool,
        typer.Option(
            "--tenant-column",
            help="Store each Parquet row for the tenant its `tenant` column names (an empty cell: --tenant). "
            "Without it, a column naming another tenant than --tenant is refused before anything is stored.",
        ),
    ] = False,
    config: CONFIG = None,
    url: Annotated[
        str | None,
        typer.Option(
            "--url",
            envvar="COUNCIL_URL",
            help="A running council that owns the store: send the documents through it (POST /v1/documents). "
            "Without it the embedded store is opened here, or, when a council server holds it, sent through "
            "that server at the address of the Serve config (http_options; default http://127.0.0.1:8000).",
        ),
    ] = None,
    chroma_host: Annotated[str | None, typer.Option(help="A Chroma server instead of the embedded store.")] = None,
    chroma_port: Annotated[int | None, typer.Option(help="The Chroma server's port.")] = None,
) -> None:
    """Chunk, embed and store documents for a tenant (idempotent: re-ingesting adds nothing).

    Every file is read through and checked before anything is stored. An embedded store belongs to one
    process: while `council serve` (or `serve run`) holds it, the documents go through that server; any other
    holder is named in the error.
    """
    from council.backends.files import check_readable

    if tenant is None:  # a write names its tenant: no silent default to `public` (issue 16, finding 1)
        raise InvalidRequest(
            "council ingest needs --tenant: the tenant that owns these documents (--tenant public for documents "
            "every request reads; with --tenant-column, the tenant of rows whose tenant cell is empty); "
            "nothing was stored"
        )
    retrieval, server_url = retrieval_config(config, host=chroma_host, port=chroma_port)
    files = find_files(paths, max_bytes=retrieval.max_file_bytes)
    if not files:
        raise CouncilError(f"no {KINDS} files under {', '.join(map(str, paths))}")
    job = IngestJob(files, tenant, domain, tenant_column, retrieval.max_file_bytes)
    check_readable(files, tenant, max_bytes=job.max_file_bytes, tenant_column=tenant_column)
    if url is not None:
        ingest_served(url, job, store=None)
        return
    from council.backends.store_lock import SERVER_ROLE
    from council.errors import StoreBusy

    try:
        ingest_here(retrieval, job)
    except StoreBusy as busy:
        holders: Any = busy.details.get("holders") or []
        if not any(str(h.get("role", "")).startswith(SERVER_ROLE) for h in holders):
            raise
        err_console.print(f"[dim]{retrieval.path} is held by a council server: ingesting through {server_url}[/]")
        ingest_served(server_url, job, store=retrieval.path)


def retrieval_config(config: Path | None, *, host: str | None = None, port: int | None = None) -> tuple[Any, str]:
    """(RetrievalConfig, the server's URL) of a council or Serve config file — by default the one `council
    serve` deploys, so ingest and the server agree on the store — with Chroma host/port overrides."""
    from council.config import CouncilConfig

    args, settings = serve_target(config)
    if "config_dict" in args:
        retrieval = CouncilConfig.from_dict(args["config_dict"]).retrieval
    else:
        retrieval = CouncilConfig.from_yaml(args["config"]).retrieval
    updates = {k: v for k, v in (("host", host), ("port", port)) if v is not None}
    bind = settings.get("host", "127.0.0.1")
    url = f"http://{'127.0.0.1' if bind in ('0.0.0.0', '::') else bind}:{settings.get('port', 8000)}"
    return (retrieval.model_copy(update=updates) if updates else retrieval), url


# ---------------------------------------------------------------- the demo and the jobs


@app.command()
@friendly
def demo(
    once: Annotated[bool, typer.Option("--once", help="Ask the demo questions, then exit (for tests).")] = False,
    in_process: Annotated[bool, typer.Option("--in-process", help="Run the council in this process, no Ray.")] = False,
    config: CONFIG = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: clusters/local.yaml's, 8000).")] = None,
    per_kind: Annotated[int, typer.Option(help="Questions asked of each kind.")] = 2,
    engine: ENGINE = "transformers",
    vllm_members: VLLM_MEMBERS = None,
    adapters: Annotated[
        bool, typer.Option("--adapters", help="The demo council as one base + six LoRA adapters (adapters.yaml).")
    ] = False,
) -> None:
    """Ingest the demo world, deploy the council, and ask trained, fresh and unanswerable questions."""
    from council.demo.run import DEMO_DIR, run_demo

    if adapters:
        if config is not None:
            raise typer.BadParameter("give --adapters or --config, not both", param_hint="--adapters")
        config = DEMO_DIR / "adapters.yaml"
    run_demo(
        console, once=once, in_process=in_process, config=config, port=port, per_kind=per_kind, engine=engine,
        vllm_members=vllm_members,
    )  # fmt: skip


_PASSTHROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASSTHROUGH, add_help_option=False)
@friendly
def specialize(ctx: typer.Context) -> None:
    """Train the demo specialists and the generalist (arguments go to council.jobs.specialize; try --help)."""
    from council.jobs.specialize import main

    raise typer.Exit(int(main(list(ctx.args)) or 0))


@app.command(name="eval", context_settings=_PASSTHROUGH, add_help_option=False)
@friendly
def eval_(ctx: typer.Context) -> None:
    """Evaluate the council on a world's questions (arguments go to council.jobs.eval; try --help)."""
    from council.jobs.eval import main

    raise typer.Exit(int(main(list(ctx.args)) or 0))


# ---------------------------------------------------------------- credentials

keys_app = typer.Typer(help="API keys bound to tenants (the key table COUNCIL_KEYS_FILE names).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("add")
@friendly
def keys_add(
    file: Annotated[Path, typer.Option("--file", help="The key table (YAML) to add to; created if missing.")],
    name: Annotated[str, typer.Option(help="A unique name for the key (shown in logs and errors).")],
    tenant: Annotated[list[str], typer.Option("--tenant", help="A tenant the key covers (repeatable; '*': all).")],
    rights: Annotated[str, typer.Option(help="Comma-separated: read, write, admin.")] = "read",
) -> None:
    """Make a new key for some tenants, store its hash in the key table, and print the key once."""
    import yaml

    from council.credentials import new_key, parse_table, table_entry

    table: Any = yaml.safe_load(file.read_text()) if file.exists() else None
    table = table or {"keys": []}
    key = new_key()
    entry = table_entry(name, key, tenant, [r.strip() for r in rights.split(",") if r.strip()])
    table["keys"].append(entry)
    parse_table(table, str(file))  # the whole table still loads (unique names, valid fields)
    file.write_text(yaml.safe_dump(table, sort_keys=False))
    file.chmod(0o600)
    err_console.print(f"added key {name!r} for {', '.join(tenant)} ({entry['rights']}) to {file}; the key:")
    print(key)


if __name__ == "__main__":
    app()
