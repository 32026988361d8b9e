// RxDB's own signaling server (startSignalingServerSimplePeer from rxdb 17.6),
// bound to loopback, for the interop tests.
//
// Usage: node signaling.mjs [port] [host] [--exit-with-stdin]   (port 0 = let the OS pick one)
// stdout: exactly one line {"event":"ready","port":N,"url":"ws://127.0.0.1:N"}.
// Everything else (RxDB logs "# disconnect peer ..." with console.log) goes to stderr,
// so stdout stays machine-readable. Stops on SIGTERM / SIGINT.
import { once } from 'node:events';
import { startSignalingServerSimplePeer } from 'rxdb/plugins/replication-webrtc';

const out = process.stdout.write.bind(process.stdout);
console.log = console.info = console.debug = console.warn = (...a) => console.error(...a);

const port = Number(process.argv[2] ?? 0);
const host = process.argv[3] ?? '127.0.0.1';

// The options go straight to ws' WebSocketServer, so `host` restricts the listening address.
const { server } = await startSignalingServerSimplePeer({ port, host });
if (!server.address()) {
    await once(server, 'listening');
}
// RxDB returns serverOptions.port (0 here), so ask the socket for the real one.
const realPort = server.address().port;
function stop(signal) {
    console.error(`signaling: ${signal}, closing`);
    // Close client sockets too, otherwise server.close() waits for them.
    for (const client of server.clients) {
        client.terminate();
    }
    server.close();
    // Nothing is persisted, so there is nothing to wait for.
    setImmediate(() => process.exit(0));
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));
// --exit-with-stdin: also stop when stdin closes, so that a parent that dies without
// stopping us (killed test run) does not leave the server behind.
if (process.argv.includes('--exit-with-stdin')) {
    process.stdin.on('end', () => stop('stdin closed'));
    process.stdin.resume();
}

out(JSON.stringify({ event: 'ready', port: realPort, url: `ws://${host}:${realPort}` }) + '\n');

