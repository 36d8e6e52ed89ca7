import type { Command } from 'commander';

export function registerSystemCommands(program: Command): void {
  program.command('system').description('disk and memory torpor uses (df), and freeing what is not needed (prune)');
}
