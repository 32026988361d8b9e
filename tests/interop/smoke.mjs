// Smoke test: signaling server + two RxDB peer processes on loopback.
// Checks: insert on A shows up on B, B's update shows up on A, a delete on A reaches B,
// offline edits on both sides resolve to the master's state (RxDB's default conflict handler),
// and every peer answers the stdio protocol. Exit 0 = all good.
// Run: node smoke.mjs      (DEBUG=1 for the children's stderr)
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { startSignaling, startPeer, DEFAULT_SCHEMA } from './driver.mjs';

const t0 = Date.now();
const step = (s) => console.log(`${((Date.now() - t0) / 1000).toFixed(2)}s ${s}`);

const signaling = await startSignaling();
step(`signaling on ${signaling.url} (pid ${signaling.pid})`);
const config = {
    signalingUrl: signaling.url,
    topic: 'smoke-' + Math.random().toString(36).slice(2, 10),
    collection: 'docs',
    schema: DEFAULT_SCHEMA
};
const a = await startPeer('A', config);
const b = await startPeer('B', config);
step(`peers ready: A token=${a.storageToken} (pid ${a.pid}), B token=${b.storageToken} (pid ${b.pid})`);

let failed = false;
try {
    await Promise.all([a.call('waitPeers', { count: 1, timeoutMs: 20000 }),
        b.call('waitPeers', { count: 1, timeoutMs: 20000 })]);
    step('A and B see one peer each');

    // A -> B
    const doc = { id: 'doc-1', text: 'from A ü€😀', n: 1 };
    assert.deepEqual(await a.call('insert', { doc }), doc);
    await b.call('waitFor', { docId: 'doc-1', equals: doc, timeoutMs: 10000 });
    assert.deepEqual(await b.call('get', { docId: 'doc-1' }), doc);
    step('insert on A arrived on B');

    // B -> A
    const updated = await b.call('patch', { docId: 'doc-1', patch: { text: 'updated by B', n: 2 } });
    assert.deepEqual(updated, { id: 'doc-1', text: 'updated by B', n: 2 });
    await a.call('waitFor', { docId: 'doc-1', equals: updated, timeoutMs: 10000 });
    step('update on B arrived on A');

    // bulk + count + all
    await b.call('bulkInsert', { docs: [{ id: 'doc-2', n: 2 }, { id: 'doc-0', n: 0 }] });
    await a.call('waitCount', { count: 3, timeoutMs: 10000 });
    assert.deepEqual((await a.call('all')).map(d => d.id), ['doc-0', 'doc-1', 'doc-2']);
    step('bulkInsert on B: A has 3 docs, sorted');

    // delete A -> B
    await a.call('remove', { docId: 'doc-2' });
    await b.call('waitFor', { docId: 'doc-2', equals: null, timeoutMs: 10000 });
    assert.equal(await b.call('count'), 2);
    step('remove on A arrived on B');

    // upsert + error path
    await a.call('upsert', { doc: { id: 'doc-0', n: 10 } });
    await b.call('waitFor', { docId: 'doc-0', equals: { id: 'doc-0', n: 10 }, timeoutMs: 10000 });
    await assert.rejects(a.call('insert', { doc: { id: 'doc-0' } }), /CONFLICT|conflict|409/);
    await assert.rejects(a.call('waitCount', { count: 99, timeoutMs: 200 }), /timeout/);
    assert.equal(await a.call('storageToken'), a.storageToken);
    step('upsert replicated, errors reported as ok:false');

    // Conflict: edit the same doc on both sides while replication is stopped, then reconnect.
    // Default handler = the master's state wins; the master is elected from the storage tokens.
    const sha = (x) => createHash('sha256').update(x).digest('hex');
    const aIsMaster = sha(a.storageToken + '|' + b.storageToken) > sha(b.storageToken + '|' + a.storageToken);
    await Promise.all([a.call('stopReplication'), b.call('stopReplication')]);
    assert.equal(await a.call('peers'), 0);
    await a.call('patch', { docId: 'doc-1', patch: { text: 'offline A' } });
    await b.call('patch', { docId: 'doc-1', patch: { text: 'offline B' } });
    await Promise.all([a.call('startReplication'), b.call('startReplication')]);
    const winner = { id: 'doc-1', text: aIsMaster ? 'offline A' : 'offline B', n: 2 };
    await Promise.all([a.call('waitFor', { docId: 'doc-1', equals: winner, timeoutMs: 20000 }),
        b.call('waitFor', { docId: 'doc-1', equals: winner, timeoutMs: 20000 })]);
    step(`conflict after reconnect resolved to the master's (${aIsMaster ? 'A' : 'B'}) state on both`);
} catch (err) {
    failed = true;
    console.error('SMOKE FAILED:', err);
} finally {
    const exits = await Promise.all([a.quit(), b.quit()]);
    step(`peers quit: ${JSON.stringify(exits)}`);
    await signaling.stop();
    step('signaling stopped');
}
console.log(failed ? 'smoke: FAILED' : 'smoke: OK');
process.exit(failed ? 1 : 0);
