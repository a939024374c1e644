"""Many machines: submit / agent / status / collect on a real redis-server and a real S3 server.

Pure parts (URLs, wire forms, affinity) are tested without a network; the queue's scripts and an
in-process agent against a real Redis and a simulated backend; and the whole fleet as separate
processes (one submitter, agents SIGKILLed and added mid-run, Redis restarted mid-run) in the
slow test at the end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from pipeline import expand
from pipeline.fleet import affinity
from pipeline.fleet.errors import FleetUsageError
from pipeline.fleet.keys import JobKeys, job_id
from pipeline.fleet.redisq import Queue, StreamLoad
from pipeline.fleet.urls import parse_queue_url, parse_store_url
from pipeline.fleet.wire import (History, JobMeta, entry_fields, generated_from, record_document,
                                 record_id, relocate_refs, restore_refs, variant_from,
                                 variant_json)
from pipeline.job.load import load_job
from pipeline.model import Generated, Image, Variant
from tests.conftest import read_manifest
from tests.services import (RedisServer, S3Server, child_env, redis_server,  # noqa: F401
                            s3_env, s3_server)

ROOT = Path(__file__).resolve().parent.parent

JOB = """\
name: fleet
prompts:
  - "a {red|blue|green} fox"
defaults: {steps: 4, width: 64, height: 64, sampler_name: "Euler a"}
matrix:
  checkpoint: [v1-5-pruned-emaonly.safetensors, sdxl_base_1.0.safetensors]
seeds: [1, 2]
retry: {backoff_initial_s: 0, backoff_max_s: 0, cooldown_s: 0.1, cooldown_max_s: 0.2}
"""


def _variant(n: int = 1, **payload: Any) -> Variant:
    body = {"prompt": "p", "seed": n, **payload}
    return Variant(id=f"{n:016x}", ordinal=n, prompt="p", negative_prompt="", seed=n,
                   payload=body, axes=(("prompt", "p"), ("cfg", [1, 2]), ("seed", n)))


# --- URLs and credentials ------------------------------------------------------------------------

def test_queue_url_keeps_credentials_out_of_what_is_shown() -> None:
    url = parse_queue_url("redis://user:s3cret@cache.local:6390/2", environ={})
    assert url.shown == "redis://cache.local:6390/2"
    assert "s3cret" in url.secret_url.get_secret_value()
    assert "s3cret" not in repr(url) and "s3cret" not in str(url)
    from_env = parse_queue_url(None, environ={"SDBATCH_QUEUE": "redis://h",
                                              "SDBATCH_REDIS_PASSWORD": "p@ss"})
    assert from_env.shown == "redis://h:6379/0"
    assert "p%40ss@" in from_env.secret_url.get_secret_value()
    for bad in ("http://h:6379", "redis://h:port/0", "redis://h/db"):
        with pytest.raises(FleetUsageError):
            parse_queue_url(bad, environ={})
    with pytest.raises(FleetUsageError, match="--queue"):
        parse_queue_url(None, environ={})


def test_store_url_public_form_has_no_credentials(tmp_path: Path) -> None:
    s3 = parse_store_url("s3://KEY:SECRET@my-bucket/runs/a/?endpoint=http://127.0.0.1:9000")
    assert (s3.kind, s3.bucket, s3.prefix, s3.endpoint) == ("s3", "my-bucket", "runs/a",
                                                            "http://127.0.0.1:9000")
    assert s3.access_key is not None and s3.access_key.get_secret_value() == "KEY"
    assert "SECRET" not in s3.public() and "KEY" not in s3.public()
    assert parse_store_url(s3.public()).public() == s3.public()
    assert parse_store_url("s3://bucket").public() == "s3://bucket"
    folder = parse_store_url(str(tmp_path / "shared"))
    assert folder.kind == "folder" and folder.public() == str(tmp_path / "shared")
    assert parse_store_url(f"file://{tmp_path}/shared").public() == folder.public()
    for bad in ("s3://Bad_Bucket/x", "s3://bucket/../x", "s3://bucket?colour=red",
                "ftp://host/x", "s3://KEY@bucket/x", "s3://b?endpoint=http://u:p@h"):
        with pytest.raises(FleetUsageError):
            parse_store_url(bad)


def test_job_id_follows_the_output_store() -> None:
    assert job_id("s3://b/p") == job_id("s3://b/p") != job_id("s3://b/q")
    keys = JobKeys(job_id("s3://b/p"))
    assert {keys.queued, keys.stream(0), keys.errors("ab")} == {
        k for k in (keys.queued, keys.stream(0), keys.errors("ab")) if "{" + keys.job + "}" in k}


# --- wire forms ------------------------------------------------------------------------------------

def test_variant_and_history_survive_the_wire() -> None:
    variant = _variant(7, override_settings={"sd_model_checkpoint": "m"})
    back = variant_from(orjson.loads(orjson.dumps(variant_json(variant))))
    assert back == variant and back.payload == variant.payload and back.axes == variant.axes
    history = History(deliveries=2, attempts=3, failed_on=("a",), excluded=("b",), first_at=5.0)
    assert History.from_json(history.to_json()) == history
    assert History.from_json(None) == History()
    fields = entry_fields(variant, history)
    assert set(fields) == {"v", "h"}


def test_record_names_content_addressed_images_and_rebuilds_the_result() -> None:
    variant = _variant(3)
    images = (Image(0, b"\x89PNG one", "png", seed=3, infotext="x"),
              Image(1, b"\x89PNG two", "png", kind="extra"))
    result = Generated(variant, images, {"sampler_name": "Euler a"}, "http://b", "m", 2, 0.5,
                       {"prompt": "p"})
    doc, objects = record_document(result, job="j", agent="a1", deliveries=1)
    assert [k for k, _ in objects] == [f"images/{hashlib.sha256(i.data).hexdigest()}.png"
                                       for i in images]
    again, _ = record_document(result, job="j", agent="a2", deliveries=2)
    assert [i["key"] for i in again["images"]] == [i["key"] for i in doc["images"]]
    rebuilt = generated_from(orjson.loads(orjson.dumps(doc)), dict(objects))
    assert rebuilt.images == images and rebuilt.variant == variant
    assert (rebuilt.info, rebuilt.model, rebuilt.attempts, rebuilt.params) == (
        result.info, "m", 2, {"prompt": "p"})
    assert record_id("records/00000000000000ff.json") == "00000000000000ff"
    assert record_id("records/.tmp-x.json") is None and record_id("images/a.png") is None


def test_input_references_are_relocated_for_sending_and_restored_for_the_record() -> None:
    ref = {"$file": "/submitter/in.png", "sha256": "ab" * 32, "width": 8, "height": 8}
    payload = {"prompt": "p", "init_images": [ref], "mask": dict(ref)}
    moved = relocate_refs(payload, {"ab" * 32: "/cache/abab"})
    assert moved["init_images"][0]["$file"] == "/cache/abab" == moved["mask"]["$file"]
    assert payload["init_images"][0]["$file"] == "/submitter/in.png"  # not changed in place
    assert restore_refs(moved, payload)["init_images"] == payload["init_images"]


# --- affinity --------------------------------------------------------------------------------------

def _load(checkpoint: str | None, waiting: int, leased: int = 0, index: int = 0) -> StreamLoad:
    return StreamLoad("j", index, f"s:{checkpoint}", checkpoint, waiting + leased, leased)


def test_read_order_keeps_the_loaded_checkpoint_then_spreads_backends() -> None:
    loads = [_load("a", 0), _load(None, 5), _load("b", 40), _load("c", 100), _load("d", 6)]
    order = affinity.read_order("a", loads, on_it={"c": 1, "d": 2}, servable=lambda s: True)
    # loaded first (even if it looks empty), then checkpoint-free, then the uncovered stream,
    # then covered ones only while each helper would get 4 or more
    assert [s.checkpoint for s in order] == ["a", None, "b", "c"]
    order = affinity.read_order(None, loads, on_it={}, servable=lambda s: s.checkpoint != "c")
    assert [s.checkpoint for s in order] == [None, "b", "d", "a"][:3]


def test_claim_order_and_other_agents_on_checkpoints() -> None:
    loads = [_load("a", 0, leased=1), _load("b", 0, leased=3), _load(None, 0, leased=1),
             _load("c", 9)]
    assert [s.checkpoint for s in affinity.claim_order("b", loads, servable=lambda s: True)] == \
        ["b", None, "a"]
    now = 1000.0
    beats = [{"id": "me", "state": "running", "seen": now, "backends": [
                 {"state": "ok", "checkpoint": "a"}]},
             {"id": "x", "state": "running", "seen": now - 1, "backends": [
                 {"state": "ok", "checkpoint": "a"}, {"state": "benched", "checkpoint": "b"},
                 {"state": "ok", "checkpoint": None}]},
             {"id": "gone", "state": "running", "seen": now - 60, "backends": [
                 {"state": "ok", "checkpoint": "c"}]},
             {"id": "left", "state": "stopped", "seen": now, "backends": [
                 {"state": "ok", "checkpoint": "c"}]}]
    assert affinity.others_on(beats, now_s=now, fresh_s=15, skip_agent="me") == {"a": 1, None: 1}


# --- the queue's scripts on a real Redis ---------------------------------------------------------

def _meta(store: str = "/tmp/none", **changes: Any) -> JobMeta:
    base = dict(id=job_id(store), name="t", store=store, job={}, checkpoints=(None, "m"),
                total=4, lease_s=0.3, max_deliveries=3)
    base.update(changes)
    return JobMeta(**base)  # type: ignore[arg-type]


def _items(variants: list[Variant], meta: JobMeta) -> list[tuple[str, int, bytes, bytes]]:
    out = []
    for v in variants:
        f = entry_fields(v)
        out.append((v.id, meta.stream_of(v.checkpoint), f["v"], f["h"]))
    return out


async def test_enqueue_is_idempotent_and_requeues_only_failed(redis_server: RedisServer) -> None:
    queue = Queue(parse_queue_url(redis_server.url), patience_s=5)
    meta = _meta()
    await queue.put_job(meta)
    await queue.put_job(meta)  # the groups exist already: no error
    variants = [_variant(i) for i in range(3)] + [
        _variant(9, override_settings={"sd_model_checkpoint": "m"})]
    assert await queue.enqueue(meta, [_items(variants[:2], meta), _items(variants[2:], meta)]) \
        == (4, 0, 0)
    assert await queue.enqueue(meta, [_items(variants, meta)]) == (0, 0, 4)
    keys = JobKeys(meta.id)
    lease = await queue.read_new(meta.id, keys.stream(1), "a1")
    assert lease is not None and lease.variant == variants[3] and lease.deliveries == 1
    assert await queue.ack(lease, images=1) and not await queue.ack(lease, images=1)
    lease = await queue.read_new(meta.id, keys.stream(0), "a1")
    assert lease is not None
    await queue.add_error(meta.id, lease.variant.id, b'{"error": "boom"}')
    assert not await queue.dead_letter(lease, "someone-else", lease.history, "x", "a", "t")
    assert await queue.dead_letter(lease, "a1", lease.history, "gave up", "a1", "t")
    dead = await queue.dead_entries(meta)
    assert [d["id"] for d in dead] == [lease.variant.id]
    assert json.loads(dead[0]["errors"]) == [{"error": "boom"}]
    counts = await queue.counts(meta)
    assert (counts.queued, counts.done, counts.dead, counts.images) == (2, 1, 1, 1)
    # submitting again: the done one is left alone, the dead one comes back, the queued stay
    assert await queue.enqueue(meta, [_items(variants, meta)]) == (0, 1, 3)
    assert (await queue.counts(meta)).dead == 0
    assert await queue.mark_stored(meta, [variants[0].id, "f" * 16]) == 1  # queued: untouched
    await queue.close()


async def test_leases_are_renewed_claimed_when_silent_and_handed_back(
        redis_server: RedisServer) -> None:
    queue = Queue(parse_queue_url(redis_server.url), patience_s=5)
    meta = _meta()
    await queue.put_job(meta)
    await queue.enqueue(meta, [_items([_variant(1)], meta)])
    stream = JobKeys(meta.id).stream(0)
    lease = await queue.read_new(meta.id, stream, "alive")
    assert lease is not None
    for _ in range(3):  # renewed while it works: nobody can claim it
        await asyncio.sleep(0.15)
        assert await queue.renew(stream, "alive", [lease.entry]) == []
        claimed, _ = await queue.claim_idle(meta.id, stream, "other", 0.3)
        assert claimed is None
    await asyncio.sleep(0.35)  # now silent past the lease
    claimed, _ = await queue.claim_idle(meta.id, stream, "other", 0.3)
    assert claimed is not None and claimed.entry == lease.entry and claimed.deliveries == 2
    assert await queue.renew(stream, "alive", [lease.entry]) == [lease.entry]  # it lost it
    assert not await queue.hand_back(lease, "alive", History(1))  # and cannot undo the claim
    assert await queue.hand_back(claimed, "other", History(deliveries=1, attempts=1))
    again = await queue.read_new(meta.id, stream, "third")
    assert again is not None and again.variant == lease.variant
    assert again.history.attempts == 1 and again.deliveries == 2
    assert (await queue.counts(meta)).leased == 1
    await queue.close()


async def test_the_queue_rides_out_a_redis_restart(redis_server: RedisServer) -> None:
    queue = Queue(parse_queue_url(redis_server.url), patience_s=20)
    meta = _meta()
    await queue.put_job(meta)
    await queue.enqueue(meta, [_items([_variant(1), _variant(2)], meta)])
    redis_server.stop(kill=True)  # a crash: the append-only file has every write
    restart = asyncio.get_running_loop().run_in_executor(None, redis_server.restart)
    counts = await queue.counts(meta)  # retried until Redis is back
    await restart
    assert counts.queued == 2 and queue.outage_s > 0
    await queue.close()
    short = Queue(parse_queue_url(redis_server.url), patience_s=0.3)
    redis_server.stop(kill=True)
    from pipeline.fleet.errors import QueueError

    with pytest.raises(QueueError, match="unreachable"):
        await short.counts(meta)
    await short.close()


# --- one agent in this process ---------------------------------------------------------------------

async def _run_agent(queue: Queue, backend_url: str, **options: Any) -> Any:
    from pipeline.fleet.agent import Agent, AgentOptions
    from pipeline.job.schema import BackendSpec

    agent = Agent(queue, AgentOptions(backends=(BackendSpec(url=backend_url),),
                                      heartbeat_s=0.2, poll_s=0.1, jobs_every_s=0.2,
                                      zero_waits=True, **options))
    return agent, asyncio.create_task(agent.run())


async def test_agent_generates_writes_then_acks_and_collect_matches_a_local_run(
        redis_server: RedisServer, tmp_path: Path, write_job: Any) -> None:
    from pipeline.fleet.collect import collect
    from pipeline.fleet.submit import submit
    from pipeline.sim import SimConfig, start_sim

    spec = load_job(write_job(JOB))
    store_dir = tmp_path / "shared"
    queue = Queue(parse_queue_url(redis_server.url), patience_s=10)
    summary = await submit(queue, spec, parse_store_url(str(store_dir)), lease_s=5)
    total = expand.count(expand.build_plan(spec))
    assert (summary.added, summary.already, summary.job.total) == (total, 0, total)
    assert len(summary.job.checkpoints) == 2
    async with await start_sim(SimConfig(latency_s=0.01)) as sim:
        agent, task = await _run_agent(queue, sim.url, exit_when_done=True)
        await asyncio.wait_for(task, 60)
        assert agent.stats.done == total and sim.stats.generations == total
        # the loaded checkpoint is kept: one switch for two checkpoints
        assert sim.stats.checkpoint_loads <= 2
        again = await submit(queue, spec, parse_store_url(str(store_dir)))
        assert (again.enqueued, again.already) == (0, total)
        out = tmp_path / "collected"
        result = await collect(queue, summary.job, out)
        assert (result.status, result.collected, result.failed) == ("complete", total, 0)
        first_run = json.loads((out / "run.json").read_text())
        resumed = await collect(queue, summary.job, out)
        assert (resumed.collected, resumed.already) == (0, total)
        from pipeline import api

        local = tmp_path / "local"
        await api.run(spec, out_dir=local, backends=[sim.url])
    _same_output(out, local)
    assert first_run["counts"] == json.loads((local / "run.json").read_text())["counts"]
    assert json.loads((out / "job.json").read_text()) == json.loads(
        (local / "job.json").read_text())
    # a queue that lost everything: submitting again finds the records in the store
    await queue.redis.flushall()
    found = await submit(queue, spec, parse_store_url(str(store_dir)))
    assert (found.enqueued, found.found_stored) == (0, total)
    assert (await queue.counts(found.job)).done == total
    await queue.close()


def _same_output(a: Path, b: Path) -> None:
    """Same variants, seeds, files and image bytes as a local run makes."""
    ra = {(r["id"], r["image_index"]): r for r in read_manifest(a)}
    rb = {(r["id"], r["image_index"]): r for r in read_manifest(b)}
    assert ra.keys() == rb.keys() and len(ra) == len(read_manifest(a))
    for key, record in ra.items():
        other = rb[key]
        assert set(record) == set(other)
        for field in ("file", "seed", "requested_seed", "prompt", "negative_prompt", "axes",
                      "params", "sha256", "bytes", "format", "kind", "ordinal",
                      "images_expected", "model", "sampler"):
            assert record[field] == other[field], (key, field)
        assert (a / record["file"]).read_bytes() == (b / other["file"]).read_bytes()
        sidecar = json.loads((a / record["file"]).with_suffix(".json").read_text())
        assert sidecar["id"] == record["id"]
    files_a = {p.relative_to(a) for p in (a / "images").rglob("*")}
    files_b = {p.relative_to(b) for p in (b / "images").rglob("*")}
    assert files_a == files_b
    run_a, run_b = (json.loads((d / "run.json").read_text()) for d in (a, b))
    assert set(run_a) == set(run_b) and run_a["status"] == run_b["status"] == "complete"


async def test_failures_go_to_the_dead_letter_and_into_failures_jsonl(
        redis_server: RedisServer, tmp_path: Path, write_job: Any) -> None:
    from pipeline.fleet.collect import collect
    from pipeline.fleet.submit import submit
    from pipeline.sim import SimConfig, start_sim

    job = JOB.replace("retry: {", "retry: {max_attempts: 3, ")
    spec = load_job(write_job(job))
    queue = Queue(parse_queue_url(redis_server.url), patience_s=10)
    summary = await submit(queue, spec, parse_store_url(str(tmp_path / "shared")), lease_s=5)
    async with await start_sim(SimConfig(error_rate=1.0)) as sim:
        agent, task = await _run_agent(queue, sim.url, exit_when_done=True)
        await asyncio.wait_for(task, 60)
    counts = await queue.counts(summary.job)
    assert (counts.dead, counts.done, counts.queued) == (summary.job.total, 0, 0)
    dead = await queue.dead_entries(summary.job)
    assert all(json.loads(d["errors"]) and "500" in d["reason"] for d in dead)
    result = await collect(queue, summary.job, tmp_path / "out")
    assert (result.status, result.failed) == ("failed", summary.job.total)
    failures = [json.loads(line) for line in
                (tmp_path / "out" / "failures.jsonl").read_text().splitlines()]
    assert len(failures) == summary.job.total and all(f["attempts"] == 3 for f in failures)
    # submitting again puts the failed variants back
    again = await submit(queue, spec, parse_store_url(str(tmp_path / "shared")))
    assert again.requeued == summary.job.total
    await queue.close()


async def test_a_variant_delivered_too_often_is_dead_lettered_with_the_reason(
        redis_server: RedisServer, tmp_path: Path, write_job: Any) -> None:
    from pipeline.fleet.submit import submit
    from pipeline.sim import SimConfig, start_sim

    spec = load_job(write_job(JOB))
    queue = Queue(parse_queue_url(redis_server.url), patience_s=10)
    summary = await submit(queue, spec, parse_store_url(str(tmp_path / "shared")), lease_s=0.3,
                           max_deliveries=1)
    meta = summary.job
    ghost = await queue.read_new(meta.id, JobKeys(meta.id).stream(0), "died-holding-it")
    assert ghost is not None
    async with await start_sim(SimConfig()) as sim:
        agent, task = await _run_agent(queue, sim.url, exit_when_done=True)
        await asyncio.wait_for(task, 60)
    assert agent.stats.dead == 1 and agent.stats.done == meta.total - 1
    (entry,) = await queue.dead_entries(meta)
    assert entry["id"] == ghost.variant.id and "delivered 2 times" in entry["reason"]
    await queue.close()


async def test_a_hard_stop_hands_in_flight_work_back_uncounted(
        redis_server: RedisServer, tmp_path: Path, write_job: Any) -> None:
    from pipeline.fleet.submit import submit
    from pipeline.sim import SimConfig, start_sim

    spec = load_job(write_job(JOB))
    queue = Queue(parse_queue_url(redis_server.url), patience_s=10)
    summary = await submit(queue, spec, parse_store_url(str(tmp_path / "shared")), lease_s=30)
    async with await start_sim(SimConfig(latency_s=5.0)) as sim:
        agent, task = await _run_agent(queue, sim.url, grace_s=0.0)
        deadline = time.monotonic() + 20
        while sim.stats.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert agent.in_flight == 1
        agent.request_stop()
        await asyncio.wait_for(task, 20)
    counts = await queue.counts(summary.job)
    assert (counts.leased, counts.queued, counts.done) == (0, summary.job.total, 0)
    beats = await queue.agents()
    assert orjson.loads(beats[agent.id])["state"] == "stopped"
    # the handed-back variant comes again with its delivery not counted
    loads = await queue.loads([summary.job])
    leases = [await queue.read_new(summary.job.id, s.key, "next") for s in loads]
    assert all(lease is None or lease.deliveries == 1 for lease in leases)
    await queue.close()


async def test_img2img_inputs_travel_through_the_store(
        redis_server: RedisServer, tmp_path: Path, write_job: Any) -> None:
    from PIL import Image as PILImage

    from pipeline.fleet.collect import collect
    from pipeline.fleet.submit import submit
    from pipeline.sim import SimConfig, start_sim

    (tmp_path / "inputs").mkdir()
    for i, colour in enumerate(["red", "blue"]):
        PILImage.new("RGB", (64, 64), colour).save(tmp_path / "inputs" / f"in{i}.png")
    spec = load_job(write_job("""
endpoint: img2img
defaults: {width: 64, height: 64, denoising_strength: 0.4}
prompts: ["a painting"]
matrix: {init_images: ["inputs/*.png"]}
seeds: [3]
"""))
    queue = Queue(parse_queue_url(redis_server.url), patience_s=10)
    shared = tmp_path / "shared"
    summary = await submit(queue, spec, parse_store_url(str(shared)))
    assert summary.inputs_uploaded == 2 and len(list((shared / "inputs").iterdir())) == 2
    (tmp_path / "inputs" / "in0.png").rename(tmp_path / "elsewhere.png")  # not on the agent
    async with await start_sim(SimConfig()) as sim:
        agent, task = await _run_agent(queue, sim.url, exit_when_done=True)
        await asyncio.wait_for(task, 60)
    assert agent.stats.done == 2
    result = await collect(queue, summary.job, tmp_path / "out")
    assert result.collected == 2
    refs = [r["params"]["init_images"][0] for r in read_manifest(tmp_path / "out")]
    # the records name the job's input files, not the agent's copies
    assert sorted(Path(r["$file"]).name for r in refs) == ["in0.png", "in1.png"]
    assert all(str(tmp_path / "inputs") in r["$file"] for r in refs)
    await queue.close()


async def test_a_graceful_stop_finishes_work_in_flight(
        redis_server: RedisServer, tmp_path: Path, write_job: Any) -> None:
    from pipeline.fleet.submit import submit
    from pipeline.sim import SimConfig, start_sim

    spec = load_job(write_job(JOB))
    queue = Queue(parse_queue_url(redis_server.url), patience_s=10)
    summary = await submit(queue, spec, parse_store_url(str(tmp_path / "shared")), lease_s=30)
    async with await start_sim(SimConfig(latency_s=0.5)) as sim:
        agent, task = await _run_agent(queue, sim.url, grace_s=20.0)
        deadline = time.monotonic() + 20
        while sim.stats.in_flight == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        agent.request_stop()
        await asyncio.wait_for(task, 20)
        assert sim.stats.generations == 1
    counts = await queue.counts(summary.job)
    assert (counts.done, counts.leased, counts.queued) == (1, 0, summary.job.total - 1)
    assert len(list((tmp_path / "shared" / "records").iterdir())) == 1
    await queue.close()


async def test_s3_store_roundtrip(s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
                                  ) -> None:
    from pipeline.fleet import objstore

    store = objstore.open_store(parse_store_url("s3://fleet-roundtrip/run/a"))
    assert await store.check(create=True) == "created bucket fleet-roundtrip"
    assert await store.check() is None
    monkeypatch.setattr(objstore, "LIST_PAGE", 2)
    for n in range(5):
        await store.put(f"records/{n:016x}.json", b"{}")
    await store.put("images/x.png", b"\x89PNG")
    assert [k async for k in store.keys("records/")] == [f"records/{n:016x}.json"
                                                         for n in range(5)]
    assert await store.get("images/x.png") == b"\x89PNG"
    assert await store.get("images/none.png") is None
    assert await store.exists("images/x.png") and not await store.exists("images/none.png")
    other = objstore.open_store(parse_store_url("s3://fleet-roundtrip/run/b"))
    assert [k async for k in other.keys("records/")] == []  # prefixes keep jobs apart
    from pipeline.fleet.errors import StoreError

    missing = objstore.open_store(parse_store_url("s3://no-such-bucket-here/x"))
    with pytest.raises(StoreError, match="no bucket"):
        await missing.check()
    for s in (store, other, missing):
        await s.close()


# --- the fleet as separate processes ---------------------------------------------------------------

def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def _agent(queue_url: str, backend: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", "-v", "agent", "--queue", queue_url, "--backend", backend,
         "--exit-when-done", "--heartbeat-s", "0.5", "--poll-s", "0.2", "--grace-s", "5",
         "--patience-s", "60", "--progress-interval-s", "2"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=log.open("wb"))


def _wait(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _record_count(s3: S3Server, bucket: str) -> int:
    page = s3.client().list_objects_v2(Bucket=bucket, Prefix="job/records/")  # type: ignore
    return int(page.get("KeyCount", 0))


def _records(s3: S3Server, bucket: str) -> dict[str, dict[str, Any]]:
    client = s3.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(  # type: ignore[attr-defined]
            Bucket=bucket, Prefix="job/records/"):
        for item in page.get("Contents") or ():
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"]  # type: ignore
            doc = json.loads(body.read())
            out[doc["variant"]["id"]] = doc
    return out


@pytest.mark.slow
def test_fleet_of_agent_processes_survives_kills_joins_and_a_redis_restart(
        tmp_path: Path, sim: Any, s3_server: S3Server, write_job: Any) -> None:
    job = JOB.replace('"a {red|blue|green} fox"', '"a {red|blue|green|white|black|grey} '
                      '{fox|cat|owl}"')
    job_path = write_job(job)
    spec = load_job(job_path)
    expected = {v.id for v in expand.variants(expand.build_plan(spec))}
    total = len(expected)
    assert total == 72
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    sims = [sim(latency_s=0.15) for _ in range(4)]
    env = child_env(s3_server.env())
    bucket = "fleet-e2e"
    logs = tmp_path / "logs"
    logs.mkdir()
    agents: list[subprocess.Popen[bytes]] = []
    try:
        done = _cli("submit", str(job_path), "--queue", redis.url, "--out",
                    f"s3://{bucket}/job", "--lease-s", "3", "--json", env=env)
        assert done.returncode == 0, done.stderr
        submitted = json.loads(done.stdout)
        assert (submitted["enqueued"], submitted["total"]) == (total, total)
        assert s3_server.ACCESS_KEY not in done.stdout + done.stderr
        started = time.monotonic()
        agents = [_agent(redis.url, s.url, env, logs / f"agent{i}.log")
                  for i, s in enumerate(sims[:3])]

        # 1. one agent dies with SIGKILL in the middle of a generation
        _wait(lambda: sims[0].stats()["generations"] >= 3 and sims[0].stats()["in_flight"] == 1,
              "agent 0 to be generating")
        agents[0].send_signal(signal.SIGKILL)
        agents[0].wait(timeout=10)
        killed_at = sims[0].stats()["generations"]
        # 2. an agent joins mid-run
        agents.append(_agent(redis.url, sims[3].url, env, logs / "agent3.log"))
        _wait(lambda: sims[3].stats()["generations"] >= 1, "the new agent to take work")
        # 3. Redis crashes and comes back (append-only file, fsync always)
        _wait(lambda: _record_count(s3_server, bucket) >= total // 2, "half the work")
        redis.restart(kill=True, down_s=0.5)
        for agent in agents[1:]:
            assert agent.wait(timeout=120) == 0, (logs / "agent1.log").read_text()
        print(f"fleet: {total} variants in {time.monotonic() - started:.1f} s")
        records = _records(s3_server, bucket)
        status = _cli("status", "--queue", redis.url, "--json", env=env)
        assert status.returncode == 0, status.stderr
        (job_status,) = json.loads(status.stdout)["jobs"]
        assert (job_status["done"], job_status["pending"], job_status["leased"],
                job_status["dead"]) == (total, 0, 0, 0)
        out = tmp_path / "collected"
        collected = _cli("collect", "--queue", redis.url, "--out", str(out), "--json", env=env)
        assert collected.returncode == 0, collected.stderr
        local = tmp_path / "local"
        ran = _cli("run", str(job_path), *[a for s in sims for a in ("--backend", s.url)],
                   "--out", str(local), "-q", env=env)
        assert ran.returncode == 0, ran.stderr
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait(timeout=10)
        redis.stop()

    # every variant exactly once in the store, each image byte-identical to what was sent
    assert set(records) == expected
    objects = s3_server.objects(bucket, "job/")
    for doc in records.values():
        for image in doc["images"]:
            data = objects[image["key"]]
            assert hashlib.sha256(data).hexdigest() == image["sha256"] and \
                len(data) == image["bytes"]
    # the killed agent's in-flight variant was delivered again and finished by another agent
    redelivered = [d for d in records.values() if d["deliveries"] >= 2]
    assert redelivered
    by_agent: dict[str, int] = {}
    for doc in records.values():
        by_agent[doc["backend"]] = by_agent.get(doc["backend"], 0) + 1
    assert by_agent.get(sims[3].url, 0) >= 1
    generations = sum(s.stats()["generations"] for s in sims) - ran_generations(sims, local)
    # at most the killed agent's one in-flight request (and one per lease lost to the restart)
    # was generated twice
    assert total <= generations <= total + 3, (generations, killed_at)
    # the collected directory is what a local run of the same job makes
    _same_output(out, local)
    manifest = read_manifest(out)
    assert len(manifest) == len({(r["id"], r["image_index"]) for r in manifest}) == total
    assert s3_server.SECRET_KEY not in (out / "job.json").read_text() + (
        out / "run.json").read_text()


@pytest.mark.slow
def test_agent_process_on_sigterm_finishes_in_flight_and_exits_0(
        tmp_path: Path, sim: Any, redis_server: RedisServer, write_job: Any) -> None:
    backend = sim(latency_s=1.0)
    env = child_env()
    job = write_job(JOB)
    store = tmp_path / "shared"
    done = _cli("submit", str(job), "--queue", redis_server.url, "--out", str(store), env=env)
    assert done.returncode == 0, done.stderr
    log = tmp_path / "agent.log"
    agent = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "agent", "--queue", redis_server.url, "--backend",
         backend.url, "--grace-s", "30"], env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=log.open("wb"))
    try:
        _wait(lambda: backend.stats()["in_flight"] == 1, "a generation to start")
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=60) == 0, log.read_text()
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait(timeout=10)
    assert backend.stats()["generations"] == len(list((store / "records").iterdir())) >= 1
    status = json.loads(_cli("status", "--queue", redis_server.url, "--json", env=env).stdout)
    (job_status,) = status["jobs"]
    assert job_status["leased"] == 0 and job_status["done"] >= 1
    (beat,) = status["agents"]
    assert beat["state"] == "stopped"
    assert "finishing work in flight" in log.read_text()


def ran_generations(sims: list[Any], local: Path) -> int:
    """Generations the local comparison run made (on the same simulators)."""
    return len(read_manifest(local))
