import type { Command } from 'commander';
import { createInterface } from 'node:readline/promises';
import { systemUsage, pruneSystem } from '../../runtime/system-usage.ts';
import { printJson, printTable, formatBytes } from '../output.ts';
import { TorporError } from '../../util/errors.ts';
import { registerPoolCommands } from './pool.ts';

const systemSummary = 'disk and memory torpor uses (df), freeing what is not needed (prune), spare machines (pool)';

async function confirm(question: string): Promise<boolean> {
  const prompt = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return /^y(es)?$/i.test((await prompt.question(question)).trim());
  } finally {
    prompt.close();
  }
}

export function registerSystemCommands(program: Command): void {
  const system = program.command('system').description(systemSummary);
  registerPoolCommands(system);

  system
    .command('df')
    .description('what the state directory, the snapshot store, images and the tmpfs RAM files take')
    .option('--json', 'machine-readable output')
    .action(async (flags: { json?: boolean }) => {
      const usage = await systemUsage();
      if (flags.json) return printJson(usage);
      const templates = usage.memory.templates.files;
      const templateBytes = (owner: string) => templates.filter((file) => file.owner === owner).reduce((sum, file) => sum + file.allocatedBytes, 0);
      const reclaimableTemplates = templateBytes('this') + templateBytes('orphaned');
      printTable(
        ['WHAT', 'WHERE', 'COUNT', 'SIZE', 'RECLAIMABLE'],
        [
          [
            'machines',
            'disk',
            `${usage.machines.count} (${usage.machines.live} live)`,
            formatBytes(usage.machines.bytes),
            formatBytes(usage.machines.reclaimableBytes),
          ],
          ['images', 'disk', String(usage.images.count), formatBytes(usage.images.bytes), '-'],
          ['snapshots', 'disk', `${usage.snapshots.count} (${usage.snapshots.chunks} chunks)`, formatBytes(usage.snapshots.bytes), 'gc'],
          ['state directory', 'disk', '-', formatBytes(usage.stateDirectoryBytes), '-'],
          [
            'machine RAM',
            'tmpfs',
            String(usage.memory.machines.count),
            formatBytes(usage.memory.machines.bytes),
            formatBytes(usage.memory.machines.reclaimableBytes),
          ],
          ['template RAM', 'tmpfs', String(usage.memory.templates.count), formatBytes(usage.memory.templates.bytes), formatBytes(reclaimableTemplates)],
          [
            'spare machines',
            'memory',
            `${usage.spares.count} (${usage.spares.live} live)`,
            formatBytes(usage.spares.memoryBytes),
            formatBytes(usage.spares.memoryBytes),
          ],
          // Both yield on their own when their budget or the host's memory runs short (serve --warm-memory).
          ['paused machines', 'memory', String(usage.paused.count), formatBytes(usage.paused.memoryBytes), 'cache'],
          ['warm RAM', 'tmpfs', String(usage.memory.warm.count), formatBytes(usage.memory.warm.bytes), 'cache'],
        ],
      );
      process.stderr.write(`state directory ${usage.stateDirectory}, RAM files in ${usage.memoryDirectory}\n`);
      if (templateBytes('orphaned') > 0)
        process.stderr.write(`${formatBytes(templateBytes('orphaned'))} of template RAM belongs to deleted state directories: torpor system prune frees it\n`);
      if (templateBytes('other') > 0)
        process.stderr.write(`${formatBytes(templateBytes('other'))} of template RAM belongs to other state directories (their own prune frees it)\n`);
    });

  system
    .command('prune')
    .description('remove stopped machines, spare machines, unreferenced snapshot chunks and boot template RAM caches (asks first, or --force)')
    .option('-f, --force', 'do not ask')
    .option('--json', 'machine-readable output')
    .action(async (flags: { force?: boolean; json?: boolean }) => {
      if (!flags.force) {
        if (!process.stdin.isTTY) {
          throw new TorporError(
            'confirmation-required',
            'torpor system prune removes stopped machines and frees caches; it asks first, and there is no terminal to ask on',
            {
              hint: 'torpor system prune --force',
            },
          );
        }
        const answer = await confirm(
          'This removes every stopped machine, every spare machine, snapshot chunks no snapshot uses, and the boot template RAM caches.\nGo on? [y/N] ',
        );
        if (!answer) {
          process.exitCode = 1;
          return;
        }
      }
      const result = await pruneSystem();
      if (flags.json) return printJson(result);
      for (const name of result.machines.removed) process.stdout.write(`removed machine ${name}\n`);
      if (result.spares.length > 0) process.stdout.write(`ended ${result.spares.length} spare machines\n`);
      if (result.networkClaims.length > 0) process.stdout.write(`removed the network rules and uid claims of ${result.networkClaims.length} killed machines\n`);
      const total = result.machines.bytes + result.snapshotChunks.bytes + result.templateMemory.bytes + result.orphanedTemplateMemory.bytes;
      process.stdout.write(
        `removed ${result.machines.removed.length} machines (${formatBytes(result.machines.bytes)}), ${result.snapshotChunks.removed} snapshot chunks (${formatBytes(result.snapshotChunks.bytes)}), ` +
          `${result.templateMemory.files + result.orphanedTemplateMemory.files} template RAM files (${formatBytes(result.templateMemory.bytes + result.orphanedTemplateMemory.bytes)}): ${formatBytes(total)} freed\n`,
      );
      if (result.templateMemory.kept) process.stderr.write(`template RAM kept: ${result.templateMemory.kept}\n`);
    });
}
