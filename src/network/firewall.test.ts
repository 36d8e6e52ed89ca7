import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { ensureDebianPackages } from '../registry/testing/ensure-debian-packages.ts';
import { createTestNetwork, type TestNetwork } from './testing/test-network.ts';
import { baseRules, machineRules, removalRules } from './nft-ruleset.ts';
import { buildNetworkPolicy } from './policy.ts';
import { uidRange } from './uid-claims.ts';

/**
 * The rules themselves, without a VM: processes running as a machine's uid (what QEMU's slirp
 * sockets are) connect to the test network's servers from inside its namespace. Fast, and it covers
 * what the VM test cannot easily: fail-closed behaviour for a uid without rules, and that the host's
 * own processes are never touched.
 */

let network: TestNetwork;
const filteredUid = uidRange.first + 101;
const ruleLessUid = uidRange.first + 102;

function nft(lines: string[]): void {
  const result = spawnSync('ip', ['netns', 'exec', network.hostNamespace, 'nft', '-f', '-'], { input: lines.join('\n') + '\n', encoding: 'utf8' });
  assert.equal(result.status, 0, result.stderr);
}

/** Connects as `uid` and reports what happened: the server's word, or why it failed. */
function connectAs(uid: number, host: string, port: number): string {
  const source = `const net = require('node:net');
const socket = net.connect({ host: ${JSON.stringify(host)}, port: ${port}, timeout: 3000 }, () => socket.write('GET / HTTP/1.0\\r\\n\\r\\n'));
let body = '';
socket.on('data', (chunk) => (body += chunk));
socket.on('end', () => console.log(body.split('\\r\\n\\r\\n')[1]?.trim() ?? 'no body'));
socket.on('timeout', () => { console.log('timeout'); socket.destroy(); });
socket.on('error', (error) => console.log(error.code));`;
  const result = spawnSync(
    'ip',
    ['netns', 'exec', network.hostNamespace, 'setpriv', '--reuid', String(uid), '--regid', String(uid), '--clear-groups', process.execPath, '-e', source],
    {
      encoding: 'utf8',
    },
  );
  return result.stdout.trim() || result.stderr.trim();
}

before(async () => {
  ensureDebianPackages(['nft']);
  network = await createTestNetwork();
  const policy = buildNetworkPolicy({ allowHost: [String(network.allowedPort)], egressAllow: ['10.255.0.2/32'], egressDeny: ['203.0.113.0/25'] });
  nft([...baseRules(uidRange), ...machineRules({ uid: filteredUid, policy, resolvers: [] })]);
});

after(async () => {
  await network?.cleanup();
});

test("a machine's uid reaches what its policy allows, and is refused at once (a reset, not a timeout) elsewhere", () => {
  const seen = {
    secret: connectAs(filteredUid, '127.0.0.1', network.secretPort),
    secretIPv6: connectAs(filteredUid, '::1', network.secretPort),
    allowed: connectAs(filteredUid, '127.0.0.1', network.allowedPort),
    allowedIPv6: connectAs(filteredUid, '::1', network.allowedPort),
    hostPublicAddress: connectAs(filteredUid, '198.51.100.1', network.hostAddressPort),
    linkLocal: connectAs(filteredUid, '169.254.7.7', network.remotePort),
    allowedPrivate: connectAs(filteredUid, '10.255.0.2', network.remotePort),
    deniedPublic: connectAs(filteredUid, '203.0.113.10', network.remotePort),
    uniqueLocalIPv6: connectAs(filteredUid, 'fd00:255::2', network.remotePort),
    publicIPv6: connectAs(filteredUid, '2001:db8:113::10', network.remotePort),
  };
  assert.deepEqual(seen, {
    secret: 'ECONNREFUSED',
    secretIPv6: 'ECONNREFUSED',
    allowed: 'host-allowed',
    allowedIPv6: 'host-allowed',
    hostPublicAddress: 'ECONNREFUSED',
    linkLocal: 'ECONNREFUSED',
    allowedPrivate: 'remote', // --egress-allow 10.255.0.2/32 beats the built-in 10/8
    deniedPublic: 'ECONNREFUSED', // --egress-deny 203.0.113.0/25
    uniqueLocalIPv6: 'ECONNREFUSED',
    publicIPv6: 'remote',
  });
});

test('a uid of the range without rules gets nothing (fail closed), and the host outside the range is untouched', () => {
  assert.equal(connectAs(ruleLessUid, '203.0.113.10', network.remotePort), 'ECONNREFUSED');
  assert.equal(connectAs(ruleLessUid, '127.0.0.1', network.allowedPort), 'ECONNREFUSED');
  for (const uid of [0, 65534, uidRange.first - 1, uidRange.last + 1]) {
    assert.equal(connectAs(uid, '127.0.0.1', network.secretPort), 'host-secret', `uid ${uid}`);
    assert.equal(connectAs(uid, '10.255.0.2', network.remotePort), 'remote', `uid ${uid}`);
  }
});

test('after its rules are removed the uid is refused everything; installing again restores exactly its policy', () => {
  nft(removalRules(filteredUid));
  assert.equal(connectAs(filteredUid, '127.0.0.1', network.allowedPort), 'ECONNREFUSED');
  assert.equal(connectAs(filteredUid, '203.0.113.10', network.remotePort), 'ECONNREFUSED');
  nft([...baseRules(uidRange), ...machineRules({ uid: filteredUid, policy: buildNetworkPolicy({}), resolvers: [] })]);
  assert.equal(connectAs(filteredUid, '127.0.0.1', network.allowedPort), 'ECONNREFUSED', 'the old --allow-host is gone');
  assert.equal(connectAs(filteredUid, '203.0.113.10', network.remotePort), 'remote');
});
