// Prints README.md's environment table from src/config/environment.ts; with --write, puts it into
// README.md between its markers. src/config/environment.test.ts fails when the two differ.
//   node --import tsx scripts/environment-table.ts [--write]
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { environmentTable } from '../src/config/environment.ts';
import { projectRoot } from '../src/util/project-root.ts';
import { replaceEnvironmentTable } from '../src/config/readme-table.ts';

if (process.argv.includes('--write')) {
  const path = join(projectRoot(), 'README.md');
  writeFileSync(path, replaceEnvironmentTable(readFileSync(path, 'utf8'), environmentTable()));
} else {
  process.stdout.write(`${environmentTable()}\n`);
}
