"""The p2pdb handshake: each peer proves its device key, bound to this very connection.

An extension of RxDB's ``token`` exchange that RxDB peers never notice:

1. Each side asks the other's ``token`` as RxDB does, with one parameter RxDB ignores, our
   *hello* ``{"p2pdb": 1, "token", "key", "nonce"}`` (database token, Ed25519 public key,
   16 fresh random bytes), and ``"compress": ["zlib"]`` when its side accepts compressed
   frames (:mod:`.compression`; each side compresses only once the other's hello listed
   it), and ``"revs": 1`` when it speaks the revs-diff extension
   (``p2pdb.replication.revs``: relayed states as stubs; used only when both hellos say
   it, and the peer's key is proved: ``peer.revs``). A p2pdb peer answers with its own
   hello; RxDB (and p2pdb with ``authenticate=False``) answers with the bare token
   string: that peer is *unauthenticated* (``peer.public_key is None``).
2. Each side then sends ``p2pdbProof`` ``[{"fingerprints": [local, remote], "signature"}]``:
   its Ed25519 signature over the transcript: a context string, the topic, the DTLS
   certificate fingerprints of this connection as the signer sees them in its local and
   remote descriptions, both database tokens, both public keys and both nonces. The other
   side checks that the fingerprints are its own view mirrored (a relay in the middle, such
   as a signaling server that swapped the SDPs, shows two different pairs) and the
   signature, and answers ``true``.

So a database token is accepted from a p2pdb peer only with proof of the key that signed
it, on this connection, now. Failures end the connection before any document moves:
``WEBRTC_HANDSHAKE_FAILED``; then the pool's :class:`~.admission.Admission` decides
(``WEBRTC_PEER_UNTRUSTED``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any

import orjson

from p2pdb.errors import PeerError
from p2pdb.identity import (
    DeviceIdentity,
    key_fingerprint,
    parse_public_key,
    public_key_text,
    verify_signature,
)
from p2pdb.replication.revs import revs_enabled
from p2pdb.replication.rpc import Request, RpcChannel

from .admission import Admission
from .compression import FrameCompression, LinkLookup
from .peer import Peer
from .rpc import PeerSink

__all__ = [
    "PROOF_METHOD",
    "REFUSALS",
    "Fingerprints",
    "PeerHandshake",
    "TrustContext",
    "let_refusal_out",
]

#: The request that carries a peer's signed transcript.
PROOF_METHOD = "p2pdbProof"
_CONTEXT = "p2pdb-handshake-v1"
_NONCE_BYTES = 16

#: ``(local, remote)`` DTLS fingerprints of one connection, as one side sees them.
Fingerprints = tuple[str, str]


#: Handshake outcomes reported even when the peer left meanwhile (it may close the
#: connection before we read why it refused us): a relay in the middle, an untrusted key.
REFUSALS = frozenset({"WEBRTC_HANDSHAKE_FAILED", "WEBRTC_PEER_UNTRUSTED"})
_REFUSAL_FLUSH = 1.0  # seconds our error answer (why we refuse) gets before we close


async def let_refusal_out(channel: RpcChannel) -> None:
    """Wait (at most a second) until ``channel`` sent what it holds: our error answer to
    the peer's proof, which tells it why we refuse it, before the connection closes."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_REFUSAL_FLUSH):
            await channel.idle.wait()


@dataclass(frozen=True)
class _Hello:
    token: str
    key: bytes
    nonce: bytes
    compress: tuple[str, ...] = ()  # the frame compressions this side accepts
    revs: bool = False  # this side speaks the revs-diff extension (p2pdb.replication.revs)

    @classmethod
    def parse(cls, value: object) -> _Hello | None:
        """A hello, or ``None`` for anything else (never raises on peer input)."""
        if not isinstance(value, dict) or value.get("p2pdb") != 1:
            return None
        token, key, nonce = value.get("token"), value.get("key"), value.get("nonce")
        if not isinstance(token, str) or not token or len(token) > 200:
            return None
        if not isinstance(key, str) or not isinstance(nonce, str):
            return None
        compress = value.get("compress", [])
        if not isinstance(compress, list) or len(compress) > 8:
            compress = []  # unreadable: no compression, never a failed handshake
        offered = tuple(m for m in compress if isinstance(m, str) and len(m) <= 32)
        try:
            raw_nonce = base64.b64decode(nonce, validate=True)
            revs = type(value.get("revs")) is int and value["revs"] == 1  # not true, not 1.0
            return cls(token, parse_public_key(key), raw_nonce, offered, revs)
        except (binascii.Error, ValueError):
            return None

    def to_json(self) -> dict[str, Any]:
        hello = {
            "p2pdb": 1,
            "token": self.token,
            "key": public_key_text(self.key),
            "nonce": base64.b64encode(self.nonce).decode("ascii"),
        }
        if self.revs:
            hello["revs"] = 1
        return hello | {"compress": list(self.compress)} if self.compress else hello


@dataclass(frozen=True)
class TrustContext:
    """What every handshake of one pool shares."""

    topic: str
    token: str  # our database token
    identity: DeviceIdentity | None  # None: authenticate=False (we behave as RxDB does)
    admission: Admission
    timeout: float  # seconds for the other side's proof

    def for_peer(self, peer: Peer, fingerprints: Fingerprints | None) -> PeerHandshake:
        """The handshake with one connected peer (``fingerprints``: of its link)."""
        return PeerHandshake(self, peer, fingerprints)


class PeerHandshake:
    """The handshake with one peer: :meth:`authenticate` runs our side, :meth:`handles`
    answers the peer's side (its ``token`` requests and its proof)."""

    def __init__(
        self, context: TrustContext | None, peer: Peer, fingerprints: Fingerprints | None
    ) -> None:
        self.context = context
        self.peer = peer
        self.fingerprints = fingerprints
        self.peer_token: str | None = None  # the token the peer proved (or claimed, unproved)
        self._nonce = os.urandom(_NONCE_BYTES)
        self._hello: _Hello | None = None  # the peer's
        self._verified: asyncio.Future[None] | None = None
        self._plain = False  # the peer answered our hello with a bare token
        self._hello_seen = asyncio.Event()
        self._compression: FrameCompression | None = None  # our link's (found on first use)

    @property
    def enabled(self) -> bool:
        """Whether we run the handshake (our pool has ``authenticate=True``)."""
        return self.context is not None and self.context.identity is not None

    @property
    def key_prefix(self) -> str:
        """What replication ids and origins put before a verified peer's token:
        ``"<its key>||"`` (so a peer claiming another's token never shares that peer's
        checkpoints); ``""`` for an unauthenticated peer."""
        key = self.peer.public_key
        return "" if key is None else f"{public_key_text(key)}||"

    # -- our side ----------------------------------------------------------------------------

    async def authenticate(self, channel: RpcChannel) -> Peer:
        """Run the handshake; return the peer with its verified key (or ``None`` for an
        unauthenticated one), admitted by the pool's rule. Raises ``PeerError``:
        ``WEBRTC_HANDSHAKE_FAILED`` or ``WEBRTC_PEER_UNTRUSTED``."""
        context = self.context
        if context is None:
            return self.peer
        if context.identity is None:
            context.admission.check(self.peer)
            return self.peer
        self._find_compression(channel)
        asked = asyncio.ensure_future(channel.request("token", [self._own_hello().to_json()]))
        proof: asyncio.Future[None] | None = None
        verified = self._verified_future()
        try:
            # the peer's hello comes in its own token request or in its answer to ours:
            # whichever is first lets us send our proof (half a round trip saved)
            seen = asyncio.ensure_future(self._hello_seen.wait())
            await asyncio.wait({asked, seen}, return_when=asyncio.FIRST_COMPLETED)
            seen.cancel()
            if self._hello is None:
                answer = asked.result()
                if isinstance(answer, str) and answer and len(answer) <= 200:
                    self._plain = True  # RxDB, or p2pdb with authenticate=False
                    self.peer_token = answer
                    context.admission.check(self.peer)
                    return self.peer
                self._check_answer(answer)
            proof = asyncio.ensure_future(self._send_proof(channel))
            self._check_answer(await asked)
            await proof
            async with asyncio.timeout(context.timeout):
                await verified
        except TimeoutError:
            raise self._failed(f"no proof of its key within {context.timeout} s") from None
        except PeerError as exc:
            ours = verified.exception() if verified.done() else None
            if ours is not None and ours is not exc:
                raise ours from exc  # what we found is the better reason
            raise
        finally:
            for task in (asked, proof):
                if task is not None and not task.done():
                    task.cancel()
        hello = self._hello
        assert hello is not None
        # the revs-diff extension when both hellos offered it
        revs = hello.revs and revs_enabled()
        self.peer = dataclasses.replace(self.peer, public_key=hello.key, revs=revs)
        self.peer_token = hello.token
        context.admission.check(self.peer)
        return self.peer

    def _check_answer(self, answer: object) -> None:
        """The answer to our token request, from a peer that sends hellos: its hello."""
        if isinstance(answer, str):
            raise self._failed("it sent a handshake but answered ours without one")
        hello = _Hello.parse(answer)
        if hello is None:
            raise self._failed(f"its answer to our token request is malformed: {answer!r:.80}")
        self._note_hello(hello)

    async def _send_proof(self, channel: RpcChannel) -> None:
        assert self.context is not None and self.context.identity is not None
        view = self._view()
        hello = self._hello
        assert hello is not None
        signature = self.context.identity.sign(
            self._transcript(
                view,
                self.context.token,
                hello.token,
                self._own_key(),
                hello.key,
                self._nonce,
                hello.nonce,
            )
        )
        proof = {"fingerprints": list(view), "signature": base64.b64encode(signature).decode()}
        try:
            accepted = await channel.request(PROOF_METHOD, [proof])
        except PeerError as exc:
            if exc.code == channel.codes.remote_error:
                raise self._failed(f"it refused our proof ({exc.message})") from exc
            raise
        if accepted is not True:
            raise self._failed(f"it answered our proof with {accepted!r:.80}")

    # -- the peer's side ---------------------------------------------------------------------

    def handles(self, channel: RpcChannel, request: Request) -> bool:
        """Answer the peer's handshake requests before its validity is known (a ``token``
        request with a hello, ``p2pdbProof``); ``False`` for every other request (a bare
        ``token`` request is answered as before, once the peer is known to be valid).
        Synchronous: requests are handled in arrival order."""
        if not self.enabled:
            return False
        if request.method == "token":
            hello = _Hello.parse(request.params[0]) if request.params else None
            if hello is None:  # an RxDB peer or a heartbeat: answered once it is valid
                # (a peer is refused without even its token, as before)
                return False
            self._find_compression(channel)
            try:
                self._note_hello(hello)
            except PeerError as exc:
                self._fail(exc)
            channel.answer(request.id, self._own_hello().to_json(), urgent=True)
            return True
        if request.method == PROOF_METHOD:
            try:
                self._check_proof(request.params)
            except PeerError as exc:
                channel.answer_error(request.id, exc)
                self._fail(exc)
                return True
            channel.answer(request.id, True, urgent=True)
            future = self._verified_future()
            if not future.done():
                future.set_result(None)
            return True
        return False

    def _check_proof(self, params: list[Any]) -> None:
        assert self.context is not None
        hello = self._hello
        if hello is None or self._plain:
            raise self._failed("it sent a proof without a handshake")
        proof = params[0] if len(params) == 1 else None
        claimed = proof.get("fingerprints") if isinstance(proof, dict) else None
        signature = proof.get("signature") if isinstance(proof, dict) else None
        if not isinstance(signature, str) or not (
            isinstance(claimed, list)
            and len(claimed) == 2
            and all(isinstance(f, str) for f in claimed)
        ):
            raise self._failed("its proof is malformed")
        local, remote = self._view()
        if claimed != [remote, local]:
            raise self._failed(
                "the DTLS fingerprints it signed are not those of this connection (it sees "
                f"{claimed[0]!r:.30}... <-> {claimed[1]!r:.30}..., we see {local!r:.30}... <-> "
                f"{remote!r:.30}...): someone relays this connection, e.g. a signaling server "
                "that swapped the offers and answers"
            )
        data = self._transcript(
            (remote, local),
            hello.token,
            self.context.token,
            hello.key,
            self._own_key(),
            hello.nonce,
            self._nonce,
        )
        try:
            raw = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raw = b""
        if not verify_signature(hello.key, raw, data):
            fingerprint = key_fingerprint(hello.key)
            raise self._failed(f"its signature does not verify for key {fingerprint}")
        # refused before it may start: an untrusted peer learns nothing but the refusal
        self.context.admission.check(dataclasses.replace(self.peer, public_key=hello.key))

    # -- internals ---------------------------------------------------------------------------

    def _own_key(self) -> bytes:
        assert self.context is not None and self.context.identity is not None
        return self.context.identity.public_key

    def _own_hello(self) -> _Hello:
        assert self.context is not None
        offers = () if self._compression is None else self._compression.offers
        return _Hello(self.context.token, self._own_key(), self._nonce, offers, revs_enabled())

    def _find_compression(self, channel: RpcChannel) -> None:
        """Our link's compression, through the channel's sink (``None`` on a transport
        without one: then we neither offer nor use it)."""
        sink = channel.sink
        if self._compression is None and isinstance(sink, PeerSink):
            if isinstance(sink.connection, LinkLookup):
                self._compression = sink.connection.compression_for(sink.peer)

    def _note_hello(self, hello: _Hello) -> None:
        if self._hello is None:
            self._hello = hello
            self._hello_seen.set()
            if self._compression is not None:
                self._compression.agree(hello.compress)  # both accept: we compress
        elif self._hello != hello:
            raise self._failed("it sent two different handshakes")

    def _view(self) -> Fingerprints:
        if self.fingerprints is None:
            raise self._failed("the connection's DTLS fingerprints are unknown")
        return self.fingerprints

    def _verified_future(self) -> asyncio.Future[None]:
        if self._verified is None:
            self._verified = asyncio.get_running_loop().create_future()
        return self._verified

    def _fail(self, error: PeerError) -> None:
        future = self._verified_future()
        if not future.done():
            future.set_exception(error)

    def _transcript(
        self,
        view: Fingerprints,
        signer_token: str,
        other_token: str,
        signer_key: bytes,
        other_key: bytes,
        signer_nonce: bytes,
        other_nonce: bytes,
    ) -> bytes:
        """What a signer signs (``view``: its own local and remote fingerprints)."""
        assert self.context is not None
        return orjson.dumps(
            [
                _CONTEXT,
                self.context.topic,
                view[0],
                view[1],
                signer_token,
                other_token,
                public_key_text(signer_key),
                public_key_text(other_key),
                signer_nonce.hex(),
                other_nonce.hex(),
            ]
        )

    def _failed(self, why: str) -> PeerError:
        return PeerError(
            f"Handshake with peer {self.peer.peer_id} failed: {why}. Disconnected before any "
            "document was exchanged.",
            code="WEBRTC_HANDSHAKE_FAILED",
            peer_id=self.peer.peer_id,
        )
