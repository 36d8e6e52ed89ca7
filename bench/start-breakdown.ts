// One `run --rm base true` done the way the CLI does it, through the library, timing each phase
// and reading the supervisor's own milestones (state.json's startTimings). Prints JSON for
// bench/start.ts: milliseconds since the call began. Needs the base image's boot template to exist.
import { access } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';

const began = performance.now();
const epochAtBegin = performance.timeOrigin + began;
const { createMachine } = await import('../src/runtime/machine-creation.ts');
const { startMachine } = await import('../src/runtime/machine-start.ts');
const { connectToMachine } = await import('../src/runtime/supervisor-client.ts');
const { attachToMainProcess } = await import('../src/runtime/attach.ts');
const { machineFiles, readMachineState } = await import('../src/runtime/machine-files.ts');
const at = () => performance.now() - began;
const parts: Record<string, number> = { 'CLI code loaded (run module)': at() };

const config = await createMachine({ image: 'base', command: ['true'], autoRemove: true });
parts['machine created (image, template, config)'] = at();
const handOver = at();
// The supervisor reports milestones relative to its own process start; read them while it runs.
let timings: Record<string, number> | undefined;
const startPromise = startMachine(config.id, { waitForAttach: true });
const state = await startPromise;
timings = state.startTimings ?? (await readMachineState(config.id)).startTimings;
parts['guest answering (startMachine returned)'] = at();
const client = await connectToMachine(config);
const attached = await attachToMainProcess(client, {});
const code = await attached.exited;
parts['main process `true` exited'] = at();
client.close();
for (;;) {
  const gone = await access(machineFiles(config.id).directory).then(
    () => false,
    () => true,
  );
  if (gone) break;
  await new Promise((resolve) => setTimeout(resolve, 5));
}
parts['machine removed (teardown done)'] = at();
if (timings) {
  const supervisorStart = timings.processStartedAt! - epochAtBegin;
  parts['  supervisor process started'] = supervisorStart;
  parts['  supervisor told its machine (RAM materialized)'] = supervisorStart + timings.run!;
  parts['  QEMU started, QMP answering'] = supervisorStart + timings.qmpReady!;
  if (timings.deviceStateLoaded !== undefined) parts['  device state loaded, guest continued'] = supervisorStart + timings.deviceStateLoaded;
  parts['  guest agent channel connected'] = supervisorStart + timings.agentConnected!;
  parts['  guest agent answered hello + settings'] = supervisorStart + timings.agentAnswered!;
  parts['  supervisor reports running'] = supervisorStart + timings.running!;
}
parts['hand-over to supervisor began'] = handOver;
process.stdout.write(JSON.stringify(Object.fromEntries(Object.entries(parts).sort((a, b) => a[1] - b[1]))) + '\n');
process.exit(code === 0 ? 0 : 1);
