"""One connected peer of a pool: token exchange, role election, serving and replicating.

For each pair exactly one side is the fork (RxDB's rule, over the two database tokens):
the master answers ``masterChangesSince``/``masterWrite`` from its collection and streams its
changes; the fork runs :func:`p2pdb.replication.replicate` with a handler whose calls are
requests over the data channel. Both sides answer master requests from any valid peer
(RxDB does too), whatever the roles.

Messages from the peer are untrusted: methods come from an allow-list, params are checked
(types, sizes), pushed and pulled documents are validated against the schema. A peer whose
messages break the protocol is reported and disconnected; stored data is never touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from reactivex import Observable
from reactivex.abc import DisposableBase
from reactivex.subject import Subject

from p2pdb.errors import P2PDBError, PeerError, ValidationError
from p2pdb.replication import (
    RESYNC,
    ChangesBatch,
    ReplicationState,
    Resync,
    WriteRow,
    collection_handler,
    replicate,
)

from .connection import Peer
from .rpc import STREAM_ID, PeerChannel

if TYPE_CHECKING:
    from .pool import ReplicationPool

__all__ = ["PeerSession", "is_master"]

log = logging.getLogger("p2pdb.webrtc")

MASTER_METHODS = frozenset({"masterChangesSince", "masterWrite"})
MAX_BATCH = 10_000  # largest batch a peer may ask for or push at once

HashFunction = Callable[[str], str]


def sha256_hex(text: str) -> str:
    """RxDB's default hash: SHA-256 of the UTF-8 text, as lowercase hex."""
    return hashlib.sha256(text.encode()).hexdigest()


def is_master(own_token: str, other_token: str, hash_function: HashFunction = sha256_hex) -> bool:
    """RxDB's election: we lead the pair when ``hash(own|other) > hash(other|own)``."""
    return hash_function(f"{own_token}|{other_token}") > hash_function(
        f"{other_token}|{own_token}"
    )


class _RemoteMaster:
    """A replication handler whose calls are requests to the peer."""

    def __init__(self, channel: PeerChannel, stream: Observable[ChangesBatch | Resync]) -> None:
        self._channel = channel
        self._stream = stream

    async def changes_since(self, checkpoint: Any, batch_size: int) -> ChangesBatch:
        result = await self._channel.request("masterChangesSince", [checkpoint, batch_size])
        if not isinstance(result, dict) or not isinstance(result.get("documents"), list):
            raise PeerError(
                "The peer answered masterChangesSince without a documents list.",
                code="WEBRTC_BAD_ANSWER",
            )
        return ChangesBatch(result["documents"], result.get("checkpoint"))

    async def write(self, rows: Sequence[WriteRow]) -> list[dict[str, Any]]:
        wire = []
        for row in rows:
            item: dict[str, Any] = {"newDocumentState": row.new_document_state}
            if row.assumed_master_state is not None:
                item["assumedMasterState"] = row.assumed_master_state
            wire.append(item)
        result = await self._channel.request("masterWrite", [wire])
        if not isinstance(result, list):
            raise PeerError(
                "The peer answered masterWrite without a list of conflicts.",
                code="WEBRTC_BAD_ANSWER",
            )
        return result

    def stream(self) -> Observable[ChangesBatch | Resync]:
        return self._stream


def _protocol_error(message: str) -> PeerError:
    return PeerError(message, code="WEBRTC_PROTOCOL_VIOLATION")


def _parse_rows(params: object) -> list[WriteRow]:
    if not isinstance(params, list) or len(params) != 1 or not isinstance(params[0], list):
        raise _protocol_error("masterWrite takes [rows].")
    rows = params[0]
    if len(rows) > MAX_BATCH:
        raise _protocol_error(f"masterWrite with {len(rows)} rows; at most {MAX_BATCH}.")
    parsed = []
    for row in rows:
        new = row.get("newDocumentState") if isinstance(row, dict) else None
        assumed = row.get("assumedMasterState") if isinstance(row, dict) else None
        if not isinstance(new, dict) or not (assumed is None or isinstance(assumed, dict)):
            raise _protocol_error("Each masterWrite row needs a newDocumentState object.")
        parsed.append(WriteRow(new, assumed))
    return parsed


class PeerSession:
    """Everything p2pdb does with one connected peer."""

    def __init__(self, pool: ReplicationPool, peer: Peer) -> None:
        self.pool = pool
        self.peer = peer
        self.channel = PeerChannel(
            pool.connection,
            peer,
            pool.token,
            request_timeout=pool.request_timeout,
            on_idle=pool._changed,  # in_sync() depends on it: wake wait_for_in_sync()
        )
        self.token: str | None = None
        self.valid: bool | None = None
        self.is_master: bool | None = None
        self.state: ReplicationState | None = None
        self.last_sent_seq = 0
        self._stream: Subject[ChangesBatch | Resync] = Subject()
        self._master = collection_handler(pool.collection, origin=f"webrtc:{pool.topic}")
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscription: DisposableBase | None = None
        self._validity_known = asyncio.Event()
        self.closed = False

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        """Begin: check validity, exchange tokens, elect roles, start replicating."""
        self._spawn(self._setup())
        self._spawn(self._heartbeat())

    async def _setup(self) -> None:
        try:
            self.valid = await self._check_valid()
            self._validity_known.set()
            if not self.valid:
                log.info("peer %s is not valid; it gets nothing", self.peer.peer_id)
                return
            token = await self.channel.request("token", [])
            if not isinstance(token, str) or not token or len(token) > 200:
                raise _protocol_error(f"The peer's token is not a short string: {token!r}.")
            self.token = token
            # this peer's pushes get their own origin, so its echo can be left out
            self._master = collection_handler(
                self.pool.collection, origin=f"webrtc:{self.pool.topic}:{token}"
            )
            if token == self.pool.token:
                raise PeerError(
                    "Connected to a peer with our own database token (the same database "
                    "opened twice?); not replicating with it.",
                    code="WEBRTC_SAME_DATABASE",
                )
            await self.pool._adopt(self)
            self.is_master = is_master(self.pool.token, token, self.pool.hash_function)
            if self.is_master:
                self._serve_stream()
            else:
                self.state = replicate(
                    self.pool.collection,
                    _RemoteMaster(self.channel, self._stream),
                    f"{self.pool.topic}||{token}",
                    batch_size=self.pool.batch_size,
                )
                self.state.errors.subscribe(self.pool._errors.on_next)
                self.state.active.subscribe(lambda _active: self.pool._changed())
            self.pool._changed()
        except P2PDBError as exc:
            if self.closed:
                return  # the peer went away during the handshake: nothing to report
            self.pool._report(exc)
            await self.pool.connection.disconnect(self.peer)

    async def _check_valid(self) -> bool:
        check = self.pool.is_peer_valid
        if check is None:
            return True
        verdict = check(self.peer)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        return bool(verdict)

    def _serve_stream(self) -> None:
        def forward(batch: ChangesBatch | Resync) -> None:
            if isinstance(batch, ChangesBatch):
                self.last_sent_seq = max(self.last_sent_seq, batch.checkpoint["seq"])
                result: Any = {"documents": batch.documents, "checkpoint": batch.checkpoint}
            else:
                result = batch
            self.channel.post({"id": STREAM_ID, "result": result})
            self.pool._changed()

        # The peer's own pushes are not echoed back (RxDB echoes them; its forks and ours
        # skip the echo, but it costs a round of doubt and re-pulling on our forks).
        self._subscription = self._master.stream(skip_own=True).subscribe(on_next=forward)
        self.channel.post({"id": STREAM_ID, "result": RESYNC})

    async def _heartbeat(self) -> None:
        """Detect a dead peer in seconds (aiortc alone takes ~30 s): ask for its token
        (a request RxDB answers) whenever it has been quiet."""
        interval, timeout = self.pool.heartbeat_interval, self.pool.heartbeat_timeout
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            if loop.time() - self.channel.last_heard < interval or not self.valid:
                continue
            try:
                await self.channel.request("token", [], within=timeout, urgent=True)
            except PeerError as exc:
                if exc.code == "WEBRTC_REQUEST_TIMEOUT":
                    self.pool._report(
                        PeerError(
                            f"Peer {self.peer.peer_id} stopped answering; disconnecting.",
                            code="WEBRTC_PEER_TIMEOUT",
                            peer_id=self.peer.peer_id,
                        )
                    )
                    await self.pool.connection.disconnect(self.peer)
                return

    # -- incoming --------------------------------------------------------------------------

    def on_message(self, data: object) -> None:
        """Handle one message from the peer."""
        self.channel.heard()
        if not isinstance(data, dict):
            self._violation(_protocol_error("A message must be a JSON object."))
            return
        if isinstance(data.get("method"), str):
            self._spawn(self._on_request(data))
        elif data.get("id") == STREAM_ID:
            self._on_stream_event(data.get("result"))
        elif "id" in data:
            if not self.channel.take_answer(data):
                self._violation(_protocol_error("An answer to a request that was never made."))
        else:
            self._violation(_protocol_error("A message without id or method."))

    def _violation(self, error: PeerError) -> None:
        error.parameters.setdefault("peer_id", self.peer.peer_id)
        self.pool._report(error)
        self._spawn(self.pool.connection.disconnect(self.peer))

    def _on_stream_event(self, result: object) -> None:
        if self.is_master:
            self._violation(_protocol_error("A stream event from a peer that is not our master."))
            return
        if self.is_master is None:
            return  # roles not settled yet (a benign race): the fork starts with a RESYNC
        if result == RESYNC:
            self._stream.on_next(RESYNC)
        elif isinstance(result, dict) and isinstance(result.get("documents"), list):
            self._stream.on_next(ChangesBatch(result["documents"], result.get("checkpoint")))
        else:
            self._violation(_protocol_error("A stream event that is neither RESYNC nor a batch."))

    async def _on_request(self, message: dict[str, Any]) -> None:
        request_id, method, params = message.get("id"), message["method"], message.get("params")
        if not isinstance(request_id, str) or not isinstance(params, list):
            self._violation(_protocol_error("A request needs a string id and a params list."))
            return
        await self._validity_known.wait()
        if not self.valid:
            return  # an invalid peer gets no answers at all
        if method == "token":
            # ahead of the queue: a heartbeat must not wait behind a large batch
            self.channel.post_now({"id": request_id, "result": self.pool.token})
            return
        if method not in MASTER_METHODS:
            self.channel.answer_error(
                request_id,
                _protocol_error(f"Unknown method {method!r}."),
            )
            self.pool._report(
                _protocol_error(f"Peer {self.peer.peer_id} called unknown method {method!r}.")
            )
            return
        try:
            result = await self._serve(method, params)
        except PeerError as exc:
            self.channel.answer_error(request_id, exc)
            self._violation(exc)
            return
        except ValidationError as exc:
            exc.parameters.setdefault("peer_id", self.peer.peer_id)
            self.channel.answer_error(request_id, exc)
            self._violation(
                PeerError(
                    f"Peer {self.peer.peer_id} sent invalid data: {exc.message}",
                    code="WEBRTC_INVALID_DATA",
                )
            )
            return
        except P2PDBError as exc:  # our side failed (closed database, storage)
            self.channel.answer_error(request_id, exc)
            self.pool._report(exc)
            return
        self.channel.answer(request_id, result)

    async def _serve(self, method: str, params: list[Any]) -> Any:
        if method == "masterChangesSince":
            if len(params) != 2:
                raise _protocol_error("masterChangesSince takes [checkpoint, batchSize].")
            checkpoint, batch_size = params
            if type(batch_size) is not int or not 0 < batch_size <= MAX_BATCH:
                raise _protocol_error(f"batchSize must be an integer in 1..{MAX_BATCH}.")
            batch = await self._master.changes_since(checkpoint, batch_size)
            if self.is_master:
                self.last_sent_seq = max(self.last_sent_seq, batch.checkpoint["seq"])
            return {"documents": batch.documents, "checkpoint": batch.checkpoint}
        rows = _parse_rows(params)
        return await self._master.write(rows)

    # -- state -----------------------------------------------------------------------------

    def in_sync(self) -> bool:
        """Our side of this pair has nothing left to do right now."""
        if not self.valid:
            return self.valid is False
        if self.is_master is None or not self.channel.idle.is_set():
            return False
        if self.is_master:
            storage = self.pool.collection.database.storage
            return self.last_sent_seq >= storage.last_seq(self.pool.collection.name)
        return self.state is not None and self.state.is_in_sync()

    async def close(self) -> None:
        """Stop replicating with this peer (its checkpoints stay for a reconnect)."""
        self.closed = True
        if self._subscription is not None:
            self._subscription.dispose()
        if self.state is not None:
            await self.state.cancel()
        await self.channel.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._stream.on_completed()

