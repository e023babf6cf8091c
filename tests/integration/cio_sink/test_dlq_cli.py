"""`synergy dlq list|replay` against real Postgres and Kafka: a replay goes back to the source topic and a
running cio-sink delivers it through its ordered path to the Customer.io fake."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner, Result
from synergy_cio_sink.fake import CustomerIoFake, serve_fake
from synergy_common.brands import CredentialCipher
from synergy_common.cli import main as synergy
from synergy_common.db import create_pool
from synergy_streaming import DeadLetter, DeadLetterWriter

from tests.integration.cio_sink.conftest import fresh_topics, new_brand, quick_settings
from tests.integration.cio_sink.harness import API_KEY, SITE_ID, SinkHarness, make_envelope


@dataclass
class DeadLetters:
    fake: CustomerIoFake
    database_url: str
    env: dict[str, str | None]
    by_reason: dict[str, list[str]]  # reason -> event ids, in the order they were dead-lettered
    sink: SinkHarness  # a cio-sink on the letters' source topics, started by the tests that replay

    async def invoke(self, *args: str) -> Result:
        """`synergy <args>` in a thread, so the fake keeps answering on this loop; stdout is not a TTY."""
        return await asyncio.to_thread(CliRunner().invoke, synergy, list(args), env=self.env)

    async def replayed(self) -> set[str]:
        pool = await create_pool(self.database_url)
        try:
            rows = await pool.fetch("SELECT event_id FROM dlq_messages WHERE replayed_at IS NOT NULL")
        finally:
            await pool.close()
        return {row["event_id"] for row in rows}

    async def letters(self) -> list[dict[str, object]]:
        pool = await create_pool(self.database_url)
        try:
            rows = await pool.fetch("SELECT id, service, reason, event_id, source_topic, replayed_at, headers "
                                    "FROM dlq_messages ORDER BY id")
        finally:
            await pool.close()
        return [dict(row) for row in rows]


@pytest.fixture
async def dead_letters(
    database_factory: Callable[..., Awaitable[str]], kafka_bootstrap: str, kafka_producer: AIOKafkaProducer,
    topic_factory: Callable[..., Awaitable[str]], monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[DeadLetters]:
    """A database of its own holding six dead letters of three reasons, written the way the sink writes them.

    One `retries_exhausted` letter is two days old, to tell `--since` apart.
    """
    database_url = await database_factory("ciodlq", migrate=True)
    topics = await fresh_topics(topic_factory, monkeypatch)
    key = CredentialCipher.generate_key()
    brand_id = await new_brand(database_url, key)
    plan = [("retries_exhausted", "dlq-a"), ("hot_user_parked", "dlq-b"), ("retries_exhausted", "dlq-b"),
            ("event_name_too_long", "dlq-c"), ("hot_user_parked", "dlq-b"), ("retries_exhausted", "dlq-a")]
    letters, by_reason = [], {}
    for offset, (reason, user) in enumerate(plan):
        name = "x" * 101 if reason == "event_name_too_long" else "reward_redeemed"
        envelope = make_envelope(brand_id, user, name, {"n": offset})
        letters.append(DeadLetter(reason, "test", "cio-sink", topics["events"], 0, offset,
                                  f"{brand_id}:{user}".encode(), orjson.dumps(envelope),
                                  [("name", name.encode())], 10, destination=f"customer.io/{SITE_ID}",
                                  brand_id=brand_id, event_id=envelope["event_id"]))
        by_reason.setdefault(reason, []).append(envelope["event_id"])
    pool = await create_pool(database_url)
    try:
        await DeadLetterWriter(kafka_producer, pool).write(letters)
        await pool.execute("UPDATE dlq_messages SET created_at = now() - interval '2 days' WHERE event_id = $1",
                           by_reason["retries_exhausted"][2])
    finally:
        await pool.close()
    fake = CustomerIoFake({SITE_ID: API_KEY})
    async with serve_fake(fake) as url:
        env: dict[str, str | None] = {
            "DATABASE_URL": database_url, "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap, "CIO_TRACK_URL": url,
            "SYNERGY_ENCRYPTION_KEY": key, "CIO_SITE_ID": None, "CIO_API_KEY": None, "CIO_API": None,
        }
        sink = SinkHarness(fake, kafka_producer, brand_id, topics, quick_settings(kafka_bootstrap, database_url,
                                                                                  key, url))
        try:
            yield DeadLetters(fake, database_url, env, by_reason, sink)
        finally:
            await sink.stop_all()


def lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


async def test_dlq_list_shows_each_dead_letter_with_its_reason(dead_letters: DeadLetters) -> None:
    result = await dead_letters.invoke("dlq", "list")

    assert result.exit_code == 0, result.output
    for reason, event_ids in dead_letters.by_reason.items():
        for event_id in event_ids:
            assert len(lines_with(result.output, event_id)) == 1, (event_id, result.output)
            assert lines_with(result.output, event_id)[0].split("\t")[2] == reason
    assert "6 dead letter(s)" in result.output
    assert "\x1b" not in result.output

    only_parked = await dead_letters.invoke("dlq", "list", "--reason", "hot_user_parked")
    assert "2 dead letter(s)" in only_parked.output
    listed = {line.split("\t")[4] for line in only_parked.output.splitlines()[1:-1]}
    assert listed == set(dead_letters.by_reason["hot_user_parked"])
    recent = await dead_letters.invoke("dlq", "list", "--since", "24h")
    assert "5 dead letter(s)" in recent.output
    assert dead_letters.by_reason["retries_exhausted"][2] not in recent.output


async def test_dlq_list_filters_by_service(dead_letters: DeadLetters, kafka_producer: AIOKafkaProducer) -> None:
    envelope = make_envelope("1", "ach-user", "product_scanned")
    pool = await create_pool(dead_letters.database_url)
    try:
        await DeadLetterWriter(None, pool).write([DeadLetter(
            "malformed_message", "test", "achievements", "synergy.events.v1", 2, 77, b"1:ach-user",
            orjson.dumps(envelope), event_id=envelope["event_id"])])
    finally:
        await pool.close()

    everyone = await dead_letters.invoke("dlq", "list")
    achievements = await dead_letters.invoke("dlq", "list", "--service", "achievements")
    sink = await dead_letters.invoke("dlq", "list", "--service", "cio-sink")

    assert "7 dead letter(s)" in everyone.output
    assert "1 dead letter(s)" in achievements.output
    assert lines_with(achievements.output, envelope["event_id"])[0].split("\t")[8] == "achievements"
    assert "6 dead letter(s)" in sink.output and envelope["event_id"] not in sink.output


async def test_replay_by_reason_delivers_exactly_those_once(dead_letters: DeadLetters) -> None:
    fake, exhausted = dead_letters.fake, dead_letters.by_reason["retries_exhausted"]
    await dead_letters.sink.start_sink()

    recent = await dead_letters.invoke("dlq", "replay", "--since", "24h", "--reason", "retries_exhausted")

    assert recent.exit_code == 0, recent.output
    assert "replayed 2, failed 0" in recent.output
    assert "\x1b" not in recent.output
    await dead_letters.sink.delivered(exhausted[:2])
    assert set(fake.events) == set(exhausted[:2])
    assert [e.event_id for e in fake.events_for("id:dlq-a")] == [exhausted[0]]
    assert fake.events[exhausted[0]].name == "reward_redeemed"
    assert await dead_letters.replayed() == set(exhausted[:2])
    requests_so_far = fake.requests

    again = await dead_letters.invoke("dlq", "replay", "--since", "24h", "--reason", "retries_exhausted")
    assert again.exit_code == 0, again.output
    assert "replayed 0, failed 0" in again.output
    await asyncio.sleep(1.0)  # a sink that got something would have sent it by now
    assert fake.requests == requests_so_far and sum(fake.duplicates.values()) == 0

    older = await dead_letters.invoke("dlq", "replay", "--reason", "retries_exhausted")
    assert "replayed 1, failed 0" in older.output
    await dead_letters.sink.delivered(exhausted)
    assert set(fake.events) == set(exhausted)

    left = await dead_letters.invoke("dlq", "list")
    assert "3 dead letter(s)" in left.output
    assert not any(event_id in left.output for event_id in exhausted)
    with_replayed = await dead_letters.invoke("dlq", "list", "--all")
    assert "6 dead letter(s)" in with_replayed.output


async def test_a_still_unsendable_dead_letter_is_dead_lettered_again_and_stays_listed(
    dead_letters: DeadLetters,
) -> None:
    (poison,) = dead_letters.by_reason["event_name_too_long"]
    await dead_letters.sink.start_sink()

    result = await dead_letters.invoke("dlq", "replay", "--reason", "event_name_too_long")

    assert result.exit_code == 0, result.output
    assert "replayed 1, failed 0" in result.output

    async def poison_letters() -> list[dict[str, object]]:
        return [row for row in await dead_letters.letters() if row["event_id"] == poison]

    deadline = asyncio.get_running_loop().time() + 20
    while len(rows := await poison_letters()) < 2:
        assert asyncio.get_running_loop().time() < deadline, rows
        await asyncio.sleep(0.2)
    original, again = rows
    assert original["replayed_at"] is not None and again["replayed_at"] is None
    assert (again["service"], again["reason"], again["source_topic"]) == (
        "cio-sink", "event_name_too_long", dead_letters.sink.topics["events"])
    assert dead_letters.fake.requests == 0
    listed = await dead_letters.invoke("dlq", "list", "--reason", "event_name_too_long")
    # (the running sink's own log lines may land in the captured stdout too: count table rows only)
    rows_listed = [line for line in lines_with(listed.output, poison) if len(line.split("\t")) == 10]
    assert len(rows_listed) == 1 and "1 dead letter(s)" in listed.output


async def test_replay_from_the_console_script_with_stdout_piped(dead_letters: DeadLetters) -> None:
    """The real `synergy` entry point, output to a pipe (no TTY): the progress bar must not garble it."""
    await dead_letters.sink.start_sink()
    env = {k: v for k, v in os.environ.items() if k not in dead_letters.env}
    env.update({k: v for k, v in dead_letters.env.items() if v is not None})
    script = os.path.join(os.path.dirname(sys.executable), "synergy")
    process = await asyncio.create_subprocess_exec(
        script, "dlq", "replay", "--reason", "hot_user_parked", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    output = stdout.decode()

    assert process.returncode == 0, (output, stderr.decode())
    assert output.strip().splitlines()[-1] == "replayed 2, failed 0"
    assert "\x1b" not in output + stderr.decode()
    parked = dead_letters.by_reason["hot_user_parked"]
    await dead_letters.sink.delivered(parked)
    assert [e.event_id for e in dead_letters.fake.events_for("id:dlq-b")] == parked
