import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseReference, canonicalName, familiarName, namesRegistry, isLoopbackRegistry } from './reference.ts';
import { TorporError } from '../util/errors.ts';

const digest = 'sha256:' + 'ab'.repeat(32);

test('references normalize like docker', () => {
  const cases: Array<[string, string, string]> = [
    ['alpine', 'docker.io/library/alpine:latest', 'alpine:latest'],
    ['alpine:3.20', 'docker.io/library/alpine:3.20', 'alpine:3.20'],
    ['user/tool', 'docker.io/user/tool:latest', 'user/tool:latest'],
    ['docker.io/library/node:20', 'docker.io/library/node:20', 'node:20'],
    ['index.docker.io/library/node', 'docker.io/library/node:latest', 'node:latest'],
    ['ghcr.io/owner/app/sub:v1.2', 'ghcr.io/owner/app/sub:v1.2', 'ghcr.io/owner/app/sub:v1.2'],
    ['localhost:5000/app', 'localhost:5000/app:latest', 'localhost:5000/app:latest'],
    ['localhost/app', 'localhost/app:latest', 'localhost/app:latest'],
    [`127.0.0.1:5000/app@${digest}`, `127.0.0.1:5000/app@${digest}`, `127.0.0.1:5000/app@${digest}`],
    [`alpine:3@${digest}`, `docker.io/library/alpine@${digest}`, `alpine@${digest}`],
  ];
  for (const [input, canonical, familiar] of cases) {
    assert.equal(canonicalName(parseReference(input)), canonical, input);
    assert.equal(familiarName(parseReference(input)), familiar, input);
  }
  assert.deepEqual(parseReference(`alpine:3@${digest}`), { registry: 'docker.io', repository: 'library/alpine', tag: '3', digest });
});

test('bad references are refused with a hint', () => {
  for (const input of ['Alpine', 'alpine:', 'alpine@sha256:123', 'a//b', '', 'alpine:bad tag']) {
    assert.throws(
      () => parseReference(input),
      (error: unknown) => error instanceof TorporError && error.code === 'invalid-reference' && !!error.hint,
      input,
    );
  }
});

test('only names with a registry host count as registry references for run', () => {
  assert.equal(namesRegistry('alpine'), false);
  assert.equal(namesRegistry('team/tool:1.0'), false);
  assert.equal(namesRegistry('docker.io/library/alpine'), true);
  assert.equal(namesRegistry('localhost:5000/app:1'), true);
  assert.equal(isLoopbackRegistry('127.0.0.1:5000'), true);
  assert.equal(isLoopbackRegistry('127.1.2.3'), true);
  assert.equal(isLoopbackRegistry('[::1]:5000'), true);
  assert.equal(isLoopbackRegistry('localhost'), true);
  assert.equal(isLoopbackRegistry('registry.example.com:5000'), false);
  assert.equal(isLoopbackRegistry('128.0.0.1'), false);
});
