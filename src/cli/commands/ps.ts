import type { Command } from 'commander';
import { listMachines } from '../../runtime/machine-status.ts';
import { isLive } from '../../runtime/machine-files.ts';
import { printTable, printJson, formatDuration } from '../output.ts';

interface PsFlags {
  all?: boolean;
  spares?: boolean;
  quiet?: boolean;
  json?: boolean;
}

/** The flags of `ps`: commander's registration and the quick parser below read this one table. */
const psOptions: Array<{ short?: string; long: string; key: keyof PsFlags; description: string }> = [
  { short: '-a', long: '--all', key: 'all', description: 'include stopped machines and spare machines' },
  { long: '--spares', key: 'spares', description: 'include spare machines (started, waiting for a run to claim them: torpor system pool)' },
  { short: '-q', long: '--quiet', key: 'quiet', description: 'only ids' },
  { long: '--json', key: 'json', description: 'machine-readable output' },
];

/**
 * `ps`'s flags from its command line without commander (~10 ms to load), or undefined when
 * commander must parse it: --help, anything unknown, an argument. Combined short flags (-aq) too.
 */
export function quickPsFlags(words: string[]): PsFlags | undefined {
  const flags: PsFlags = {};
  for (const word of words) {
    const long = psOptions.find((option) => option.long === word);
    if (long) {
      flags[long.key] = true;
      continue;
    }
    if (!/^-[a-zA-Z]+$/.test(word)) return undefined;
    for (const letter of word.slice(1)) {
      const short = psOptions.find((option) => option.short === `-${letter}`);
      if (!short) return undefined;
      flags[short.key] = true;
    }
  }
  return flags;
}

export function registerPsCommand(program: Command): void {
  const command = program.command('ps').description('list machines (running ones; -a for all)');
  for (const option of psOptions) command.option(option.short ? `${option.short}, ${option.long}` : option.long, option.description);
  command.action(listCommand);
}

export async function listCommand(flags: PsFlags): Promise<void> {
  const machines = (await listMachines()).filter(({ config, state }) => (flags.all || isLive(state.status)) && (!config.spare || flags.all || flags.spares));
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
    // A machine on kvm proves the host has it: the tcg ones were asked for (TORPOR_ACCEL=tcg, or
    // restored from a snapshot taken under TCG), so the note must not say KVM is missing.
    const kvmWorks = machines.some(({ config }) => config.accelerator === 'kvm');
    process.stderr.write(
      kvmWorks
        ? 'note: tcg = software emulation, used for those machines although KVM works here (TORPOR_ACCEL=tcg, or restored from a snapshot taken under TCG)\n'
        : 'note: tcg = software emulation; this host has no usable KVM (see `torpor doctor`)\n',
    );
  }
}
