"""Signaling rooms shared by any number of nodes through Redis: :class:`RedisRooms`.

``start_signaling_server(..., redis_url="redis://...")`` (``p2pdb signaling --redis URL``)
uses it: a peer may join through any node and reach the peers of every other.

In Redis (under ``prefix``, ``p2pdb:signaling`` by default):

- ``room:<room>``: a sorted set of member ids scored by a join counter (``seq``), so the
  ``joined`` lists keep RxDB's join order; joins run in a Lua script that counts the
  members first, so ``max_peers_per_room`` holds across nodes.
- ``peers``: a hash, member id -> its node; ``node-members:<node>``: ``"<id> <room>"`` per
  membership of that node.
- ``node:<node>``: a key with expiry (``heartbeat_timeout``), refreshed every
  ``heartbeat_interval``; ``nodes``: the set of nodes. On each heartbeat a node reaps the
  nodes whose key expired (a crashed node): their members leave their rooms and the rest of
  each room gets RxDB's ``joined`` update.
- A channel per node (``deliver:<node>``): ``"<id>,<id>...\\n<frame>"`` for its members
  (signals, ``joined`` updates).

When Redis goes away, joins and signals to other nodes end the socket
(``SIGNALING_REDIS_UNAVAILABLE``, close code 1013, clients reconnect), local ones keep
working, and the node reconnects with :class:`~p2pdb.backoff.Backoff`; back, it registers its
members again (a restarted Redis kept nothing) and removes what it no longer holds.
``redis`` (``pip install p2pdb[redis]``) is imported only when a node starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from p2pdb.backoff import Backoff
from p2pdb.errors import ReplicationError, ValidationError
from p2pdb.tokens import random_token

from .signaling_rooms import Relay, RoomHost, joined_frame

__all__ = ["RedisOptions", "RedisRooms", "redacted", "unavailable"]

logger = logging.getLogger("p2pdb.webrtc.signaling_redis")

_REMOVE = """
local function remove(prefix, peers, members_key, entries)
  local order, seen = {}, {}
  for _, entry in ipairs(entries) do
    local cut = string.find(entry, ' ', 1, true)
    local peer, room = string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1)
    redis.call('ZREM', prefix .. ':room:' .. room, peer)
    redis.call('HDEL', peers, peer)
    redis.call('SREM', members_key, entry)
    if not seen[room] then seen[room] = true; order[#order + 1] = room end
  end
  local out = {}
  for _, room in ipairs(order) do
    local ids = redis.call('ZRANGE', prefix .. ':room:' .. room, 0, -1)
    local nodes = {}
    for i, id in ipairs(ids) do nodes[i] = redis.call('HGET', peers, id) end
    out[#out + 1] = {room, ids, nodes}
  end
  return out
end
"""
# KEYS: room, seq, peers, node-members; ARGV: peer, max peers, node, entry.
_JOIN = """
local room, peer = KEYS[1], ARGV[1]
if not redis.call('ZSCORE', room, peer) then
  if redis.call('ZCARD', room) >= tonumber(ARGV[2]) then return false end
  redis.call('ZADD', room, redis.call('INCR', KEYS[2]), peer)
  redis.call('HSET', KEYS[3], peer, ARGV[3])
  redis.call('SADD', KEYS[4], ARGV[4])
end
local ids = redis.call('ZRANGE', room, 0, -1)
local nodes = {}
for i, id in ipairs(ids) do nodes[i] = redis.call('HGET', KEYS[3], id) end
return {ids, nodes}
"""
# KEYS: room, peers; ARGV: receiver, channel prefix, frame -> 0 gone, 1 outside, 2 delivered.
_RELAY = """
local node = redis.call('HGET', KEYS[2], ARGV[1])
if not node then return 0 end
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 1 end
redis.call('PUBLISH', ARGV[2] .. node, ARGV[1] .. '\\n' .. ARGV[3])
return 2
"""
# KEYS: peers, node-members; ARGV: prefix, entries...
_LEAVE = _REMOVE + "return remove(ARGV[1], KEYS[1], KEYS[2], {unpack(ARGV, 2)})"
# KEYS: nodes, node key, peers, node-members; ARGV: prefix, node, force ("1": our own close).
_REAP = (
    _REMOVE
    + """
if ARGV[3] ~= '1' and redis.call('EXISTS', KEYS[2]) == 1 then return {} end
if redis.call('SREM', KEYS[1], ARGV[2]) == 0 and ARGV[3] ~= '1' then return {} end
local out = remove(ARGV[1], KEYS[3], KEYS[4], redis.call('SMEMBERS', KEYS[4]))
redis.call('DEL', KEYS[4], KEYS[2])
return out
"""
)
_RESERVED_CONNECTIONS = 4  # pub/sub, heartbeat (with reaping), the leave worker, spare
_NO_LIMIT = 1 << 40  # members re-registered after an outage were admitted already


@dataclass(frozen=True)
class RedisOptions:
    """Where the shared rooms live and how fast a crashed node's members leave them."""

    url: str
    """``redis://[user:password@]host:port/db``, ``rediss://`` (TLS) or ``unix://``."""
    heartbeat_interval: float = 2.0
    """Seconds between a node's heartbeats (each also reaps expired nodes)."""
    heartbeat_timeout: float = 6.0
    """A node silent this long is reaped: its members leave within about this plus one
    interval."""
    prefix: str = "p2pdb:signaling"
    """Prefix of every key and channel (several deployments may share one Redis)."""
    connect_timeout: float = 5.0
    """Seconds to reach Redis at start (and for each command's connection)."""
    pool_size: int = 32
    """Joins and signals in flight to Redis per node (each on its own connection); more wait
    their turn, in order. A few more connections serve the heartbeat and the subscription."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValidationError(
                "The Redis URL must start with redis://, rediss:// or unix://, "
                f"got {redacted(self.url)!r}",
                code="WEBRTC_SETTING_INVALID",
                setting="redis_url",
            )
        for name in ("heartbeat_interval", "heartbeat_timeout", "connect_timeout", "pool_size"):
            if not getattr(self, name) > 0:
                raise ValidationError(
                    f"{name} must be positive", code="WEBRTC_SETTING_INVALID", setting=name
                )
        if self.heartbeat_timeout <= self.heartbeat_interval:
            raise ValidationError(
                "heartbeat_timeout must be longer than heartbeat_interval",
                code="WEBRTC_SETTING_INVALID",
                setting="heartbeat_timeout",
            )


def redacted(url: str) -> str:
    """``url`` without its user and password (for messages and logs)."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2]))


def unavailable(url: str, why: object) -> ReplicationError:
    """The typed error of Redis out of reach."""
    shown = redacted(url)
    return ReplicationError(
        f"Redis at {shown} is out of reach: {why}", code="SIGNALING_REDIS_UNAVAILABLE", url=shown
    )


class RedisRooms:
    """A :class:`~.signaling_rooms.RoomRegistry` in Redis, shared by every node that uses
    the same Redis and ``prefix``. ``RedisRooms("redis://...")`` or
    ``RedisRooms(RedisOptions(url, heartbeat_interval=...))``; the server starts and closes
    it. ``node_id`` names this node (random); ``available`` is False while Redis is out of
    reach; ``recoveries`` counts reconnects after an outage."""

    def __init__(self, options: str | RedisOptions) -> None:
        self.options = RedisOptions(options) if isinstance(options, str) else options
        """The connection and heartbeat settings."""
        self.node_id = random_token(12)
        """This node's id in Redis."""
        self.available = False
        """True while connected (subscribed and heartbeating)."""
        self.recoveries = 0
        """Sessions started again after a lost connection."""
        self._host: RoomHost | None = None
        self._client: Any = None
        self._errors: tuple[type[BaseException], ...] = (OSError,)
        self._scripts: dict[str, Any] = {}
        self._local: dict[str, set[str]] = {}  # our member -> its rooms
        self._leaves: asyncio.Queue[list[str] | None] = asyncio.Queue()  # None: stop
        self._tasks: list[asyncio.Task[None]] = []
        self._ready = asyncio.Event()
        self._closing = False
        # FIFO and O(1) per wake-up, unlike waiting inside redis-py's blocking pool
        self._slots = asyncio.Semaphore(self.options.pool_size)

    def _key(self, *parts: str) -> str:
        return ":".join((self.options.prefix, *parts))

    # -- the RoomRegistry protocol ----------------------------------------------------------

    async def start(self, host: RoomHost) -> None:
        """Connect (``SIGNALING_REDIS_UNAVAILABLE`` when Redis is out of reach), subscribe to
        this node's channel, heartbeat; then keep reconnecting in the background."""
        try:
            import redis.asyncio as aioredis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
            from redis.exceptions import RedisError
        except ImportError:
            raise unavailable(self.options.url, "`redis` is not installed") from None
        self._host = host
        self._errors = (RedisError, OSError)
        timeout = self.options.connect_timeout
        pool = aioredis.BlockingConnectionPool.from_url(
            self.options.url,
            max_connections=self.options.pool_size + _RESERVED_CONNECTIONS,
            timeout=timeout,
            decode_responses=True,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # our own loop retries, with Backoff
        )
        self._client = aioredis.Redis(connection_pool=pool)
        scripts = (("join", _JOIN), ("leave", _LEAVE), ("reap", _REAP), ("relay", _RELAY))
        for name, source in scripts:
            self._scripts[name] = self._client.register_script(source)
        try:
            async with asyncio.timeout(timeout):
                await self._client.ping()
        except (*self._errors, TimeoutError) as error:
            with contextlib.suppress(*self._errors):
                await self._client.connection_pool.disconnect()
            raise unavailable(self.options.url, error) from None
        runner = asyncio.get_running_loop().create_task(self._run())
        self._tasks.append(runner)
        try:
            async with asyncio.timeout(timeout):
                await self._ready.wait()
        except TimeoutError:
            await self.close()
            raise unavailable(self.options.url, f"no connection within {timeout:g} s") from None
        self._tasks.append(asyncio.get_running_loop().create_task(self._leave_worker()))

    async def close(self) -> None:
        """Take this node's members out of their rooms (the other nodes' members are told),
        leave the node list and disconnect."""
        # redis-py may turn a cancellation inside a command into a ConnectionError: the loops
        # also stop on this flag, and the leave worker on its sentinel.
        self._closing = True
        self._leaves.put_nowait(None)
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)
        self._tasks.clear()
        if self._client is None:
            return
        with contextlib.suppress(*self._errors, TimeoutError):
            async with asyncio.timeout(self.options.connect_timeout):
                await self._reap(self.node_id, force=True)
        self._local.clear()
        self.available = False
        with contextlib.suppress(*self._errors):
            await self._client.aclose()
            await self._client.connection_pool.disconnect()

    async def join(self, room: str, peer_id: str, max_peers: int) -> bool:
        """Join in Redis (counting the room's members there), then announce."""
        self._check_available()
        try:
            async with self._slots:
                result = await self._join_script(room, peer_id, max_peers)
                if result is None:
                    return False
                self._local.setdefault(peer_id, set()).add(room)
                await self._announce([[room, *result]])
        except self._errors as error:
            raise unavailable(self.options.url, error) from None
        return True

    def leave(self, peer_id: str, rooms: Iterable[str]) -> None:
        """Queued for the leave worker (in order); a failure is repaired on reconnect."""
        held, leaving = self._local.get(peer_id, set()), set(rooms)
        entries = [f"{peer_id} {room}" for room in sorted(leaving) if room in held]
        held.difference_update(leaving)
        if not held:
            self._local.pop(peer_id, None)
        if entries:
            self._leaves.put_nowait(entries)

    async def relay(self, room: str, receiver_id: str, text: str) -> Relay:
        """Publish to the receiver's node, if it is a member of ``room`` (one round trip)."""
        self._check_available()
        keys = [self._key("room", room), self._key("peers")]
        try:
            async with self._slots:
                outcome = await self._scripts["relay"](
                    keys=keys, args=[receiver_id, self._key("deliver", ""), text]
                )
        except self._errors as error:
            raise unavailable(self.options.url, error) from None
        return (Relay.GONE, Relay.OUTSIDE, Relay.DELIVERED)[int(outcome)]

    def rooms(self) -> dict[str, list[str]]:
        """The rooms of this node's members, with those members (other nodes' left out)."""
        rooms: dict[str, list[str]] = {}
        for peer, held in self._local.items():
            for room in held:
                rooms.setdefault(room, []).append(peer)
        return rooms

    # -- internals ----------------------------------------------------------------------------

    def _check_available(self) -> None:
        if not self.available:
            raise unavailable(self.options.url, "reconnecting")

    async def _join_script(self, room: str, peer: str, max_peers: int) -> Any:
        keys = [self._key("room", room), self._key("seq"), self._key("peers")]
        keys.append(self._key("node-members", self.node_id))
        args = [peer, max_peers, self.node_id, f"{peer} {room}"]
        return await self._scripts["join"](keys=keys, args=args)

    async def _reap(self, node: str, *, force: bool = False) -> None:
        keys = [self._key("nodes"), self._key("node", node), self._key("peers")]
        keys.append(self._key("node-members", node))
        out = await self._scripts["reap"](
            keys=keys, args=[self.options.prefix, node, "1" if force else "0"]
        )
        if out and not force:
            logger.info("node %s stopped heartbeating: %d room(s) updated", node, len(out))
        await self._announce(out)

    async def _leave_entries(self, entries: list[str]) -> None:
        keys = [self._key("peers"), self._key("node-members", self.node_id)]
        for start in range(0, len(entries), 1000):  # Lua's unpack() takes ~8000 at most
            chunk = entries[start : start + 1000]
            changes = await self._scripts["leave"](keys=keys, args=[self.options.prefix, *chunk])
            await self._announce(changes)

    async def _announce(self, changes: list[list[Any]]) -> None:
        """``[room, ids, nodes]`` per changed room: ``joined`` to each member, by node."""
        assert self._host is not None
        for _room, ids, nodes in changes:
            if not ids:
                continue
            text = joined_frame(ids)
            by_node: dict[str, list[str]] = {}
            for peer, node in zip(ids, nodes, strict=True):
                if node:
                    by_node.setdefault(node, []).append(peer)
            for node, peers in by_node.items():
                if node == self.node_id:
                    for peer in peers:
                        self._host.deliver(peer, text)
                else:
                    channel = self._key("deliver", node)
                    await self._client.publish(channel, ",".join(peers) + "\n" + text)

    async def _run(self) -> None:
        """Stay connected: one session at a time, reconnecting with backoff."""
        backoff = Backoff(0.1, 5.0)
        while not self._closing:
            try:
                await self._session(backoff)
            except self._errors as error:
                if self.available:
                    logger.warning("lost Redis at %s: %r", redacted(self.options.url), error)
                self.available = False
            await asyncio.sleep(backoff.next_delay())

    async def _session(self, backoff: Backoff) -> None:
        pubsub = self._client.pubsub()
        try:
            await pubsub.subscribe(self._key("deliver", self.node_id))
            await self._beat()
            self.available = True
            backoff.reset()
            if self._ready.is_set():
                self.recoveries += 1
                logger.info("Redis at %s is back; members registered", redacted(self.options.url))
            self._ready.set()
            listener = asyncio.get_running_loop().create_task(self._listen(pubsub))
            beater = asyncio.get_running_loop().create_task(self._heartbeat())
            try:
                done, _ = await asyncio.wait(
                    [listener, beater], return_when=asyncio.FIRST_COMPLETED
                )
                for task in done:
                    task.result()  # raises what ended the session
            finally:
                for task in (listener, beater):
                    task.cancel()
                # bounded: a cancellation redis-py swallowed ends when pubsub closes below
                await asyncio.wait([listener, beater], timeout=self.options.connect_timeout)
        finally:
            self.available = False
            with contextlib.suppress(*self._errors):
                await pubsub.aclose()

    async def _listen(self, pubsub: Any) -> None:
        assert self._host is not None
        async for message in pubsub.listen():
            if message.get("type") != "message":
                continue
            head, _, text = str(message["data"]).partition("\n")
            for peer in head.split(","):
                self._host.deliver(peer, text)

    async def _heartbeat(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.options.heartbeat_interval)
            await self._beat()

    async def _beat(self) -> None:
        """Refresh our key; re-register if Redis lost us; reap nodes whose key expired."""
        ttl = int(self.options.heartbeat_timeout * 1000)
        async with self._client.pipeline(transaction=False) as pipe:
            pipe.set(self._key("node", self.node_id), "1", px=ttl)
            pipe.sadd(self._key("nodes"), self.node_id)
            pipe.smembers(self._key("nodes"))
            _, added, nodes = await pipe.execute()
        if added:
            await self._register()
        for node in set(nodes) - {self.node_id}:
            await self._reap(node)

    async def _register(self) -> None:
        """Make Redis hold exactly our members (after a start, a restart or being reaped)."""
        wanted = {f"{peer} {room}" for peer, held in self._local.items() for room in held}
        held = await self._client.smembers(self._key("node-members", self.node_id))
        stale = sorted(set(held) - wanted)
        if stale:
            await self._leave_entries(stale)
        for entry in sorted(wanted):
            peer, _, room = entry.partition(" ")
            result = await self._join_script(room, peer, _NO_LIMIT)
            await self._announce([[room, *result]])

    async def _leave_worker(self) -> None:
        while (entries := await self._leaves.get()) is not None and not self._closing:
            try:
                await self._leave_entries(entries)
            except self._errors as error:  # the next registration removes them
                logger.info("leave not recorded in Redis (%r); repaired on reconnect", error)
