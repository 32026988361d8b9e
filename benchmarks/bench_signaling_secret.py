"""Connection set-up time with and without a topic secret, as a ratio from the same run.

    python benchmarks/bench_signaling_secret.py [--rounds 15]

One signaling server on loopback; each round, in alternating order, two connection handlers
join a fresh topic with no secret and two join another fresh topic with a secret. Figures:

* **join + connect**: from calling both factories (at once) until both data channels are
  open. With a secret this includes deriving the keys (HKDF, once per handler);
* **connect**: from the second handler having joined until both channels are open: the
  offer, answer and candidates sealed and opened, ICE and DTLS.

Targets: connect within +20 % (ratio >= 0.83); join + connect is reported (the scrypt
derivation, HKDF by default, is a fixed cost per handler, paid once per topic; scrypt for
typed passwords adds its time, printed below, to each handler's start).
"""

from __future__ import annotations

import asyncio
import time

from _common import Row, machine_line, print_table, rounds_from_argv

from p2pdb.plugins.replication_webrtc import (
    ConnectionHandler,
    aiortc_connection_handler,
    start_signaling_server,
)
from p2pdb.plugins.replication_webrtc.signal_crypto import TopicSecret, derive_signal_keys
from p2pdb.tokens import random_token

SECRET = "bench-secret-" + "x" * 20


async def one_pair(url: str, secret: str | None) -> tuple[float, float]:
    """(join + connect, connect) seconds for one fresh pair."""
    factory = aiortc_connection_handler(
        url, ice_servers=[], host_addresses=["127.0.0.1"], secret=secret
    )
    topic = "bench-" + random_token(12)
    opened = asyncio.Event()
    handlers: list[ConnectionHandler] = []
    started = time.perf_counter()
    try:
        a, b = await asyncio.gather(factory(topic), factory(topic))
        handlers += [a, b]
        joined = time.perf_counter()
        count = 0

        def on_connect(_peer: object) -> None:
            nonlocal count
            count += 1
            if count == 2:
                opened.set()

        a.connects.subscribe(on_connect)
        b.connects.subscribe(on_connect)
        count += len(a.peers) + len(b.peers)  # opened before we subscribed (rare)
        if count >= 2:
            opened.set()
        async with asyncio.timeout(30):
            await opened.wait()
        done = time.perf_counter()
    finally:
        for handler in handlers:
            await handler.close()
    return done - started, done - joined


async def main() -> None:
    rounds = rounds_from_argv(15)
    setup = Row("join + connect, secret", "ms", "no secret", higher_is_better=False)
    link = Row("connect, secret", "ms", "no secret", target=0.83, higher_is_better=False)
    derive_ms = {}
    for kdf in ("hkdf", "scrypt"):
        t0 = time.perf_counter()
        for _ in range(5):
            derive_signal_keys(TopicSecret(SECRET, kdf=kdf), "bench-topic")  # type: ignore[arg-type]
        derive_ms[kdf] = (time.perf_counter() - t0) / 5 * 1000
    async with await start_signaling_server(port=0) as server:
        await one_pair(server.url, None)  # warm up aiortc and the loop
        await one_pair(server.url, SECRET)
        for n in range(rounds):
            if n % 2:
                secret = await one_pair(server.url, SECRET)
                plain = await one_pair(server.url, None)
            else:
                plain = await one_pair(server.url, None)
                secret = await one_pair(server.url, SECRET)
            setup.add(secret[0] * 1000, plain[0] * 1000)
            link.add(secret[1] * 1000, plain[1] * 1000)
    print(machine_line())
    ok = print_table(
        "WebRTC connection set-up with a topic secret",
        [setup, link],
        rounds,
        notes=[
            f"key derivation per handler: HKDF (the default) {derive_ms['hkdf']:.2f} ms,"
            f" scrypt (TopicSecret(..., kdf='scrypt')) {derive_ms['scrypt']:.1f} ms"
        ],
    )
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    asyncio.run(main())
