"""RxDB 17's websocket message shapes, mapped to and from the replication wire's.

RxDB's ``replication-websocket`` plugin sends, over one socket:

- requests ``{id, collection, method, params}``: ``masterChangesSince``, ``masterWrite``,
  ``masterChangeStream$`` (subscribe, with ``id: "stream"``; never answered) and ``auth``
  (``params: [headers]``, sent first when the client has headers; never answered);
- answers ``{id, collection, result}`` (p2pdb adds ``error`` to an error answer);
- stream events ``{id: "stream", collection, result}``.

The wire (:mod:`p2pdb.replication.rpc`) names stream events ``masterChangeStream$`` and has no
``collection``; :func:`encode` and :func:`decode` convert at the socket, nothing else differs.
"""

from __future__ import annotations

from typing import Any, Final

import orjson
from websockets.asyncio.connection import Connection
from websockets.exceptions import ConnectionClosed

from p2pdb.errors import PeerError
from p2pdb.replication.limits import PeerLimits, text_too_deep
from p2pdb.replication.rpc import STREAM_ID, WireErrorCodes

__all__ = [
    "AUTH",
    "CODES",
    "MAX_COLLECTION_NAME",
    "MAX_DEPTH",
    "SUBSCRIBE",
    "SocketSink",
    "WS_STREAM_ID",
    "decode",
    "encode",
]

#: The ``id`` of stream events and of the subscription request on a websocket.
WS_STREAM_ID: Final = "stream"
#: The request that starts a collection's stream events on this connection.
SUBSCRIBE: Final = "masterChangeStream$"
#: The request carrying a client's headers (RxDB's ``headers`` option).
AUTH: Final = "auth"
MAX_COLLECTION_NAME = 200
#: The deepest nesting a frame may have unless the server's limits say otherwise.
MAX_DEPTH = PeerLimits().max_depth

#: The error codes of websocket channels (see docs/errors.md).
CODES = WireErrorCodes(
    "WEBSOCKET_REQUEST_TIMEOUT",
    "WEBSOCKET_DISCONNECTED",
    "WEBSOCKET_REMOTE_ERROR",
    "WEBSOCKET_BAD_ANSWER",
    "WEBSOCKET_PROTOCOL_VIOLATION",
    "WEBSOCKET_INVALID_DATA",
    "WEBSOCKET_PEER_OVER_LIMIT",
)


def violation(message: str, **parameters: Any) -> PeerError:
    """The error for a message that breaks the protocol (the sender is disconnected)."""
    return PeerError(message, code=CODES.protocol_violation, **parameters)


def encode(message: object, collection: str) -> str:
    """A wire message as the text frame RxDB expects: ``collection`` added, the stream id
    renamed. A message that already has a ``collection`` keeps it."""
    if not isinstance(message, dict):
        raise TypeError(f"wire messages are objects, got {type(message).__name__}")
    out = dict(message)
    out.setdefault("collection", collection)
    if out.get("id") == STREAM_ID and "method" not in out:
        out["id"] = WS_STREAM_ID
    return orjson.dumps(out).decode()


def decode(frame: str | bytes, max_depth: int = MAX_DEPTH) -> tuple[str, dict[str, Any]]:
    """An untrusted frame as ``(collection, wire message)``.

    Raises the ``WEBSOCKET_PROTOCOL_VIOLATION`` :class:`PeerError` for anything that is not
    a JSON object with a collection name (a short string), and ``WEBSOCKET_PEER_OVER_LIMIT``
    for a frame nesting deeper than ``max_depth`` (found on the text, before parsing).
    """
    if text_too_deep(frame, max_depth):
        raise PeerError(
            f"A frame nested deeper than {max_depth}.", code=CODES.over_limit, limit="max_depth"
        )
    try:
        message = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise violation(f"A frame that is not JSON: {exc}.") from None
    if not isinstance(message, dict):
        raise violation("A message must be a JSON object.")
    collection = message.pop("collection", None)
    if not isinstance(collection, str) or not 0 < len(collection) <= MAX_COLLECTION_NAME:
        raise violation("A message needs a collection name (a string of 1-200 characters).")
    if message.get("id") == WS_STREAM_ID and "method" not in message:
        message["id"] = STREAM_ID
    return collection, message


class SocketSink:
    """The :class:`~p2pdb.replication.rpc.MessageSink` of one collection on one socket.

    ``failed_pull``: the ``result`` put in error answers to the ``masterChangesSince``
    requests whose ids are in :attr:`pulls` (a server's: RxDB's client crashes on ``null``).
    """

    def __init__(self, socket: Connection, collection: str, *, failed_pull: object = None) -> None:
        self.socket = socket
        self.collection = collection
        self.failed_pull = failed_pull
        self.pulls: set[str] = set()  #: ids of masterChangesSince requests being served
        self.events_sent = 0  #: stream events sent so far

    async def send(self, message: object) -> None:
        """Send one wire message as a text frame; :class:`PeerError` once disconnected."""
        if isinstance(message, dict):
            if message.get("error") is not None and message.get("id") in self.pulls:
                message = {**message, "result": self.failed_pull}
            elif message.get("id") == STREAM_ID:
                self.events_sent += 1
        try:
            await self.socket.send(encode(message, self.collection))
        except ConnectionClosed as exc:
            raise PeerError("The other side disconnected.", code=CODES.peer_gone) from exc
