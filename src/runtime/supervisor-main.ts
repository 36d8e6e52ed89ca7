// Entry point of a machine's supervisor process: `node --import tsx supervisor-main.ts <machine id>`.
import { Supervisor } from './supervisor.ts';

const id = process.argv[2];
if (!id) {
  process.stderr.write('usage: supervisor-main.ts <machine id>\n');
  process.exit(2);
}
process.on('SIGINT', () => {});
process.on('SIGHUP', () => {});
// Started early (while its machine's memory is still being materialized), it waits for a line on
// stdin before it reads the machine's files: process start-up then costs a restore nothing.
if (process.env.TORPOR_SUPERVISOR_WAIT === '1') {
  await new Promise<void>((resolve) => {
    process.stdin.once('data', () => resolve());
    process.stdin.once('end', () => resolve());
  });
  process.stdin.destroy();
}
const supervisor = await Supervisor.fromDirectory(id);
process.on('SIGTERM', () => void supervisor.shutdown(143));
await supervisor.run();
