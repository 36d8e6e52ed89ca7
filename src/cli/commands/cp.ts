import type { Command } from 'commander';
import { findMachine, connectToMachine } from '../../runtime/machines.ts';
import { copyIntoMachine, copyFromMachine } from '../../runtime/copy.ts';
import { TorporError } from '../../util/errors.ts';

/** MACHINE:PATH, where MACHINE is a name or id; a plain path (even with a colon after a slash) is the host's. */
function splitMachinePath(text: string): { machine?: string; path: string } {
  const match = /^([a-zA-Z0-9][a-zA-Z0-9_.-]*):(.*)$/.exec(text);
  if (!match || text.startsWith('/') || text.startsWith('.')) return { path: text };
  return { machine: match[1], path: match[2] || '/' };
}

export function registerCopyCommand(program: Command): void {
  program
    .command('cp')
    .description('copy files or directories between the host and a machine: cp ./f web:/tmp/f, cp web:/etc/hostname .')
    .argument('<source>')
    .argument('<destination>')
    .action(async (sourceText: string, destinationText: string) => {
      const source = splitMachinePath(sourceText);
      const destination = splitMachinePath(destinationText);
      if (Boolean(source.machine) === Boolean(destination.machine)) {
        throw new TorporError('invalid-copy', 'exactly one of source and destination must be MACHINE:PATH', {
          hint: 'torpor cp ./file web:/tmp/file   or   torpor cp web:/tmp/file ./file',
        });
      }
      const config = await findMachine((source.machine ?? destination.machine)!);
      const client = await connectToMachine(config);
      try {
        if (destination.machine) await copyIntoMachine(client, source.path, destination.path);
        else await copyFromMachine(client, source.path, destination.path);
      } finally {
        client.close();
      }
    });
}
