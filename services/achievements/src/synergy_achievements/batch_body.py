"""A batch's body: its events parsed, checked and applied to their users' states, and the records that
come of it. No Kafka, faust or Postgres: the worker hands it the events' bytes and the users' stored
states, and it answers what the batch's transactions write. It runs in the worker's own process
(`ApplyInProcess`) or in a child process (`ApplyInChildProcesses`), so that faust keeps fetching and the
previous batch's transactions keep committing on the worker's core while a batch is applied on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import multiprocessing
import pickle
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, NamedTuple

import orjson
from synergy_common.gc_tuning import tune_garbage_collector
from synergy_schemas.envelope import kafka_headers
from synergy_schemas.keys import partition_key

from synergy_achievements.processing import Emit, LoyaltyProcessor, Outcome, counted_name, envelope_problem
from synergy_achievements.publisher import Record, key_partition
from synergy_achievements.rules import RuleCatalog
from synergy_achievements.snapshot import EngagementThresholds

OWNERS_KEPT = 1 << 16  # users whose partition key and partition are remembered


class InputEvent(NamedTuple):
    """What the body reads of one consumed record: its place in the batch, its partition, its value, and
    its key (input topics are keyed by user: the key names the state the event will need)."""

    position: int
    partition: int
    value: bytes | None
    key: bytes | None


class Letter(NamedTuple):
    """An event the body refuses: the worker dead-letters the batch's record at `position`."""

    position: int
    reason: str
    detail: str


class Refusal(NamedTuple):
    """An event whose rules raised, for the worker's log (its dead letter is a `Letter` too)."""

    key: bytes
    event_id: Any
    error: str


@dataclass(slots=True)
class BatchCounts:
    """A batch's outcome counts by event name, for the Prometheus counters (added once per batch)."""

    applied: dict[str, int] = field(default_factory=dict)
    duplicates: dict[str, int] = field(default_factory=dict)
    unlocked: dict[str, int] = field(default_factory=dict)
    anonymous_skipped: dict[str, int] = field(default_factory=dict)
    rejected_redemptions: int = 0

    def add(self, outcome: Outcome) -> None:
        for counts, names in ((self.applied, outcome.applied), (self.duplicates, outcome.duplicates),
                              (self.unlocked, outcome.unlocked)):
            for name in names:
                counts[name] = counts.get(name, 0) + 1
        self.rejected_redemptions += outcome.rejected_redemptions

    def merge(self, other: BatchCounts) -> None:
        for counts, more in ((self.applied, other.applied), (self.duplicates, other.duplicates),
                             (self.unlocked, other.unlocked),
                             (self.anonymous_skipped, other.anonymous_skipped)):
            for name, count in more.items():
                counts[name] = counts.get(name, 0) + count
        self.rejected_redemptions += other.rejected_redemptions


@dataclass(slots=True)
class BatchResult:
    """What one batch writes, by input partition: new states (for the changelog), outputs, dead letters.
    `missing` names users whose stored state the caller did not supply: nothing else is in the result,
    and the caller asks again with those states."""

    states: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # partition, key, serialised state
    outputs: list[tuple[int, Record]] = field(default_factory=list)  # input partition, record
    letters: list[Letter] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    counts: BatchCounts = field(default_factory=BatchCounts)
    missing: list[bytes] = field(default_factory=list)


def parse_event(raw: bytes | None) -> tuple[dict[str, Any] | None, str]:
    """An events-topic value as the envelope to apply, or None and why it cannot be applied."""
    try:
        envelope = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return None, "not JSON"
    problem = envelope_problem(envelope)
    if problem is not None:
        return None, problem
    return envelope, ""


class BatchBody:
    """The body itself: one step per batch, each user's events applied together on the state given for
    the user (the store's, or one an earlier batch wrote that has not committed yet)."""

    def __init__(self, thresholds: EngagementThresholds, applied_ids_kept: int, partitions: int,
                 output_topics: Mapping[str, str]) -> None:
        self.processor = LoyaltyProcessor(thresholds, applied_ids_kept)
        self.partitions = partitions
        self.output_topics = dict(output_topics)
        self._owners: dict[tuple[str, str], tuple[bytes, int]] = {}

    def owner_of(self, brand_id: Any, user_id: Any) -> tuple[bytes, int]:
        """A user's partition key and the partition the default partitioner gives it (murmur2 is pure
        Python in aiokafka), remembered for the users seen lately."""
        if type(brand_id) is not str or type(user_id) is not str:  # e.g. 1 == True: keys would mix up
            key = partition_key(brand_id, user_id).encode()
            return key, key_partition(key, self.partitions)
        found = self._owners.get((brand_id, user_id))
        if found is None:
            if len(self._owners) >= OWNERS_KEPT:
                self._owners.clear()
            key = partition_key(brand_id, user_id).encode()
            found = self._owners[(brand_id, user_id)] = (key, key_partition(key, self.partitions))
        return found

    def output(self, emit: Emit) -> Record:
        value = emit.value
        return Record(
            self.output_topics[emit.channel], emit.key.encode(), orjson.dumps(value),
            kafka_headers(emit.name, value["schema_version"], value["correlation_id"]),
        )

    def apply(self, events: Sequence[InputEvent], stored: Mapping[bytes, bytes | None],
              catalog: RuleCatalog) -> BatchResult:
        result = BatchResult()
        letters = result.letters
        by_user: dict[bytes, list[dict[str, Any]]] = {}
        index_of: dict[int, int] = {}  # id(envelope) -> its event's index, to dead-letter it
        partition_of_user: dict[bytes, int] = {}
        owner_of = self.owner_of
        anonymous = result.counts.anonymous_skipped
        for index, partition, value, _ in events:
            envelope, problem = parse_event(value)
            if envelope is None:
                letters.append(Letter(index, "invalid_envelope", problem))
                continue
            user_id = (envelope.get("identifiers") or {}).get("id")
            if not user_id:
                name = counted_name(envelope.get("name") or "")
                anonymous[name] = anonymous.get(name, 0) + 1
                continue
            key, owner = owner_of(envelope["brand_id"], user_id)
            if partition != owner:
                # Another partition holds (or will hold) this user's state: applying it here would split it.
                letters.append(Letter(index, "wrong_partition", f"key {key!r} belongs to partition {owner}"))
                continue
            index_of[id(envelope)] = index
            envelopes = by_user.get(key)
            if envelopes is None:
                by_user[key] = [envelope]
                partition_of_user[key] = partition
            else:
                envelopes.append(envelope)
        missing = [key for key in by_user if key not in stored]
        if missing:
            return BatchResult(missing=missing)
        counts = result.counts
        for_brand = catalog.for_brand
        apply_stored = self.processor.apply_stored
        output = self.output
        states, outputs = result.states, result.outputs
        for key, envelopes in by_user.items():
            state = stored[key]
            rules = for_brand(envelopes[0]["brand_id"])
            partition = partition_of_user[key]
            try:
                outcome = apply_stored(state, envelopes, rules)
            except Exception:  # one of these events cannot be applied: find it, apply the others
                applied, refused = self.processor.apply_each_alone(state, envelopes, rules)
                for envelope, exc in refused:
                    letters.append(Letter(index_of[id(envelope)], "unprocessable_event",
                                          f"applying it raised {exc!r}"))
                    result.refusals.append(Refusal(key, envelope.get("event_id"), repr(exc)))
                if applied is None:
                    continue
                outcome = applied
            if outcome.applied:
                states.append((partition, key, outcome.state.to_bytes()))
                outputs.extend([(partition, output(emit)) for emit in outcome.emits])
            counts.add(outcome)
        return result


class ApplyInProcess:
    """The body on the worker's own event loop."""

    def __init__(self, body: BatchBody) -> None:
        self._body = body

    async def apply(self, events: Sequence[InputEvent], stored: Mapping[bytes, bytes | None],
                    catalog: RuleCatalog) -> BatchResult:
        return self._body.apply(events, stored, catalog)

    def close(self) -> None:
        pass


PIPE_BYTES = 1 << 20  # a batch crosses in ~4 MB each way: 64 KiB pipes (Linux's default) cost a switch each


class ChildProcessDied(Exception):
    """A batch body's child process ended, or its body raised: the batch is not applied."""


def _widen(connection: Connection) -> None:
    with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size for an unprivileged user
        fcntl.fcntl(connection.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)


def _serve_batches(requests: Connection, answers: Connection, thresholds: EngagementThresholds,
                   applied_ids_kept: int, partitions: int, output_topics: Mapping[str, str]) -> None:
    """A child's life: a batch in, its result out, until the worker's end of the pipe closes."""
    # The worker's signals are the worker's: the child ends when the worker's end of the pipe closes.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    body = BatchBody(thresholds, applied_ids_kept, partitions, output_topics)
    tune_garbage_collector()  # as the worker's: a batch keeps ~100k parsed objects alive
    catalog: RuleCatalog | None = None  # the first batch brings it
    while True:
        try:
            events, stored, changed = pickle.loads(requests.recv_bytes())
        except EOFError:
            return
        if changed is not None:
            catalog = changed
        assert catalog is not None
        try:
            answer: tuple[BatchResult | None, str] = (body.apply(events, stored, catalog), "")
        except Exception as exc:  # a bug: the worker ends the batch unacked, with the child's reason
            answer = (None, repr(exc))
        answers.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))


class ChildProcess:
    """One child process that applies batches (spawned, never forked: faust runs threads), one at a time,
    over two pipes: the worker's event loop writes a batch and waits for the answer's first bytes without
    a thread. The catalog crosses only when the worker's changes. If the child dies, or its body raises,
    the awaited batch raises `ChildProcessDied` and the worker ends unacked."""

    def __init__(self, thresholds: EngagementThresholds, applied_ids_kept: int, partitions: int,
                 output_topics: Mapping[str, str]) -> None:
        context = multiprocessing.get_context("spawn")
        requests, self._requests = context.Pipe(duplex=False)
        self._answers, answers = context.Pipe(duplex=False)
        for connection in (requests, answers):
            _widen(connection)
        self._process = context.Process(
            target=_serve_batches, name="batch-body", daemon=True,
            args=(requests, answers, thresholds, applied_ids_kept, partitions, dict(output_topics)))
        self._process.start()
        requests.close()  # the child's ends: the worker sees EOF when the child has gone
        answers.close()
        self._catalog_sent: RuleCatalog | None = None

    async def apply(self, events: Sequence[InputEvent], stored: Mapping[bytes, bytes | None],
                    catalog: RuleCatalog) -> BatchResult:
        changed = None if catalog is self._catalog_sent else catalog
        request = pickle.dumps((events, stored, changed), protocol=pickle.HIGHEST_PROTOCOL)
        loop = asyncio.get_running_loop()
        readable = loop.create_future()
        fd = self._answers.fileno()

        def answered() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(fd, answered)
        try:
            try:
                self._requests.send_bytes(request)  # the child is waiting for it: it reads as it is written
            except OSError as exc:
                raise ChildProcessDied(f"the batch body's child process has gone: {exc!r}") from exc
            await readable
        finally:
            loop.remove_reader(fd)
        try:
            result, error = pickle.loads(self._answers.recv_bytes())  # written at once: read at once
        except (EOFError, OSError) as exc:
            raise ChildProcessDied(
                f"the batch body's child process ended (exit code {self._process.exitcode})") from exc
        if result is None:
            raise ChildProcessDied(f"the batch body raised in its child process: {error}")
        self._catalog_sent = catalog
        return result

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def close(self) -> None:
        self._requests.close()  # the child reads EOF and ends


class ApplyInChildProcesses:
    """The body in child processes, each taking the events of its share of the input partitions: a user's
    events are all in one partition (the rest are dead-lettered as `wrong_partition`), so no two children
    touch the same state. A batch's shares are applied at once and merged."""

    def __init__(self, count: int, thresholds: EngagementThresholds, applied_ids_kept: int,
                 partitions: int, output_topics: Mapping[str, str]) -> None:
        self._children = [ChildProcess(thresholds, applied_ids_kept, partitions, output_topics)
                          for _ in range(count)]

    async def apply(self, events: Sequence[InputEvent], stored: Mapping[bytes, bytes | None],
                    catalog: RuleCatalog) -> BatchResult:
        count = len(self._children)
        shares: list[list[InputEvent]] = [[] for _ in range(count)]
        states: list[dict[bytes, bytes | None]] = [{} for _ in range(count)]
        for event in events:
            share = event.partition % count
            shares[share].append(event)
            key = event.key
            if key is not None and key in stored:
                states[share][key] = stored[key]
        others: dict[bytes, bytes | None] = {}  # states asked again, of users keyed otherwise: every child's
        if len(stored) > sum(map(len, states)):
            others = {key: state for key, state in stored.items()
                      if not any(key in share for share in states)}
        calls = [child.apply(share, {**share_states, **others} if others else share_states, catalog)
                 for child, share, share_states in zip(self._children, shares, states, strict=True) if share]
        results = await asyncio.gather(*calls)
        merged = results[0]
        for result in results[1:]:
            merged.states.extend(result.states)
            merged.outputs.extend(result.outputs)
            merged.letters.extend(result.letters)
            merged.refusals.extend(result.refusals)
            merged.missing.extend(result.missing)
            merged.counts.merge(result.counts)
        if merged.missing:
            return BatchResult(missing=merged.missing)
        return merged

    def close(self) -> None:
        for child in self._children:
            child.close()
