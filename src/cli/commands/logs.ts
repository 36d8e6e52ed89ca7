import type { Command } from 'commander';
import { open } from 'node:fs/promises';
import { findMachine } from '../../runtime/machine-names.ts';
import { effectiveState } from '../../runtime/machine-status.ts';
import { isLive, machineFiles } from '../../runtime/machine-files.ts';
import { rotatedPath } from '../../util/capped-log.ts';

interface LogLine {
  time: string;
  stream: 'stdout' | 'stderr';
  log: string;
}

export function registerLogsCommand(program: Command): void {
  program
    .command('logs')
    .description("output of a machine's main process (not the kernel console)")
    .argument('<machine>')
    .option('-f, --follow', 'keep printing new output until the machine stops')
    .option('-t, --timestamps', 'prefix each chunk with its time')
    .option('-n, --tail <lines>', 'only the last N chunks')
    .action(async (reference: string, flags: { follow?: boolean; timestamps?: boolean; tail?: string }) => {
      const config = await findMachine(reference);
      const path = machineFiles(config.id).processLog;
      let offset = 0;
      let pending = '';
      let first = true;
      const print = (text: string) => {
        const lines = (pending + text).split('\n');
        pending = lines.pop()!;
        let records = lines.filter(Boolean).map((line) => JSON.parse(line) as LogLine);
        if (first && flags.tail !== undefined) records = records.slice(-Number(flags.tail));
        first = false;
        for (const record of records) {
          const out = record.stream === 'stderr' ? process.stderr : process.stdout;
          out.write(flags.timestamps ? `${record.time} ${record.log}` : record.log);
        }
      };
      let finalPass = false;
      // The log is capped (util/capped-log.ts): older output is in the rotated file, read it first.
      const rotated = await open(rotatedPath(path), 'r').catch(() => undefined);
      if (rotated) {
        const text = (await rotated.readFile()).toString();
        await rotated.close();
        // Handed to the first print with the current file, so --tail counts across both.
        pending = text.startsWith('{') ? text : text.slice(text.indexOf('\n') + 1);
      }
      for (;;) {
        const handle = await open(path, 'r').catch(() => undefined);
        if (handle) {
          const { size } = await handle.stat();
          // Rotated while we followed: the new file starts from zero.
          if (size < offset) offset = 0;
          if (size > offset) {
            const buffer = Buffer.alloc(size - offset);
            await handle.read(buffer, 0, buffer.length, offset);
            offset = size;
            print(buffer.toString());
          }
          await handle.close();
        }
        if (!flags.follow || finalPass) break;
        const state = await effectiveState(config);
        // The supervisor closes the log before it records the exit, so one more read gets the rest.
        if (!isLive(state.status) && state.status !== 'created') finalPass = true;
        else await new Promise((resolve) => setTimeout(resolve, 100));
      }
    });
}
