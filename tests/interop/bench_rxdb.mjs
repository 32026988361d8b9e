// Benchmark: RxDB <-> RxDB WebRTC replication on this machine (loopback only).
// Two rxdb_peer.mjs processes (fairer than two databases in one event loop) and RxDB's
// signaling server. N docs of ~SIZE bytes are bulk-inserted on A; we time from the
// insert command until B's collection holds all N docs (B subscribes before the insert).
//
// Usage: node bench_rxdb.mjs [--docs 10000] [--size 1000] [--batch 20]
//   --batch sets pull.batchSize and push.batchSize (RxDB's default is 20).
// stdout: one JSON line {"docs":..,"seconds":..,"docs_per_s":.., ...details}
import { createHash } from 'node:crypto';
import { parseArgs } from 'node:util';
import { startSignaling, startPeer, DEFAULT_SCHEMA } from './driver.mjs';

const { values } = parseArgs({
    options: {
        docs: { type: 'string', default: '10000' },
        size: { type: 'string', default: '1000' },
        batch: { type: 'string' }
    }
});
const nDocs = Number(values.docs);
const size = Number(values.size);
const batch = values.batch ? { batchSize: Number(values.batch) } : {};

// Same election as RxDB's isMasterInWebRTCReplication with the default SHA-256 hash.
const sha = (s) => createHash('sha256').update(s).digest('hex');
const isMaster = (own, other) => sha(own + '|' + other) > sha(other + '|' + own);

const signaling = await startSignaling();
const config = {
    signalingUrl: signaling.url,
    topic: 'bench-' + Math.random().toString(36).slice(2, 10),
    schema: DEFAULT_SCHEMA,
    pull: batch,
    push: batch
};
const a = await startPeer('A', config);
const b = await startPeer('B', config);
try {
    await Promise.all([a.call('waitPeers', { count: 1, timeoutMs: 30000 }),
        b.call('waitPeers', { count: 1, timeoutMs: 30000 })]);

    // ~size bytes of JSON per doc: the filler text makes up the bulk.
    const filler = 'x'.repeat(Math.max(0, size - 40));
    const docs = Array.from({ length: nDocs }, (_, i) => ({
        id: 'doc-' + String(i).padStart(6, '0'), text: filler, n: i
    }));
    const docBytes = Buffer.byteLength(JSON.stringify(docs[0]));

    const arrived = b.call('waitCount', { count: nDocs, timeoutMs: 600000 });
    const t0 = performance.now();
    await a.call('bulkInsert', { docs });
    const tInserted = performance.now();
    await arrived;
    const seconds = (performance.now() - t0) / 1000;

    console.log(JSON.stringify({
        docs: nDocs,
        seconds: Number(seconds.toFixed(3)),
        docs_per_s: Math.round(nDocs / seconds),
        doc_bytes: docBytes,
        insert_seconds: Number(((tInserted - t0) / 1000).toFixed(3)),
        batch_size: batch.batchSize ?? 20,
        // master A -> B is the fork and pulls; fork A -> A pushes to master B
        a_role: isMaster(a.storageToken, b.storageToken) ? 'master' : 'fork'
    }));
} finally {
    await Promise.all([a.quit(), b.quit()]);
    await signaling.stop();
}
process.exit(0);
