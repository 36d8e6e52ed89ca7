import assert from 'node:assert/strict';
import { test } from 'node:test';
import { TorporError } from './errors.ts';
import { ContextLogError, ProducerFencedError, TorporError as ExportedByContext } from '../context/errors.ts';

test('one error family: code, message, hint, status, exit code, details', () => {
  const plain = new TorporError('name-in-use', 'the name "web" is already used', { hint: 'choose another --name' });
  assert.equal(plain.name, 'TorporError');
  assert.equal(plain.status, 500, 'an error nobody classified is the server side');
  assert.equal(plain.exitCode, 125);
  assert.deepEqual(plain.toJSON(), { error: { code: 'name-in-use', message: 'the name "web" is already used', hint: 'choose another --name' } });

  const fenced = new ProducerFencedError('writer', 1, 2);
  assert.ok(fenced instanceof TorporError && fenced instanceof ContextLogError);
  assert.equal(ExportedByContext, TorporError, 'torpor/context exports the same class');
  assert.equal(fenced.name, 'ProducerFencedError');
  assert.equal(fenced.code, 'producer-fenced');
  assert.equal(fenced.status, 403);
  assert.equal(fenced.details.currentEpoch, 2);
  assert.equal(fenced.toJSON().error.currentEpoch, 2);
  assert.equal('hint' in fenced.toJSON().error, false, 'no hint, no key');

  const cause = new Error('disk');
  assert.equal(new TorporError('x', 'y', { cause }).cause, cause);
});
