// k6 streaming gRPC load: each VU opens a Watch stream (on behalf of a
// user, with an admin or gateway token holding presence.watch), counts
// the states it receives and keeps the stream open for HOLD seconds.
// Drive events meanwhile with presence-loadgen (broker mode) or ghz
// publish.json. Streams are batched, gateway style (BATCH=0 turns it
// off; LINGER_MS sets the linger): one message carries every pending
// change of the stream.
//
//   presence-loadgen --setup-only --domain loadtest --token-file data/bootstrap-admin.token
//   k6 run -e TOKEN=$(cat data/bootstrap-admin.token) deploy/load/k6/watch.js
import grpc from 'k6/net/grpc';
import { Counter, Trend } from 'k6/metrics';
import { check } from 'k6';

const client = new grpc.Client();
client.load(['../../../proto'], 'presence/v1/presence.proto');

const states = new Counter('presence_states');
const snapshotMs = new Trend('presence_snapshot_ms', true);

export const options = {
  vus: Number(__ENV.VUS || 100),
  iterations: Number(__ENV.VUS || 100),
};

const domain = __ENV.DOMAIN || 'loadtest';
const hold = Number(__ENV.HOLD || 30);
const batched = (__ENV.BATCH || '1') !== '0';
const lingerMs = Number(__ENV.LINGER_MS || 0);

function user(i) {
  return 'u' + String(i).padStart(6, '0');
}

export default function () {
  client.connect(__ENV.ADDR || '127.0.0.1:50051', { plaintext: true });
  const first = ((__VU - 1) * 10) % 990;
  const started = Date.now();
  const stream = new grpc.Stream(client, 'presence.v1.PresenceService/Watch', {
    metadata: { authorization: `Bearer ${__ENV.TOKEN}` },
  });
  let gotSnapshot = false;
  let closing = false;
  const onEvent = (ev) => {
    if (ev.state) {
      states.add(1);
    }
    if (ev.snapshotDone && !gotSnapshot) {
      gotSnapshot = true;
      snapshotMs.add(Date.now() - started);
    }
  };
  stream.on('data', (ev) => {
    if (ev.batch) {
      (ev.batch.events || []).forEach(onEvent);
    } else {
      onEvent(ev);
    }
  });
  stream.on('error', (e) => {
    // Closing the client at the end cancels the stream: not an error.
    if (!closing) {
      check(e, { 'no stream error': () => false });
    }
  });
  stream.write({
    domain,
    watcher: user(first),
    targets: { targets: Array.from({ length: 10 }, (_, i) => user(first + i)) },
    batching: batched ? { lingerMs } : undefined,
  });
  stream.end();
  // Keep the stream open: k6 runs the event loop until the timer fires.
  setTimeout(() => {
    check(gotSnapshot, { 'snapshot received': (g) => g });
    closing = true;
    client.close();
  }, hold * 1000);
}
