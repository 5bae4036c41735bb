"""The store interface, specified once and run against both backends (SQLite and PostgreSQL).

Each test opens its stores through open_store(config), as the node does; `second()` opens another
store on the same database, standing for another request's connection or another node.
"""

from __future__ import annotations

import asyncio
import sqlite3
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import asyncpg
import pytest

from control_api.config import Config, ConfigError, load_config
from control_api.storage import DB_FILENAME, AsyncStore, MeetingRow, StoreConflict, StoreUnavailable, open_store
from control_api.storage.migrations import MIGRATIONS, migrate
from control_api.storage.postgres import PostgresStore
from tests.servers import PostgresServer

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class Backend:
    """One fresh database of one backend; open() gives a new store (a new connection) on it."""

    def __init__(self, name: str, config: Config) -> None:
        self.name = name
        self.config = config
        self._opened: list[AsyncStore] = []

    async def open(self) -> AsyncStore:
        store = await open_store(self.config)
        self._opened.append(store)
        return store

    async def close(self) -> None:
        for store in self._opened:
            await store.close()


async def fresh_database(server: PostgresServer) -> str:
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(server.url())
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return server.url(name)


def config_for(tmp_path: Path, database_url: str = "") -> Config:
    return Config().with_overrides({"storage": {"data_dir": str(tmp_path), "database_url": database_url}})


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    url = ""
    if request.param == "postgres":
        url = await fresh_database(request.getfixturevalue("postgres_server"))
    handle = Backend(request.param, config_for(tmp_path, url))
    try:
        yield handle
    finally:
        await handle.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncStore:
    return await backend.open()


def meeting(room_id: str | None = None, *, created_at: datetime = T0, **kw: object) -> MeetingRow:
    fields = {
        "id": str(uuid.uuid4()),
        "room_id": room_id or str(uuid.uuid4()),
        "name": "weekly",
        "meeting_type": "permanent",
        "expiration": None,
        "created_at": created_at,
    }
    fields.update(kw)
    return MeetingRow(**fields)  # type: ignore[arg-type]


def test_both_backends_implement_every_operation_of_the_sqlite_sql() -> None:
    import inspect

    from control_api.storage.sqlite import SqliteDb, SqliteStore

    def operations(cls: type) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(fn)
            for name, fn in inspect.getmembers(cls, inspect.isfunction)
            if not name.startswith("_")
        }

    wanted = operations(AsyncStore)  # type: ignore[type-abstract]
    assert set(wanted) == set(operations(SqliteDb))
    for backend in (SqliteStore, PostgresStore):
        got = operations(backend)
        for name, signature in wanted.items():
            assert inspect.iscoroutinefunction(getattr(backend, name)), (backend.__name__, name)
            assert got[name] == signature, (backend.__name__, name)


# --- rooms and memberships ------------------------------------------------------------------


async def test_a_membership_creates_its_room_and_keeps_the_higher_role(store: AsyncStore) -> None:
    await store.add_member("r1", "alice", "owner")
    await store.add_member("r1", "bob", "member")
    await store.add_member("r1", "alice", "member")  # no downgrade
    await store.add_member("r1", "bob", "owner")  # upgrade
    await store.add_member("r2", "bob", "member")
    assert await store.member_role("r1", "alice") == "owner"
    assert await store.member_role("r1", "bob") == "owner"
    assert await store.member_role("r1", "carol") is None
    assert await store.members_of_room("r1") == {"alice": "owner", "bob": "owner"}
    assert await store.rooms_of_user("bob") == {"r1": "owner", "r2": "member"}
    assert await store.rooms_of_user("nobody") == {}
    assert await store.members_of_room("nowhere") == {}


async def test_creating_a_room_twice_is_harmless(store: AsyncStore) -> None:
    await store.create_room("r1", T0)
    await store.create_room("r1", T0 + timedelta(hours=1))
    await store.add_member("r1", "alice", "member")
    assert await store.members_of_room("r1") == {"alice": "member"}


# --- meetings ---------------------------------------------------------------------------------


async def test_a_meeting_reads_back_as_written(store: AsyncStore) -> None:
    row = meeting(
        "room-a",
        name="Ünïcode ☃",
        meeting_type="scheduled",
        expiration=datetime(2026, 3, 2, 9, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
    )
    await store.insert_meeting(row)
    got = await store.get_meeting(row.id)
    assert got == row  # aware datetimes compare as instants, whatever offset a backend returns
    assert got is not None and got.expiration is not None and got.expiration.utcoffset() is not None
    assert await store.meeting_of_room("room-a") == row
    assert await store.get_meeting("missing") is None
    assert await store.meeting_of_room("missing") is None


async def test_one_meeting_per_room_and_per_id(store: AsyncStore) -> None:
    first = meeting("room-a")
    await store.insert_meeting(first)
    with pytest.raises(StoreConflict):
        await store.insert_meeting(meeting("room-a"))
    with pytest.raises(StoreConflict):
        await store.insert_meeting(meeting("room-b", id=first.id))
    assert await store.meeting_of_room("room-b") is None
    assert await store.get_meeting(first.id) == first


async def test_a_new_meeting_and_its_owner_are_one_transaction(store: AsyncStore) -> None:
    first = meeting()
    await store.insert_meeting(first, owner="olga")
    assert await store.members_of_room(first.room_id) == {"olga": "owner"}
    # A room that has its meeting already: refused, and no membership slips in.
    with pytest.raises(StoreConflict):
        await store.insert_meeting(meeting(first.room_id), owner="mallory")
    assert await store.members_of_room(first.room_id) == {"olga": "owner"}
    await store.add_member("r2", "max", "member")
    await store.insert_meeting(meeting("r2"), owner="max")  # an owner is never less
    assert await store.members_of_room("r2") == {"max": "owner"}


async def test_a_closed_store_is_unavailable_not_a_crash(backend: Backend) -> None:
    """A socket that closes during the node's shutdown may still ask (who is in the room)."""
    store = await backend.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.members_of_room("r1")
    await store.close()  # twice is harmless


async def test_meetings_of_rooms_oldest_first_over_many_rooms(store: AsyncStore) -> None:
    # More room ids than one SQLite statement takes (it is chunked by 500).
    late = meeting("room-0700", created_at=T0 + timedelta(minutes=5), id="b")
    tie_b = meeting("room-0001", created_at=T0, id="m-b")
    tie_a = meeting("room-0900", created_at=T0, id="m-a")
    other = meeting("not-asked")
    for row in (late, tie_b, tie_a, other):
        await store.insert_meeting(row)
    rooms = [f"room-{i:04d}" for i in range(1000)]
    assert await store.meetings_of_rooms(rooms) == [tie_a, tie_b, late]
    assert await store.meetings_of_rooms([]) == []


async def test_expired_meetings_are_scheduled_ones_at_or_past_their_expiration(store: AsyncStore) -> None:
    now = T0 + timedelta(days=1)
    due = meeting(meeting_type="scheduled", expiration=now)
    west = timezone(timedelta(hours=-5))
    past = meeting(meeting_type="scheduled", expiration=(now - timedelta(hours=1)).astimezone(west))
    future = meeting(meeting_type="scheduled", expiration=now + timedelta(microseconds=1))
    undated = meeting(meeting_type="scheduled")
    permanent = meeting()
    for row in (due, past, future, undated, permanent):
        await store.insert_meeting(row)
    got = await store.expired_meetings(now)
    assert sorted(m.id for m in got) == sorted([due.id, past.id])


async def test_deleting_a_meeting_takes_its_queue_and_frees_its_room(store: AsyncStore) -> None:
    row = meeting("room-a")
    await store.insert_meeting(row)
    await store.add_member("room-a", "alice", "owner")
    await store.put_waiting(row.id, "bob", "q1", "WAITING")
    await store.delete_meeting(row.id)
    await store.delete_meeting(row.id)  # twice: nothing to do
    assert await store.get_meeting(row.id) is None
    assert await store.waiting_of_meeting(row.id) == []
    assert await store.count_waiting() == 0
    assert await store.members_of_room("room-a") == {"alice": "owner"}  # memberships stay
    await store.insert_meeting(meeting("room-a"))


# --- waiting queue --------------------------------------------------------------------------


async def test_the_waiting_queue_keeps_arrival_order_and_status(store: AsyncStore) -> None:
    a, b = meeting(), meeting()
    await store.insert_meeting(a)
    await store.insert_meeting(b)
    for user in ("u3", "u1", "u2"):
        await store.put_waiting(a.id, user, f"q-{user}", "WAITING")
    await store.put_waiting(b.id, "u9", "q-u9", "WAITING")
    await store.put_waiting(a.id, "u3", "q-new", "ACCEPTED")  # updated in place, keeps its turn
    assert [w.user_id for w in await store.waiting_of_meeting(a.id)] == ["u3", "u1", "u2"]
    assert [w.user_id for w in await store.waiting_of_meeting(a.id, "WAITING")] == ["u1", "u2"]
    entry = await store.waiting_entry(a.id, "u3")
    assert entry is not None and (entry.meeting_id, entry.queue_id, entry.status) == (a.id, "q-new", "ACCEPTED")
    assert await store.waiting_entry(a.id, "u9") is None
    assert await store.count_waiting() == 3  # u1, u2, u9

    await store.delete_waiting(a.id, "u1")
    assert [w.user_id for w in await store.waiting_of_meeting(a.id)] == ["u3", "u2"]
    await store.clear_waiting(a.id)
    assert await store.waiting_of_meeting(a.id) == []
    assert [w.user_id for w in await store.waiting_of_meeting(b.id)] == ["u9"]
    await store.clear_waiting()
    assert await store.count_waiting() == 0


# --- recordings -----------------------------------------------------------------------------


async def test_a_recording_starts_then_finishes(store: AsyncStore) -> None:
    await store.insert_recording("rec-2", "m1", "alice", T0 + timedelta(minutes=1))
    await store.insert_recording("rec-1", "m1", "bob", T0)
    await store.insert_recording("rec-3", "m2", "carol", T0 + timedelta(minutes=2))
    await store.finish_recording("rec-1", T0 + timedelta(minutes=3), "/rec/a.mkv", 5_000_000_000)
    got = await store.recordings("m1")
    assert [r.id for r in got] == ["rec-1", "rec-2"]
    done, running = got
    assert (done.status, done.stopped_at, done.path, done.size_bytes) == (
        "STOPPED", T0 + timedelta(minutes=3), "/rec/a.mkv", 5_000_000_000,
    )
    assert (running.status, running.starter_id, running.started_at, running.stopped_at) == (
        "STARTED", "alice", T0 + timedelta(minutes=1), None,
    )
    assert [r.id for r in await store.recordings()] == ["rec-1", "rec-2", "rec-3"]
    await store.finish_recording("rec-3", T0 + timedelta(minutes=4), None, None)  # nothing written
    assert (await store.recordings("m2"))[0].status == "STOPPED"


# --- durability and concurrency -------------------------------------------------------------


async def test_every_change_is_committed_before_it_returns(backend: Backend) -> None:
    """Each write, as soon as it is answered, is seen by another connection to the database."""
    writer, reader = await backend.open(), await backend.open()
    row = meeting("room-a")
    await writer.insert_meeting(row)
    assert await reader.get_meeting(row.id) == row
    await writer.add_member("room-b", "alice", "owner")
    assert await reader.member_role("room-b", "alice") == "owner"
    await writer.create_room("room-c", T0)
    await writer.add_member("room-c", "bob", "member")
    assert await reader.rooms_of_user("bob") == {"room-c": "member"}
    await writer.put_waiting(row.id, "carol", "q1", "WAITING")
    assert await reader.count_waiting() == 1
    await writer.delete_waiting(row.id, "carol")
    assert await reader.waiting_entry(row.id, "carol") is None
    await writer.put_waiting(row.id, "dave", "q2", "WAITING")
    await writer.clear_waiting(row.id)
    assert await reader.waiting_of_meeting(row.id) == []
    await writer.put_waiting(row.id, "erin", "q3", "WAITING")
    await writer.clear_waiting()
    assert await reader.count_waiting() == 0
    await writer.insert_recording("rec", row.id, "alice", T0)
    assert [r.status for r in await reader.recordings(row.id)] == ["STARTED"]
    await writer.finish_recording("rec", T0 + timedelta(seconds=1), "/x.mkv", 1)
    assert [r.status for r in await reader.recordings(row.id)] == ["STOPPED"]
    await writer.delete_meeting(row.id)
    assert await reader.get_meeting(row.id) is None


async def test_concurrent_writers_lose_nothing(backend: Backend) -> None:
    """Two connections, each with many writes in flight at once (two nodes under load)."""
    a, b = await backend.open(), await backend.open()
    row = meeting()
    await a.insert_meeting(row)

    async def writes(store: AsyncStore, tag: str) -> None:
        await asyncio.gather(
            *(store.add_member("room", f"{tag}{i}", "member") for i in range(40)),
            *(store.put_waiting(row.id, f"{tag}{i}", f"q{i}", "WAITING") for i in range(40)),
            # Both ask for the same membership, one as owner: the owner role wins whatever the order.
            *(store.add_member("shared", f"u{i}", "owner" if tag == "a" else "member") for i in range(20)),
        )

    await asyncio.gather(writes(a, "a"), writes(b, "b"))
    members = await a.members_of_room("room")
    assert len(members) == 80
    assert await b.count_waiting() == 80
    assert set((await b.members_of_room("shared")).values()) == {"owner"}


async def test_two_nodes_creating_a_meeting_in_one_room_one_wins(backend: Backend) -> None:
    a, b = await backend.open(), await backend.open()
    for round_ in range(10):
        room = f"room-{round_}"
        results = await asyncio.gather(
            a.insert_meeting(meeting(room)), b.insert_meeting(meeting(room)), return_exceptions=True
        )
        assert sorted(type(r).__name__ for r in results) == ["NoneType", "StoreConflict"]


async def test_reopening_keeps_data_and_schema(backend: Backend) -> None:
    first = await backend.open()
    row = meeting("room-a")
    await first.insert_meeting(row)
    await first.close()
    again = await backend.open()
    assert await again.get_meeting(row.id) == row


# --- SQLite: off the event loop -------------------------------------------------------------


async def test_sqlite_waits_for_a_busy_database_without_stopping_the_loop(tmp_path: Path) -> None:
    store = await open_store(config_for(tmp_path))
    blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the store's write must wait
        write = asyncio.ensure_future(store.add_member("room", "alice", "owner"))
        ticks = 0
        for _ in range(20):
            await asyncio.sleep(0.01)
            ticks += 1
        assert not write.done()
        assert ticks == 20  # the loop ran on while the write waited
        blocker.execute("COMMIT")
        await asyncio.wait_for(write, 5)
        assert await store.member_role("room", "alice") == "owner"
    finally:
        blocker.close()
        await store.close()


async def test_sqlite_locked_for_too_long_is_unavailable_then_recovers(tmp_path: Path) -> None:
    from control_api.storage.sqlite import SqliteStore

    store = await SqliteStore.open(tmp_path / DB_FILENAME, busy_timeout=0.2)
    blocker = sqlite3.connect(tmp_path / DB_FILENAME, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.add_member("room", "alice", "owner")
        blocker.execute("ROLLBACK")
        await store.add_member("room", "alice", "owner")
        assert await store.member_role("room", "alice") == "owner"
    finally:
        blocker.close()
        await store.close()


# --- PostgreSQL: schema, reachability -------------------------------------------------------


async def test_postgres_migrations_apply_once_even_to_nodes_starting_together(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    config = config_for(tmp_path, await fresh_database(postgres_server))
    stores = await asyncio.gather(*(open_store(config) for _ in range(4)))
    conn = await asyncpg.connect(config.storage.database_url)
    try:
        versions = [r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations ORDER BY 1")]
        assert versions == [v for v, _ in MIGRATIONS]
        assert await migrate(conn) == []  # a later start has nothing to do
    finally:
        await conn.close()
        for s in stores:
            await s.close()


async def test_postgres_steps_are_applied_in_order_to_an_older_schema(
    postgres_server: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database made by an older release gets only the steps added since."""
    import control_api.storage.migrations as migrations

    url = await fresh_database(postgres_server)
    conn = await asyncpg.connect(url)
    try:
        assert await migrate(conn) == [1]
        monkeypatch.setattr(
            migrations, "MIGRATIONS", (*MIGRATIONS, (2, "ALTER TABLE rooms ADD COLUMN topic TEXT"))
        )
        assert await migrations.migrate(conn) == [2]
        assert await migrations.migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM information_schema.columns WHERE column_name = 'topic'") == 1
    finally:
        await conn.close()


async def test_postgres_pool_is_bounded(postgres_server: PostgresServer) -> None:
    """Many calls at once queue for the pool's connections rather than open one each."""
    url = await fresh_database(postgres_server)
    store = await PostgresStore.open(url, pool_size=4)
    try:
        await asyncio.gather(*(store.add_member("room", f"u{i}", "member") for i in range(60)))
        assert len(await store.members_of_room("room")) == 60
        conn = await asyncpg.connect(url)
        try:
            others = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert 1 <= others <= 4  # the pool keeps its connections open between calls
    finally:
        await store.close()


async def test_postgres_unreachable_at_start_is_a_clear_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(StoreUnavailable, match=f"127.0.0.1:{port}/sfu"):
        await open_store(config_for(tmp_path, f"postgresql://sfu:secret@127.0.0.1:{port}/sfu"))


async def test_postgres_that_never_answers_fails_within_seconds(tmp_path: Path) -> None:
    """A server that accepts TCP but says nothing (hung, or not PostgreSQL): no hang at start."""
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        port = listener.getsockname()[1]
        url = f"postgresql://sfu:secret@127.0.0.1:{port}/sfu"
        with pytest.raises(StoreUnavailable) as info:
            await asyncio.wait_for(PostgresStore.open(url, connect_timeout=0.5), 10)
        assert "secret" not in str(info.value)


@pytest.mark.parametrize("outage", ["stopped", "hung"])
async def test_postgres_outage_fails_calls_within_seconds_and_recovers(
    outage: str, postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """Stopped: connections cut, new ones refused. Hung: the server keeps its sockets open and
    answers nothing (paused, overloaded). Either way no call hangs, and none of ours restarts."""
    store = await PostgresStore.open(await fresh_database(postgres_server), call_timeout=1.0)
    if outage == "stopped":
        down, up = postgres_server.stop, postgres_server.start
    else:
        down, up = postgres_server.pause, postgres_server.resume
    try:
        row = meeting("room-a")
        await store.insert_meeting(row)
        down()
        try:
            # The limit here only turns a hang into a failure; the store's own limits are seconds.
            results = await asyncio.wait_for(
                asyncio.gather(
                    store.get_meeting(row.id), store.add_member("room-a", "bob", "member"), return_exceptions=True
                ),
                10,
            )
            assert [type(r) for r in results] == [StoreUnavailable, StoreUnavailable]
        finally:
            up()
        # Back: the pool replaces the connections it dropped or the server cut.
        assert await store.get_meeting(row.id) == row
        await store.add_member("room-a", "carol", "member")
        assert await store.member_role("room-a", "carol") == "member"
    finally:
        await store.close()


async def test_postgres_answered_changes_survive_a_crash_of_the_server(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    store = await open_store(config_for(tmp_path, await fresh_database(postgres_server)))
    try:
        row = meeting("room-a")
        await store.insert_meeting(row)
        await store.add_member("room-a", "alice", "owner")
        await store.put_waiting(row.id, "bob", "q1", "WAITING")
        await store.insert_recording("rec", row.id, "alice", T0)
        await asyncio.gather(*(store.count_waiting() for _ in range(8)))  # several pooled connections
        postgres_server.kill()
        postgres_server.start()
        # Every pooled connection is dead now, and the server is back: reads go on, the lost
        # connections replaced as they are found.
        assert await store.get_meeting(row.id) == row
        assert await store.members_of_room("room-a") == {"alice": "owner"}
        assert [w.user_id for w in await store.waiting_of_meeting(row.id)] == ["bob"]
        assert [r.id for r in await store.recordings()] == ["rec"]
    finally:
        if postgres_server.proc is None:
            postgres_server.start()
        await store.close()


# --- configuration --------------------------------------------------------------------------


def test_database_url_defaults_to_sqlite_and_takes_only_postgresql(tmp_path: Path) -> None:
    assert Config().storage.database_url == ""
    url = "postgresql://sfu@127.0.0.1:5432/sfu"
    assert load_config(env={"MEETING_SFU_STORAGE_DATABASE_URL": url}).storage.database_url == url
    with pytest.raises(ConfigError, match="database_url"):
        load_config(env={"MEETING_SFU_STORAGE_DATABASE_URL": "mysql://x@y/z"})


async def test_sqlite_store_lives_in_data_dir(tmp_path: Path) -> None:
    store = await open_store(config_for(tmp_path))
    try:
        await store.add_member("room", "alice", "owner")
    finally:
        await store.close()
    assert (tmp_path / DB_FILENAME).exists()


# --- Redis (for the cluster) ----------------------------------------------------------------


async def test_redis_server_answers_ping(redis_server) -> None:  # noqa: ANN001
    import redis.asyncio as redis

    client = redis.from_url(redis_server.url)
    try:
        assert await client.ping() is True
        await client.set("k", "v")
        assert await client.get("k") == b"v"
    finally:
        await client.aclose()

