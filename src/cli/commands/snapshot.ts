import type { Command } from 'commander';
import { findMachine } from '../../runtime/machines.ts';
import { snapshotMachine, restoreMachine, forkMachine, deleteSnapshot } from '../../runtime/snapshots.ts';
import { listSnapshots, readSnapshot, collectGarbage, storeUsage } from '../../snapshot/snapshot-store.ts';
import { parsePort, networkOptionsFrom } from '../../runtime/run-options.ts';
import type { NetworkPolicy } from '../../network/policy.ts';
import { printJson, printTable, formatBytes, collect } from '../output.ts';
import { TorporError } from '../../util/errors.ts';

function numberOf(stats: Record<string, unknown>, key: string): number {
  const value = stats[key];
  return typeof value === 'number' ? value : 0;
}

interface RestoreFlags {
  name?: string;
  publish?: string[];
  network?: string;
  allowHost?: string[];
  egressAllow?: string[];
  egressDeny?: string[];
  json?: boolean;
}

/** Network flags on restore replace the policy saved with the snapshot; without any, it is kept. */
function restoredNetworkPolicy(flags: RestoreFlags): NetworkPolicy | undefined {
  if (flags.network === undefined && !flags.allowHost && !flags.egressAllow && !flags.egressDeny) return undefined;
  const options = networkOptionsFrom({
    network: flags.network ?? 'user',
    allowHost: flags.allowHost ?? [],
    egressAllow: flags.egressAllow ?? [],
    egressDeny: flags.egressDeny ?? [],
  });
  if (!options.network) {
    throw new TorporError('invalid-network', '--network none cannot be chosen on restore: the network device is part of the snapshot', {
      status: 400,
      hint: 'use --network user with no --allow-host/--egress-allow to keep the guest off the host and private networks',
    });
  }
  return options.networkPolicy;
}

export function registerSnapshotCommands(program: Command): void {
  program
    .command('snapshot')
    .description('save a running machine whole (memory, processes, files): pause, save, resume (or --stop)')
    .argument('<machine>')
    .requiredOption('--name <snapshot>', 'snapshot name, e.g. web@1')
    .option('--stop', 'stop the machine after saving (hibernate)')
    .option('--replace', 'overwrite an existing snapshot of that name')
    .option('--json', 'machine-readable output')
    .action(async (reference: string, flags: { name: string; stop?: boolean; replace?: boolean; json?: boolean }) => {
      const config = await findMachine(reference);
      const summary = await snapshotMachine(config, { name: flags.name, stop: flags.stop, replace: flags.replace });
      if (flags.json) return printJson(summary);
      const stats = summary.stats;
      process.stdout.write(
        `${summary.name}: ${summary.totalMs.toFixed(0)} ms (paused ${(summary.guestPausedMs ?? summary.pauseMs + summary.deviceStateMs + summary.captureMs).toFixed(0)} ms: device state ${summary.deviceStateMs.toFixed(0)} ms, capture ${summary.captureMs.toFixed(0)} ms${summary.capturedBesideGuest ? ` beside the running guest${summary.diskCapture === 'job' ? ", disk by QEMU's copy-before-write" : ''}` : ''})\n` +
          `  scanned ${formatBytes(numberOf(stats, 'scannedBytes'))}, non-zero ${formatBytes(numberOf(stats, 'nonZeroBytes'))}, ` +
          `new ${numberOf(stats, 'newChunks')} chunks = ${formatBytes(numberOf(stats, 'newCompressedBytes'))} compressed, reused ${numberOf(stats, 'reusedChunks')} chunks\n`,
      );
    });

  program
    .command('restore')
    .description('start a new machine from a snapshot; it continues exactly where the snapshot was taken')
    .argument('<snapshot>')
    .option('--name <name>', 'name of the new machine')
    .option('-p, --publish <[ip:]host:guest>', 'publish a guest port (repeatable; default: the snapshot machine ports)', collect)
    .option('--network <mode>', "user or unrestricted: replaces the snapshot machine's network policy (default: keep it)")
    .option('--allow-host <port[/proto]>', 'with --network user: a host loopback port the guest may reach (repeatable)', collect)
    .option('--egress-allow <cidr>', 'with --network user: an address range the guest may reach (repeatable)', collect)
    .option('--egress-deny <cidr>', 'with --network user: an address range kept from the guest (repeatable)', collect)
    .option('--json', 'machine-readable output')
    .action(async (snapshot: string, flags: RestoreFlags) => {
      const started = performance.now();
      const config = await restoreMachine(snapshot, { name: flags.name, ports: flags.publish?.map(parsePort), networkPolicy: restoredNetworkPolicy(flags) });
      const milliseconds = performance.now() - started;
      if (flags.json) return printJson({ id: config.id, name: config.name, milliseconds });
      process.stdout.write(`${config.id}\n`);
      process.stderr.write(`restored ${snapshot} as ${config.name} in ${milliseconds.toFixed(0)} ms\n`);
    });

  program
    .command('fork')
    .description('make N live copies of a running machine, each independent from then on')
    .argument('<machine>')
    .option('-n, --count <n>', 'how many copies', '1')
    .option('--name-prefix <prefix>', 'forks are named PREFIX-1..N (default: MACHINE-fork)')
    .option('--json', 'machine-readable output')
    .action(async (reference: string, flags: { count: string; namePrefix?: string; json?: boolean }) => {
      const count = Number(flags.count);
      if (!Number.isInteger(count) || count < 1 || count > 64)
        throw new TorporError('invalid-count', `invalid -n ${flags.count}`, { hint: 'use a whole number from 1 to 64' });
      const config = await findMachine(reference);
      const started = performance.now();
      const { forks, snapshot } = await forkMachine(config, { count, namePrefix: flags.namePrefix });
      const milliseconds = performance.now() - started;
      if (flags.json) return printJson({ forks: forks.map((fork) => ({ id: fork.id, name: fork.name })), snapshot: snapshot.name, milliseconds });
      for (const fork of forks) process.stdout.write(`${fork.name}\t${fork.id}\n`);
      process.stderr.write(`${count} forks of ${config.name} answering in ${milliseconds.toFixed(0)} ms (snapshot ${snapshot.name})\n`);
    });

  const snapshots = program.command('snapshots').description('list, inspect, remove and garbage-collect snapshots');
  snapshots
    .command('ls', { isDefault: true })
    .description('list snapshots')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const manifests = await listSnapshots();
      if (flags.json) return printJson(manifests.map(({ memory, disk, ...rest }) => ({ ...rest, memorySize: memory.size, diskSize: disk?.size })));
      printTable(
        ['NAME', 'CREATED', 'MACHINE', 'MEMORY', 'NEW BYTES', 'PARENT'],
        manifests.map((manifest) => {
          const machine = (manifest.metadata as { machine?: { name?: string } }).machine;
          return [
            manifest.name,
            manifest.createdAt,
            machine?.name ?? '-',
            formatBytes(manifest.memory.size),
            formatBytes(numberOf(manifest.stats as Record<string, unknown>, 'newCompressedBytes')),
            manifest.parent ?? '-',
          ];
        }),
      );
      const usage = await storeUsage();
      process.stderr.write(`store: ${usage.chunks} chunks, ${formatBytes(usage.bytes)}\n`);
    });
  snapshots
    .command('inspect')
    .description('a snapshot manifest, as JSON')
    .argument('<snapshot>')
    .action(async (name: string) => printJson(await readSnapshot(name)));
  snapshots
    .command('rm')
    .description('remove snapshots (their chunks go at the next gc when nothing else uses them)')
    .argument('<snapshots...>')
    .action(async (names: string[]) => {
      for (const name of names) {
        await deleteSnapshot(name);
        process.stdout.write(name + '\n');
      }
    });
  snapshots
    .command('gc')
    .description('delete chunks that no snapshot references')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const result = await collectGarbage();
      if (flags.json) return printJson(result);
      process.stdout.write(`removed ${result.removedChunks} chunks, freed ${formatBytes(result.freedBytes)}\n`);
    });
}
