"""SpecialistServer outside Serve: its own batch queue, batches that fill while a pass runs, answers with vectors."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import numpy as np
import pytest

from council.backends.embeddings import get_embedder
from council.errors import InvalidRequest
from council.testing.tiny import build_tiny_gpt2, tiny_specialist_config
from tests.fakes import until


@pytest.fixture(autouse=True)
def _batch_outside_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    # @serve.batch runs in any event loop; only a warning of its queue asks for Serve's replica context.
    from ray.serve import batching

    monkeypatch.setattr(batching._BatchQueue, "_warn_if_max_batch_size_exceeds_max_ongoing_requests", lambda s: None)


async def test_answers_come_with_their_embedding_in_one_pass_per_batch(tmp_path: Path) -> None:
    from council.serving.specialist import SpecialistServer

    config = tiny_specialist_config(build_tiny_gpt2(tmp_path / "m"), generation={"max_new_tokens": 6, "stop": []})
    server = SpecialistServer(config.model_dump(), answer_embedder="")
    plain = SpecialistServer(config.model_dump())
    questions = [f"question number {i}" for i in range(4)]
    embedded = await asyncio.gather(*(server.generate(q, ()) for q in questions))
    bare = await asyncio.gather(*(plain.generate(q, ()) for q in questions))
    assert [g.text for g in embedded] == [g.text for g in bare]  # same answers, vectors added
    assert all(g.embedding is None for g in bare)
    expected = get_embedder().embed([g.text.strip() for g in embedded])
    np.testing.assert_allclose(np.array([g.embedding for g in embedded]), expected, atol=1e-5)
    stats = server.stats()
    assert stats["embedded"] == len({g.text.strip() for g in embedded}) and stats["batches"] < 4
    # CPU time of the forward-pass threads, split between generating and embedding (ms, whole numbers).
    assert stats["generate_cpu_ms"] > 0 and stats["embed_cpu_ms"] > 0, stats
    assert plain.stats()["embed_cpu_ms"] == 0 and plain.stats()["generate_cpu_ms"] > 0


async def test_a_repeated_answer_is_remembered_not_embedded_again(tmp_path: Path) -> None:
    from council.serving.specialist import SpecialistServer

    config = tiny_specialist_config(build_tiny_gpt2(tmp_path / "m"), generation={"max_new_tokens": 6, "stop": []})
    server = SpecialistServer(config.model_dump(), answer_embedder="")
    first = await server.generate("the same question twice", ())
    cpu, hits = server.stats()["embed_cpu_ms"], server.stats()["embed_cache_hits"]
    again = await server.generate("the same question twice", ())
    assert again.text == first.text and again.embedding == first.embedding
    stats = server.stats()
    assert stats["embed_cache_hits"] == hits + 1 and stats["embedded"] == 2, stats
    assert stats["embed_cpu_ms"] - cpu <= 1, stats  # no forward pass for the remembered answer


async def test_two_servers_in_one_process_each_answer_with_their_own_model(tmp_path: Path) -> None:
    # @serve.batch on the class method would share one queue (and one model) between the two instances.
    from council.backends.transformers import TransformersSpecialist
    from council.serving.specialist import SpecialistServer

    configs = [tiny_specialist_config(build_tiny_gpt2(tmp_path / f"m{i}", seed=i), name=f"m{i}") for i in range(2)]
    servers = [SpecialistServer(c.model_dump()) for c in configs]
    questions = [f"question number {i}" for i in range(6)]
    answers = await asyncio.gather(*(s.generate(q, ()) for q in questions for s in servers))
    for i, c in enumerate(configs):
        expected = [g.text for g in TransformersSpecialist(c).generate_batch([(q, ()) for q in questions])]
        assert [a.text for a in answers[i :: len(servers)]] == expected
    assert expected != [a.text for a in answers[0 :: len(servers)]]  # the two models do differ
    assert [s.stats()["requests"] for s in servers] == [6, 6]


async def test_requests_arriving_during_a_forward_pass_form_one_batch(tmp_path: Path) -> None:
    from council.serving.specialist import SpecialistServer

    config = tiny_specialist_config(
        build_tiny_gpt2(tmp_path / "m"), deployment={"max_batch_size": 8, "batch_wait_timeout_s": 0.01}
    )
    server = SpecialistServer(config.model_dump())
    # The first forward pass holds until the test lets it go: everything after it arrives during the pass.
    in_pass, release = threading.Event(), threading.Event()
    run = server.engine.generate

    async def held_pass(requests):  # noqa: ANN001, ANN202 - the batch's call into the engine
        if not in_pass.is_set():
            in_pass.set()
            assert await asyncio.to_thread(release.wait, 60), "never released"
        return await run(requests)

    server.engine.generate = held_pass  # type: ignore[method-assign]
    first = asyncio.create_task(server.generate("question 0", []))
    await until(in_pass.is_set, "the first pass started")
    later = [asyncio.create_task(server.generate(f"question {i}", [])) for i in range(1, 6)]
    await until(lambda: server.stats()["requests"] == 6, "all six requests arrived")
    release.set()
    results = await asyncio.wait_for(asyncio.gather(first, *later), 60)
    assert all(r.completion_tokens > 0 for r in results)
    stats = server.stats()
    # Without the gate @serve.batch seals a batch 10 ms after its first request: 6 batches of 1.
    assert stats["requests"] == 6 and stats["batches"] == 2 and stats["largest_batch"] == 5, stats


async def test_a_lone_request_does_not_wait_for_the_batch_window(tmp_path: Path) -> None:
    from council.serving.specialist import SpecialistServer

    model = build_tiny_gpt2(tmp_path / "m")
    config = tiny_specialist_config(model, deployment={"max_batch_size": 8, "batch_wait_timeout_s": 600.0})
    server = SpecialistServer(config.model_dump())
    # A 10-minute batch window: a lone request that waited for it would run far past these bounds.
    await asyncio.wait_for(server.generate("warm up", ()), 60)
    await asyncio.wait_for(server.generate("a lone question", ()), 60)
    assert server.stats()["batches"] == 2
    # Requests that come together still share the window and one pass.
    config = tiny_specialist_config(model, deployment={"max_batch_size": 8, "batch_wait_timeout_s": 0.5})
    server = SpecialistServer(config.model_dump())
    await asyncio.wait_for(asyncio.gather(*(server.generate(f"together {i}", ()) for i in range(4))), 60)
    assert server.stats()["batches"] == 1 and server.stats()["largest_batch"] == 4


async def test_faults_come_from_the_wrapper_engine_and_meet_each_request_on_arrival(tmp_path: Path) -> None:
    import time

    from council.backends.faulty import FaultyEngine
    from council.serving.specialist import SpecialistServer

    config = tiny_specialist_config(build_tiny_gpt2(tmp_path / "m"), deployment={"max_batch_size": 1})
    slow = SpecialistServer(config.model_dump(), fault={"delay_s": 0.5})
    assert isinstance(slow.engine, FaultyEngine) and slow.engine.faults.stuck_after_s == 300.0
    await slow.generate("warm up", ())
    t0 = time.monotonic()
    await asyncio.gather(*(slow.generate(f"q {i}", ()) for i in range(4)))
    # Batches of one: a delay inside each pass would take at least 4 x 0.5 s; on arrival the four delays overlap,
    # so the four answers take less than the delays' sum (whatever the load adds to the tiny passes).
    assert time.monotonic() - t0 < 4 * 0.5
    broken = SpecialistServer(config.model_dump(), fault={"error": "injected"})
    with pytest.raises(RuntimeError, match="injected"):
        await broken.generate("q", ())
    await broken.check_health()  # a failing member is not a dead model
    assert broken.stats()["errors"] == 1 and broken.stats()["batches"] == 0
    plain = SpecialistServer(config.model_dump())
    assert plain.engine.kind == "transformers"
    # Per-request decoding overrides; a bad one is the request's fault.
    long = await plain.generate("q", (), {"max_tokens": 5, "ignore_eos": True, "stop": []})
    assert long.completion_tokens == 5
    with pytest.raises(InvalidRequest):
        await plain.generate("q", (), {"max_token": 5})


async def test_a_stream_yields_the_answer_as_generate_gives_it_and_closing_it_stops_the_pass(tmp_path: Path) -> None:
    from council.serving.specialist import SpecialistServer

    config = tiny_specialist_config(build_tiny_gpt2(tmp_path / "m"), generation={"max_new_tokens": 6, "stop": []})
    server = SpecialistServer(config.model_dump())
    whole = await server.generate("a question", ())
    deltas = [d async for d in server.stream("a question", ())]
    assert "".join(d.text for d in deltas).strip() == whole.text
    assert deltas[-1].finished and deltas[-1].completion_tokens == whole.completion_tokens
    assert all(not d.finished for d in deltas[:-1])
    long = server.stream("a question", (), {"max_tokens": 200, "ignore_eos": True})
    await anext(long)
    assert server.stats()["running"] == 1
    await long.aclose()  # the consumer went away: the engine request ends
    await until(lambda: server.stats()["running"] == 0, "the stream's request ended")
    assert server.stats()["streams"] == 2 and server.stats()["cancelled"] == 1
