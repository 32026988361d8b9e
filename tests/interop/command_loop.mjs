// The JSON-lines command loop shared by the Node peers the Python tests drive
// (rxdb_peer.mjs over WebRTC, rxdb_websocket.mjs over WebSocket): one JSON command per
// stdin line, one JSON answer per stdout line, logs on stderr.
import { createInterface } from 'node:readline';
import { deepEqual } from 'rxdb';
import { filter, firstValueFrom, timeout as rxTimeout } from 'rxjs';

export const writeOut = (obj) => process.stdout.write(JSON.stringify(obj) + '\n');

export function makeConflictHandler(spec) {
    if (!spec || spec === 'default') {
        return undefined; // undefined = RxDB uses defaultConflictHandler (master state wins)
    }
    const isEqual = (a, b) => deepEqual(a, b);
    if (spec === 'forkWins') {
        return { isEqual, resolve: async (i) => i.newDocumentState };
    }
    if (typeof spec === 'object' && spec.maxField) {
        const f = spec.maxField;
        return {
            isEqual,
            resolve: async (i) => (i.newDocumentState[f] > i.realMasterState[f]
                ? i.newDocumentState : i.realMasterState)
        };
    }
    throw new Error('unknown conflictHandler ' + JSON.stringify(spec));
}

export function waitUntil(obs$, pred, timeoutMs, what) {
    return firstValueFrom(obs$.pipe(
        filter(pred),
        rxTimeout({
            first: timeoutMs ?? 30000,
            with: () => { throw new Error(`timeout after ${timeoutMs ?? 30000} ms waiting for ${what}`); }
        })
    ));
}

// Runs `commands` (name -> async fn(msg)) from stdin until `quit`, stdin EOF or a signal,
// then awaits `closeAll()` and exits. Returns `enqueue(line)`, to run a command from the script.
//
// Commands start in arrival order, each after the previous one finished, so a pipelined
// insert-then-get behaves as if sent one by one. The `nonBlocking` (wait*) commands only
// *start* in order (their subscription sees every earlier command's effect) and then do not
// hold up the queue, so a pending waitFor never blocks an insert sent after it.
export function runCommandLoop({ commands, closeAll, nonBlocking }) {
    async function shutdown(code) {
        await closeAll();
        // Exit explicitly: native threads (node-datachannel) could keep the process alive.
        // stdout is a pipe, and pipe writes are synchronous on Linux: answers are out.
        process.exit(code);
    }

    async function handleLine(line) {
        if (!line.trim()) {
            return;
        }
        let msg;
        try {
            msg = JSON.parse(line);
        } catch (err) {
            writeOut({ id: null, ok: false, error: 'invalid JSON: ' + err.message });
            return;
        }
        const fn = commands[msg.cmd];
        if (!fn) {
            writeOut({ id: msg.id, ok: false, error: 'unknown cmd ' + msg.cmd });
            return;
        }
        try {
            const result = await fn(msg);
            writeOut({ id: msg.id, ok: true, result: result ?? null });
        } catch (err) {
            writeOut({ id: msg.id, ok: false, error: err?.message ?? String(err) });
        }
        if (msg.cmd === 'quit') {
            await shutdown(0);
        }
    }

    let queue = Promise.resolve();
    function enqueue(line) {
        let cmd;
        try {
            cmd = JSON.parse(line).cmd;
        } catch (err) { /* handleLine reports it */ }
        const run = queue.then(() => {
            const done = handleLine(line);
            return nonBlocking.has(cmd) ? undefined : done;
        });
        queue = run.catch(() => {});
    }
    createInterface({ input: process.stdin }).on('line', enqueue)
        // stdin closed = the driver is gone: finish the queued commands, then shut down.
        .on('close', () => queue.then(() => shutdown(0)));
    process.on('SIGTERM', () => shutdown(0));
    process.on('SIGINT', () => shutdown(0));
    return enqueue;
}
