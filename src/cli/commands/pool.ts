import type { Command } from 'commander';
import { clearSpares, fillPool, listSpares, spareMemory } from '../../runtime/spare-fill.ts';
import { parseSpareSettings, spareCount, spareSettingsOf, sparesDirectory } from '../../runtime/spare-pool.ts';
import { isLive } from '../../runtime/machine-files.ts';
import { parseCpus, parseMemory, networkOptionsFrom } from '../../runtime/run-options.ts';
import { machineDefaults } from '../../config/machine-defaults.ts';
import { TorporError } from '../../util/errors.ts';
import { printJson, printTable, formatBytes, formatDuration, collect } from '../output.ts';
import { addNetworkPolicyFlags } from '../network-flags.ts';

interface FillFlags {
  cpus?: string;
  memory?: string;
  network?: string;
  allowHost?: string[];
  egressAllow?: string[];
  egressDeny?: string[];
  settings?: string;
  json?: boolean;
}

/** `torpor system pool`: the spare machines `run` claims (see src/runtime/spare-pool.ts), listed, filled and cleared. */
export function registerPoolCommands(system: Command): void {
  const pool = system
    .command('pool')
    .description(`spare machines kept started for \`run\` (TORPOR_SPARE_MACHINES=${spareCount()} per image and settings): list them`)
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const spares = await listSpares();
      const rows = [];
      for (const view of spares) rows.push({ ...view, memory: await spareMemory(view) });
      if (flags.json) {
        printJson({
          size: spareCount(),
          spares: rows.map(({ config, state, memory }) => ({
            id: config.id,
            pool: config.spare!.key,
            image: config.image.reference,
            cpus: config.cpus,
            memoryMiB: config.memoryMiB,
            network: config.network,
            state,
            memory,
          })),
        });
        return;
      }
      printTable(
        ['ID', 'POOL', 'IMAGE', 'CPUS', 'MEM', 'STATE', 'AGE', 'QEMU RSS', 'OF IT GUEST RAM', 'SUPERVISOR RSS'],
        rows.map(({ config, state, memory }) => [
          config.id,
          config.spare!.key,
          config.image.reference,
          String(config.cpus),
          `${config.memoryMiB}M`,
          isLive(state.status) ? state.status : `${state.status} (${state.exitCode ?? '?'})${state.error ? ' ' + state.error.slice(0, 50) : ''}`,
          state.startedAt ? formatDuration(Date.now() - Date.parse(state.startedAt)) : '-',
          formatBytes(memory.qemuRssBytes),
          formatBytes(memory.qemuGuestRamBytes),
          formatBytes(memory.supervisorRssBytes),
        ]),
      );
      const total = rows.reduce((sum, { memory }) => sum + memory.totalBytes, 0);
      process.stderr.write(
        `${rows.length} spare machines holding ${formatBytes(total)} of host memory; \`torpor system pool clear\` ends them, TORPOR_SPARE_MACHINES=0 keeps none\n`,
      );
    });

  addNetworkPolicyFlags(pool.command('fill'), 'guest')
    .description('start spare machines of an image and settings until the pool holds TORPOR_SPARE_MACHINES (run does this in the background)')
    .argument('[image]', 'image name', 'base')
    .option('--cpus <n>', 'virtual CPUs', String(machineDefaults.cpus))
    .option('-m, --memory <size>', 'guest memory, e.g. 512m, 2g', machineDefaults.memory)
    .option('--network <mode>', 'user (default), none or unrestricted: as for run', 'user')
    .option('--settings <json>', 'internal: the settings as `run` hands them to its background fill')
    .option('--json', 'machine-readable output')
    .action(async (image: string, flags: FillFlags) => {
      if (spareCount() === 0) {
        throw new TorporError('pool-disabled', 'TORPOR_SPARE_MACHINES is 0: no spare machines are kept', {
          hint: 'TORPOR_SPARE_MACHINES=1 torpor system pool fill',
        });
      }
      const settings = flags.settings
        ? parseSpareSettings(flags.settings)
        : spareSettingsOf({
            image,
            cpus: parseCpus(flags.cpus ?? String(machineDefaults.cpus)),
            memoryMiB: parseMemory(flags.memory ?? machineDefaults.memory),
            ...networkOptionsFrom({
              network: flags.network ?? 'user',
              allowHost: flags.allowHost ?? [],
              egressAllow: flags.egressAllow ?? [],
              egressDeny: flags.egressDeny ?? [],
            }),
          });
      if (!settings)
        throw new TorporError('pool-unavailable', 'spare machines start from boot templates, which TORPOR_BOOT_TEMPLATES=0 turns off', {
          hint: 'unset TORPOR_BOOT_TEMPLATES',
        });
      const started = await fillPool(settings);
      if (flags.json) return printJson({ started });
      for (const id of started) process.stdout.write(`started spare ${id}\n`);
    });

  pool
    .command('clear')
    .description('end every spare machine (the next run starts the cold way and refills)')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const ended = await clearSpares();
      if (flags.json) return printJson({ ended, directory: sparesDirectory() });
      process.stdout.write(`ended ${ended.length} spare machines\n`);
    });
}
