import { test } from 'node:test';
import assert from 'node:assert/strict';
import { compareVersions } from './kernel.ts';

test('guest kernel versions order by their numbers, not as text', () => {
  const found = ['6.1.0-10-cloud-amd64', '6.1.0-9-cloud-amd64', '6.10.0-1-cloud-amd64', '6.2.0-1-cloud-amd64', '6.1.0-56-cloud-amd64'];
  assert.deepEqual([...found].sort(compareVersions), [
    '6.1.0-9-cloud-amd64',
    '6.1.0-10-cloud-amd64',
    '6.1.0-56-cloud-amd64',
    '6.2.0-1-cloud-amd64',
    '6.10.0-1-cloud-amd64',
  ]);
  // The same order localeCompare's numeric collation gave, for what /boot holds.
  assert.deepEqual([...found].sort(compareVersions), [...found].sort((a, b) => a.localeCompare(b, undefined, { numeric: true })));
  assert.equal(compareVersions('6.1.0-9-cloud-amd64', '6.1.0-9-cloud-amd64'), 0);
  assert.ok(compareVersions('6.1.0-9', '6.1.0-9-cloud-amd64') < 0, 'a prefix comes first');
  assert.ok(compareVersions('6.1.0-009', '6.1.0-10') < 0, 'leading zeros do not make a number bigger');
});
