import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { parseCidr } from './cidr.ts';
import { buildNetworkPolicy, parseHostPort } from './policy.ts';
import { baseRules, machineRules, removalRules } from './nft-ruleset.ts';
import { uidRange } from './uid-claims.ts';
import { networkOptionsFrom } from '../runtime/run-options.ts';
import { TorporError } from '../util/errors.ts';
import { ensureDebianPackages } from '../registry/testing/ensure-debian-packages.ts';

const refused = (code: string) => (error: unknown) => error instanceof TorporError && error.code === code && Boolean(error.hint);

test('address ranges are parsed strictly: text that is not exactly an address and a prefix never reaches nft', () => {
  assert.deepEqual(parseCidr('10.1.0.0/16'), { family: 4, address: '10.1.0.0', prefixLength: 16 });
  assert.deepEqual(parseCidr('203.0.113.7'), { family: 4, address: '203.0.113.7', prefixLength: 32 });
  assert.deepEqual(parseCidr('2001:DB8::/32'), { family: 6, address: '2001:db8::', prefixLength: 32 });
  assert.deepEqual(parseCidr('::ffff:10.0.0.0/104'), { family: 6, address: '::ffff:10.0.0.0', prefixLength: 104 });
  for (const hostile of [
    '10.0.0.1/8', // host bits below the prefix
    '10.0.0.0/33',
    '1.2.3.4/32 accept', // rule injection
    '1.2.3.4; flush ruleset',
    '{ 0.0.0.0/0 }',
    'localhost',
    '256.1.1.1',
    '10.0.0.0/-1',
    '2001:db8::1/32',
    '1.2.3.4/032x',
    '',
  ]) {
    assert.throws(() => parseCidr(hostile), refused('invalid-cidr'), hostile);
  }
});

test('host ports and network flags are checked, and contradictions are refused', () => {
  assert.deepEqual(parseHostPort('11434'), { port: 11434, protocol: 'tcp' });
  assert.deepEqual(parseHostPort(5353), { port: 5353, protocol: 'tcp' });
  assert.deepEqual(parseHostPort('5353/UDP'), { port: 5353, protocol: 'udp' });
  for (const bad of ['0', '65536', 'http', '80/sctp', '80 accept', '-1']) assert.throws(() => parseHostPort(bad), refused('invalid-allow-host'), bad);
  assert.deepEqual(buildNetworkPolicy({ allowHost: ['80', 80, '80/tcp'], egressAllow: ['10.0.0.0/8', '10.0.0.0/8'] }), {
    mode: 'filtered',
    allowHost: [{ port: 80, protocol: 'tcp' }],
    egressAllow: ['10.0.0.0/8'],
    egressDeny: [],
  });
  const flags = { allowHost: [], egressAllow: [], egressDeny: [] };
  assert.deepEqual(networkOptionsFrom({ ...flags, network: 'none' }), { network: false });
  assert.equal(networkOptionsFrom({ ...flags, network: 'unrestricted' }).networkPolicy?.mode, 'unrestricted');
  assert.equal(networkOptionsFrom({ ...flags, network: 'user' }).networkPolicy?.mode, 'filtered');
  assert.throws(() => networkOptionsFrom({ ...flags, network: 'host' }), refused('invalid-network'));
  assert.throws(() => networkOptionsFrom({ ...flags, network: 'unrestricted', egressDeny: ['1.2.3.0/24'] }), refused('invalid-network'));
});

test('the rules: most specific user range first (a tie denies), then the host itself and the private ranges, then accept', () => {
  const policy = buildNetworkPolicy({
    allowHost: ['11434', '53/udp'],
    egressAllow: ['10.0.0.0/8', '198.51.100.7'],
    egressDeny: ['10.9.0.0/16', '198.51.100.7/32'],
  });
  const rules = machineRules({ uid: uidRange.first + 7, policy, resolvers: ['127.0.0.53', '2001:db8::53'] }).filter((line) => line.startsWith('add rule'));
  const bodies = rules.map((line) => line.replace(/^add rule inet torpor machine-\d+ /, ''));
  assert.deepEqual(bodies, [
    'ip daddr { 127.0.0.53 } udp dport 53 accept',
    'ip daddr { 127.0.0.53 } tcp dport 53 accept',
    'ip6 daddr { 2001:db8::53 } udp dport 53 accept',
    'ip6 daddr { 2001:db8::53 } tcp dport 53 accept',
    'ip daddr 127.0.0.1 tcp dport { 11434 } accept',
    'ip6 daddr ::1 tcp dport { 11434 } accept',
    'ip daddr 127.0.0.1 udp dport { 53 } accept',
    'ip6 daddr ::1 udp dport { 53 } accept',
    'ip daddr 198.51.100.7/32 goto refuse',
    'ip daddr 198.51.100.7/32 accept',
    'ip daddr 10.9.0.0/16 goto refuse',
    'ip daddr 10.0.0.0/8 accept',
    'fib daddr type { local, broadcast, multicast, anycast } goto refuse',
    bodies.at(-3)!,
    bodies.at(-2)!,
    'accept',
  ]);
  assert.match(bodies.at(-3)!, /^ip daddr \{ .*10\.0\.0\.0\/8.*169\.254\.0\.0\/16.*\} goto refuse$/);
  assert.match(bodies.at(-2)!, /^ip6 daddr \{ .*fc00::\/7.*fe80::\/10.*\} goto refuse$/);
  const unrestricted = machineRules({ uid: uidRange.first + 8, policy: buildNetworkPolicy({ mode: 'unrestricted' }), resolvers: [] });
  assert.deepEqual(
    unrestricted.filter((line) => line.startsWith('add rule')),
    [`add rule inet torpor machine-${uidRange.first + 8} accept`],
  );
});

test('nft accepts the generated rules and their removal (checked in a namespace of its own, nothing applied to the host)', () => {
  ensureDebianPackages(['nft']);
  const namespace = `tp-nft-${randomBytes(3).toString('hex')}`;
  assert.equal(spawnSync('ip', ['netns', 'add', namespace]).status, 0);
  try {
    const nft = (lines: string[]) => spawnSync('ip', ['netns', 'exec', namespace, 'nft', '-f', '-'], { input: lines.join('\n') + '\n', encoding: 'utf8' });
    const policy = buildNetworkPolicy({ allowHost: ['11434', '53/udp'], egressAllow: ['10.0.0.0/8', '2001:db8::/32'], egressDeny: ['203.0.113.0/24'] });
    const uid = uidRange.first + 9;
    const installed = nft([...baseRules(uidRange), ...machineRules({ uid, policy, resolvers: ['127.0.0.53', '::1'] })]);
    assert.equal(installed.status, 0, installed.stderr);
    // Installing twice replaces, never duplicates.
    assert.equal(nft([...baseRules(uidRange), ...machineRules({ uid, policy, resolvers: [] })]).status, 0);
    const listed = spawnSync('ip', ['netns', 'exec', namespace, 'nft', 'list', 'table', 'inet', 'torpor'], { encoding: 'utf8' }).stdout;
    assert.equal(listed.match(/jump guests/g)?.length, 1);
    assert.equal(listed.match(/fib daddr type/g)?.length, 1);
    for (let round = 0; round < 2; round++) assert.equal(nft(removalRules(uid)).status, 0, 'removal is idempotent');
    const after = spawnSync('ip', ['netns', 'exec', namespace, 'nft', 'list', 'table', 'inet', 'torpor'], { encoding: 'utf8' }).stdout;
    assert.doesNotMatch(after, new RegExp(`machine-${uid}`));
  } finally {
    spawnSync('ip', ['netns', 'del', namespace]);
  }
});

test('without root the filter is unavailable, and a filtered machine is refused with a way out (never started unfiltered)', () => {
  const source = `import('${new URL('./firewall.ts', import.meta.url).pathname}').then((firewall) => {
    try { firewall.requireNetworkFilter(); console.log('started'); } catch (error) { console.log(JSON.stringify({ code: error.code, hint: error.hint })); }
  })`;
  const result = spawnSync('setpriv', ['--reuid', '65534', '--regid', '65534', '--clear-groups', process.execPath, '--import', 'tsx', '-e', source], {
    encoding: 'utf8',
  });
  const outcome = JSON.parse(result.stdout.trim().split('\n').pop() ?? '{}') as { code?: string; hint?: string };
  assert.equal(outcome.code, 'network-filter-unavailable', result.stdout + result.stderr);
  assert.match(outcome.hint ?? '', /--network none.*--network unrestricted/);
});
