// Tiny Node-side driver for signaling.mjs and rxdb_peer.mjs (the Python tests have their own).
// Used by smoke.mjs and bench_rxdb.mjs. Speaks the same JSON-lines protocol as the Python driver.
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';

const here = dirname(fileURLToPath(import.meta.url));

// Default schema for smoke tests and the benchmark.
export const DEFAULT_SCHEMA = {
    version: 0,
    primaryKey: 'id',
    type: 'object',
    properties: {
        id: { type: 'string', maxLength: 100 },
        text: { type: 'string' },
        n: { type: 'number' }
    },
    required: ['id']
};

// Start a child that prints JSON lines; resolve once it prints {"event":"ready",...}.
function startChild(script, args, name, onEvent) {
    const child = spawn(process.execPath, [join(here, script), ...args], {
        stdio: ['pipe', 'pipe', 'pipe']
    });
    // Prefix the child's stderr so interleaved logs stay readable; silent unless DEBUG is set.
    createInterface({ input: child.stderr }).on('line', (l) => {
        if (process.env.DEBUG) process.stderr.write(`[${name}] ${l}\n`);
    });
    const pending = new Map();
    let ready;
    const readyP = new Promise((res, rej) => {
        ready = res;
        child.once('exit', (code) => rej(new Error(`${name} exited with ${code} before ready`)));
    });
    createInterface({ input: child.stdout }).on('line', (line) => {
        const msg = JSON.parse(line);
        if (msg.event === 'ready') return ready(msg);
        if (msg.id !== undefined && pending.has(msg.id)) {
            const { res, rej } = pending.get(msg.id);
            pending.delete(msg.id);
            return msg.ok ? res(msg.result) : rej(new Error(`${name}: ${msg.error}`));
        }
        onEvent?.(msg);
    });
    let nextId = 1;
    const call = (cmd, args = {}) => new Promise((res, rej) => {
        const id = nextId++;
        pending.set(id, { res, rej });
        child.stdin.write(JSON.stringify({ id, cmd, ...args }) + '\n');
    });
    const exited = new Promise((res) => child.once('exit', (code, signal) => res({ code, signal })));
    return { child, readyP, call, exited };
}

export async function startSignaling() {
    const c = startChild('signaling.mjs', ['0'], 'signaling');
    const ready = await c.readyP;
    return {
        url: ready.url,
        pid: c.child.pid,
        async stop() {
            c.child.kill('SIGTERM'); // by PID (ChildProcess.kill signals exactly this child)
            return c.exited;
        }
    };
}

export async function startPeer(name, config) {
    const c = startChild('rxdb_peer.mjs', [JSON.stringify(config)], name,
        (ev) => {
            if (ev.event !== 'signaling') console.error(`[${name}] event`, JSON.stringify(ev));
        });
    const ready = await c.readyP;
    return {
        name,
        pid: c.child.pid,
        storageToken: ready.storageToken,
        call: c.call,
        async quit() {
            await c.call('quit');
            return c.exited;
        },
        kill() { c.child.kill('SIGKILL'); }
    };
}
