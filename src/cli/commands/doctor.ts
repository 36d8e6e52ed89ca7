import type { Command } from 'commander';
import { runDoctorChecks } from '../../host/doctor.ts';
import { networkFilterCheck } from '../../network/doctor-check.ts';
import { prepareHost } from '../../runtime/machines.ts';
import { printJson, printTable } from '../output.ts';
import { stderrProgress } from '../../util/progress.ts';

export function registerDoctorCommand(program: Command): void {
  program
    .command('doctor')
    .description('check what this host has and lacks for torpor, and how to fix it')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const checks = await runDoctorChecks({ accelerator: async () => (await prepareHost(stderrProgress())).accelerator });
      checks.push(await networkFilterCheck());
      if (flags.json) printJson(checks);
      else
        printTable(
          ['CHECK', 'OK', 'DETAIL'],
          checks.map((check) => [check.name, check.ok ? 'yes' : 'NO', check.detail + (check.fix ? `  -> fix: ${check.fix}` : '')]),
        );
      if (checks.some((check) => !check.ok && check.name !== '/dev/kvm')) process.exitCode = 1;
    });
}
