// The package as a user gets it: `npm pack`, install the tarball into a fresh project, then run a
// plain .mjs consumer and a type-checked .ts consumer against a `torpor serve` started from the
// installed package's own bin. No TypeScript loader may be needed at run time.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, readdir, rm, writeFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import { useTemporaryHome } from '../src/runtime/testing/temporary-home.ts';
import { shellAgent } from '../src/session/testing/shell-agent.ts';
import { startTorporServer, type TorporServerProcess } from '../src/client/testing/torpor-server.ts';

const run = promisify(execFile);
const root = fileURLToPath(new URL('..', import.meta.url));
const typescript = join(root, 'node_modules', 'typescript', 'bin', 'tsc');
/** Packages with native addons: compiling them again in the fresh project takes minutes on 2 cores. */
const nativePackages = ['better-sqlite3', 'zstd-napi'];

let project: string;
let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: TorporServerProcess | undefined;

async function installedVersion(directory: string, name: string): Promise<string | undefined> {
  try {
    return (JSON.parse(await readFile(join(directory, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
  } catch {
    return undefined;
  }
}

before(async () => {
  home = await useTemporaryHome();
  project = await mkdtemp(join(tmpdir(), 'torpor-consumer-'));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', project], { cwd: root, maxBuffer: 16 * 1024 * 1024 });
  const tarball = join(project, (JSON.parse(stdout) as Array<{ filename: string }>)[0].filename);
  await writeFile(join(project, 'package.json'), JSON.stringify({ name: 'torpor-consumer', private: true, type: 'module' }));
  // --ignore-scripts: the native addons built by this checkout are reused below when the versions
  // match; otherwise `npm rebuild` compiles them like a user's install would.
  await run('npm', ['install', '--prefer-offline', '--ignore-scripts', '--no-audit', '--no-fund', tarball, '@types/node@20'], {
    cwd: project,
    maxBuffer: 16 * 1024 * 1024,
  });
  const rebuild: string[] = [];
  for (const name of nativePackages) {
    const ours = await installedVersion(root, name);
    if (ours && ours === (await installedVersion(project, name)) && existsSync(join(root, 'node_modules', name, 'build'))) {
      await cp(join(root, 'node_modules', name, 'build'), join(project, 'node_modules', name, 'build'), { recursive: true });
    } else rebuild.push(name);
  }
  if (rebuild.length > 0) await run('npm', ['rebuild', ...rebuild], { cwd: project, maxBuffer: 16 * 1024 * 1024 });
  await writeFile(join(project, 'agent.sh'), shellAgent);
  server = await startTorporServer({
    cli: join(project, 'node_modules', '.bin', 'torpor'),
    env: { ...process.env, TORPOR_HOME: home.home, TORPOR_NO_BUNDLE: '' },
  });
});

after(async () => {
  await server?.stop();
  await home?.cleanup();
  if (project) await rm(project, { recursive: true, force: true });
});

const consumerMjs = `
import { readFileSync } from "node:fs";
import { Torpor, NotFoundError } from "torpor";
import { parseEntry } from "torpor/context";
import { createAgent } from "torpor/agent";

const torpor = new Torpor();
const report = { health: await torpor.health(), agent: typeof createAgent, entry: parseEntry({ kind: "message", role: "user", content: "hi" }).kind };
try {
  await torpor.sessions.get("s-000000000000");
} catch (error) {
  report.notFound = error instanceof NotFoundError ? error.code : String(error);
}
const session = await torpor.sessions.create({ image: "base", command: ["sh", "-c", readFileSync("agent.sh", "utf8")], resources: { memory: "256m" } });
report.reply = await session.send("from the package").text();
const fork = await session.fork();
report.forkReply = await fork.send("fork").text();
report.logged = (await session.log.read()).entries.filter((stored) => stored.entry.kind === "message").length;
await fork.delete();
await session.delete();
report.left = (await torpor.sessions.list()).length;
console.log(JSON.stringify(report));
`;

const consumerTs = `
import { Torpor, NotFoundError, type SessionEvent, type SessionInfo } from "torpor";
import type { Entry } from "torpor/context";
import type { AgentOptions } from "torpor/agent";

const torpor = new Torpor({ baseUrl: process.env.TORPOR_URL });
const sessions: SessionInfo[] = await torpor.sessions.list();
const describe = (event: SessionEvent): string => (event.type === "text-delta" ? event.delta : event.type);
const entry: Entry = { kind: "message", role: "user", content: "typed" };
const appended = await torpor.sessions.log("typed-1").append([entry]);
const read = await torpor.sessions.log("typed-1").read({ from: 0 });
let code = "";
try {
  await torpor.sessions.delete("nope");
} catch (error) {
  if (error instanceof NotFoundError) code = error.code + ":" + error.status;
}
const options: Partial<AgentOptions> = {};
console.log(JSON.stringify({ sessions: sessions.length, described: describe({ type: "turn-finish", turnId: "t" }), next: appended.nextOffset, content: read.entries[0].entry.content, code, options: Object.keys(options).length }));
`;

const tsconfig = {
  compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, outDir: 'out', types: ['node'], lib: ['ES2023', 'DOM'] },
};

describe('the packed package', { timeout: 900_000 }, () => {
  it('holds compiled JavaScript and declarations, no TypeScript sources and no loader', async () => {
    const installed = join(project, 'node_modules', 'torpor');
    const manifest = JSON.parse(await readFile(join(installed, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
      exports: Record<string, unknown>;
    };
    assert.equal(manifest.dependencies.tsx, undefined, 'tsx must not be a run-time dependency');
    assert.equal(existsSync(join(project, 'node_modules', 'tsx')), false);
    assert.equal(existsSync(join(installed, 'src')), false);
    const files = await readdir(installed, { recursive: true });
    const typescriptSources = files.filter((file) => file.endsWith('.ts') && !file.endsWith('.d.ts'));
    assert.deepEqual(typescriptSources, []);
    for (const file of [
      'dist/client/index.js',
      'dist/client/index.d.ts',
      'dist/context/index.js',
      'dist/sdk/index.d.ts',
      'build/current.json',
      'build/package/cli.mjs',
      'build/package/supervisor.mjs',
      'build/package/chunk-worker.mjs',
      'build/dashboard/app.js',
    ]) {
      assert.ok((await stat(join(installed, file))).size > 0, file);
    }
  });

  it('runs a plain .mjs consumer (client, torpor/context, torpor/agent, a real session) against `torpor serve` from its bin', async () => {
    await writeFile(join(project, 'consumer.mjs'), consumerMjs);
    const { stdout } = await run(process.execPath, ['consumer.mjs'], {
      cwd: project,
      env: { ...process.env, TORPOR_URL: server!.url, TORPOR_TOKEN: server!.token, TORPOR_HOME: home.home },
      timeout: 600_000,
    });
    const report = JSON.parse(stdout) as Record<string, unknown>;
    assert.deepEqual(report.health, { ok: true, storage: 'sqlite' });
    assert.equal(report.agent, 'function');
    assert.equal(report.entry, 'message');
    assert.equal(report.notFound, 'session-unknown');
    assert.equal(report.reply, 'turn 1: from the package; notes 1; child yes');
    assert.equal(report.forkReply, 'turn 2: fork; notes 2; child yes');
    assert.equal(report.logged, 2);
    assert.equal(report.left, 0);
  });

  it('type-checks and runs a strict .ts consumer, and its types catch mistakes', async () => {
    await writeFile(join(project, 'consumer.ts'), consumerTs);
    await writeFile(join(project, 'tsconfig.json'), JSON.stringify({ ...tsconfig, files: ['consumer.ts'] }));
    await run(process.execPath, [typescript, '-p', '.'], { cwd: project }).catch((error: { stdout: string }) => assert.fail(`tsc failed:\n${error.stdout}`));
    const { stdout } = await run(process.execPath, ['out/consumer.js'], {
      cwd: project,
      env: { ...process.env, TORPOR_URL: server!.url, TORPOR_TOKEN: server!.token },
    });
    assert.deepEqual(JSON.parse(stdout), { sessions: 0, described: 'turn-finish', next: 1, content: 'typed', code: 'session-unknown:404', options: 0 });

    // The declarations are real types, not `any`: a wrong call must not compile.
    await writeFile(join(project, 'wrong.ts'), 'import { Torpor } from "torpor";\nawait new Torpor().sessions.create({ image: 42, command: "sh" });\n');
    await writeFile(
      join(project, 'tsconfig.wrong.json'),
      JSON.stringify({ ...tsconfig, compilerOptions: { ...tsconfig.compilerOptions, noEmit: true }, files: ['wrong.ts'] }),
    );
    const failure = await run(process.execPath, [typescript, '-p', 'tsconfig.wrong.json'], { cwd: project }).then(
      () => undefined,
      (error: { stdout: string }) => error.stdout,
    );
    assert.match(failure ?? 'compiled', /wrong\.ts.*error TS2322/s);
  });
});
