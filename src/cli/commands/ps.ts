import type { Command } from 'commander';
import { listMachines } from '../../runtime/machine-status.ts';
import { isLive } from '../../runtime/machine-files.ts';
import { printTable, printJson, formatDuration } from '../output.ts';

export function registerPsCommand(program: Command): void {
  program
    .command('ps')
    .description('list machines (running ones; -a for all)')
    .option('-a, --all', 'include stopped machines and spare machines')
    .option('--spares', 'include spare machines (started, waiting for a run to claim them: torpor system pool)')
    .option('-q, --quiet', 'only ids')
    .option('--json', 'machine-readable output')
    .action(async (flags: { all?: boolean; spares?: boolean; quiet?: boolean; json?: boolean }) => {
      const machines = (await listMachines()).filter(
        ({ config, state }) => (flags.all || isLive(state.status)) && (!config.spare || flags.all || flags.spares),
      );
      if (flags.json) {
        printJson(machines.map(({ config, state }) => ({ ...config, state })));
        return;
      }
      if (flags.quiet) {
        process.stdout.write(machines.map(({ config }) => config.id + '\n').join(''));
        return;
      }
      printTable(
        ['NAME', 'ID', 'IMAGE', 'STATE', 'CPUS', 'MEM', 'UPTIME', 'ACCEL'],
        machines.map(({ config, state }) => {
          const status =
            state.status === 'exited' || state.status === 'failed'
              ? `${state.status} (${state.exitCode ?? '?'})${state.error ? ' ' + state.error.slice(0, 60) : ''}`
              : config.spare
                ? 'spare'
                : state.status;
          const uptime = isLive(state.status) && state.startedAt ? formatDuration(Date.now() - Date.parse(state.startedAt)) : '-';
          return [config.name, config.id, config.image.reference, status, String(config.cpus), `${config.memoryMiB}M`, uptime, config.accelerator];
        }),
      );
      if (machines.some(({ config }) => config.accelerator === 'tcg')) {
        process.stderr.write('note: tcg = software emulation; this host has no usable KVM (see `torpor doctor`)\n');
      }
    });
}
