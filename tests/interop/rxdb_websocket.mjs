// One real RxDB 17.6 database (memory storage) that replicates over RxDB's websocket plugin,
// as a server (startWebsocketServer) or as a client (replicateWithWebsocketServer), driven over
// stdin/stdout with JSON lines. Used by tests/interop/test_rxdb_websocket.py.
//
// Usage: node rxdb_websocket.mjs '<json config>'
//   config = {
//     "mode": "server" | "client",                required
//     "collections": {"todos": {...RxDB schema...}},   required, one or more
//     "conflictHandler": "default" | "forkWins" | {"maxField": "n"},   default "default" (all collections)
//     server: "host": "127.0.0.1", "port": 0     (0 = the OS picks one; the ready line says which)
//     client: "url": "ws://127.0.0.1:PORT", "replicationIdentifier": "...", "batchSize": 20,
//             "headers": {...} (RxDB sends them in an `auth` message), "autostart": true
//   }
//
// stdout carries only protocol lines:
//   {"event":"ready","port":N|null,"storageToken":"..."}   once, at start (client: before connecting)
//   {"event":"error","collection":c,"message":"..."}       each replicationState.error$ emission
//   {"id":..., "ok":true, "result":...} / {"id":..., "ok":false, "error":"..."}   one per command
// RxDB's own logs (the websocket client console.logs errors) go to stderr.
//
// stdin: one JSON command per line, {"id": <any>, "cmd": ..., "collection"?: name, ...args}
// ("collection" defaults to the first collection of the config):
//   insert {doc} / upsert {doc} -> doc           patch {docId, patch} -> doc    remove {docId} -> true
//   get {docId} -> doc|null                       all -> [docs sorted by primary key]
//   waitFor {docId, equals: doc|null, timeoutMs}  waitAll {docs, timeoutMs}    waitCount {count, timeoutMs}
//   client only:
//     startReplication -> true   (replicateWithWebsocketServer for every collection; resolves once
//                                 the socket is open, as RxDB's does)
//     stopReplication -> true    (cancel the replication states; RxDB leaves their sockets open
//                                 until the collection closes: the server keeps streaming to them)
//     awaitInSync {timeoutMs} -> true
//     received -> number of documents the replication of `collection` pulled since it started
//   storageToken -> token        quit -> null, then the process exits 0
// Docs are returned as RxDocument.toJSON(): no _rev, _meta, _attachments, _deleted.
// Commands start in arrival order; the wait* commands do not hold up the ones after them.
import { createRxDatabase, randomToken, deepEqual } from 'rxdb';
import { makeConflictHandler, runCommandLoop, waitUntil, writeOut } from './command_loop.mjs';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';
import { startWebsocketServer, replicateWithWebsocketServer } from 'rxdb/plugins/replication-websocket';
import { map } from 'rxjs';

console.log = console.info = console.debug = console.warn = (...a) => console.error(...a);
const log = (...a) => console.error('[rxdb_websocket]', ...a);

const config = JSON.parse(process.argv[2] ?? '{}');
if (!['server', 'client'].includes(config.mode) || !config.collections) {
    log('config needs mode (server|client) and collections');
    process.exit(2);
}


const db = await createRxDatabase({
    name: 'ws' + randomToken(8),
    storage: getRxStorageMemory(),
    multiInstance: false
});
const specs = {};
for (const [name, schema] of Object.entries(config.collections)) {
    specs[name] = { schema, conflictHandler: makeConflictHandler(config.conflictHandler) };
}
const collections = await db.addCollections(specs);
const names = Object.keys(collections);
const storageToken = await db.storageToken;

function collectionOf(msg) {
    const name = msg.collection ?? names[0];
    const collection = collections[name];
    if (!collection) {
        throw new Error('unknown collection ' + name);
    }
    return collection;
}
const primaryKeyOf = (c) => c.schema.primaryPath;

// ---- server ---------------------------------------------------------------------------------
let server = null;
let port = null;
if (config.mode === 'server') {
    server = await startWebsocketServer({
        database: db,
        host: config.host ?? '127.0.0.1',
        port: config.port ?? 0
    });
    if (!server.server.address()) {
        await new Promise((res) => server.server.once('listening', res));
    }
    port = server.server.address().port;
}

// ---- client ---------------------------------------------------------------------------------
// name -> {state, received}
let replications = null;
async function startReplication() {
    if (replications) {
        return;
    }
    const started = {};
    for (const name of names) {
        const state = await replicateWithWebsocketServer({
            collection: collections[name],
            url: config.url,
            replicationIdentifier: config.replicationIdentifier ?? ('ws-' + name + '-' + config.url),
            live: true,
            batchSize: config.batchSize ?? 20,
            ...(config.headers ? { headers: config.headers } : {})
        });
        const entry = { state, received: 0 };
        state.received$.subscribe(() => { entry.received += 1; });
        state.error$.subscribe((err) => {
            const message = err?.message ?? String(err);
            log('replication error', name, message, JSON.stringify(err?.parameters ?? {}));
            writeOut({ event: 'error', collection: name, message });
        });
        started[name] = entry;
    }
    replications = started;
}
async function stopReplication() {
    const current = replications;
    replications = null;
    if (!current) {
        return;
    }
    for (const { state } of Object.values(current)) {
        await state.cancel();
    }
}

// ---- helpers --------------------------------------------------------------------------------
const plain = (doc) => (doc ? doc.toJSON() : null);


async function mustGetDoc(c, docId) {
    const doc = await c.findOne(docId).exec();
    if (!doc) {
        throw new Error('document not found: ' + docId);
    }
    return doc;
}

function replicationOf(msg) {
    const entry = replications?.[msg.collection ?? names[0]];
    if (!entry) {
        throw new Error('no replication running for ' + (msg.collection ?? names[0]));
    }
    return entry;
}

const commands = {
    async insert(msg) { return plain(await collectionOf(msg).insert(msg.doc)); },
    async upsert(msg) { return plain(await collectionOf(msg).upsert(msg.doc)); },
    async patch(msg) {
        const c = collectionOf(msg);
        return plain(await (await mustGetDoc(c, msg.docId)).incrementalPatch(msg.patch));
    },
    async remove(msg) {
        const c = collectionOf(msg);
        await (await mustGetDoc(c, msg.docId)).incrementalRemove();
        return true;
    },
    async get(msg) { return plain(await collectionOf(msg).findOne(msg.docId).exec()); },
    async all(msg) {
        const c = collectionOf(msg);
        return (await c.find({ sort: [{ [primaryKeyOf(c)]: 'asc' }] }).exec()).map(plain);
    },
    async waitFor(msg) {
        const doc$ = collectionOf(msg).findOne(msg.docId).$.pipe(map(plain));
        return waitUntil(doc$, (d) => (msg.equals == null ? d === null : deepEqual(d, msg.equals)),
            msg.timeoutMs, `doc ${msg.docId} == ${JSON.stringify(msg.equals)}`);
    },
    async waitAll(msg) {
        const c = collectionOf(msg);
        const all$ = c.find({ sort: [{ [primaryKeyOf(c)]: 'asc' }] }).$.pipe(map((ds) => ds.map(plain)));
        await waitUntil(all$, (ds) => deepEqual(ds, msg.docs), msg.timeoutMs, `all == ${msg.docs.length} given docs`);
        return msg.docs.length;
    },
    async waitCount(msg) {
        await waitUntil(collectionOf(msg).count().$, (n) => n === msg.count, msg.timeoutMs, `count == ${msg.count}`);
        return msg.count;
    },
    async startReplication() { await startReplication(); return true; },
    async stopReplication() { await stopReplication(); return true; },
    async awaitInSync(msg) {
        const states = Object.values(replications ?? {}).map((e) => e.state);
        await Promise.race([
            Promise.all(states.map((s) => s.awaitInSync())),
            new Promise((_, rej) => setTimeout(() => rej(new Error('awaitInSync timeout')), msg.timeoutMs ?? 30000).unref())
        ]);
        return true;
    },
    async received(msg) { return replicationOf(msg).received; },
    async storageToken() { return storageToken; },
    async quit() { await closeAll(); return null; }
};

let closing;
function closeAll() {
    closing ??= (async () => {
        try {
            await stopReplication();
            if (server) {
                await server.close();
            }
            // closing the database also closes the clients' sockets (RxDB's onClose hooks)
            await db.close();
        } catch (err) {
            log('error while closing', err);
        }
    })();
    return closing;
}
const enqueue = runCommandLoop({ commands, closeAll, nonBlocking: new Set(['waitFor', 'waitAll', 'waitCount', 'awaitInSync']) });

writeOut({ event: 'ready', port, storageToken });
if (config.mode === 'client' && config.autostart !== false) {
    // Started after the ready line: RxDB's client waits until the socket is open.
    enqueue(JSON.stringify({ id: '__autostart', cmd: 'startReplication' }));
}
