// One RxDB 17.6 peer for benchmarks/bench_head_to_head.py: memory storage + replicateWebRTC
// over simple-peer/node-datachannel (the setup of rxdb_peer.mjs), driven by JSON lines, that
// generates its benchmark documents itself (so no 10 MB of JSON crosses stdin inside a timed
// transfer, exactly like the p2pdb peer process it is compared with).
//
// Usage: node bench_h2h_peer.mjs '{"signalingUrl", "topic", "schema", "pull"?, "push"?}'
//   stdout: {"event":"ready","storageToken":..}, {"event":"error","message":..}, and one
//           {"id", "ok", "result"|"error"} answer per command; logs go to stderr.
//   commands: insertGenerated {prefix, count, size, start?} -> inserted count
//               (documents {id: prefix + 6-digit i, text: 'x' * (size - 40), n: i}, the same
//               as tests/webrtc/peer_process.py's make_docs)
//             count -> n     waitCount {count, timeoutMs} -> n (count >= n)
//             waitPeers {count, timeoutMs}    awaitInSync {timeoutMs}    quit
import { createRxDatabase, randomToken } from 'rxdb';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import {
    replicateWebRTC,
    getConnectionHandlerSimplePeer,
    createSimplePeerWrtc
} from 'rxdb/plugins/replication-webrtc';
import nodeDatachannelPolyfill from 'node-datachannel/polyfill';
import { WebSocket } from 'ws';
import { BehaviorSubject, map } from 'rxjs';
import { runCommandLoop, waitUntil, writeOut } from './command_loop.mjs';

console.log = console.info = console.debug = console.warn = (...a) => console.error(...a);
const config = JSON.parse(process.argv[2] ?? '{}');

const db = await createRxDatabase({
    name: 'bench' + randomToken(8),
    storage: getRxStorageMemory(),
    multiInstance: false
});
const { docs: collection } = await db.addCollections({ docs: { schema: config.schema } });
const storageToken = await db.storageToken;
const pool = await replicateWebRTC({
    collection,
    topic: config.topic,
    connectionHandlerCreator: getConnectionHandlerSimplePeer({
        signalingServerUrl: config.signalingUrl,
        wrtc: createSimplePeerWrtc(nodeDatachannelPolyfill),
        webSocketConstructor: WebSocket,
        config: { iceServers: [], bindAddress: '127.0.0.1' }
    }),
    pull: { ...(config.pull ?? {}) },
    push: { ...(config.push ?? {}) }
});
pool.error$.subscribe((err) => writeOut({ event: 'error', message: err?.message ?? String(err) }));
// Documents held, counted from insert events (as the p2pdb peer counts its change events):
// a count query re-run on every write would cost the receiver more than the count is worth.
let live = 0;
const live$ = new BehaviorSubject(0);
collection.insert$.subscribe(() => live$.next(++live));

function makeDocs(prefix, count, size, start) {
    const filler = 'x'.repeat(Math.max(0, size - 40));
    return Array.from({ length: count }, (_, k) => {
        const i = start + k;
        return { id: prefix + String(i).padStart(6, '0'), text: filler, n: i };
    });
}

const commands = {
    async insertGenerated({ prefix, count, size, start }) {
        const res = await collection.bulkInsert(makeDocs(prefix, count, size ?? 1000, start ?? 0));
        if (res.error.length) {
            throw new Error('bulkInsert errors: ' + res.error.length);
        }
        return res.success.length;
    },
    async count() {
        return live;
    },
    async waitCount({ count, timeoutMs }) {
        return waitUntil(live$, (n) => n >= count, timeoutMs, `count >= ${count}`);
    },
    async waitPeers({ count, timeoutMs }) {
        return waitUntil(pool.peerStates$.pipe(map((m) => m.size)), (n) => n === count,
            timeoutMs, `peers == ${count}`);
    },
    async awaitInSync({ timeoutMs }) {
        const states = [...pool.peerStates$.getValue().values()]
            .map((s) => s.replicationState).filter(Boolean);
        await Promise.race([
            Promise.all(states.map((s) => s.awaitInSync())),
            new Promise((_, reject) => setTimeout(() => reject(new Error('awaitInSync timeout')),
                timeoutMs ?? 30000).unref())
        ]);
        return states.length;
    },
    async quit() {
        await closeAll();
        return null;
    }
};

let closing;
function closeAll() {
    closing ??= (async () => {
        try {
            await pool.cancel();
            await db.close();
        } catch (err) {
            console.error('[bench_h2h_peer] error while closing', err);
        }
    })();
    return closing;
}
runCommandLoop({ commands, closeAll, nonBlocking: new Set(['waitCount', 'waitPeers', 'awaitInSync']) });
writeOut({ event: 'ready', storageToken });
