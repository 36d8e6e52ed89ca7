import { test } from 'node:test';
import assert from 'node:assert/strict';
import { supervisorEnvironment } from './supervisor-process.ts';

test("a supervisor's environment names its state directory and leaves out the extra CA bundle", () => {
  const saved = { home: process.env.TORPOR_HOME, certificates: process.env.NODE_EXTRA_CA_CERTS };
  process.env.TORPOR_HOME = '/tmp/tp-supervisor-environment';
  process.env.NODE_EXTRA_CA_CERTS = '/etc/ssl/certs/ca-certificates.crt';
  try {
    const environment = supervisorEnvironment();
    assert.equal(environment.TORPOR_HOME, '/tmp/tp-supervisor-environment');
    assert.equal('NODE_EXTRA_CA_CERTS' in environment, false, 'node would parse the whole bundle at every supervisor start');
    assert.equal(environment.PATH, process.env.PATH, 'the rest is passed on');
    assert.equal(process.env.NODE_EXTRA_CA_CERTS, '/etc/ssl/certs/ca-certificates.crt', "the caller's own environment is untouched");
  } finally {
    for (const [name, value] of [
      ['TORPOR_HOME', saved.home],
      ['NODE_EXTRA_CA_CERTS', saved.certificates],
    ] as const) {
      if (value === undefined) delete process.env[name];
      else process.env[name] = value;
    }
  }
});
