// The browser side of the example: an RxDB 17.6 todo list stored in IndexedDB (Dexie) and
// replicated with replicateWebRTC + simple-peer. serve.py serves this page, p2pdb's signaling
// server and a p2pdb peer; /config.json tells the page where the signaling server is.
import './process-shim.js';
import { addRxPlugin, createRxDatabase } from 'rxdb';
import { RxDBLeaderElectionPlugin } from 'rxdb/plugins/leader-election';
import { getRxStorageDexie } from 'rxdb/plugins/storage-dexie';
import { getConnectionHandlerSimplePeer, replicateWebRTC } from 'rxdb/plugins/replication-webrtc';

// Several tabs share one IndexedDB database; only the leader tab replicates.
addRxPlugin(RxDBLeaderElectionPlugin);

// The schema of examples/todo_app.py, without its `indexes`: RxDB wants `minimum`, `maximum`
// and `multipleOf` on an indexed number, and indexes are local to each replica anyway.
// The documents (what travels) are the same on both sides.
const todoSchema = {
    version: 0,
    primaryKey: 'id',
    type: 'object',
    properties: {
        id: { type: 'string', maxLength: 32 },
        text: { type: 'string', minLength: 1 },
        done: { type: 'boolean' },
        created: { type: 'number' } // seconds since the epoch, as Python's time.time()
    },
    required: ['id', 'text', 'done', 'created']
};

const $ = (selector) => document.querySelector(selector);
const status = (text) => { $('#status').textContent = text; };

function newId() {
    // 32 hex digits, like the uuid4().hex ids of todo_app.py
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function render(docs) {
    const list = $('#todos');
    list.replaceChildren(...docs.map((doc) => {
        const item = document.createElement('li');
        item.dataset.id = doc.id;
        item.classList.toggle('done', doc.done);
        const toggle = document.createElement('input');
        toggle.type = 'checkbox';
        toggle.className = 'toggle';
        toggle.checked = doc.done;
        toggle.addEventListener('change', () => doc.incrementalPatch({ done: toggle.checked }));
        const text = document.createElement('span');
        text.className = 'text';
        text.textContent = doc.text;
        const remove = document.createElement('button');
        remove.className = 'delete';
        remove.textContent = 'Delete';
        remove.addEventListener('click', () => doc.incrementalRemove());
        item.append(toggle, text, remove);
        return item;
    }));
}

async function main() {
    const config = await (await fetch('config.json')).json();
    const db = await createRxDatabase({ name: config.dbName, storage: getRxStorageDexie() });
    const { todos } = await db.addCollections({ todos: { schema: todoSchema } });

    todos.find({ sort: [{ created: 'asc' }] }).$.subscribe((docs) => render(docs));
    $('#add-form').addEventListener('submit', async (event) => {
        event.preventDefault();
        const input = $('#new-todo');
        const text = input.value.trim();
        input.value = '';
        if (text) {
            await todos.insert({ id: newId(), text, done: false, created: Date.now() / 1000 });
        }
    });

    status('waiting to be the leader tab...');
    const pool = await replicateWebRTC({
        collection: todos,
        topic: config.topic,
        connectionHandlerCreator: getConnectionHandlerSimplePeer({
            signalingServerUrl: config.signalingUrl,
            // No STUN server: everything here is on this machine (simple-peer's default is
            // Google's public STUN server).
            config: { iceServers: [] }
        }),
        pull: {},
        push: {}
    });
    pool.error$.subscribe((error) => console.error('replication error', error));
    pool.peerStates$.subscribe((states) => {
        status(`topic ${config.topic}: ${states.size} peer(s) connected`);
        document.body.dataset.peers = String(states.size);
    });
    window.todoExample = { db, todos, pool }; // for the devtools console
}

main().catch((error) => {
    status('failed: ' + error);
    console.error(error);
});
