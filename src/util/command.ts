import { spawn, type SpawnOptions } from 'node:child_process';
import { TorporError } from './errors.ts';

export interface CommandResult {
  stdout: string;
  stderr: string;
  code: number;
}

/** Runs a program to completion; rejects with its stderr when it fails (unless `allowFailure`). */
export function runCommand(
  program: string,
  args: string[],
  options: SpawnOptions & { input?: string | Buffer; allowFailure?: boolean } = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(program, args, { ...options, stdio: ['pipe', 'pipe', 'pipe'] });
    const stdout: Buffer[] = [];
    const stderr: Buffer[] = [];
    child.stdout!.on('data', (chunk: Buffer) => stdout.push(chunk));
    child.stderr!.on('data', (chunk: Buffer) => stderr.push(chunk));
    child.on('error', (error: NodeJS.ErrnoException) => {
      reject(
        error.code === 'ENOENT'
          ? new TorporError('missing-program', `${program} is not installed`, { hint: 'run `torpor doctor` to see what is missing and how to install it' })
          : error,
      );
    });
    child.on('close', (code, signal) => {
      const result = { stdout: Buffer.concat(stdout).toString(), stderr: Buffer.concat(stderr).toString(), code: code ?? 128 };
      if (result.code !== 0 && !options.allowFailure) {
        reject(new Error(`${program} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${result.stderr.trim() || result.stdout.trim()}`));
      } else {
        resolve(result);
      }
    });
    // A program that exits without reading its input must not crash us with EPIPE.
    child.stdin!.on('error', () => {});
    child.stdin!.end(options.input ?? '');
  });
}

export async function commandExists(program: string): Promise<boolean> {
  const result = await runCommand('sh', ['-c', `command -v ${program}`], { allowFailure: true });
  return result.code === 0;
}
