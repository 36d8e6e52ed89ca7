// Child process for the crash test: captures a snapshot and is SIGKILLed by the test midway.
import { captureSnapshot } from '../snapshot-store.ts';

const [name, memoryFile] = process.argv.slice(2);
process.stdout.write('started\n');
await captureSnapshot({ name, memoryFile, deviceState: Buffer.alloc(1000, 7), metadata: {}, replace: true });
process.stdout.write('finished\n');
