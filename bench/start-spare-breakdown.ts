// One `run --rm base true` from the spare pool, done the way the CLI does it, through the library,
// timing each phase (ms since the call began). Prints JSON for bench/start.ts. Needs a ready spare
// of the base image's default settings (TORPOR_SPARE_MACHINES >= 1, the pool filled).
import { access } from 'node:fs/promises';
import { performance } from 'node:perf_hooks';

const began = performance.now();
const { takeSpare, activateSpare } = await import('../src/runtime/spare-pool.ts');
const { attachToMainProcess } = await import('../src/runtime/attach.ts');
const { machineFiles } = await import('../src/runtime/machine-files.ts');
const { networkOptionsFrom } = await import('../src/runtime/run-options.ts');
const at = () => performance.now() - began;
const parts: Record<string, number> = { 'CLI code loaded (claim path)': at() };

const network = networkOptionsFrom({ network: 'user', allowHost: [], egressAllow: [], egressDeny: [] });
const taken = await takeSpare({ image: 'base', command: ['true'], autoRemove: true, ...network });
if (!taken) throw new Error('no spare ready: fill the pool first (torpor system pool fill base)');
parts['spare taken (rename, user config, name, connected)'] = at();
const attached = await attachToMainProcess(taken.client, {});
parts['attached to the main process'] = at();
if (!(await activateSpare(taken))) throw new Error('the spare refused the claim');
parts['claimed (name, clock, RNG resynced; process started)'] = at();
const code = await attached.exited;
parts['main process `true` exited (the answer)'] = at();
taken.client.close();
for (;;) {
  const gone = await access(machineFiles(taken.config.id).directory).then(
    () => false,
    () => true,
  );
  if (gone) break;
  await new Promise((resolve) => setTimeout(resolve, 5));
}
parts['machine removed (teardown, after the answer)'] = at();
process.stdout.write(JSON.stringify(parts) + '\n');
process.exit(code === 0 ? 0 : 1);
