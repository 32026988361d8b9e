// RxDB 17.6's json-dump plugin, driven from stdin: the backup interop test (test_rxdb_backup.py).
// Input (JSON): {"schema": {...}, "docs": [...], "remove": [ids], "import": <dump or null>}.
// Creates an in-memory RxDB database with one collection "notes", imports "import" when given
// (with its collections' schemaHash replaced by RxDB's own: RxDB's hash covers its normalized
// schema, which p2pdb does not compute), inserts "docs", removes "remove", then prints
// {"dump": db.exportJSON(), "docs": every live document} as JSON on stdout.
import { readFileSync } from 'node:fs';
import { addRxPlugin, createRxDatabase } from 'rxdb';
import { RxDBJsonDumpPlugin } from 'rxdb/plugins/json-dump';
import { getRxStorageMemory } from 'rxdb/plugins/storage-memory';

addRxPlugin(RxDBJsonDumpPlugin);
const input = JSON.parse(readFileSync(0, 'utf8'));
const db = await createRxDatabase({ name: 'dump' + Date.now(), storage: getRxStorageMemory() });
const { notes } = await db.addCollections({ notes: { schema: input.schema } });
if (input.import) {
    const ownHash = await notes.schema.hash;
    for (const col of input.import.collections) col.schemaHash = ownHash;
    await db.importJSON(input.import);
}
if (input.docs && input.docs.length) await notes.bulkInsert(input.docs);
for (const id of input.remove || []) await (await notes.findOne(id).exec()).remove();
const dump = await db.exportJSON();
const docs = (await notes.find({ sort: [{ id: 'asc' }] }).exec()).map((d) => d.toJSON());
process.stdout.write(JSON.stringify({ dump, docs }));
await db.close();
