"""A worker (``meter worker --cluster``): holds partitions' leases and applies each partition's log to its own engine.

Per partition it holds (``Partition``):

- an engine in ``<data-dir>/p<partition>``, opened from the newest of what the disk has and the partition's latest
  checkpoint (``checkpoints``), then fed the log from the position that engine stored, in order, in batches
  (``Engine.apply``: the position and each entry's outcome in the same synced write as the state);
- the partition's requests (``meter.ask.<partition>``): an entry's outcome, once applied (an edge waiting for it),
  a partial usage answer, the meters;
- its usage exported to a shared directory (``export_dir``) every ``export_every`` seconds while it moved, and when
  asked (``meter cluster export``): every partition writes its own files of the one dataset pricing reads
  (``meter.lake.usage``), and only while it surely holds its lease;
- a checkpoint every ``checkpoint_every`` seconds while the partition moved. The log keeps entries for a fixed time
  (``ClusterSettings.log_retention``), far longer than checkpoints take to come; a partition whose checkpoint is
  older than the log's first entry refuses to start (``LogGap``) rather than skip what it cannot read.

Leases are renewed every third of their TTL, by a task of their own (``Worker.keep_leases``), whatever else the worker
is doing. A partition whose lease is lost is dropped (it may already be another's); one whose lease cannot be renewed
for a whole TTL stops answering even before. The partitions are shared evenly between the live workers: a worker
above its share hands partitions back (checkpointed first, so the next owner replays little), one below takes free
ones.
"""

from __future__ import annotations

import asyncio
import logging
import math
import shutil
import time
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from meter.cluster import checkpoints
from meter.cluster.keys import tenants
from meter.cluster.leases import Leases
from meter.cluster.log import first_position, read_after
from meter.cluster.runner import ClusterUnavailable
from meter.cluster.settings import Cluster, ClusterSettings, ask_subject, connect
from meter.engine import Engine, LogEntry
from meter.exceptions import MeterError
from meter.lake.files import ExportSummary
from meter.lake.usage import export_usage

__all__ = ["LOG", "Worker", "WorkerOptions"]

log = logging.getLogger("meter.cluster.worker")

#: The name under which a partition's engine stores its log position (one log per engine).
LOG = "events"
#: Seconds between reads of a partition's log that found nothing new: the most an idle partition adds to an outcome.
POLL_S = 0.05
#: Where checkpoints are packed, in the worker's data directory.
SCRATCH = "tmp"
#: Seconds a partition's tasks get to stop when it is given up.
STOP_S = 30.0


@dataclass
class WorkerOptions:
    data_dir: Path
    worker_id: str
    #: Seconds between checkpoints of a partition that moved.
    checkpoint_every: float = 60.0
    #: Seconds an entry's outcome is kept for edges and clients to look up (`GET /v1/events/batches/{id}`).
    outcome_ttl: float = 3600.0
    #: Where every partition's usage is exported (a directory all workers share), or None: no export.
    export_dir: Path | None = None
    #: Seconds between exports of a partition that moved.
    export_every: float = 60.0
    #: At most this many log entries per engine write.
    batch_entries: int = 500
    #: Keyword arguments of `meter.Engine` (retention, roll-ups, durability).
    engine_options: dict[str, Any] = field(default_factory=dict)
    #: Settings for a cluster this worker creates (the first process to connect records them).
    settings: ClusterSettings = field(default_factory=ClusterSettings)


class LogGap(Exception):
    """The log lost entries a partition has not applied: it cannot go on exactly, and says so."""


class LeaseEnding(Exception):
    """The lease may end before an export's next file is written: it stops, and the next owner writes the rest."""


class Worker:
    def __init__(self, servers: str, options: WorkerOptions) -> None:
        self.servers, self.options = servers, options
        self.partitions: dict[int, Partition] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Works until ``stop`` is set, then hands every partition back (checkpointed) and disconnects."""
        # What a checkpoint interrupted by a crash (or a cancellation) left half-written.
        shutil.rmtree(self.options.data_dir / SCRATCH, ignore_errors=True)
        cluster = await connect(self.servers, f"meter-worker-{self.options.worker_id}", self.options.settings)
        leases = Leases(cluster.js, cluster.leases, self.options.worker_id)
        tick = cluster.settings.lease_ttl / 3
        keeper = asyncio.create_task(self.keep_leases(leases, tick), name="meter-leases")
        try:
            while not stop.is_set():
                try:
                    await self.balance(cluster, leases)
                except (TimeoutError, nats.errors.Error) as e:  # a NATS node restarting: next tick
                    log.warning("lease round failed: %r", e)
                except LogGap as e:  # that partition was released: an operator must restore a checkpoint
                    log.error("%s", e)
                try:
                    await asyncio.wait_for(stop.wait(), tick)
                except TimeoutError:
                    pass
        finally:
            keeper.cancel()
            await asyncio.gather(keeper, return_exceptions=True)
            for partition in list(self.partitions.values()):
                await partition.stop(leases if partition.held else None)
            self.partitions.clear()
            await cluster.close()

    async def keep_leases(self, leases: Leases, tick: float) -> None:
        """Renews every held lease, and this worker's heartbeat, every ``tick`` seconds.

        A task of its own: a lease round may spend minutes restoring a partition's checkpoint, and no other lease of
        this worker may expire meanwhile. All at once, so that one renewal waiting on NATS holds none of the others.
        """
        while True:
            started = time.monotonic()
            held = [partition for partition in list(self.partitions.values()) if partition.held]
            renewed = await asyncio.gather(*(partition.renew(leases) for partition in held), return_exceptions=True)
            for partition, still in zip(held, renewed, strict=True):
                if isinstance(still, BaseException):  # not a NATS failure (those are answered by `renew`): a bug
                    log.error("renewing partition %d failed: %r", partition.number, still)
                    still = time.monotonic() < partition.valid_until
                if not still:
                    log.warning("lost the lease of partition %d", partition.number)
                    partition.held = False  # dropped by the next lease round
            try:
                await leases.heartbeat()
            except (TimeoutError, nats.errors.Error) as e:
                _unless_cancelled(e)
                log.warning("heartbeat failed: %r", e)
            await asyncio.sleep(max(0.0, tick - (time.monotonic() - started)))

    async def balance(self, cluster: Cluster, leases: Leases) -> None:
        """One lease round: drop what was lost or failed, then give back or take partitions to hold an even share."""
        for number, partition in list(self.partitions.items()):
            if partition.failed or not partition.held:
                del self.partitions[number]
                await partition.stop(leases if partition.held else None)
        workers = await leases.workers()
        count = cluster.settings.partitions
        share = math.ceil(count / len(workers))
        for number in sorted(self.partitions)[share:]:
            log.info("handing partition %d back (%d workers share %d partitions)", number, len(workers), count)
            await self.partitions.pop(number).stop(leases)
        # Start from a place of one's own, so that workers starting together do not all race for partition 0.
        start = workers.index(self.options.worker_id) * count // len(workers)
        for number in [(start + i) % count for i in range(count)]:
            if len(self.partitions) >= share:
                break
            if number in self.partitions:
                continue
            acquired = time.monotonic()
            revision = await leases.acquire(number)
            if revision is None:
                continue
            partition = Partition(cluster, number, revision, self.options, acquired)
            self.partitions[number] = partition  # renewed while it starts (a restore can outlast the lease)
            try:
                await partition.start()
            except BaseException:
                # Failed half-way (a NATS failure), or cancelled at shutdown: nothing of it may keep running.
                del self.partitions[number]
                await asyncio.shield(partition.stop(leases if partition.held else None))
                raise
            log.info("took partition %d at position %d", number, partition.position)


class Partition:
    """One partition held by this worker: its engine, its reading of the log, its requests, its checkpoints."""

    def __init__(self, cluster: Cluster, number: int, revision: int, options: WorkerOptions, acquired: float) -> None:
        self.cluster, self.number, self.revision, self.options = cluster, number, revision, options
        self.path = options.data_dir / f"p{number}"
        self.engine: Engine | None = None
        self.position = 0
        #: Answers only while the lease is surely held: until one TTL after the last renewal.
        self.valid_until = acquired + cluster.settings.lease_ttl
        #: False once the lease is lost, or being given back: no longer renewed.
        self.held = True
        self.applied = asyncio.Condition()
        self.checkpointed = 0
        self.last_checkpoint = time.monotonic()
        #: (monotonic time, position) of recent writes: outcomes older than `outcome_ttl` are forgotten.
        self.recent: deque[tuple[float, int]] = deque()
        self.forget_before = 0
        self.task: asyncio.Task[None] | None = None
        #: Held while an export reads the engine: it is not closed under it.
        self.exporting = asyncio.Lock()
        self.exported = -1
        self.export_task: asyncio.Task[None] | None = None
        self.asks: Subscription | None = None
        self.asking: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        started = time.monotonic()
        self.engine = await asyncio.to_thread(self.open)
        newest = await checkpoints.position(self.cluster.checkpoints, self.number)
        if newest is not None and newest > self.engine.log_position(LOG):
            engine, self.engine = self.engine, None
            await asyncio.to_thread(engine.close)
            await checkpoints.restore(self.cluster.checkpoints, self.number, self.path, self.path.parent / SCRATCH)
            self.engine = await asyncio.to_thread(self.open)
        self.position = self.checkpointed = self.engine.log_position(LOG)
        await self.check_gap()
        self.asks = await self.cluster.nc.subscribe(ask_subject(self.number), cb=self.on_ask)
        self.task = asyncio.create_task(self.apply_log(), name=f"meter-partition-{self.number}")
        if self.options.export_dir is not None:
            self.export_task = asyncio.create_task(self.export_log(), name=f"meter-export-{self.number}")
        log.info("partition %d opened in %.2f s", self.number, time.monotonic() - started)

    @property
    def failed(self) -> bool:
        """Its log stopped being applied (an error, logged): to be handed back."""
        return self.task is not None and self.task.done() and not self.task.cancelled()

    def open(self) -> Engine:
        options = {"maintenance_interval": None} | self.options.engine_options
        return Engine(self.path, **options)

    async def renew(self, leases: Leases) -> bool:
        # The server counts the TTL from when it stores the renewal, after this moment: surely held until then + TTL.
        sent = time.monotonic()
        try:
            revision = await leases.renew(self.number, self.revision)
        except (TimeoutError, nats.errors.Error):
            return time.monotonic() < self.valid_until  # unknown: keep it while it surely holds
        if revision is None:
            return False
        self.revision, self.valid_until = revision, sent + self.cluster.settings.lease_ttl
        return True

    async def stop(self, leases: Leases | None) -> None:
        """Stops applying and answering; with ``leases`` (a hand-back, not a loss), checkpoints and releases first.

        Never raises for a NATS failure: the engine is closed whatever happens, so that this process can open the
        partition again later (RocksDB's lock); a lease not released expires.
        """
        self.held = False
        for task in (self.task, self.export_task):
            if task is not None:
                task.cancel()
                if not (await asyncio.wait({task}, timeout=STOP_S))[0]:
                    # A bug (a swallowed cancellation): closing the engine under it makes it fail and end.
                    log.error("partition %d: %s did not stop in %.0f s", self.number, task.get_name(), STOP_S)
        for task in list(self.asking):
            task.cancel()
        try:
            if self.asks is not None:
                await _quietly(self.asks.unsubscribe())
            if leases is not None and self.engine is not None:
                await asyncio.wait_for(self.checkpoint(), 60)
                await asyncio.wait_for(leases.release(self.number, self.revision), 5)
        except Exception as e:  # noqa: BLE001 - a NATS failure, or the engine's own (fail-stop): the lease expires
            log.warning("partition %d: hand-back incomplete (the next owner replays more): %r", self.number, e)
        finally:
            if self.engine is not None:
                engine, self.engine = self.engine, None
                async with self.exporting:  # an export's thread still reading it (cancelling did not stop it)
                    await asyncio.to_thread(engine.close)

    async def apply_log(self) -> None:
        """Applies the partition's log from the engine's position, in order, for as long as the lease holds.

        Each entry is read by position (``log.read_after``) from the stream's leader: no consumer to keep alive or to
        recreate after a node failure, and the engine's position is the only cursor.
        """
        while True:
            try:
                entries = await read_after(self.cluster.js, self.number, self.position, self.options.batch_entries)
                if entries:
                    await self.apply(entries)
                else:
                    await asyncio.sleep(POLL_S)
                await self.maybe_checkpoint()
            except LogGap as e:
                log.error("%s", e)  # it answers nothing new until an operator restores a checkpoint
                return
            except (nats.errors.Error, OSError, TimeoutError) as e:
                _unless_cancelled(e)
                log.warning("partition %d: reading the log failed, reading it again: %r", self.number, e)
                await asyncio.sleep(0.5)
            except Exception:
                # The engine failed (fail-stop) or an entry could not be read: this worker gives the partition up
                # (`Worker.balance`), and whoever takes it next starts again from the last durable position.
                log.exception("partition %d: applying the log failed; giving the partition up", self.number)
                raise

    async def check_gap(self) -> None:
        """Refuses to go on when the log no longer holds the entries after this partition's position."""
        first = await first_position(self.cluster.js)
        if first > self.position + 1:
            raise LogGap(
                f"partition {self.number} is at position {self.position}, and the log's oldest entry is {first}: the "
                "entries between are gone (no checkpoint within the log's retention); restore a newer checkpoint"
            )

    async def apply(self, entries: list[LogEntry]) -> None:
        if self.engine is None:
            return
        await asyncio.to_thread(self.engine.apply, LOG, entries, forget_before=self.forget_before)
        now = time.monotonic()
        self.recent.append((now, entries[-1].seq))
        while self.recent and self.recent[0][0] < now - self.options.outcome_ttl:
            self.forget_before = self.recent.popleft()[1]
        async with self.applied:
            self.position = entries[-1].seq
            self.applied.notify_all()

    async def maybe_checkpoint(self) -> None:
        if time.monotonic() - self.last_checkpoint < self.options.checkpoint_every:
            return
        # Entries leave the log by age only: a gap can open only behind a partition a day late. Checked as often as
        # checkpoints come, and at start.
        await self.check_gap()
        if self.position > self.checkpointed:
            await self.checkpoint()
        self.last_checkpoint = time.monotonic()

    async def checkpoint(self) -> None:
        if self.engine is None or self.position == self.checkpointed:
            return
        position = self.position
        await checkpoints.save(self.cluster.checkpoints, self.number, self.engine, position, self.path.parent / SCRATCH)
        self.checkpointed, self.last_checkpoint = position, time.monotonic()

    async def export_log(self) -> None:
        """Exports the partition's usage every ``export_every`` seconds while it moved."""
        while True:
            await asyncio.sleep(self.options.export_every)
            if self.position == self.exported:
                continue
            try:
                await self.export()
            except (LeaseEnding, nats.errors.Error, OSError, TimeoutError) as e:
                _unless_cancelled(e)
                log.warning(
                    "partition %d: export failed, trying again in %.0f s: %r", self.number, self.options.export_every, e
                )

    async def export(self) -> ExportSummary:
        """Writes this partition's files of the usage dataset (``meter.lake.usage``, ``part-p<n>``).

        Only while the lease surely holds, checked before each file with a margin of a renewal period: a worker that
        lost its lease must not overwrite what the next owner wrote. The next owner's files are exact whatever the
        old one left: a day's file is rewritten whenever its count of events differs from the partition's manifest,
        and the same count in the same log order is the same usage.
        """
        out = self.options.export_dir
        if out is None:
            raise MeterError("this worker exports nothing: start it with --export-dir", "export_disabled")
        margin = self.cluster.settings.lease_ttl / 3

        def still_owner(_: str = "") -> None:
            if time.monotonic() > self.valid_until - margin:
                raise LeaseEnding(f"partition {self.number}: the lease may end before the next file is written")

        names = await tenants(self.cluster.js)
        async with self.exporting:
            engine = self.engine
            if engine is None:
                raise LeaseEnding(f"partition {self.number} was given up")
            still_owner()
            position = self.position
            summary = await asyncio.to_thread(export_usage, engine, names, out, still_owner, self.number)
        self.exported = position
        return summary

    # Requests to the partition's owner

    async def on_ask(self, msg: Msg) -> None:
        # Each request in a task of its own: an edge waiting for an outcome must not hold up a query.
        task = asyncio.create_task(self.answer(msg))
        self.asking.add(task)
        task.add_done_callback(self.asking.discard)

    async def answer(self, msg: Msg) -> None:
        if not msg.reply or time.monotonic() >= self.valid_until or self.engine is None:
            return  # not surely the owner: let the asker time out and ask again
        try:
            request = msgspec.json.decode(msg.data, type=dict[str, Any])
            headers, data = await self.dispatch(self.engine, request)
        except MeterError as e:
            headers, data = {"Meter-Error": "1"}, msgspec.json.encode({"code": e.code, "message": str(e)})
        except (msgspec.DecodeError, KeyError, TypeError) as e:
            headers, data = {"Meter-Error": "1"}, msgspec.json.encode({"code": "bad_ask", "message": repr(e)})
        await self.cluster.nc.publish(msg.reply, data, headers=headers)

    async def dispatch(self, engine: Engine, request: dict[str, Any]) -> tuple[dict[str, str], bytes]:
        op, tenant = request["op"], request["tenant"]
        if op == "outcome":
            seq = int(request["seq"])
            if self.position < seq:
                async with self.applied:
                    try:
                        await asyncio.wait_for(self.applied.wait_for(lambda: self.position >= seq), request["wait"])
                    except TimeoutError:
                        return {"Meter-State": "pending"}, b""
            raw = await asyncio.to_thread(engine.log_outcome, LOG, seq)
            # Only the entry's own tenant learns anything of it.
            if raw is None or msgspec.json.decode(raw, type=dict[str, Any]).get("tenant") != tenant:
                return {"Meter-State": "forgotten"}, b""
            return {"Meter-State": "applied"}, raw
        if op == "usage":
            partial = await asyncio.to_thread(
                engine.usage_partial,
                tenant,
                request["meter"],
                start=datetime.fromisoformat(request["start"]),
                end=datetime.fromisoformat(request["end"]),
                window_size=request.get("window_size"),
                subjects=request.get("subjects", ()),
                group_by=request.get("group_by", ()),
                filters=request.get("filters"),
                tz=request.get("tz"),
            )
            return {}, partial
        if op == "meters":
            return {}, msgspec.json.encode(engine.list_meters(tenant))
        if op == "meter":
            return {}, msgspec.json.encode(engine.get_meter(tenant, request["slug"]))
        if op == "position":
            return {}, msgspec.json.encode({"position": self.position})
        if op == "export":
            try:
                summary = await self.export()
            except LeaseEnding as e:
                raise ClusterUnavailable(str(e)) from None
            except (nats.errors.Error, OSError, TimeoutError) as e:
                raise MeterError(f"partition {self.number}: the export failed: {e!r}", "export_failed") from None
            return {}, msgspec.json.encode({"position": self.exported} | msgspec.structs.asdict(summary))
        raise KeyError(op)


def _unless_cancelled(error: BaseException) -> None:
    """Raises CancelledError when ``error`` was caught while this task is being cancelled.

    A clean-up running during the cancellation (a temporary directory removed under a thread still writing into it)
    can raise an error of its own, which replaces the cancellation: a loop that then carries on would never stop, and
    whoever awaits its end (``Partition.stop``, and so the worker's lease round) would wait for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from error


async def _quietly(cleanup: Awaitable[None]) -> None:
    """A clean-up call to NATS that may fail or hang while a node is down: bounded, and its failure ignored."""
    try:
        await asyncio.wait_for(cleanup, 5)
    except (nats.errors.Error, OSError, TimeoutError):
        pass
