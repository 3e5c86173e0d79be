"""The outbox on disk: SQLite in WAL mode, one row per event, one delivery row per (event, output).

This module is synchronous and owns one connection; `forwarder.store.outbox` runs it on a single
thread for the daemon, and the command line uses it directly. SQLite serialises writers across
processes, so `canary-forwarder dead-letters replay` may run beside a live daemon.

An event row lives until every output it was queued for has delivered or dead-lettered it.
Dead letters keep their own copy of the body, so a replay works after the event row is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import sqlite3
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple, cast

import orjson
import structlog

from forwarder.store.dedupe import DedupeMemory

__all__ = [
    "BUSY_TIMEOUT_MS",
    "COMMAND_LOCK_WAIT_SECS",
    "CONTENDED_BUSY_TIMEOUT_MS",
    "DB_NAME",
    "MAX_WAL_BYTES",
    "TRUNCATE_WAIT_MS",
    "WAL_FILE_LIMIT_BYTES",
    "Checkpointer",
    "CommandLock",
    "CutShortSalvage",
    "Database",
    "DeadLetter",
    "NewEvent",
    "ReplayOverBound",
    "StoreCorrupt",
    "StoreDamaged",
    "StoreDisplaced",
    "StoreStats",
    "StoredEvent",
    "file_identity",
    "finish_cut_short_salvages",
    "is_damage",
    "replace_with_salvage",
]

DB_NAME = "outbox.sqlite3"

log = structlog.get_logger("forwarder.store")

# How long a write waits for another process's write lock (a `dead-letters replay`, a sqlite3
# shell inside a transaction) before it fails with "database is locked".
BUSY_TIMEOUT_MS = 5000
# ... and once a wait has run out, until a write gets through again. The daemon runs every call
# on one thread: with each of them waiting the full time, posts, acks and probes queue up behind
# a lock a shell may hold for an hour, and the watchdog restarts a daemon that is merely locked
# out, again and again.
CONTENDED_BUSY_TIMEOUT_MS = 100
# The longest a checkpoint that resets the WAL may keep writers waiting. It takes the write lock
# and then waits for readers; a reader that holds an old snapshot (a sqlite3 shell, a backup)
# would otherwise hold every commit back for the whole busy timeout, every second.
TRUNCATE_WAIT_MS = 100
# The log in the WAL past which the checkpointer resets it (see `Checkpointer`).
MAX_WAL_BYTES = 64 << 20
# The WAL file is written over from its start after a reset, not cut; what a reader holding a
# snapshot let it grow to is cut back to this by the first commit after the next reset. Twice the
# bound, so that a steady load, which keeps the file near the bound, never pays for a cut.
WAL_FILE_LIMIT_BYTES = 2 * MAX_WAL_BYTES
# Each page in the WAL comes after a header of its own; the file's header names the log in it:
# its checkpoint sequence number and salts, which change each time the log starts again
# (sqlite.org/fileformat.html, 4.1).
_WAL_FRAME_HEADER_BYTES = 24
_WAL_LOG_NAME = slice(12, 24)
# How long a store command (`store stats`, `store check`, `dead-letters ...`) waits for the
# daemon to finish putting a copy of a deleted store in place, or a salvage of a damaged one (see
# `CommandLock`); a large store takes a while.
COMMAND_LOCK_WAIT_SECS = 60.0
_COMMAND_LOCK_POLL_SECS = 0.05
# How long ago the state directory must have last changed for `check_in_place` to take its
# stamp as proof that the store's files are where they were. The kernel stamps a change from a
# clock that ticks every few milliseconds, and ext3, ext4 with small inodes and FAT keep whole
# seconds or two, so a second change in the same tick as the one before leaves the stamp as it
# was.
_DIRECTORY_SETTLED_NS = 10 * 1_000_000_000
# A wall clock stepped by more than this since the stamp was trusted: trusted no more, as a
# later change could be stamped with the same time.
_CLOCK_STEP_NS = 1_000_000_000

# SQLite's primary result codes (the low byte of an extended code).
_SQLITE_BUSY = 5
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_at REAL NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    output TEXT NOT NULL,
    seq INTEGER NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (output, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_seq ON deliveries (seq);
CREATE TABLE IF NOT EXISTS seen (
    id INTEGER PRIMARY KEY,
    fingerprint TEXT NOT NULL,
    seen_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS recent (
    fingerprint TEXT PRIMARY KEY,
    seen_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS recent_seen_at ON recent (seen_at);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    output TEXT NOT NULL,
    event_id TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    kind TEXT NOT NULL,
    received_at REAL NOT NULL,
    dead_at REAL NOT NULL,
    attempts INTEGER NOT NULL,
    reason TEXT NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS probe (
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    received_at REAL NOT NULL,
    reason TEXT NOT NULL,
    client TEXT NOT NULL,
    size INTEGER NOT NULL,
    body BLOB NOT NULL
);
"""


# Rows per multi-row INSERT: 7 values each stays far below SQLite's 32,766 bound parameters.
_ROWS_PER_INSERT = 500
_INSERT_EVENTS = (
    "INSERT INTO events (seq, event_id, fingerprint, kind, received_at, size, body) VALUES "
)
_EVENT_ROW = "(?, ?, ?, ?, ?, ?, ?)"
# The highest seq ever handed out: never below what AUTOINCREMENT has given, even after the
# table was emptied, so a seq is never reused.
_HIGHEST_SEQ = (
    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0),"
    " COALESCE((SELECT MAX(seq) FROM events), 0))"
)


def _json_list(values: Sequence[object]) -> str:
    """A list for `json_each`, so one statement carries every row of a group."""
    return orjson.dumps(values).decode()


def _load_dedupe_memory(db: sqlite3.Connection) -> DedupeMemory:
    """The dedupe memory as the `seen` log holds it, inside a write transaction.

    Fingerprints in `recent`, the keyed table of earlier versions (kept, empty, so that one can
    still open the store), move to the log first.
    """
    db.execute(
        "INSERT INTO seen (fingerprint, seen_at) SELECT fingerprint, seen_at FROM recent"
        " ORDER BY seen_at"
    )
    db.execute("DELETE FROM recent")
    memory = DedupeMemory()
    rows = db.execute(
        "SELECT id, fingerprint, seen_at FROM seen ORDER BY id DESC LIMIT ?", (memory.limit,)
    ).fetchall()
    _remember(memory, reversed(rows))
    return memory


def _log(db: sqlite3.Connection, entries: Sequence[tuple[str, float]]) -> int | None:
    """Append (fingerprint, time) entries to the `seen` log, in order; the last row's id."""
    return db.execute(
        "INSERT INTO seen (fingerprint, seen_at) SELECT"
        " json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?)",
        (_json_list(entries),),
    ).lastrowid


def _remember(memory: DedupeMemory, rows: Iterable[tuple[int, str, float]]) -> None:
    """Add rows of the `seen` log, in id order, to `memory`."""
    for row_id, fingerprint, seen_at in rows:
        memory.add(fingerprint, seen_at)
        memory.last_id = row_id


class StoreCorrupt(Exception):
    """The database file exists but cannot be used: SQLite finds it damaged, or its tables are
    not the ones this version creates (another program's file, another version's)."""


# How many findings of the check at open a StoreDamaged carries.
MAX_FINDINGS = 100


class StoreDamaged(StoreCorrupt):
    """The StoreCorrupt of a file SQLite finds damaged, not merely foreign: `store check` reports
    it as its findings rather than as a store it cannot open. `findings` is what SQLite said,
    one line each (at most `MAX_FINDINGS` of them)."""

    def __init__(self, path: Path, findings: Sequence[str]) -> None:
        more = len(findings) - 1
        # SQLite stops at MAX_FINDINGS: there may be more than it listed.
        counted = f"at least {more}" if len(findings) >= MAX_FINDINGS else str(more)
        super().__init__(f"{path}: {findings[0]}" + (f" (and {counted} more)" if more else ""))
        self.findings = list(findings)


class StoreDisplaced(Exception):
    """The files at the store's path are no longer the ones this connection reads and writes.

    SQLite goes on writing into a file that was deleted (`rm -rf` of the state directory)
    without a word, and every event committed there is gone at the next start. `replaced` is
    False when the path is free again or holds only the database as it was before the WAL was
    deleted: a copy of what this connection sees can take its place. True when another database
    is there now, which is not this process's to overwrite.
    """

    def __init__(self, message: str, *, replaced: bool) -> None:
        super().__init__(message)
        self.replaced = replaced


class ReplayOverBound(Exception):
    """A replay would take the store past `store.max_bytes`, so nothing was queued: the daemon
    would answer every new post 503 until the backlog drained."""

    def __init__(self, queued: int, selected: int, bound: int) -> None:
        super().__init__(
            f"{queued} bytes queued and {selected} selected would exceed the bound of {bound}"
        )
        self.queued = queued
        self.selected = selected
        self.bound = bound


def is_damage(exc: BaseException) -> bool:
    """Whether `exc` says the file is damaged or cannot be read (SQLITE_CORRUPT, SQLITE_NOTADB,
    SQLITE_IOERR): not a full disk or a lock, which pass by themselves."""
    if not isinstance(exc, sqlite3.Error):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None:
        return isinstance(exc, sqlite3.OperationalError) and _looks_corrupt(exc)
    return code & 0xFF in (_SQLITE_IOERR, _SQLITE_CORRUPT, _SQLITE_NOTADB)


def _replaced(path: Path) -> StoreDisplaced:
    return StoreDisplaced(
        f"{path} was replaced by another file while the daemon had it open", replaced=True
    )


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF == _SQLITE_BUSY


# A file's identity: its device and inode, or None when nothing is at the path.
_Identity = tuple[int, int] | None


def _wall_clock_ns() -> int:
    """The clock the kernel stamps a directory's changes with."""
    return time.time_ns()


def _directory_stamp(directory: Path) -> tuple[int, int, int] | None:
    """The directory at `directory` and when an entry was last added, removed or renamed in it
    (its ctime); None when there is none."""
    try:
        found = os.stat(directory)
    except OSError:
        return None
    return found.st_dev, found.st_ino, found.st_ctime_ns


def file_identity(path: Path) -> _Identity:
    """The device and inode of the file at `path`, or None when there is none."""
    try:
        found = os.stat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


@dataclass(frozen=True, slots=True)
class NewEvent:
    event_id: str
    fingerprint: str
    kind: str
    received_at: float
    body: bytes


class StoredEvent(NamedTuple):
    """A queued event as a dispatcher reads it. A tuple rather than a frozen dataclass: a
    backlog's batches build 500 at a time, and a tuple is built in a third of the time."""

    seq: int
    event_id: str
    fingerprint: str
    kind: str
    received_at: float
    attempts: int
    body: bytes


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    output: str
    event_id: str
    kind: str
    received_at: float
    dead_at: float
    attempts: int
    reason: str
    size: int


@dataclass(frozen=True, slots=True)
class StoreStats:
    events: int
    bytes: int
    # The oldest event's receipt stamp, on the wall clock.
    oldest_received_at: float | None
    queued: dict[str, int]
    dead_letters: dict[str, int]
    quarantined: int
    # Only from `Outbox.stats`: the `time.monotonic()` since which the oldest event has waited,
    # as the running daemon counts it for store.max_age_secs, which a step of the wall clock
    # does not move. None from `Database.stats` (another process has only the stamps).
    oldest_since: float | None = None


class Database:
    """One SQLite connection to the outbox. Not thread-safe: use it from one thread."""

    def __init__(
        self,
        directory: Path,
        *,
        sync: str = "full",
        background_checkpoints: bool = False,
        create: bool = True,
        check: Literal["full", "quick"] = "full",
    ) -> None:
        """Open or create the outbox in `directory`, after SQLite's `check` of it.

        The full check (the daemon's) also matches each index with its table, which on a large
        store with several outputs takes a few times as long as the quick one: a store command
        that only reads figures asks for the quick one.

        With `background_checkpoints`, this connection never copies the WAL back into the
        database itself; a `Checkpointer` on another thread does, so commits never wait for it.
        Without `create`, an outbox that does not exist raises FileNotFoundError and nothing is
        created: a tool pointed at a mistyped path must not report an empty store. Such a tool
        (a store command) also holds the store's `CommandLock` shared until `close`, waiting up
        to COMMAND_LOCK_WAIT_SECS for a daemon that is putting a copy of a deleted store, or a
        salvage of a damaged one, in place (TimeoutError).
        """
        self.path = directory / DB_NAME
        # Events other connections inserted (a `dead-letters replay` beside the daemon), for
        # a caller that keeps totals: see `totals` and `added_elsewhere`.
        self._counted_through: int | None = None
        self._added_elsewhere = (0, 0)
        self._contended = False
        # Read from the `seen` log when first needed: a store command never needs it.
        self._dedupe: DedupeMemory | None = None
        # A commit that used it failed, and may have landed all the same.
        self._dedupe_behind = False
        self._window_cut_warned = False
        location: str | Path = self.path
        if create:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            # The directory this connection opened the store in, for `lock_out_commands`.
            self._directory = _open_directory(directory)
            # Made 0600 before SQLite sees it: the -wal and -shm files SQLite creates take the
            # database's mode, and the WAL holds payloads (an intruder's passwords included).
            with contextlib.suppress(OSError):
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        else:
            if not directory.is_dir():
                raise FileNotFoundError(errno.ENOENT, "no outbox", str(self.path))
            self._directory = _lock_shared(directory)
            if not self.path.is_file():
                os.close(self._directory)
                raise FileNotFoundError(errno.ENOENT, "no outbox", str(self.path))
            # mode=rw: should the file vanish meanwhile, SQLite fails instead of creating it.
            location = self.path.absolute().as_uri() + "?mode=rw"
        try:
            self._db = sqlite3.connect(
                location, uri=not create, isolation_level=None, check_same_thread=False
            )
        except BaseException:
            os.close(self._directory)
            raise
        try:
            self._prepare(sync, background_checkpoints, check)
        except BaseException:
            self._db.close()
            os.close(self._directory)
            raise
        for path in (self.path, *_journal_files(self.path)):
            with contextlib.suppress(OSError):
                os.chmod(path, 0o600)
        # The store's three names (database, WAL, shared memory), and the files they named once
        # this connection had read them: `check_in_place` compares.
        self._names = (self.path, _wal(self.path), _shm(self.path))
        self._files = tuple(file_identity(p) for p in self._names)
        # The state directory's stamp when the files were last found in place, once it had
        # settled, with the wall clock's offset from the monotonic one then.
        self._settled_directory: tuple[tuple[int, int, int], int] | None = None

    def _prepare(
        self, sync: str, background_checkpoints: bool, check: Literal["full", "quick"]
    ) -> None:
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
            self._db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_FILE_LIMIT_BYTES}")
            if background_checkpoints:
                self._db.execute("PRAGMA wal_autocheckpoint=0")
            # The daemon's is the full check: a store run on with an index that lacks rows never
            # fetches the events the index misses.
            findings = _integrity_findings(self._db, MAX_FINDINGS, quick=check == "quick")
            if findings:
                raise StoreDamaged(self.path, findings)
            tables = _tables(self._db)
            if not tables:
                # One transaction: another process opening the same new store sees every
                # table or none, never a part it would take for a foreign schema.
                self._db.executescript(f"BEGIN IMMEDIATE;{_SCHEMA}COMMIT;")
                return
            problems = _schema_problems(tables)
            if problems:
                raise StoreCorrupt(
                    f"{self.path}: not an outbox this version can use: {'; '.join(problems)}"
                )
            self._db.executescript(_SCHEMA)  # adds what an earlier build lacked (an index)
        except sqlite3.DatabaseError as exc:
            if isinstance(exc, sqlite3.OperationalError) and not _looks_corrupt(exc):
                raise
            raise StoreDamaged(self.path, [str(exc)]) from exc

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (it does on SQLITE_FULL and I/O errors); a
                # second ROLLBACK would fail and hide the real error ("database or disk is full").
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            if _is_busy(exc):
                self._wait_for_locks(briefly=True)
            raise
        self._wait_for_locks(briefly=False)

    def _wait_for_locks(self, *, briefly: bool) -> None:
        if briefly != self._contended:
            wait = CONTENDED_BUSY_TIMEOUT_MS if briefly else BUSY_TIMEOUT_MS
            self._db.execute(f"PRAGMA busy_timeout={wait}")
            self._contended = briefly

    def check_in_place(self, *, full: bool = False) -> None:
        """Raise StoreDisplaced if the path no longer names the files this connection uses.

        Only looks at the file system, so any thread may call it. Each commit checks before and
        after, and every system call lets the busy event loop take the GIL, which the store
        thread then waits to get back; so the files are looked at only when the state directory
        may have changed since they were last found in place. Deleting, renaming or replacing
        any of them changes the directory's ctime, which one `stat` of the directory reads
        (under the ingest benchmark's load, commits got shorter and posts per second rose by
        5-12 %: docs/benchmarks.md, "Eleventh pass"). The stamp is trusted once the directory
        has not changed for `_DIRECTORY_SETTLED_NS`, while the wall clock has not been stepped,
        and while none of the three names is a symbolic link, whose target could move in
        another directory. A mount over one of the files changes nothing in the directory:
        `full` looks at the files whatever the directory shows, which the checkpointer does
        every second.
        """
        # Read before the directory: a change after this moment gets a later stamp than one
        # that was settled by then.
        now = _wall_clock_ns()
        clock_offset = now - time.monotonic_ns()
        stamp = _directory_stamp(self.path.parent)
        settled = self._settled_directory
        if (
            not full
            and settled is not None
            and stamp == settled[0]
            and abs(clock_offset - settled[1]) < _CLOCK_STEP_NS
        ):
            return
        self._check_files_in_place()
        if stamp is None or now - stamp[2] <= _DIRECTORY_SETTLED_NS:
            return
        if (settled is None or settled[0] != stamp) and not self._names_are_the_files():
            return
        self._settled_directory = (stamp, clock_offset)

    def _names_are_the_files(self) -> bool:
        """Whether each of the store's names is the file itself, not a symbolic link to it."""
        for path, opened in zip(self._names, self._files, strict=True):
            if opened is None:
                continue  # not there at open, and not looked at since (`_check_files_in_place`)
            try:
                found = os.lstat(path)
            except OSError:
                return False
            if (found.st_dev, found.st_ino) != opened:
                return False
        return True

    def _check_files_in_place(self) -> None:
        database, *journals = self._files
        now = file_identity(self.path)
        if now is None:
            raise StoreDisplaced(
                f"{self.path} was deleted while the daemon had it open", replaced=False
            )
        if now != database:
            raise _replaced(self.path)
        # Without its WAL the file at the path lacks every commit since the last checkpoint;
        # without its shared memory the next process to open it writes blind to this one's.
        for journal, opened in zip(self._names[1:], journals, strict=True):
            if opened is not None and file_identity(journal) != opened:
                raise StoreDisplaced(
                    f"{journal} was deleted while the daemon had it open", replaced=False
                )

    def copy_to(self, target: Path) -> None:
        """Write everything this connection sees into a new database file `target`.

        Reads through the connection, so it also copies a store whose files were deleted
        while open. `target` must not exist; it is private (0600) and synced when this returns.
        """
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.close(os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600))
        with contextlib.closing(sqlite3.connect(target, isolation_level=None)) as copy:
            copy.execute("PRAGMA synchronous=FULL")
            self._db.backup(copy)

    def take_place_of_path(self, copy: Path) -> None:
        """Move `copy` (from `copy_to`) to this store's path, over this store's own file if it
        is still there (its WAL was deleted).

        Call it while this connection is open, so that what it holds is let go of only once the
        copy is in place; and `close` it before the copy is opened: closing deletes the WAL and
        shared-memory files by name, which would then be the copy's.
        """
        # Checked again: the copy took a while, and a file that appeared meanwhile is not ours.
        if file_identity(self.path) not in (None, self._files[0]):
            raise _replaced(self.path)
        os.replace(copy, self.path)
        _sync_directory(self.path.parent)

    def set_aside_own_journals(self, now: float) -> None:
        """After `close`, rename this connection's WAL files that are still at the path (another
        process held the old database open) out of the way of the database now there."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        for journal in self._names[1:]:
            if journal.exists() and file_identity(journal) in self._files[1:]:
                journal.rename(journal.with_name(f"{journal.name}.displaced-{stamp}"))

    def lock_out_commands(self) -> CommandLock:
        """Take the store's `CommandLock` exclusively, without waiting, for putting a copy of
        this store (its files deleted) in place: keep it until this connection is closed and its
        journals set aside, then `release` it.

        Locks the directory this connection opened the store in, where a command that opened
        the store before its files were deleted holds it, and the one at the path now (made
        again if it was deleted), where one that opens it now would. Raises BlockingIOError
        while a store command has the store open.
        """
        return lock_out_commands(
            self.path.parent, "its files are copied back into place", held=self._directory
        )

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            # A reader that holds an old snapshot must not hold every other process's writers
            # back for the whole busy timeout: the fold below is worth a short wait only.
            self._db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
            # Folds the WAL back so a backup of the single file is complete.
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._db.close()
        if self._directory >= 0:  # once: the number may name another file after this
            os.close(self._directory)
            self._directory = -1

    def salvage(self, broken: Path, outputs: Sequence[str]) -> tuple[int, int]:
        """Copy the readable events and deliveries of a corrupt outbox into this one, and its
        dead letters, quarantined posts and dedupe log; returns the (events, deliveries) copied.

        Events are read in `seq` order, stepping over damaged pages; deliveries are read until
        SQLite hits the damage, and an event whose delivery rows could not be read is queued
        for every output in `outputs` (at least once beats not at all). Dead letters and
        quarantined posts are read until the damage too: each is an event or a post kept for an
        operator, who would otherwise lose it with the damaged file. So is the dedupe log, in
        its order: without it, a post the console sent again just after the salvage (a retry,
        a second webhook) would be stored and delivered twice.
        """
        events = _readable_events(broken)
        deliveries = _readable_rows(broken, "deliveries", "output, seq, attempts")
        known = {row[1] for row in deliveries}
        kept = {
            table: (columns, _readable_rows(broken, table, columns))
            for table, columns in _KEPT_FOR_AN_OPERATOR.items()
        }
        seen = _readable_rows(broken, "seen", "fingerprint, seen_at")
        with self._transaction() as db:
            if seen:
                _log(db, cast(list[tuple[str, float]], seen))
                # A memory read before this (not so in the daemon) catches up at its next use.
                self._dedupe_behind = self._dedupe is not None
            for table, (columns, kept_rows) in kept.items():
                marks = ", ".join("?" * len(columns.split(",")))
                db.executemany(
                    f"INSERT OR IGNORE INTO {table} ({columns}) VALUES ({marks})",  # noqa: S608
                    kept_rows,
                )
            db.executemany(
                "INSERT OR IGNORE INTO events"
                " (seq, event_id, fingerprint, kind, received_at, size, body)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                events,
            )
            saved = {row[0] for row in events}
            rows = [row for row in deliveries if row[1] in saved]
            rows += [(o, row[0], 0) for row in events if row[0] not in known for o in outputs]
            db.executemany(
                "INSERT OR IGNORE INTO deliveries (output, seq, attempts) VALUES (?, ?, ?)", rows
            )
            # An event nobody waits for would never leave; drop it as ack would.
            db.execute(
                "DELETE FROM events WHERE NOT EXISTS"
                " (SELECT 1 FROM deliveries WHERE deliveries.seq = events.seq)"
            )
        return len(events), len(rows)

    def take_in(self, other: Path) -> int:
        """Queue the events of the outbox file `other` that this store does not hold, under
        seqs of its own, for the outputs `other` has them queued for; returns how many.

        An event is held when one with its fingerprint and receipt stamp is here, so taking the
        same file in again (a kill before it was removed) adds nothing twice.
        """
        events = _readable_rows(other, "events", _EVENT_COLUMNS)
        deliveries = _readable_rows(other, "deliveries", "output, seq, attempts")
        waiting = {row[1] for row in deliveries}
        with self._transaction() as db:
            held = set(db.execute("SELECT fingerprint, received_at FROM events"))
            (high,) = db.execute(_HIGHEST_SEQ).fetchone()
            seqs: dict[object, int] = {}
            rows: list[tuple[object, ...]] = []
            for seq, *event in events:  # event_id, fingerprint, kind, received_at, size, body
                if seq in waiting and (event[1], event[3]) not in held:
                    seqs[seq] = high = high + 1
                    rows.append((high, *event))
            db.executemany(_INSERT_EVENTS + _EVENT_ROW, rows)
            db.executemany(
                "INSERT INTO deliveries (output, seq, attempts) VALUES (?, ?, ?)",
                [
                    (output, seqs[seq], attempts)
                    for output, seq, attempts in deliveries
                    if seq in seqs
                ],
            )
        return len(seqs)

    # Ingest

    def append(
        self, events: Sequence[NewEvent], outputs: Sequence[str], dedupe_window: float
    ) -> list[int | None]:
        """Store events in one transaction; a duplicate within the window gives None.

        A handful of statements per group, whatever its size: the sqlite3 module lets go of the
        GIL at every step of every statement, and under load each step costs the store thread a
        wait for the busy event loop to hand the GIL back. So rows go in as one multi-row
        INSERT or a `json_each` list, never one statement per event.
        """
        loaded = self._dedupe is None
        try:
            with self._transaction() as db:
                memory = self._dedupe_memory(db) if dedupe_window > 0 else None
                # This group's own fingerprints: the same event twice in one group (two webhooks
                # at once) is a duplicate too.
                in_group: dict[str, float] = {}
                results: list[int | None] = []
                fresh: list[tuple[int, NewEvent]] = []
                # Explicit seqs, so one INSERT serves the group.
                (high,) = db.execute(_HIGHEST_SEQ).fetchone()
                self._note_added_elsewhere(db, high)
                for event in events:
                    if memory is not None:
                        last = in_group.get(event.fingerprint)
                        if last is None:
                            last = memory.last_seen(event.fingerprint)
                        # Both sides: a fingerprint seen "later" than this post was seen before
                        # the wall clock went back, and would otherwise drop every identical
                        # post for as long as the clock took to get back to it (a year, for a
                        # year's step).
                        if last is not None and abs(event.received_at - last) <= dedupe_window:
                            results.append(None)
                            continue
                        in_group[event.fingerprint] = event.received_at
                    high += 1
                    fresh.append((high, event))
                    results.append(high)
                for start in range(0, len(fresh), _ROWS_PER_INSERT):
                    chunk = fresh[start : start + _ROWS_PER_INSERT]
                    db.execute(
                        _INSERT_EVENTS + ",".join([_EVENT_ROW] * len(chunk)),
                        [
                            value
                            for seq, e in chunk
                            for value in (
                                seq, e.event_id, e.fingerprint, e.kind, e.received_at,
                                len(e.body), e.body,
                            )
                        ],
                    )  # fmt: skip
                if fresh and outputs:
                    db.execute(
                        "INSERT INTO deliveries (output, seq)"
                        " SELECT o.value, s.value FROM json_each(?) o, json_each(?) s",
                        (_json_list(outputs), _json_list([seq for seq, _ in fresh])),
                    )
                if fresh and memory is not None:
                    # At the end of the log, in order: a page or two per group, where a table
                    # keyed by fingerprint took a page per event (see forwarder.store.dedupe).
                    last_id = _log(db, [(e.fingerprint, e.received_at) for _, e in fresh])
        except BaseException:
            self._dedupe_failed(loaded)
            raise
        if memory is not None and fresh:
            # Only once committed: a fingerprint remembered from a failed commit would have the
            # client's retry answered as a duplicate of an event that was never stored.
            for _, event in fresh:
                memory.add(event.fingerprint, event.received_at)
            memory.last_id = last_id or memory.last_id
            self._warn_if_window_cut(memory, dedupe_window)
        if self._counted_through is not None:
            self._counted_through = high  # the caller counts its own events from `results`
        return results

    def _dedupe_memory(self, db: sqlite3.Connection) -> DedupeMemory:
        """The dedupe memory, inside a write transaction: read from the log the first time, and
        brought up to it after a commit that failed (it may have landed all the same)."""
        if self._dedupe is None:
            self._dedupe = _load_dedupe_memory(db)
        elif self._dedupe_behind:
            rows = db.execute(
                "SELECT id, fingerprint, seen_at FROM seen WHERE id > ? ORDER BY id",
                (self._dedupe.last_id,),
            )
            _remember(self._dedupe, rows)
        self._dedupe_behind = False
        return self._dedupe

    def _dedupe_failed(self, loaded: bool) -> None:
        """After a transaction that used the dedupe memory failed."""
        if loaded:
            # Read from the log again: the earlier version's fingerprints this transaction
            # moved into it went back with the rollback.
            self._dedupe = None
        else:
            # Only the rows after the last one known are read again, if the commit landed: a
            # full read of 100,000 rows per failed commit made a full disk slower still.
            self._dedupe_behind = True

    def _warn_if_window_cut(self, memory: DedupeMemory, dedupe_window: float) -> None:
        dropped = memory.dropped_at
        if dropped is None or self._window_cut_warned or not memory.full:
            return
        newest = memory.newest_seen_at
        # A difference below zero is a clock set back, not a flood.
        if newest is not None and 0 <= newest - dropped < dedupe_window:
            self._window_cut_warned = True
            log.warning(
                "Dedupe memory is full; the window is shorter until the flood of posts ends.",
                remembered=len(memory),
                window_secs=dedupe_window,
                covered_secs=round(newest - dropped, 3),
            )

    def check_writable(self, size: int) -> None:
        """Commit `size` bytes and remove them again; raises what a post of that size would.

        A transaction that writes nothing commits even on a full disk, so only a real write
        tells whether the store can take posts again.
        """
        with self._transaction() as db:
            db.execute("INSERT INTO probe (body) VALUES (zeroblob(?))", (size,))
            db.execute("DELETE FROM probe")

    def keep_seqs_above(self, floor: int) -> None:
        """Hand out no seq up to `floor` from now on, whatever the events table holds.

        After a damaged store was salvaged into a new file, the seqs of events lost with the
        damage would otherwise come back, and a send still in flight would ack a new event
        under an old event's number without having sent it.
        """
        with self._transaction() as db:
            (high,) = db.execute(_HIGHEST_SEQ).fetchone()
            if high >= floor:
                return
            raised = db.execute(
                "UPDATE sqlite_sequence SET seq = ? WHERE name = 'events'", (floor,)
            ).rowcount
            if not raised:
                db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('events', ?)", (floor,))

    def forget_outside(self, now: float, dedupe_window: float) -> None:
        """Drop dedupe memory that is not within `dedupe_window` of `now`, on either side.

        Ahead of `now` means the wall clock was set back since: kept, such a fingerprint would
        match again when the clock reads its time once more, a jump's length later.
        """
        loaded = self._dedupe is None
        rewritten: int | None = None
        try:
            with self._transaction() as db:
                memory = self._dedupe_memory(db)
                if memory.forget_outside(now, dedupe_window):
                    # Out of order since a clock step, the log is written again from the memory,
                    # which is exact: deleting by time alone would leave the earlier entries of
                    # fingerprints stored again since, and the next open would take them back.
                    db.execute("DELETE FROM seen")
                    rewritten = _log(db, memory.entries()) or 0
                else:
                    # From the old end of the log: up to the first fingerprint within the window,
                    # and every one older than the newest `limit`, which an open would not read.
                    # (The first search reads only the rows it then deletes.)
                    db.execute(
                        "DELETE FROM seen WHERE id < MAX("
                        " COALESCE((SELECT id FROM seen WHERE seen_at BETWEEN ? AND ? ORDER BY id"
                        " LIMIT 1), (SELECT COALESCE(MAX(id), 0) + 1 FROM seen)),"
                        " (SELECT COALESCE(MAX(id), 0) FROM seen) - ? + 1)",
                        (now - dedupe_window, now + dedupe_window, memory.limit),
                    )
        except BaseException:
            self._dedupe_failed(loaded)
            raise
        if rewritten is not None:
            memory.last_id = rewritten

    # Delivery

    def fetch(
        self, output: str, limit: int, max_bytes: int, exclude: Collection[int] = ()
    ) -> list[StoredEvent]:
        """The oldest events queued for `output`, leaving out the seqs in `exclude` (a send in
        flight): at most `limit` and about `max_bytes`."""
        rows = self._db.execute(
            "SELECT e.seq, e.event_id, e.fingerprint, e.kind, e.received_at, d.attempts, e.body"
            " FROM deliveries d JOIN events e ON e.seq = d.seq"
            " WHERE d.output = ? AND d.seq NOT IN (SELECT value FROM json_each(?))"
            " ORDER BY d.seq LIMIT ?",
            (output, _json_list(list(exclude)), limit),
        ).fetchall()
        batch: list[StoredEvent] = []
        total = 0
        for row in rows:
            total += len(row[6])
            if batch and total > max_bytes:
                break
            batch.append(StoredEvent._make(row))
        return batch

    def ack(self, output: str, seqs: Sequence[int]) -> tuple[int, int]:
        """Mark delivered; returns the (events, bytes) that left the store with it."""
        if not seqs:
            return 0, 0
        with self._transaction() as db:
            return self._drop_deliveries(db, output, seqs)

    def retry_later(self, output: str, seqs: Sequence[int]) -> None:
        if not seqs:
            return
        with self._transaction() as db:
            db.executemany(
                "UPDATE deliveries SET attempts = attempts + 1 WHERE output = ? AND seq = ?",
                [(output, seq) for seq in seqs],
            )

    def dead_letter(self, output: str, reasons: dict[int, str], now: float) -> tuple[int, int]:
        """Move deliveries to dead letters with their reasons, keeping a copy of each body."""
        if not reasons:
            return 0, 0
        with self._transaction() as db:
            db.executemany(
                "INSERT INTO dead_letters (output, event_id, fingerprint, kind, received_at,"
                " dead_at, attempts, reason, body)"
                " SELECT d.output, e.event_id, e.fingerprint, e.kind, e.received_at, ?,"
                " d.attempts, ?, e.body FROM deliveries d JOIN events e ON e.seq = d.seq"
                " WHERE d.output = ? AND d.seq = ?",
                [(now, reason, output, seq) for seq, reason in reasons.items()],
            )
            return self._drop_deliveries(db, output, list(reasons))

    def _drop_deliveries(
        self, db: sqlite3.Connection, output: str, seqs: Sequence[int]
    ) -> tuple[int, int]:
        listed = _json_list(seqs)
        db.execute(
            "DELETE FROM deliveries WHERE output = ? AND seq IN (SELECT value FROM json_each(?))",
            (output, listed),
        )
        # An event row goes once no output waits for it any more.
        orphans = (
            " FROM events WHERE seq IN (SELECT value FROM json_each(?))"
            " AND NOT EXISTS (SELECT 1 FROM deliveries WHERE deliveries.seq = events.seq)"
        )
        events, size, high = db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0), ({_HIGHEST_SEQ})" + orphans, (listed,)
        ).fetchone()
        # Before the delete, so a replayed event that leaves right here is counted in, then out.
        self._note_added_elsewhere(db, high)
        if events:
            db.execute("DELETE" + orphans, (listed,))
        return int(events), int(size)

    def expired(
        self, cutoff: float, *, stamped_through: int | None = None, waited_through: int = 0
    ) -> dict[str, list[int]]:
        """Deliveries of old events, by output: those received before `cutoff` (of them, with
        `stamped_through`, only those with a seq up to it) and those with a seq up to
        `waited_through`."""
        found: dict[str, list[int]] = {}
        for output, seq in self._db.execute(
            "SELECT d.output, d.seq FROM deliveries d JOIN events e ON e.seq = d.seq"
            " WHERE e.seq <= ? OR (e.received_at < ? AND (? IS NULL OR e.seq <= ?))"
            " ORDER BY d.seq",
            (waited_through, cutoff, stamped_through, stamped_through),
        ):
            found.setdefault(output, []).append(seq)
        return found

    def highest_seq(self) -> int:
        """The highest seq handed out so far, by this connection or another."""
        (high,) = self._db.execute(_HIGHEST_SEQ).fetchone()
        return int(high)

    def oldest_waiting(self, stamped_through: int) -> tuple[float | None, int | None]:
        """The earliest receipt stamp among the events with a seq up to `stamped_through`, and
        the lowest seq above it: the oldest events by the two measures `Outbox.expired` uses."""
        stamped, first = self._db.execute(
            "SELECT (SELECT MIN(received_at) FROM events WHERE seq <= ?),"
            " (SELECT MIN(seq) FROM events WHERE seq > ?)",
            (stamped_through, stamped_through),
        ).fetchone()
        return stamped, first

    def outputs_with_deliveries(self) -> list[str]:
        return [row[0] for row in self._db.execute("SELECT DISTINCT output FROM deliveries")]

    # Totals for a caller that keeps them in memory

    def totals(self) -> tuple[int, int]:
        """The (events, bytes) the store holds, from a scan of every event row.

        From then on, events that other connections insert are noted on the way by every
        append, ack and dead letter (their seqs lie above any this connection counted) and
        reported by `added_elsewhere`, so the caller's totals stay exact without a rescan.
        """
        count, size, high = self._db.execute(
            f"SELECT COUNT(*), COALESCE(SUM(size), 0), ({_HIGHEST_SEQ}) FROM events"  # noqa: S608
        ).fetchone()
        self._counted_through, self._added_elsewhere = int(high), (0, 0)
        return int(count), int(size)

    def added_elsewhere(self, *, look: bool = False) -> tuple[int, int]:
        """The (events, bytes) other connections inserted that no earlier call reported.

        Without `look`, only what this connection's own writes noticed, at no cost; with it,
        one statement also checks the store now (for an idle daemon).
        """
        if look and self._counted_through is not None:
            (high,) = self._db.execute(_HIGHEST_SEQ).fetchone()
            self._note_added_elsewhere(self._db, high)
        added, self._added_elsewhere = self._added_elsewhere, (0, 0)
        return added

    def _note_added_elsewhere(self, db: sqlite3.Connection, high: int) -> None:
        through = self._counted_through
        if through is None or high <= through:
            return
        count, size = db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM events WHERE seq > ? AND seq <= ?",
            (through, high),
        ).fetchone()
        events, size_so_far = self._added_elsewhere
        self._added_elsewhere = (events + count, size_so_far + size)
        self._counted_through = high

    # Inspection and dead letters

    def integrity_problems(self, limit: int) -> list[str]:
        """What PRAGMA integrity_check finds, one line each and at most `limit`; [] when sound.

        Every open runs the same check; this one finds what has gone wrong since. It reads
        every page, in one read transaction: in WAL mode that is a consistent snapshot, whatever
        another connection commits meanwhile.
        """
        return _integrity_findings(self._db, limit)

    def stats(self) -> StoreStats:
        count, size, oldest = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(received_at) FROM events"
        ).fetchone()
        queued = dict(
            self._db.execute("SELECT output, COUNT(*) FROM deliveries GROUP BY output").fetchall()
        )
        dead = dict(
            self._db.execute("SELECT output, COUNT(*) FROM dead_letters GROUP BY output").fetchall()
        )
        (quarantined,) = self._db.execute("SELECT COUNT(*) FROM quarantine").fetchone()
        return StoreStats(count, size, oldest, queued, dead, quarantined)

    def dead_letters(self, output: str | None = None, limit: int = 100) -> list[DeadLetter]:
        rows = self._db.execute(
            "SELECT id, output, event_id, kind, received_at, dead_at, attempts, reason,"
            " length(body) FROM dead_letters WHERE (? IS NULL OR output = ?) ORDER BY id LIMIT ?",
            (output, output, limit),
        ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def dead_letter_body(self, letter_id: int) -> bytes | None:
        row = self._db.execute(
            "SELECT body FROM dead_letters WHERE id = ?", (letter_id,)
        ).fetchone()
        return None if row is None else bytes(row[0])

    def replay(
        self, ids: Iterable[int] | None, output: str | None, *, max_bytes: int | None = None
    ) -> int:
        """Queue dead letters again for the output that dead-lettered them; returns how many.

        The selection is made inside the write transaction: a dead letter another command
        replayed or purged meanwhile is neither queued twice nor counted. With `max_bytes`,
        raises `ReplayOverBound` and queues nothing when the events queued and the selection
        together would exceed it; decided in the same transaction, so no post slips between.
        """
        with self._transaction() as db:
            selected = self._select_dead(db, ids, output)
            if max_bytes is not None:
                _check_replay_fits(db, selected, max_bytes)
            for letter_id in selected:
                letter_output, event_id, fingerprint, kind, body = db.execute(
                    "SELECT output, event_id, fingerprint, kind, body FROM dead_letters"
                    " WHERE id = ?",
                    (letter_id,),
                ).fetchone()
                cursor = db.execute(
                    "INSERT INTO events (event_id, fingerprint, kind, received_at, size, body)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (event_id, fingerprint, kind, time.time(), len(body), body),
                )
                db.execute(
                    "INSERT INTO deliveries (output, seq) VALUES (?, ?)",
                    (letter_output, cursor.lastrowid),
                )
                db.execute("DELETE FROM dead_letters WHERE id = ?", (letter_id,))
        return len(selected)

    def purge(self, ids: Iterable[int] | None, output: str | None) -> int:
        """Delete dead letters for good; returns how many this call deleted (see `replay`)."""
        with self._transaction() as db:
            selected = self._select_dead(db, ids, output)
            db.executemany("DELETE FROM dead_letters WHERE id = ?", [(i,) for i in selected])
        return len(selected)

    @staticmethod
    def _select_dead(
        db: sqlite3.Connection, ids: Iterable[int] | None, output: str | None
    ) -> list[int]:
        """The ids of the dead letters in `ids` (None: all) of `output` (None: any), in order;
        inside a write transaction, exactly those the rest of it acts on."""
        rows = db.execute(
            "SELECT id FROM dead_letters WHERE (? IS NULL OR output = ?) ORDER BY id",
            (output, output),
        ).fetchall()
        known = [row[0] for row in rows]
        if ids is None:
            return known
        wanted = set(ids)
        return [i for i in known if i in wanted]

    # Quarantine

    def quarantine(
        self, body: bytes, reason: str, client: str, now: float, max_count: int, max_bytes: int
    ) -> None:
        """Keep a rejected body, then drop the oldest until the bounds hold again.

        A body larger than the whole quarantine keeps its first `max_bytes`, and the reason
        says so: the refusal is still on record, like every other.
        """
        if max_count == 0:
            return
        if len(body) > max_bytes:
            reason = f"{reason}; kept the first {max_bytes} of {len(body)} bytes"
            body = body[:max_bytes]
        with self._transaction() as db:
            db.execute(
                "INSERT INTO quarantine (received_at, reason, client, size, body)"
                " VALUES (?, ?, ?, ?, ?)",
                (now, reason, client, len(body), body),
            )
            count, size = db.execute("SELECT COUNT(*), SUM(size) FROM quarantine").fetchone()
            while count > max_count or size > max_bytes:
                oldest = db.execute(
                    "SELECT id, size FROM quarantine ORDER BY id LIMIT 1"
                ).fetchone()
                db.execute("DELETE FROM quarantine WHERE id = ?", (oldest[0],))
                count, size = count - 1, size - oldest[1]

    def quarantined(self, limit: int = 100) -> list[tuple[int, float, str, str, bytes]]:
        return [
            (row[0], row[1], row[2], row[3], bytes(row[4]))
            for row in self._db.execute(
                "SELECT id, received_at, reason, client, body FROM quarantine ORDER BY id LIMIT ?",
                (limit,),
            )
        ]


def _check_replay_fits(db: sqlite3.Connection, letter_ids: Sequence[int], bound: int) -> None:
    """Raise `ReplayOverBound` when queueing these dead letters would take the events table's
    bytes past `bound`: the figure the daemon checks each post against."""
    queued, selected = db.execute(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM events),"
        " (SELECT COALESCE(SUM(length(body)), 0) FROM dead_letters"
        " WHERE id IN (SELECT value FROM json_each(?)))",
        (_json_list(letter_ids),),
    ).fetchone()
    if selected and queued + selected > bound:
        raise ReplayOverBound(queued, selected, bound)


class CommandLock:
    """An advisory lock (flock) on the store's directory that keeps store commands from the
    store while the daemon puts a copy of a deleted store, or a salvage of a damaged one, in
    place. (A command that went on writing to the damaged file once the salvage had copied it
    would see what it wrote undone.)

    Until the daemon has closed its connection to the deleted files, SQLite deletes the WAL and
    shared-memory files at the path by name when that connection closes, and the daemon sets
    aside those still there: a command that opened the copy meanwhile had its journals taken
    from under it, and the daemon's new connection then wrote blind to the command's, which
    lost what the command wrote (a replay undone, its events gone) or failed both with "disk
    I/O error". So a store command holds the lock shared while it has the store open (see
    `Database`), and the daemon holds it exclusively from before the copy until that close.
    """

    def __init__(self, handles: list[int]) -> None:
        self._handles = handles

    def release(self) -> None:
        handles, self._handles = self._handles, []
        for handle in handles:
            # Unlocked, not only closed: a flock goes with the last handle on the directory, and
            # the daemon locks through a duplicate of the one its connection keeps open, which
            # a copy that failed (a full disk, a store restored meanwhile) leaves in use.
            fcntl.flock(handle, fcntl.LOCK_UN)
            os.close(handle)


def lock_out_commands(directory: Path, then: str, *, held: int | None = None) -> CommandLock:
    """Take the `CommandLock` of the store in `directory` exclusively, without waiting; and
    that of `held` too, a handle on the directory a connection opened the store in, if that is
    no longer the one at the path.

    Raises BlockingIOError, saying that `then` happens once it is done, while a store command
    has the store open.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    handles = [] if held is None else [os.dup(held)]
    try:
        now = _open_directory(directory)
        if handles and _same_file(handles[0], now):
            os.close(now)
        else:
            handles.append(now)
        for handle in handles:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BlockingIOError(
                    errno.EWOULDBLOCK,
                    "a store command (store stats, store check, dead-letters) has the store "
                    f"open; {then} once it is done",
                ) from None
    except BaseException:
        CommandLock(handles).release()
        raise
    return CommandLock(handles)


def _integrity_findings(db: sqlite3.Connection, limit: int, *, quick: bool = False) -> list[str]:
    """What PRAGMA integrity_check (or quick_check) finds, one line each and at most `limit`;
    [] when sound."""
    pragma = "quick_check" if quick else "integrity_check"
    rows = db.execute(f"PRAGMA {pragma}({int(limit)})").fetchall()
    # SQLite joins the findings of one b-tree walk into one row, under a heading that names
    # the schema ("*** in database main ***"): one line per finding is what can be counted.
    lines = [
        line
        for (found,) in rows
        for line in str(found).splitlines()
        if not line.startswith("*** in database ")
    ]
    return [] if lines == ["ok"] else lines[:limit]


def _open_directory(directory: Path) -> int:
    return os.open(directory, os.O_RDONLY | os.O_DIRECTORY)


def _same_file(one: int, other: int) -> bool:
    return os.path.samestat(os.fstat(one), os.fstat(other))


def _lock_shared(directory: Path) -> int:
    """A handle on `directory` that holds the store's `CommandLock` shared.

    Waits, up to COMMAND_LOCK_WAIT_SECS, while the daemon holds it; raises TimeoutError then.
    """
    deadline = time.monotonic() + COMMAND_LOCK_WAIT_SECS
    while True:
        handle = _open_directory(directory)
        try:
            fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            # Still the directory at the path? If it was deleted meanwhile, a daemon copying its
            # store back locks the one there now: lock that one instead.
            now = _open_directory(directory)
            try:
                if _same_file(handle, now):
                    return handle
            finally:
                os.close(now)
        except BlockingIOError:
            pass
        except BaseException:
            os.close(handle)
            raise
        os.close(handle)
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"the daemon has been putting a new store file in {directory} in place for over "
                f"{COMMAND_LOCK_WAIT_SECS:g} s: a copy of the store (its files were deleted while "
                "it ran) or a salvage (the store was damaged); try again once it has logged "
                "'Store files were deleted while the daemon ran' or 'Store was corrupt'"
            )
        time.sleep(_COMMAND_LOCK_POLL_SECS)


class Checkpointer:
    """Copies the WAL back into the database from a connection of its own.

    A checkpoint copies and fsyncs megabytes; done by the committing connection (SQLite's
    default), every commit behind it waits. A PASSIVE checkpoint from here never blocks a
    writer. Only when the log in the WAL has grown past `max_wal_bytes` (writers never left it
    a gap) does it also try RESTART, which has the next commit write the WAL from its start
    again; that one holds writers back while it waits for readers, so it gives up after
    TRUNCATE_WAIT_MS.

    RESTART, not TRUNCATE: cutting a WAL of 64 MiB back to nothing held the commit behind it
    30-35 ms under the ingest benchmark's load, every few seconds (docs/benchmarks.md,
    "Twelfth pass"). The file keeps its size and is written over; the writers' connections cut
    it back to WAL_FILE_LIMIT_BYTES should a reader have let it grow past that, and a clean
    stop cuts it to nothing.
    """

    def __init__(self, path: Path, *, sync: str = "full", max_wal_bytes: int = MAX_WAL_BYTES):
        self.path = path
        self.max_wal_bytes = max_wal_bytes
        # mode=rw: a store deleted meanwhile is not created again, empty, by the checkpointer.
        self._db = sqlite3.connect(
            path.absolute().as_uri() + "?mode=rw",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
        )
        self._db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
        self._db.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
        (page_size,) = self._db.execute("PRAGMA page_size").fetchone()
        self._frame_bytes = int(page_size) + _WAL_FRAME_HEADER_BYTES
        # The log the last reset left, by name and length: until a commit changes either, the
        # next commit starts the log again by itself, and another reset would only block.
        self._reset_log: tuple[bytes | None, int] | None = None
        self._answer: int | None = None

    def checkpoint(self) -> int | None:
        """Checkpoint; returns the size of the log in the WAL if it is past `max_wal_bytes` and
        could not be restarted (a reader holds a snapshot that still needs it), else None."""
        if not _wal(self.path).exists():
            return None
        # First what can be copied without holding anyone back, so that RESTART, if it runs,
        # has little left to copy while writers wait for it. The frames it reports are the log
        # since the last restart: the file itself no longer shrinks, so its size says nothing.
        (_, frames, _) = self._db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        if frames < 0:
            # Another connection is checkpointing (a store command closing): nothing was learnt
            # of the log this time, so the last answer stands.
            return self._answer
        self._answer = self._reset_if_past_bound(int(frames))
        return self._answer

    def _reset_if_past_bound(self, frames: int) -> int | None:
        log_bytes = frames * self._frame_bytes
        if log_bytes <= self.max_wal_bytes or self._reset_log == (self._log_name(), frames):
            return None
        (busy, left, _) = self._db.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        if busy:
            return log_bytes
        self._reset_log = (self._log_name(), int(left))
        return None

    def _log_name(self) -> bytes | None:
        try:
            with open(_wal(self.path), "rb") as wal:
                header = wal.read(_WAL_LOG_NAME.stop)
        except FileNotFoundError:
            return None
        return header[_WAL_LOG_NAME] if len(header) == _WAL_LOG_NAME.stop else None

    def close(self) -> None:
        self._db.close()


def _open_to_salvage(path: Path, table: str) -> sqlite3.Connection | None:
    """A read-only connection to a broken outbox, or None if `table` cannot be read from it.

    A table that is missing or has another layout (a foreign schema) gives nothing; one whose
    layout cannot be read for damage is still tried, row by row.
    """
    try:
        source = sqlite3.connect(path.absolute().as_uri() + "?mode=ro", uri=True)
    except sqlite3.Error:
        return None
    try:
        found = _tables(source).get(table)
    except sqlite3.Error:
        return source
    if found == _EXPECTED_TABLES[table]:
        return source
    source.close()
    return None


def _readable_rows(path: Path, table: str, columns: str) -> list[tuple[object, ...]]:
    rows: list[tuple[object, ...]] = []
    source = _open_to_salvage(path, table)
    if source is None:
        return rows
    try:
        for row in source.execute(f"SELECT {columns} FROM {table}"):  # noqa: S608
            rows.append(tuple(row))
    except sqlite3.Error:
        pass  # keep what was read before the damage
    finally:
        source.close()
    return rows


_EVENT_COLUMNS = "seq, event_id, fingerprint, kind, received_at, size, body"
# What a salvage copies besides the queue (see `Database.salvage`), with its ids.
_KEPT_FOR_AN_OPERATOR = {
    "dead_letters": "id, output, event_id, fingerprint, kind, received_at, dead_at, attempts,"
    " reason, body",
    "quarantine": "id, received_at, reason, client, size, body",
}


def _readable_events(path: Path) -> list[tuple[object, ...]]:
    """Every events row SQLite can still read, stepping over damaged pages by `seq`.

    A plain scan stops at the first damaged page and would drop every event after it; here the
    scan resumes just past the damage, so only the rows on the damaged pages are lost.
    """
    rows: list[tuple[object, ...]] = []
    source = _open_to_salvage(path, "events")
    if source is None:
        return rows
    scan = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq >= ? ORDER BY seq"  # noqa: S608
    start: int | None = 0
    try:
        while start is not None:
            try:
                for row in source.execute(scan, (start,)):
                    rows.append(tuple(row))
                    start = int(row[0]) + 1
                break
            except sqlite3.Error:
                start = _step_over_damage(source, start, rows)
    finally:
        source.close()
    return rows


def _step_over_damage(
    source: sqlite3.Connection, start: int, rows: list[tuple[object, ...]]
) -> int | None:
    """Read rows one by one up to the damage, then find where reading can resume.

    (A scan reads one row ahead, so the row before the damage is read again here.) Returns
    the smallest `seq` past the damage from which a row reads again, or None at the end.
    """
    one = f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq >= ? ORDER BY seq LIMIT 1"  # noqa: S608

    def first(at: int) -> list[tuple[object, ...]] | None:
        try:
            return [tuple(row) for row in source.execute(one, (at,))]
        except sqlite3.Error:
            return None

    while (found := first(start)) is not None:
        if not found:
            return None
        rows.append(found[0])
        start = cast(int, found[0][0]) + 1
    step = 1
    while first(start + step) is None:
        step *= 2
        if step > 1 << 62:
            return None
    low, high = start + step // 2, start + step  # first(high) reads; first(low) fails
    while high - low > 1:
        middle = (low + high) // 2
        if first(middle) is None:
            low = middle
        else:
            high = middle
    return high


# A table's layout: each column's name and its declaration (type, NOT NULL, PRIMARY KEY).
_Layout = dict[str, str]


def _tables(db: sqlite3.Connection) -> dict[str, _Layout]:
    """The layout of every table in `db` but SQLite's own."""
    tables: dict[str, _Layout] = {}
    for table, column, declared, not_null, key in db.execute(
        'SELECT t.name, c.name, upper(c.type), c."notnull", c.pk'
        " FROM sqlite_master t, pragma_table_info(t.name) c"
        " WHERE t.type = 'table' AND t.name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
    ):
        words = [declared, "NOT NULL" if not_null else "", "PRIMARY KEY" if key else ""]
        tables.setdefault(table, {})[column] = " ".join(word for word in words if word)
    return tables


def _expected_tables() -> dict[str, _Layout]:
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        db.executescript(_SCHEMA)
        return _tables(db)


# Read from the schema itself, so it cannot drift from what `_SCHEMA` creates.
_EXPECTED_TABLES = _expected_tables()


# Tables a store made by an earlier version lacks; opening it creates them.
_ADDED_LATER = frozenset({"seen"})


def _schema_problems(tables: dict[str, _Layout]) -> list[str]:
    """How `tables` differ from what this version creates; tables it does not know are fine."""
    missing = [t for t in _EXPECTED_TABLES if t not in tables and t not in _ADDED_LATER]
    problems = [f"missing tables {', '.join(missing)}"] if missing else []
    for table, expected in _EXPECTED_TABLES.items():
        found = tables.get(table)
        if found is None or found == expected:
            continue
        if absent := [column for column in expected if column not in found]:
            problems.append(f"table {table} lacks columns {', '.join(absent)}")
        if extra := [column for column in found if column not in expected]:
            problems.append(f"table {table} has unknown columns {', '.join(extra)}")
        problems += [
            f"column {table}.{column} is {found[column] or 'untyped'}, expected {declared}"
            for column, declared in expected.items()
            if column in found and found[column] != declared
        ]
    return problems


def _wal(database: Path) -> Path:
    return Path(f"{database}-wal")


def _shm(database: Path) -> Path:
    return Path(f"{database}-shm")


def _journal_files(database: Path) -> list[Path]:
    """The WAL and shared-memory files beside `database` that exist."""
    return [p for p in (_wal(database), _shm(database)) if p.exists()]


def _sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable."""
    handle = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


def _looks_corrupt(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "malformed" in text or "not a database" in text or "corrupt" in text


def move_aside(path: Path, now: float) -> Path:
    """Rename a broken database (and its WAL files) out of the way; returns the new name."""
    target = _aside_name(path, now)
    _move_store_files(path, target)
    return target


_STORE_FILES = ("", "-wal", "-shm")


def _aside_name(path: Path, now: float) -> Path:
    """A name to move the broken database at `path` to that nothing has yet."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
    target = path.with_name(f"{path.name}.corrupt-{stamp}")
    # A second move within the same second must not replace the first: rename would, silently.
    extra = 1
    while _salvaged_name(path, target).exists() or any(
        Path(f"{target}{suffix}").exists() for suffix in _STORE_FILES
    ):
        extra += 1
        target = path.with_name(f"{path.name}.corrupt-{stamp}-{extra}")
    return target


def _salvaged_name(path: Path, aside: Path) -> Path:
    """Where a complete salvage waits to take the place of the database at `path`, named after
    `aside`, where the broken files go: a kill in between leaves that name to the next open."""
    return path.with_name(aside.name.replace(".corrupt-", ".salvaged-", 1))


def _move_store_files(path: Path, target: Path) -> None:
    for suffix in _STORE_FILES:
        source, moved = Path(f"{path}{suffix}"), Path(f"{target}{suffix}")
        if source.exists():
            if moved.exists():  # rename would replace it without a word
                raise FileExistsError(errno.EEXIST, "will not replace a moved file", str(moved))
            source.rename(moved)


def _swap_in(path: Path, salvaged: Path, aside: Path) -> None:
    """Move the store files at `path` to `aside` and the database in `salvaged` to `path`."""
    # The journals go too: left at the path, SQLite would read them as the new file's.
    _move_store_files(path, aside)
    os.replace(salvaged / DB_NAME, path)
    _sync_directory(path.parent)
    shutil.rmtree(salvaged, ignore_errors=True)


@dataclass(frozen=True, slots=True)
class CutShortSalvage:
    """What a salvage the daemon was killed during had left, and what the next open did."""

    directory: Path
    # Where the damaged store files went, when the salvage took their place; None when it was
    # incomplete and removed (made again from the damaged file, if that is at the path).
    moved_to: Path | None
    # The events queued from it into the store at the path that lacked them: a complete one an
    # earlier version left there when a store was made at the path after it.
    taken_in: int = 0


def finish_cut_short_salvages(
    path: Path, now: float, *, commands_locked: bool = False
) -> list[CutShortSalvage]:
    """Complete or remove the salvages of the store at `path` that a kill cut short.

    A salvage is built in `<name>.salvage-*` and renamed `<name>.salvaged-*` once complete,
    just before the damaged files are moved aside and it takes their place. A kill in between
    left the path without a database and the salvage beside it, holding the only deliverable
    copy of the events: the next open made an empty store at the path, and the next salvage
    deleted the one left. So a complete one takes its place now, after whatever damaged files
    are still at the path (some, all or none of them) are moved aside to the name it gives. An
    incomplete one is removed: the damaged file it was made from is still at the path, and is
    salvaged again. One with no database left at the path (an older version moved the damaged
    file aside before renaming anything, or an operator removed it) takes its place too. One
    beside a store that passes its check is an older version's too, complete: that version's
    next start made the store at the path, and the events it holds that the store lacks are
    queued there before it is removed.

    With any to finish, takes the store's `CommandLock` (unless the caller holds it,
    `commands_locked`), as a salvage does: raises BlockingIOError while a command has the store
    open, having done nothing.
    """
    found: list[CutShortSalvage] = []
    complete = sorted(path.parent.glob(f"{path.name}.salvaged-*"))
    left = complete + sorted(path.parent.glob(f"{path.name}.salvage-*"))
    if not left:
        return found
    commands_out = (
        None if commands_locked else lock_out_commands(path.parent, "a salvage is completed")
    )
    try:
        for directory in left:
            found.append(_finish_cut_short(path, directory, directory in complete, now))
    finally:
        if commands_out is not None:
            commands_out.release()
    return found


def _finish_cut_short(path: Path, directory: Path, complete: bool, now: float) -> CutShortSalvage:
    staged = directory / DB_NAME
    moved_to: Path | None = None
    taken_in = 0
    if complete:
        moved_to = path.with_name(directory.name.replace(".salvaged-", ".corrupt-", 1))
        if staged.exists():
            _swap_in(path, directory, moved_to)
    elif staged.exists() and _folded(staged):
        if path.exists():
            taken_in = _take_in_beside(path, staged)
        else:
            moved_to = _aside_name(path, now)
            _swap_in(path, directory, moved_to)
    shutil.rmtree(directory, ignore_errors=True)
    return CutShortSalvage(directory, moved_to, taken_in)


def _take_in_beside(path: Path, staged: Path) -> int:
    """Queue in the store at `path` what the salvage `staged` holds that it lacks; nothing if
    that store fails its check (the damaged file the salvage was made from)."""
    try:
        store = Database(path.parent)
    except StoreCorrupt:
        return 0
    try:
        return store.take_in(staged)
    finally:
        store.close()


def _folded(database: Path) -> bool:
    """Whether `database` has no WAL beside it, once what that holds is copied into it as
    closing does; False if SQLite cannot do that (not a database: nothing to keep)."""
    if _wal(database).exists():
        try:
            with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as folding:
                folding.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            return False
    return not _wal(database).exists()


def replace_with_salvage(
    path: Path, outputs: Sequence[str], *, sync: str, now: float
) -> tuple[Path, int, int]:
    """Salvage the broken outbox at `path` into a new file and put that in its place.

    Returns where the broken file was moved and the events and deliveries salvaged. The new
    file is built beside the broken one and takes its place only once complete: a salvage that
    fails (a full disk, which the broken file's own size makes likely) or is cut short (the
    daemon killed) leaves the broken file at the path for the next open to salvage again. Made
    the other way round, the next open found an empty store there and the events left in the
    moved file were never delivered. A kill once it is complete leaves it for
    `finish_cut_short_salvages`, which the caller runs before every open.
    """
    # A command with the broken file open (a replay, a purge) would go on writing to it once
    # moved aside, after the salvage had copied it: what it did would be undone unseen.
    commands_out = lock_out_commands(path.parent, "the store is salvaged")
    try:
        # One left by a salvage cut short is of this same broken file, and incomplete.
        finish_cut_short_salvages(path, now, commands_locked=True)
        staging = path.with_name(f"{path.name}.salvage-{time.time_ns()}")
        try:
            fresh = Database(staging, sync=sync)
            try:
                events, deliveries = fresh.salvage(path, outputs)
            finally:
                fresh.close()
            # Only the file moves into place: what its WAL still holds would stay behind.
            if _wal(fresh.path).exists():
                raise OSError(errno.EIO, "could not fold the salvaged store's WAL", str(fresh.path))
            moved = _aside_name(path, now)
            salvaged = _salvaged_name(path, moved)
            # Complete: from here on a kill leaves it to the next open to put in place.
            staging.rename(salvaged)
            _sync_directory(path.parent)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        _swap_in(path, salvaged, moved)
    finally:
        commands_out.release()
    return moved, events, deliveries
