// Entry point of a machine's supervisor process: `node --import tsx supervisor-main.ts <machine id>`.
import { Supervisor } from './supervisor.ts';

const id = process.argv[2];
if (!id) {
  process.stderr.write('usage: supervisor-main.ts <machine id>\n');
  process.exit(2);
}
process.on('SIGINT', () => {});
process.on('SIGHUP', () => {});
const supervisor = await Supervisor.fromDirectory(id);
process.on('SIGTERM', () => void supervisor.shutdown(143));
await supervisor.run();
