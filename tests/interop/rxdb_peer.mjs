// One real RxDB 17.6 peer (memory storage + replicateWebRTC over simple-peer/node-datachannel),
// driven over stdin/stdout with JSON lines. Used by the Python interop tests and the benchmark.
//
// Usage: node rxdb_peer.mjs '<json config>'
//   config = {
//     "signalingUrl": "ws://127.0.0.1:PORT",     required
//     "topic": "room-name",                       required, 6..99 chars (signaling server rule)
//     "collection": "docs",                       default "docs"
//     "schema": {...RxDB JSON schema...},         required (version, primaryKey, type, properties, ...)
//     "dbName": "peer...",                        default: random
//     "conflictHandler": "default" | "forkWins" | {"maxField": "updatedAt"}   default "default"
//     "pull": {"batchSize": 20}, "push": {"batchSize": 20},   passed to replicateWebRTC (defaults 20)
//     "requestTimeout": 20000,                    passed to replicateWebRTC
//     "bindAddress": "127.0.0.1"                  address node-datachannel binds and offers (host candidates)
//   }
//
// stdout carries only protocol lines:
//   {"event":"ready","storageToken":"..."}                once the pool exists
//   {"event":"error","message":"..."}                     for every pool.error$ emission
//   {"event":"signaling","peerId":"..."}                  each time the signaling server
//                                                         gives this peer an id (`init`)
//   {"id":..., "ok":true, "result":...} / {"id":..., "ok":false, "error":"..."}   one per command
// Everything else (RxDB / simple-peer logs) goes to stderr.
//
// stdin: one JSON command per line, {"id": <any>, "cmd": ..., ...args}; the answer echoes the id.
//   insert {doc} / upsert {doc} -> doc          bulkInsert {docs} -> number inserted
//   patch {docId, patch} -> doc                  remove {docId} -> true
//   get {docId} -> doc | null                    all -> [docs sorted by primary key]   count -> n
//   waitFor {docId, equals: doc|null, timeoutMs} -> doc|null  (exact deep equality; null = deleted/absent)
//   waitCount {count, timeoutMs} -> count        peers -> n    waitPeers {count, timeoutMs} -> count
//   waitAll {docs, timeoutMs} -> n  (`all` deep-equals docs, sorted by primary key)
//   awaitInSync {timeoutMs} -> number of fork-side replications awaited
//   stopReplication / startReplication -> true  (cancel / recreate the pool; for offline edits)
//   request {method, params, timeoutMs} -> result   (a raw request to the first peer, sent with
//       RxDB's sendMessageAndAwaitAnswer; an error answer or a timeout fails the command)
//   storageToken -> token                        signalingPeerId -> own signaling id | null
//   quit -> null, then the process exits 0
// Docs are returned as RxDocument.toJSON(): no _rev, _meta, _attachments, _deleted.
// Commands start in arrival order (see command_loop.mjs); stdin EOF or SIGTERM also shut down cleanly.
import { createRxDatabase, randomToken, deepEqual } from 'rxdb';
import { makeConflictHandler, runCommandLoop, waitUntil, writeOut } from './command_loop.mjs';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import {
    replicateWebRTC,
    getConnectionHandlerSimplePeer,
    createSimplePeerWrtc,
    sendMessageAndAwaitAnswer
} from 'rxdb/plugins/replication-webrtc';
import nodeDatachannelPolyfill from 'node-datachannel/polyfill';
import { initLogger, getLibraryVersion } from 'node-datachannel';
import { WebSocket } from 'ws';
import { BehaviorSubject, firstValueFrom, map, of, switchMap } from 'rxjs';

// Keep stdout for protocol lines only: route every console method to stderr.
console.log = console.info = console.debug = console.warn = (...a) => console.error(...a);
const log = (...a) => console.error('[rxdb_peer]', ...a);

const config = JSON.parse(process.argv[2] ?? '{}');
// RXDB_PEER_RTC_LOG=Debug|Info|Warning|...: libdatachannel's own log, on stderr.
// The version is read once: getLibraryVersion() logs a Debug line itself, so calling it in the
// callback would log one more line per line logged.
if (process.env.RXDB_PEER_RTC_LOG) {
    const version = getLibraryVersion();
    initLogger(process.env.RXDB_PEER_RTC_LOG, (level, message) => log(`${new Date().toISOString().slice(11, 23)} libdatachannel ${version} ${level}: ${message}`));
}
for (const key of ['signalingUrl', 'topic', 'schema']) {
    if (!config[key]) {
        log('missing config key', key);
        process.exit(2);
    }
}
const collectionName = config.collection ?? 'docs';
const primaryKey = typeof config.schema.primaryKey === 'string'
    ? config.schema.primaryKey
    : config.schema.primaryKey.key; // composite primary keys store the key name in .key

// ---- conflict handler -------------------------------------------------------------------------
// "default": RxDB's defaultConflictHandler (deep equality; the master state wins).
// "forkWins": the fork's new state always wins (useful to see the fork side resolve).
// {"maxField": f}: the state with the larger value of field f wins, ties -> master.

// ---- database + replication ---------------------------------------------------------------------
const db = await createRxDatabase({
    name: config.dbName ?? 'peer' + randomToken(8),
    storage: getRxStorageMemory(),
    // One process = one instance; multiInstance would make replicateWebRTC wait for leadership.
    multiInstance: false
});
const collections = await db.addCollections({
    [collectionName]: {
        schema: config.schema,
        conflictHandler: makeConflictHandler(config.conflictHandler)
    }
});
const collection = collections[collectionName];
const storageToken = await db.storageToken;

// node-datachannel's polyfill forwards the whole RTCConfiguration to libdatachannel's RtcConfig,
// and simple-peer passes `config` unchanged (Object.assign over its own defaults), so
// `bindAddress` reaches libdatachannel: the UDP socket binds to 127.0.0.1 and the only host
// candidate offered is 127.0.0.1. `iceServers: []` overrides simple-peer's default Google STUN.
// createSimplePeerWrtc wraps the polyfill because simple-peer mutates the session descriptions,
// which are read-only in the polyfill.
const rtcConfig = { iceServers: [], bindAddress: config.bindAddress ?? '127.0.0.1' };
// The signaling id this peer got from the server (RxDB keeps it private). Tests need it to
// know which side of a pair is the WebRTC initiator (the side whose *remote* id is greater).
// A WebSocket subclass only listens to `init`; RxDB's own onmessage handler is untouched.
let signalingPeerId = null;
class ReportingWebSocket extends WebSocket {
    constructor(...args) {
        super(...args);
        this.on('message', (data) => {
            let msg;
            try {
                msg = JSON.parse(data.toString());
            } catch (err) {
                return;
            }
            if (msg && msg.type === 'init' && typeof msg.yourPeerId === 'string') {
                signalingPeerId = msg.yourPeerId;
                writeOut({ event: 'signaling', peerId: msg.yourPeerId });
            }
        });
        this.on('close', () => {
            signalingPeerId = null;
        });
    }
}
// The pool can be stopped and started again (stopReplication/startReplication) so tests can
// make offline edits on both sides and get deterministic conflicts on reconnect. A restarted
// fork resumes from its checkpoint: the replication identifier is collection||topic||peerToken.
let pool = null;
const pool$ = new BehaviorSubject(null);
async function startPool() {
    if (pool) {
        return;
    }
    pool = await replicateWebRTC({
        collection,
        topic: config.topic,
        connectionHandlerCreator: getConnectionHandlerSimplePeer({
            signalingServerUrl: config.signalingUrl,
            wrtc: createSimplePeerWrtc(nodeDatachannelPolyfill),
            webSocketConstructor: ReportingWebSocket,
            config: rtcConfig
        }),
        // Fresh objects each time: replicateWebRTC writes the batchSize defaults into them.
        pull: { ...(config.pull ?? {}) },
        push: { ...(config.push ?? {}) },
        ...(config.requestTimeout ? { requestTimeout: config.requestTimeout } : {})
    });
    pool.error$.subscribe((err) => {
        const message = err?.message ?? String(err);
        log('pool error', message, JSON.stringify(err?.parameters ?? {}));
        writeOut({ event: 'error', message });
    });
    pool$.next(pool);
}
async function stopPool() {
    const p = pool;
    pool = null;
    pool$.next(null);
    if (p) {
        await p.cancel();
    }
}
await startPool();

// ---- helpers ----------------------------------------------------------------------------------
const plain = (doc) => (doc ? doc.toJSON() : null); // toJSON() drops _rev/_meta/_attachments/_deleted
// Peers that finished the token exchange (0 while replication is stopped).
const peerCount$ = pool$.pipe(switchMap((p) => (p ? p.peerStates$.pipe(map((m) => m.size)) : of(0))));

// Resolve with the first value of obs$ that passes pred, or reject after timeoutMs.
// Everything here is push-based (RxDB observables), no polling.

async function getDoc(docId) {
    return collection.findOne(docId).exec();
}
async function mustGetDoc(docId) {
    const doc = await getDoc(docId);
    if (!doc) {
        throw new Error('document not found: ' + docId);
    }
    return doc;
}

// ---- commands ---------------------------------------------------------------------------------
const commands = {
    async insert({ doc }) {
        return plain(await collection.insert(doc));
    },
    async bulkInsert({ docs }) {
        const res = await collection.bulkInsert(docs);
        if (res.error.length) {
            throw new Error('bulkInsert errors: ' + JSON.stringify(res.error.map(e => e.status + ' ' + e.documentId)));
        }
        return res.success.length;
    },
    async upsert({ doc }) {
        return plain(await collection.upsert(doc));
    },
    async patch({ docId, patch }) {
        return plain(await (await mustGetDoc(docId)).incrementalPatch(patch));
    },
    async remove({ docId }) {
        await (await mustGetDoc(docId)).incrementalRemove();
        return true;
    },
    async get({ docId }) {
        return plain(await getDoc(docId));
    },
    async all() {
        const docs = await collection.find({ sort: [{ [primaryKey]: 'asc' }] }).exec();
        return docs.map(plain);
    },
    async count() {
        return collection.count().exec();
    },
    async waitFor({ docId, equals, timeoutMs }) {
        // findOne().$ emits the current state at once and again on every change of that doc.
        const doc$ = collection.findOne(docId).$.pipe(map(plain));
        return waitUntil(doc$, (d) => (equals == null ? d === null : deepEqual(d, equals)),
            timeoutMs, `doc ${docId} == ${JSON.stringify(equals)}`);
    },
    async waitAll({ docs, timeoutMs }) {
        // The whole collection (sorted by primary key) equals docs, exactly.
        const all$ = collection.find({ sort: [{ [primaryKey]: 'asc' }] }).$.pipe(map((ds) => ds.map(plain)));
        await waitUntil(all$, (ds) => deepEqual(ds, docs), timeoutMs, `all == ${docs.length} given docs`);
        return docs.length;
    },
    async waitCount({ count, timeoutMs }) {
        await waitUntil(collection.count().$, (n) => n === count, timeoutMs, `count == ${count}`);
        return count;
    },
    async peers() {
        return firstValueFrom(peerCount$);
    },
    async waitPeers({ count, timeoutMs }) {
        await waitUntil(peerCount$, (n) => n === count, timeoutMs, `peers == ${count}`);
        return count;
    },
    async stopReplication() {
        await stopPool();
        return true;
    },
    async startReplication() {
        await startPool();
        return true;
    },
    async awaitInSync({ timeoutMs }) {
        // Only the pairs where this peer is the fork have a replication state to await.
        const states = [...(pool?.peerStates$.getValue().values() ?? [])]
            .map(s => s.replicationState).filter(Boolean);
        await Promise.race([
            Promise.all(states.map(s => s.awaitInSync())),
            new Promise((_, rej) => setTimeout(() => rej(new Error('awaitInSync timeout')), timeoutMs ?? 30000).unref())
        ]);
        return states.length;
    },
    async request({ method, params, timeoutMs }) {
        // One raw request to the first peer that finished the token exchange, sent and awaited
        // with RxDB's own helper (what RxDB does for token/masterChangesSince/masterWrite).
        const states = [...(pool?.peerStates$.getValue().values() ?? [])];
        if (!states.length) {
            throw new Error('no connected peer');
        }
        const message = { id: 'raw|' + randomToken(10), method, params: params ?? [] };
        const answer = await sendMessageAndAwaitAnswer(pool.connectionHandler, states[0].peer, message, timeoutMs ?? 5000);
        return answer.result ?? null;
    },
    async storageToken() {
        return storageToken;
    },
    async signalingPeerId() {
        return signalingPeerId;
    },
    async quit() {
        await closeAll();
        return null; // handleLine answers, then exits
    }
};

let closing;
function closeAll() {
    // Cancel the pool first (stops replications, closes peers and the signaling socket),
    // then the database. Idempotent: quit, SIGTERM and stdin EOF may race.
    closing ??= (async () => {
        try {
            await stopPool();
            await db.close();
        } catch (err) {
            log('error while closing', err);
        }
    })();
    return closing;
}
runCommandLoop({ commands, closeAll, nonBlocking: new Set(['waitFor', 'waitAll', 'waitCount', 'waitPeers', 'awaitInSync']) });

writeOut({ event: 'ready', storageToken });
