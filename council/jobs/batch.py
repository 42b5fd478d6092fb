"""Batch job: a Parquet file of questions -> Parquet parts of council answers via Ray Data; resumable, exactly once.

    python -m council.jobs.batch --input questions.parquet --output answers/    # the `council` app, else the demo
    python -m council.jobs.batch --input questions.parquet --output answers/ --app council
    python -m council.jobs.batch --input questions.parquet --output answers/ --config council.yaml

How resuming works. Actors in a Ray Data pool answer batches; the driver alone writes each answered batch
as one part file, `part-<shard>.parquet`, where the shard id is a hash of the ids it holds, and writes it
atomically (temporary name, fsync, rename). A part therefore exists whole or not at all. A rerun with the
same output folder reads the ids of the parts already there and asks only the rest, so a crash or a stopped
job loses at most the batches in flight and never writes an id twice. One writer (the driver) also means
that nothing writes after a stopped job's driver is gone, and the output folder need only be visible to
the driver, not to every node.

A question whose answer is an error is written too (its `error` column says why), but it is not done: a rerun
takes those rows out of their parts and asks them again (unless `--no-retry-errors`), and a run whose output
holds more than `--max-error-rate` errors exits 1. The driver holds the output folder's lock
(`council.jobs.output_lock`) for the whole run: a second run on the same folder is refused, naming the first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from council.errors import ConfigError, CouncilError, incident
from council.jobs._common import (
    DEMO_CONFIG,
    EXIT_FAILED,
    EXIT_OK,
    add_common_args,
    bad_file,
    connect_ray,
    load_config,
    remove_stale_temps,
    run_main,
    setup_logging,
    write_parquet_atomic,
)
from council.jobs.batch_files import (
    OUTPUT_SCHEMA,
    Questions,
    answer_row,
    answered_ids,
    errored_ids,
    inspect_input,
    shard_id,
    take_back_errors,
)
from council.jobs.output_lock import OutputLock
from council.serving.ray_errors import transient

log = logging.getLogger("council.jobs.batch")


# --- answering (runs inside Ray Data actors) -------------------------------------------------------------


def _drop_answered(batch: pa.Table, done: pa.Array) -> pa.Table:
    """Rows whose id is not yet in the output."""
    return batch.filter(pc.invert(pc.is_in(batch["id"], value_set=done)))


def _request(row: dict[str, Any]) -> dict[str, Any]:
    # No tenant column (or an empty cell): the key decides (its only tenant, else public; council.credentials).
    payload: dict[str, Any] = {"question": row["question"]}
    if row.get("tenant"):
        payload["tenant"] = row["tenant"]
    if row.get("k") is not None:
        payload["k"] = int(row["k"])
    return payload


def _describe(e: BaseException) -> str:
    """A failed row's `error`: a council error's type and message; any other (Ray's name nodes and PIDs) a code
    and an incident id whose detail is in the job's log."""
    if isinstance(e, CouncilError):
        return f"{e.type}: {e.message}"[:1000]
    return str(incident(e, "a batch row"))


class Answerer:
    """A Ray Data actor: answers a batch of questions through the deployed app's handle or its own council."""

    def __init__(self, app: str | None, config: dict[str, Any] | None, timeout_s: float, retries: int) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.handle: Any = None
        self.council: Any = None
        if app is not None:
            from council.serving.app_handle import app_handle

            self.handle = app_handle(app)
            # The job's credentials, as a client's: with keys configured, its rows reach only the key's tenants.
            self.keyed = {"api_key": key} if (key := os.environ.get("COUNCIL_API_KEY")) else {}
        else:
            from council.config import CouncilConfig
            from council.local import build_local_council

            self.council = build_local_council(CouncilConfig.model_validate(config))
        self.loop = asyncio.new_event_loop()

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        if self.handle is not None:
            results = self._by_handle(rows)
        else:
            # Ray Data calls this from a worker thread: run the batch on this actor's own event loop.
            results = self.loop.run_until_complete(self._local_batch(rows))
        log.info("answered a batch of %d question(s)", len(rows))
        return pa.Table.from_pylist(results, schema=OUTPUT_SCHEMA)

    def _by_handle(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Send the whole batch at once (the council works on them in parallel), then collect; retry busy ones."""
        results: dict[int, dict[str, Any]] = {}
        todo = list(range(len(rows)))
        for attempt in range(self.retries + 1):
            calls = {i: self.handle.ask.remote(_request(rows[i]), **self.keyed) for i in todo}
            retry: list[int] = []
            for i, call in calls.items():
                try:
                    results[i] = answer_row(rows[i], call.result(timeout_s=self.timeout_s))
                except Exception as e:  # a question's failure is recorded in its row, never sinks the batch
                    if transient(e) and attempt < self.retries:
                        retry.append(i)
                    else:
                        results[i] = answer_row(rows[i], None, _describe(e))
            if not retry:
                break
            time.sleep(0.5 * 2**attempt)
            todo = retry
        return [results[i] for i in range(len(rows))]

    async def _local_batch(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The whole batch at once: the council batches its members' forward passes across questions."""
        return list(await asyncio.gather(*(self._local(r) for r in rows)))

    async def _local(self, row: dict[str, Any]) -> dict[str, Any]:
        from council.types import AskRequest

        try:
            answer = await asyncio.wait_for(self.council.ask(AskRequest(**_request(row))), self.timeout_s)
            return answer_row(row, answer.to_dict())
        except Exception as e:
            return answer_row(row, None, _describe(e))


# --- the driver -------------------------------------------------------------------------------------------


DEFAULT_APP = "council"  # the app name clusters/local.yaml and `council serve` deploy
# Above this share of errors among the input's answers the job fails (exit 1): an error is never taken for done.
DEFAULT_MAX_ERROR_RATE = 0.05


def _choose_backend(args: argparse.Namespace, config: Any) -> tuple[str | None, dict[str, Any] | None]:
    """The deployed app (--app, else one named `council` when running), else a council built in the actors
    from --config, else the demo council; logs which, and why."""
    from council.serving.app_handle import deployed

    app = args.app or DEFAULT_APP
    if deployed(app):
        log.info("answering through the deployed Serve app %r", app)
        return app, None
    if config is None and args.app:
        raise ConfigError(
            f"no Serve app named {args.app!r} is running on this cluster and no --config was given to build "
            "a council in the job's own actors (a job run outside a cluster needs --address auto to see its apps)"
        )
    if config is None:
        log.info("no Serve app named %r is running here and no --config was given: building the demo council "
                 "(%s) inside %d actor(s)", app, DEMO_CONFIG, args.concurrency)
        config = load_config(str(DEMO_CONFIG))
    else:
        log.info("building the council inside %d actor(s) from %s", args.concurrency, args.config)
    return None, config.model_dump(mode="json")


def answered_blocks(args: argparse.Namespace, questions: Questions, done: set[str], app: str | None,
                    config: dict[str, Any] | None) -> Iterator[pa.Table]:
    """Answered batches as they finish: through the deployed app's handle from this driver, else from the
    council built in a Ray Data actor pool.

    With an app, its replicas do the work: the driver only reads the (small) question files and sends each
    batch through the handle, `--concurrency` batches at a time. Ray Data would ask a whole CPU for each of
    its listing and reading tasks, which a small cluster whose CPUs the council's replicas hold cannot give:
    the job would wait for them forever.
    """
    if app is None:
        dataset = build_dataset(args, questions, done, app, config)
        yield from dataset.iter_batches(batch_size=None, batch_format="pyarrow")
        return
    table = pa.concat_tables([pq.read_table(f, columns=questions.columns) for f in questions.files])
    if done:
        table = _drop_answered(table, pa.array(sorted(done)))
    answerer = Answerer(app, None, args.timeout_s, args.retries)
    blocks = (table.slice(start, args.batch_size) for start in range(0, table.num_rows, args.batch_size))
    with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        yield from pool.map(answerer, blocks)


def build_dataset(args: argparse.Namespace, questions: Questions, done: set[str], app: str | None,
                  config: dict[str, Any] | None) -> Any:
    """read_parquet -> drop answered ids -> answer in an actor pool (pyarrow batches)."""
    import ray

    ds = ray.data.read_parquet(questions.files).select_columns(questions.columns)
    if done:
        ds = ds.map_batches(partial(_drop_answered, done=pa.array(sorted(done))), batch_format="pyarrow")
    # One block per batch: each actor call then yields its own output block, which the driver writes as one
    # part as soon as it is answered (a large block would be answered whole before any of it is saved).
    ds = ds.repartition(target_num_rows_per_block=args.batch_size)
    return ds.map_batches(
        Answerer,
        fn_constructor_kwargs={"app": app, "config": config, "timeout_s": args.timeout_s, "retries": args.retries},
        batch_size=args.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=args.concurrency),
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The job's command line."""
    p = argparse.ArgumentParser(
        prog="python -m council.jobs.batch",
        description="Answer a Parquet file of questions (columns id, question; optional tenant, k) with the "
        "council and write the answers as Parquet parts into OUTPUT. Rerunning with the same OUTPUT "
        "answers only the ids not yet there.",
    )
    p.add_argument("--input", required=True, help="Parquet file, or a folder of them, with id and question.")
    p.add_argument("--output", required=True, help="Folder for the answer parts (created; reused to resume).")
    p.add_argument("--app", default=None, help="Name of a deployed council Serve app to ask through its handle "
                   f"(default: {DEFAULT_APP!r} when it is running).")
    p.add_argument("--config", default=None, help="Council YAML: build the council inside the job's actors "
                   "(used when the app is not deployed; default: the demo council).")
    p.add_argument("--batch-size", type=int, default=8, help="Questions per batch, and per output part.")
    p.add_argument("--concurrency", type=int, default=1, help="Actors in the answering pool (with a deployed app: "
                   "batches in flight at once).")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor (fractions allowed).")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (with --config on a GPU cluster).")
    p.add_argument("--timeout-s", type=float, default=300.0, help="Longest wait for one answer.")
    p.add_argument("--retries", type=int, default=3, help="Retries of a question the council was too busy for.")
    p.add_argument("--retry-errors", action=argparse.BooleanOptionalAction, default=True,
                   help="On a rerun, ask again the questions whose answer is an error in OUTPUT (default); with "
                   "--no-retry-errors they are kept as they are.")
    p.add_argument("--max-error-rate", type=float, default=DEFAULT_MAX_ERROR_RATE,
                   help="Exit 1 when more than this fraction of the input's rows in OUTPUT are errors "
                   f"(default {DEFAULT_MAX_ERROR_RATE:g}; 0: any error fails the job). The rows are written "
                   "either way, and a rerun asks them again.")
    add_common_args(p)
    args = p.parse_args(argv)
    for name in ("batch_size", "concurrency", "retries"):
        if getattr(args, name) < (0 if name == "retries" else 1):
            p.error(f"--{name.replace('_', '-')} is out of range")
    if not 0 <= args.max_error_rate <= 1:
        p.error("--max-error-rate must be between 0 and 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the batch job; returns the process exit code."""
    args = parse_args(argv)
    setup_logging(args.verbose)
    # Everything that can be wrong with the caller's files is checked before Ray starts or a byte is written.
    questions = inspect_input(args.input)
    config = load_config(args.config)
    out = Path(args.output)
    if out.exists() and not out.is_dir():
        raise bad_file(out, "the output must be a folder")
    out.mkdir(parents=True, exist_ok=True)
    # One run per output folder: a second one is refused, naming this one, before it reads or deletes anything.
    with OutputLock(out, role="python -m council.jobs.batch"):
        return _run(args, questions, config, out)


def _run(args: argparse.Namespace, questions: Questions, config: Any, out: Path) -> int:
    """Answer the questions not yet answered in `out` (the caller holds its lock)."""
    remove_stale_temps(out)  # only a crashed run's: no other run writes here while we hold the lock
    input_ids = set(questions.ids.to_pylist())
    retried = take_back_errors(out, input_ids) if args.retry_errors else 0
    done = set(answered_ids(out))
    already = len(input_ids & done)
    pending = len(input_ids) - already
    log.info("%d question(s) in %s: %d already answered in %s, %d to answer",
             len(input_ids), args.input, already, out, pending)
    if retried:
        log.info("%d of them are asked again: their answer in %s was an error", retried, out)
    if pending == 0:
        return _verify(out, input_ids, 0, 0.0, args.max_error_rate)
    connect_ray(args.address)
    app, council_config = _choose_backend(args, config)
    written, errors, t0 = 0, 0, time.perf_counter()
    first: tuple[float, int] | None = None  # (time, rows) of the first part: the rate after start-up
    for block in answered_blocks(args, questions, done & input_ids, app, council_config):
        if block.num_rows == 0:
            continue
        table = block.select(OUTPUT_SCHEMA.names).cast(OUTPUT_SCHEMA)
        write_parquet_atomic(table, out / f"part-{shard_id(table['id'].to_pylist())}.parquet")
        written += table.num_rows
        errors += table.num_rows - table["error"].null_count
        if first is None:
            first = (time.perf_counter(), written)
            log.info("progress: %d/%d answered this run (%d with errors)", written, pending, errors)
        else:
            steady = (written - first[1]) / max(time.perf_counter() - first[0], 1e-9)
            log.info("progress: %d/%d answered this run (%d with errors); %.2f questions/s since the first part",
                     written, pending, errors, steady)
    return _verify(out, input_ids, written, time.perf_counter() - t0, args.max_error_rate)


def _verify(out: Path, input_ids: set[str], written: int, elapsed: float, max_error_rate: float) -> int:
    """Check exactly-once over the whole output folder and the share of errors in it; log the summary."""
    ids = answered_ids(out)
    present = set(ids)
    repeated = len(ids) - len(present)
    missing = len(input_ids - present)
    errored = len(errored_ids(out) & input_ids)
    log.info(
        "done: %d answered this run in %.1fs (%.2f questions/s with start-up); %d/%d ids present in %s, "
        "%d missing, %d repeated, %d errors",
        written, elapsed, written / max(elapsed, 1e-9), len(input_ids & present), len(input_ids), out, missing,
        repeated, errored,
    )
    if repeated or missing:
        log.error("the output is not exactly-once: %d id(s) missing, %d repeated", missing, repeated)
        return EXIT_FAILED
    rate = errored / max(len(input_ids), 1)
    if rate > max_error_rate:
        log.error("%d of %d answers in %s are errors (%.1f%%, over --max-error-rate %g): rerun with the same "
                  "--output to ask them again", errored, len(input_ids), out, 100 * rate, max_error_rate)
        return EXIT_FAILED
    return EXIT_OK


if __name__ == "__main__":
    run_main(main)
