import type { Command } from 'commander';
import { findMachine } from '../../runtime/machine-names.ts';
import { connectToMachine } from '../../runtime/supervisor-client.ts';
import { parseEnvironment } from '../../runtime/run-options.ts';
import { GuestError } from '../../guest/agent-client.ts';
import { connectTerminal, terminalSize } from '../terminal.ts';
import { collect } from '../output.ts';

export function registerExecCommand(program: Command): void {
  program
    .command('exec')
    .description('run a command in a running machine; exits with its exit code')
    .argument('<machine>', 'name or id')
    .argument('<command...>')
    .option('-i, --interactive', 'send stdin to the command')
    .option('-t, --tty', 'give the command a terminal')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect)
    .option('-w, --workdir <dir>', 'working directory')
    .option('-u, --user <user[:group]>', 'run as this user')
    .passThroughOptions()
    .action(async (reference: string, command: string[], flags: { interactive?: boolean; tty?: boolean; env?: string[]; workdir?: string; user?: string }) => {
      const config = await findMachine(reference);
      const client = await connectToMachine(config);
      const tty = flags.tty ?? false;
      const interactive = flags.interactive ?? false;
      const environment = new Map(config.env.map((entry) => [entry.slice(0, entry.indexOf('=')), entry]));
      for (const entry of parseEnvironment(flags.env ?? [])) environment.set(entry.slice(0, entry.indexOf('=')), entry);
      const remote = client.exec(
        {
          argv: command,
          env: [...environment.values()],
          workingDirectory: flags.workdir ?? config.workingDir,
          user: flags.user ?? config.user,
          tty,
          stdin: interactive,
          ...(tty ? terminalSize() : {}),
        },
        { stdout: (data) => process.stdout.write(data), stderr: (data) => process.stderr.write(data) },
      );
      const disconnect = connectTerminal(remote, { tty, interactive });
      try {
        const status = await remote.exited;
        process.exitCode = status.code;
      } catch (error) {
        // docker's codes: 127 command not found, 126 cannot be run.
        process.stderr.write(`torpor: ${(error as Error).message}\n`);
        process.exitCode = error instanceof GuestError && error.errno === 2 ? 127 : 126;
      } finally {
        disconnect();
        client.close();
      }
    });
}
