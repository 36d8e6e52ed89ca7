// Entry point of a machine's supervisor process:
//   supervisor-main <machine id>   supervise that machine
//   supervisor-main --standby      start up now, read the machine id from stdin later (a warm spare)
import { Supervisor } from './supervisor.ts';
import { environment } from '../config/environment.ts';

process.on('SIGINT', () => {});
process.on('SIGHUP', () => {});

/** One line from stdin, or undefined when stdin ends first (the parent went away). */
function readLine(): Promise<string | undefined> {
  return new Promise((resolve) => {
    let text = '';
    process.stdin.on('data', (chunk: Buffer) => {
      text += chunk.toString();
      if (text.includes('\n')) resolve(text.slice(0, text.indexOf('\n')).trim());
    });
    process.stdin.once('end', () => resolve(text.trim() || undefined));
  });
}

let id = process.argv[2];
if (id === '--standby') {
  id = (await readLine()) ?? '';
  if (!id) process.exit(0);
} else if (environment().TORPOR_SUPERVISOR_WAIT) {
  // Started while its machine's memory is still being materialized: go on at the parent's word.
  await readLine();
}
if (!id) {
  process.stderr.write('usage: supervisor-main <machine id> | --standby\n');
  process.exit(2);
}
process.stdin.destroy();
const supervisor = await Supervisor.fromDirectory(id);
process.on('SIGTERM', () => void supervisor.shutdown(143));
await supervisor.run();
