"""One push per partner at a time, across processes and machines, held in the state database.

* PostgreSQL: a session-level advisory lock (``pg_try_advisory_lock`` polled until the wait
  runs out) on a stable 64-bit hash of the lock's name, on a dedicated connection (outside
  the engine's pool, at most ``MAX_ADVISORY_CONNECTIONS`` per process: further partners wait
  their turn asynchronously). The server releases the lock when that connection dies, so a
  killed holder never blocks the next run; a live holder whose connection died finds out
  within ``WATCH_SECONDS`` and marks the lock ``lost``.
* SQLite (and any other database): a lease row in ``push_leases``, taken with an atomic
  insert or a conditional update of an expired lease, renewed by a background thread while
  the holder works, deleted on release. A holder that died stops renewing and its lease is
  taken over once it expires (``LEASE_SECONDS``), or at once when the holder ran on this
  host and its process is gone (the holder id names host and pid). A holder that could not renew in time
  marks the lease ``lost``; the push checks it before every call and stops.

Names: ``partner:<partner id>`` for a partner's account sync and count push, ``services`` for
the vendor-wide service sync. Waiting is asynchronous (other partners' pushes in the same run
go on meanwhile) and bounded: past ``wait_seconds`` a ``LockTimeout`` says who holds it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import socket
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import sqlalchemy as sa
from sqlalchemy.pool import NullPool

from pipeline.store.schema import push_leases, utcnow

DEFAULT_WAIT_SECONDS = 300.0
LEASE_SECONDS = 60.0
POLL_SECONDS = 0.2
SERVICES_LOCK = "services"
MAX_ADVISORY_CONNECTIONS = 8
WATCH_SECONDS = 5.0
_advisory_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


@functools.cache
def _lock_engine(url: str) -> sa.Engine:
    """Connections for advisory locks, outside the state engine's pool (never starve it)."""
    return sa.create_engine(url, poolclass=NullPool)


def _slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    if loop not in _advisory_slots:
        _advisory_slots[loop] = asyncio.Semaphore(MAX_ADVISORY_CONNECTIONS)
    return _advisory_slots[loop]


def partner_lock_name(partner_id: str) -> str:
    return f"partner:{partner_id}"


def advisory_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL advisory locks (same in every process)."""
    digest = hashlib.sha256(f"gradient-billing-sync:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class LockTimeout(Exception):
    """Another holder kept the lock longer than the caller was willing to wait."""


@dataclass
class HeldLock:
    """What the holder learns: how long it waited, and whether the lease was lost since."""

    name: str
    waited_seconds: float = 0.0
    lost: bool = False
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)


class _AdvisoryLock:
    def __init__(self, engine: sa.Engine, name: str) -> None:
        self.name = name
        self.key = advisory_key(name)
        self.held: HeldLock | None = None
        url = engine.url.render_as_string(hide_password=False)
        self.conn = _lock_engine(url).connect().execution_options(isolation_level="AUTOCOMMIT")

    def try_acquire(self) -> str | None:
        query = sa.text("SELECT pg_try_advisory_lock(:k)")
        if self.conn.execute(query, {"k": self.key}).scalar_one():
            return None
        return f"PostgreSQL advisory lock {self.key}"

    def start(self, held: HeldLock) -> None:
        """Watch the lock's connection: if it dies the server has released the lock."""
        self.held = held
        self.watcher = threading.Thread(target=self._watch, name=f"advisory-{self.name}", daemon=True)
        self.watcher.start()

    def _watch(self) -> None:
        held = self.held
        while not held._stop.wait(WATCH_SECONDS):
            try:
                self.conn.execute(sa.text("SELECT 1"))
            except sa.exc.DBAPIError:
                held.lost = True
                return

    def release(self) -> None:
        if self.held is not None:
            self.held._stop.set()
            self.watcher.join()
        try:
            self.conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": self.key})
        except sa.exc.SQLAlchemyError:
            pass  # the connection died: the server released the lock with it
        finally:
            self.close()

    def close(self) -> None:
        self.conn.close()


def _died_here(holder: str) -> bool:
    """The holder ran on this host and its process no longer exists."""
    parts = holder.rsplit(":", 3)
    if len(parts) != 4 or parts[1] != socket.gethostname() or not parts[2].isdigit():
        return False
    try:
        os.kill(int(parts[2]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class _LeaseLock:
    def __init__(self, engine: sa.Engine, name: str, holder: str, lease_seconds: float) -> None:
        self.engine = engine
        self.name = name
        self.holder = f"{holder}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = lease_seconds
        self.renewer: threading.Thread | None = None
        self.held: HeldLock | None = None

    def try_acquire(self) -> str | None:
        """None when taken; else who holds it."""
        now = utcnow()
        values = {
            "holder": self.holder,
            "acquired_at": now,
            "expires_at": now + timedelta(seconds=self.lease_seconds),
        }
        with self.engine.begin() as conn:
            taken = conn.execute(
                push_leases.update()
                .where(push_leases.c.lock_name == self.name, push_leases.c.expires_at < now)
                .values(**values)
            ).rowcount
            if taken:
                return None
            try:
                with conn.begin_nested():
                    conn.execute(push_leases.insert(), [{"lock_name": self.name, **values}])
                return None
            except sa.exc.IntegrityError:
                current = conn.execute(
                    sa.select(push_leases.c.holder).where(push_leases.c.lock_name == self.name)
                ).scalar_one_or_none()
            if current is not None and _died_here(current):
                taken = conn.execute(
                    push_leases.update()
                    .where(push_leases.c.lock_name == self.name, push_leases.c.holder == current)
                    .values(**values)
                ).rowcount
                if taken:
                    return None
        return f"lease held by run {(current or 'unknown').rsplit(':', 3)[0]}"

    def _renew(self) -> bool:
        with self.engine.begin() as conn:
            return bool(
                conn.execute(
                    push_leases.update()
                    .where(push_leases.c.lock_name == self.name, push_leases.c.holder == self.holder)
                    .values(expires_at=utcnow() + timedelta(seconds=self.lease_seconds))
                ).rowcount
            )

    def start(self, held: HeldLock) -> None:
        self.held = held
        self.renewer = threading.Thread(target=self._keep, name=f"lease-{self.name}", daemon=True)
        self.renewer.start()

    def _keep(self) -> None:
        held = self.held
        assert held is not None
        valid_until = time.monotonic() + self.lease_seconds
        while not held._stop.wait(self.lease_seconds / 3):
            try:
                if not self._renew():
                    held.lost = True
                    return
                valid_until = time.monotonic() + self.lease_seconds
            except sa.exc.DBAPIError:
                if time.monotonic() >= valid_until:
                    held.lost = True
                    return

    def release(self) -> None:
        if self.held is not None:
            self.held._stop.set()
        if self.renewer is not None:
            self.renewer.join()
        with self.engine.begin() as conn:
            conn.execute(
                push_leases.delete().where(push_leases.c.lock_name == self.name, push_leases.c.holder == self.holder)
            )

    def close(self) -> None:
        return None


@asynccontextmanager
async def holding(
    engine: sa.Engine,
    name: str,
    holder: str,
    *,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    lease_seconds: float = LEASE_SECONDS,
) -> AsyncIterator[HeldLock]:
    """Hold the lock ``name`` for the block, waiting at most ``wait_seconds`` for it."""
    if engine.dialect.name == "postgresql":
        async with _slots():
            async with _holding(_AdvisoryLock(engine, name), name, wait_seconds) as held:
                yield held
    else:
        async with _holding(_LeaseLock(engine, name, holder, lease_seconds), name, wait_seconds) as held:
            yield held


@asynccontextmanager
async def _holding(lock: _AdvisoryLock | _LeaseLock, name: str, wait_seconds: float) -> AsyncIterator[HeldLock]:
    started = time.monotonic()
    try:
        while (current := lock.try_acquire()) is not None:
            if time.monotonic() - started >= wait_seconds:
                raise LockTimeout(
                    f"another run holds the state-database lock {name!r} ({current}); gave up "
                    f"after waiting {wait_seconds:.0f} s"
                )
            await asyncio.sleep(POLL_SECONDS)
    except BaseException:
        lock.close()
        raise
    held = HeldLock(name, waited_seconds=time.monotonic() - started)
    lock.start(held)
    try:
        yield held
    finally:
        lock.release()
