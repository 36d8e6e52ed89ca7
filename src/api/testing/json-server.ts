import { spawn, type ChildProcess } from 'node:child_process';
import { cliPath } from '../../runtime/testing/cli-process.ts';
import { endChildProcess } from '../../util/child-exit.ts';

export interface JsonServer {
  child: ChildProcess;
  /** What `torpor serve --json` printed first: where it listens and where its token is. */
  url: string;
  tokenFile: string;
  /** SIGTERM (SIGKILL after 20 s), then waits for the exit. */
  stop(): Promise<void>;
}

/**
 * Starts `torpor serve --port 0 --json` with these further arguments and exactly this environment,
 * and waits for its first line. The server's stderr goes to the test's, so a failure to start shows why.
 */
export async function startJsonServer(serveArguments: string[], environment: NodeJS.ProcessEnv): Promise<JsonServer> {
  const child = spawn(process.execPath, [cliPath, 'serve', '--port', '0', '--json', ...serveArguments], {
    env: environment,
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const first = await new Promise<string>((resolve, reject) => {
    let text = '';
    child.stdout!.on('data', (chunk) => {
      text += chunk;
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')));
    });
    child.once('exit', (code) => reject(new Error(`torpor serve exited (${code}) before listening`)));
  });
  const info = JSON.parse(first) as { url: string; tokenFile: string };
  return {
    child,
    url: info.url,
    tokenFile: info.tokenFile,
    stop: () => endChildProcess(child, { graceMs: 20_000 }),
  };
}
