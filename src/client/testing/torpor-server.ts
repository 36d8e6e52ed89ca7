import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface TorporServerProcess {
  url: string;
  /** The full-access token the server created in its state directory. */
  token: string;
  child: ChildProcess;
  stop(): Promise<void>;
}

/**
 * Starts a real `torpor serve` process on a free port (the CLI prints its URL) with the given
 * environment (TORPOR_HOME...). `cli` defaults to this checkout's bin/torpor.js; the package test
 * passes the installed package's.
 */
export async function startTorporServer(options: { env: NodeJS.ProcessEnv; cli?: string; arguments?: string[] }): Promise<TorporServerProcess> {
  const cli = options.cli ?? fileURLToPath(new URL('../../../bin/torpor.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', ...(options.arguments ?? [])], { env: options.env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`torpor serve did not start within 60 s: ${output}`)), 60_000);
    const onData = (chunk: Buffer) => {
      output += chunk.toString();
      const match = /listening on (http:\/\/\S+)/.exec(output);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`torpor serve exited with ${code}: ${output}`));
    });
  });
  // serve writes its token (api/token in the state directory) before it listens.
  const token = readFileSync(join(options.env.TORPOR_HOME ?? '', 'api', 'token'), 'utf8').trim();
  return {
    url,
    token,
    child,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    },
  };
}
