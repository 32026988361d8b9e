// RxDB's simple-peer connection handler needs process.nextTick, which browsers lack
// (RxDB error RC7). Imported before RxDB so that it is set when any RxDB code runs.
if (typeof globalThis.process === 'undefined') {
    globalThis.process = {};
}
if (typeof globalThis.process.nextTick !== 'function') {
    globalThis.process.nextTick = (fn, ...args) => queueMicrotask(() => fn(...args));
}
