import type { Command } from 'commander';
import { findMachine, startMachine, stopMachine, removeMachine, killMachine, effectiveState } from '../../runtime/machines.ts';
import { printJson } from '../output.ts';
import { TorporError } from '../../util/errors.ts';

/** Runs `action` for each named machine, like docker: report each failure, go on, fail at the end. */
async function forEach(references: string[], action: (reference: string) => Promise<void>): Promise<void> {
  let failures = 0;
  for (const reference of references) {
    try {
      await action(reference);
    } catch (error) {
      failures++;
      const hint = error instanceof TorporError && error.hint ? `\n  ${error.hint}` : '';
      process.stderr.write(`torpor: ${(error as Error).message}${hint}\n`);
    }
  }
  if (failures > 0) process.exitCode = 1;
}

export function registerLifecycleCommands(program: Command): void {
  program
    .command('start')
    .description('start stopped machines (their files are kept; memory starts fresh)')
    .argument('<machines...>')
    .action((references: string[]) =>
      forEach(references, async (reference) => {
        const config = await findMachine(reference);
        await startMachine(config.id);
        process.stdout.write(config.name + '\n');
      }),
    );

  program
    .command('stop')
    .description('stop machines: SIGTERM to the process, SIGKILL after the timeout, then power off')
    .argument('<machines...>')
    .option('-t, --time <seconds>', 'seconds to wait before killing', '10')
    .action((references: string[], flags: { time: string }) =>
      forEach(references, async (reference) => {
        const config = await findMachine(reference);
        await stopMachine(config, { timeoutSeconds: Number(flags.time) });
        process.stdout.write(config.name + '\n');
      }),
    );

  program
    .command('kill')
    .description('end machines at once (SIGKILL to their processes, by pid)')
    .argument('<machines...>')
    .action((references: string[]) =>
      forEach(references, async (reference) => {
        const config = await findMachine(reference);
        await killMachine(config);
        process.stdout.write(config.name + '\n');
      }),
    );

  program
    .command('rm')
    .description('remove machines')
    .argument('<machines...>')
    .option('-f, --force', 'kill running machines first')
    .action((references: string[], flags: { force?: boolean }) =>
      forEach(references, async (reference) => {
        const config = await findMachine(reference);
        await removeMachine(config, { force: flags.force });
        process.stdout.write(config.name + '\n');
      }),
    );

  program
    .command('inspect')
    .description('configuration and state of machines, as JSON')
    .argument('<machines...>')
    .action(async (references: string[]) => {
      const views = [];
      for (const reference of references) {
        const config = await findMachine(reference);
        views.push({ ...config, state: await effectiveState(config) });
      }
      printJson(views);
    });
}
