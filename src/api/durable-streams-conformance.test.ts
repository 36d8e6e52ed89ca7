// Runs @durable-streams/server-conformance-tests (a vitest suite) against a real `torpor serve`
// started here. Its packaged CLI finds no test file under vitest 4, so a one-line test file that
// calls runConformanceTests({ baseUrl }) is written into a scratch directory inside the checkout
// (where the package resolves) and vitest runs it with a JSON report.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, it } from 'node:test';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { startTorporServer, type TorporServerProcess } from '../client/testing/torpor-server.ts';
import { startAuthorizingProxy, type AuthorizingProxy } from './testing/authorizing-proxy.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
/**
 * The floor this server must reach. Measured 2026-11-29: 332 of 338 (every test the suite runs; the
 * reference server passes 326), 326 with the host loaded by other work and vitest's 5 s timeout. The
 * other 6 are tests of reserved subscription APIs that the suite skips. The floor leaves room for a
 * loaded host only; a real regression in the protocol fails dozens of tests.
 */
const reached = 326;

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: TorporServerProcess;
/** The suite cannot send a token: it talks to the server through a proxy that adds it. */
let proxy: AuthorizingProxy;
let scratch: string;

before(async () => {
  home = await useTemporaryHome();
  server = await startTorporServer({ env: { ...process.env, TORPOR_HOME: home.home, TORPOR_STREAM_LONG_POLL_MS: '500' } });
  proxy = await startAuthorizingProxy(server.url, server.token);
  await mkdir(join(root, '.torpor-test'), { recursive: true });
  scratch = await mkdtemp(join(root, '.torpor-test', 'conformance-'));
  await writeFile(
    join(scratch, 'conformance.test.mjs'),
    'import { runConformanceTests } from "@durable-streams/server-conformance-tests";\nrunConformanceTests({ baseUrl: process.env.CONFORMANCE_URL });\n',
  );
});

after(async () => {
  await proxy?.close();
  await server?.stop();
  await home?.cleanup();
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

it('passes the Durable Streams server conformance suite', { timeout: 900_000 }, async (t) => {
  const report = join(scratch, 'report.json');
  const vitest = join(root, 'node_modules', 'vitest', 'vitest.mjs');
  await new Promise<void>((resolve) => {
    // A 20 s test timeout instead of vitest's 5 s: on a loaded 2-core host some tests' own client
    // loops (100 Ki expect calls, property-based runs of many appends) need more; no protocol
    // timing depends on it (the server's long-poll wait is 0.5 s).
    execFile(
      process.execPath,
      [vitest, 'run', '--root', scratch, '--testTimeout=20000', '--reporter=json', `--outputFile=${report}`],
      { cwd: scratch, env: { ...process.env, CONFORMANCE_URL: proxy.url }, maxBuffer: 64 * 1024 * 1024 },
      () => resolve(),
    );
  });
  const result = JSON.parse(await readFile(report, 'utf8')) as {
    numPassedTests: number;
    numTotalTests: number;
    testResults: Array<{ assertionResults: Array<{ status: string; fullName: string; failureMessages: string[] }> }>;
  };
  const failures = result.testResults.flatMap((file) => file.assertionResults).filter((test) => test.status === 'failed');
  t.diagnostic(`Durable Streams conformance: ${result.numPassedTests} of ${result.numTotalTests} passed`);
  for (const failure of failures) t.diagnostic(`failed: ${failure.fullName}: ${(failure.failureMessages[0] ?? '').split('\n')[0]}`);
  assert.ok(result.numTotalTests > 300, `the suite ran only ${result.numTotalTests} tests`);
  assert.ok(result.numPassedTests >= reached, `${result.numPassedTests} of ${result.numTotalTests} passed; this server reached ${reached}`);
});
