import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { Command } from 'commander';
import { startApiServer } from '../../api/server.ts';
import { registerLogCommands, type CommandInputOutput } from './log.ts';

const home = mkdtempSync(join(tmpdir(), 'torpor-cli-test-'));
after(() => rmSync(home, { recursive: true, force: true }));

async function torpor(args: string[], stdin = '', environment: NodeJS.ProcessEnv = { TORPOR_HOME: home }, interrupt?: Promise<void>) {
  let stdout = '';
  let stderr = '';
  let exitCode = 0;
  const io: CommandInputOutput = {
    stdin: (async function* () {
      yield stdin;
    })(),
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
    environment,
    setExitCode: (code) => (exitCode = code),
    interrupted: () => interrupt ?? new Promise(() => {}),
  };
  const program = new Command('torpor').exitOverride();
  registerLogCommands(program, io);
  await program.parseAsync(['node', 'torpor', ...args]);
  return { stdout, stderr, exitCode };
}

const lines = (...entries: unknown[]) => entries.map((entry) => JSON.stringify(entry)).join('\n') + '\n';

describe('torpor log (embedded store)', () => {
  it('appends from stdin, shows, lists and forks', async () => {
    const appended = await torpor(
      ['log', 'append', 'cli-1'],
      lines({ kind: 'message', role: 'user', content: 'hi' }, { kind: 'message', role: 'assistant', content: 'hello' }),
    );
    assert.deepEqual(appended, { stdout: '0\n1\n', stderr: '', exitCode: 0 });
    const shown = await torpor(['log', 'show', 'cli-1', '--json', '--from', '1']);
    const rows = shown.stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line));
    assert.deepEqual(
      rows.map((row) => [row.offset, row.entry.content]),
      [[1, 'hello']],
    );
    assert.match((await torpor(['log', 'show', 'cli-1'])).stdout, /^\s+0 {2}message {6}user: hi\n\s+1 {2}message {6}assistant: hello\n$/);
    assert.equal((await torpor(['log', 'fork', 'cli-1@1', '--name', 'cli-2'])).stdout, 'cli-2\n');
    const listed = await torpor(['log', 'ls']);
    assert.match(listed.stdout, /cli-2\s+1\s+cli-1@1/);
    const retried = await torpor(['log', 'append', 'cli-1', '--producer', 'p', '--seq', '0', '--json'], lines({ kind: 'reasoning', text: 'x' }));
    const again = await torpor(['log', 'append', 'cli-1', '--producer', 'p', '--seq', '0', '--json'], lines({ kind: 'reasoning', text: 'x' }));
    assert.deepEqual(JSON.parse(again.stdout).offsets, JSON.parse(retried.stdout).offsets);
    assert.equal(JSON.parse(again.stdout).duplicate, true);
  });

  it('fails with exit code 1 and a message that says what to do', async () => {
    const notJson = await torpor(['log', 'append', 'cli-bad'], '{nope\n');
    assert.equal(notJson.exitCode, 1);
    assert.match(notJson.stderr, /line 1 of stdin is not JSON.*Nothing was written/);
    assert.match((await torpor(['log', 'append', 'cli-bad'], '')).stderr, /no entries on stdin/);
    assert.match((await torpor(['log', 'append', 'cli-bad'], lines({ kind: 'message', role: 'user' }))).stderr, /content: required field is missing/);
    assert.match((await torpor(['log', 'show', 'nobody'])).stderr, /Unknown session "nobody"/);
    assert.match((await torpor(['log', 'fork', 'cli-1@99'])).stderr, /beyond the end/);
    assert.match((await torpor(['log', 'fork', 'cli-1@x'])).stderr, /non-negative integer/);
    assert.match(
      (await torpor(['log', 'append', 'cli-1', '--expected-offset', '0'], lines({ kind: 'reasoning', text: 'x' }))).stderr,
      /another writer appended first/,
    );
  });
});

describe('torpor log (through a running server)', () => {
  it('uses the server recorded in the state directory and follows live', async () => {
    const serverHome = mkdtempSync(join(tmpdir(), 'torpor-cli-server-'));
    const server = await startApiServer({ port: 0, stateDirectory: join(serverHome, 'server-state') });
    try {
      // The CLI's own state directory points at the server; its local store stays untouched.
      writeFileSync(join(serverHome, 'server.json'), JSON.stringify({ url: server.url, pid: process.pid, storage: 'test' }));
      // The server's token lives in its own state directory: hand it over as a user would.
      const environment = { TORPOR_HOME: serverHome, TORPOR_TOKEN: server.token };
      assert.equal((await torpor(['log', 'append', 'remote-1'], lines({ kind: 'message', role: 'user', content: 'via server' }), environment)).stdout, '0\n');
      assert.equal((await server.log.read('remote-1')).entries.length, 1);
      let stop!: () => void;
      const interrupt = new Promise<void>((resolve) => (stop = resolve));
      const following = torpor(['log', 'show', 'remote-1', '--follow'], '', environment, interrupt);
      await new Promise((resolve) => setTimeout(resolve, 100));
      await server.log.append('remote-1', [{ kind: 'message', role: 'assistant', content: 'live' }]);
      await new Promise((resolve) => setTimeout(resolve, 200));
      stop();
      const followed = await following;
      assert.match(followed.stdout, /user: via server\n.*assistant: live\n$/s);
      const explicit = await torpor(['log', '--url', server.url, '--token', server.token, 'ls', '--json'], '', { TORPOR_HOME: home });
      assert.equal(JSON.parse(explicit.stdout.trim()).id, 'remote-1');
    } finally {
      await server.close();
      rmSync(serverHome, { recursive: true, force: true });
    }
  });
});
