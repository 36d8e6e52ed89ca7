import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

/** The CLI as a user runs it (bin/torpor.js), for tests that drive torpor through its commands. */
export const cliPath = fileURLToPath(new URL('../../../bin/torpor.js', import.meta.url));

export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs one torpor command with exactly this environment (the caller merges process.env), stdin closed. */
export function runCli(args: string[], environment: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [cliPath, ...args], { env: environment });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk) => (stdout += chunk));
    child.stderr.on('data', (chunk) => (stderr += chunk));
    child.on('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
    child.stdin.end();
  });
}
