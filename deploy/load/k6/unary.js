// k6 unary gRPC load: GetPresence and CheckSee against a presence broker.
//
//   presence-loadgen --setup-only --domain loadtest --token-file data/bootstrap-admin.token
//   k6 run -e TOKEN=$(cat data/bootstrap-admin.token) -e ADDR=127.0.0.1:50051 deploy/load/k6/unary.js
//
// The protos are loaded from the repository (paths relative to this file); set
// REFLECT=1 to use server reflection instead.
import grpc from 'k6/net/grpc';
import { check } from 'k6';

const client = new grpc.Client();
if (!__ENV.REFLECT) {
  client.load(['../../../proto'], 'presence/v1/presence.proto', 'presence/v1/policy.proto');
}

export const options = {
  scenarios: {
    get_presence: { executor: 'constant-vus', vus: 20, duration: '30s', exec: 'getPresence' },
    check_see: { executor: 'constant-vus', vus: 20, duration: '30s', exec: 'checkSee' },
  },
  thresholds: {
    'grpc_req_duration{scenario:get_presence}': ['p(99)<50'],
    'grpc_req_duration{scenario:check_see}': ['p(99)<50'],
  },
};

const domain = __ENV.DOMAIN || 'loadtest';
const params = { metadata: { authorization: `Bearer ${__ENV.TOKEN}` } };

function connect() {
  if (__ITER === 0) {
    client.connect(__ENV.ADDR || '127.0.0.1:50051', { plaintext: true, reflect: !!__ENV.REFLECT });
  }
}

function user(i) {
  return 'u' + String(i).padStart(6, '0');
}

export function getPresence() {
  connect();
  const first = Math.floor(Math.random() * 990);
  const targets = Array.from({ length: 10 }, (_, i) => user(first + i));
  const res = client.invoke('presence.v1.PresenceService/GetPresence', { domain, targets }, params);
  check(res, { 'GetPresence OK': (r) => r && r.status === grpc.StatusOK });
}

export function checkSee() {
  connect();
  const first = Math.floor(Math.random() * 990);
  const targets = Array.from({ length: 8 }, (_, i) => user(first + i + 1));
  const res = client.invoke(
    'presence.v1.PolicyService/CheckSee',
    { domain, watcher: user(first), targets },
    params,
  );
  check(res, { 'CheckSee OK': (r) => r && r.status === grpc.StatusOK });
}
