// rxdb_peer.mjs with RxDB's own pull.modifier and push.modifier (partial replication tests,
// tests/interop/test_rxdb_partial.py). Functions cannot travel in the JSON config, so this
// wrapper builds them from a spec and hands them to rxdb_peer.mjs's config unchanged
// otherwise (same commands, same output lines).
//
// Usage: node rxdb_modifier_peer.mjs '<json config of rxdb_peer.mjs, plus "modifiers">'
//   "modifiers": {
//     "field": "text",          the string field the modifiers rewrite
//     "prefix": "rx:",          pull.modifier prepends it; push.modifier strips it
//     "dropAtLeast": 1000       push.modifier returns null (the row is not pushed) for n >= it
//   }
const raw = process.argv[2] ?? '{}';
const spec = JSON.parse(raw).modifiers ?? {};
const field = spec.field ?? 'text';
const prefix = spec.prefix ?? '';
const dropAtLeast = spec.dropAtLeast ?? Infinity;

const pullModifier = async (doc) => ({ ...doc, [field]: prefix + doc[field] });
const pushModifier = async (doc) => {
    if (typeof doc.n === 'number' && doc.n >= dropAtLeast) {
        return null;
    }
    const value = doc[field];
    return {
        ...doc,
        [field]: typeof value === 'string' && value.startsWith(prefix) ? value.slice(prefix.length) : value
    };
};

// rxdb_peer.mjs parses its config with JSON.parse(process.argv[2]) at load time and spreads
// config.pull / config.push into replicateWebRTC: give that one parse the modifiers.
const realParse = JSON.parse;
JSON.parse = function parseWithModifiers(text, reviver) {
    const value = realParse.call(JSON, text, reviver);
    if (text === raw) {
        JSON.parse = realParse;
        value.pull = { ...(value.pull ?? {}), modifier: pullModifier };
        value.push = { ...(value.push ?? {}), modifier: pushModifier };
    }
    return value;
};
await import('./rxdb_peer.mjs');
