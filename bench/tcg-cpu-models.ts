// TCG CPU models side by side (run by hand): the same guest workloads on a warm machine of each
// model (TORPOR_TCG_CPU), rounds interleaved so that a drifting host load favours none. Exec round
// trip from the host, median. Commit the output under bench/results/guest-resume-2026-11-29-<tcg|kvm>.txt.
//   node --import tsx bench/tcg-cpu-models.ts [models, comma list (default max,max-without-erms)] [rounds]
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, loadavg } from 'node:os';
import { join } from 'node:path';
import { percentile } from './support.ts';

const models = (process.argv[2] ?? 'max,max-without-erms').split(',');
const rounds = Math.max(1, Number(process.argv[3] ?? 3));
const home = await mkdtemp(join(tmpdir(), 'tp-bcm-'));
const memoryDirectory = await mkdtemp('/dev/shm/tp-bcm-');
process.env.TORPOR_HOME = home;
process.env.TORPOR_MEMORY_DIR = memoryDirectory;
const { createMachine, startMachine, connectToMachine, removeMachine, findMachine, prepareHost } = await import('../src/runtime/machines.ts');

const workloads: Record<string, string[]> = {
  'fork+exec x100': ['sh', '-c', 'i=0; while [ $i -lt 100 ]; do /bin/true; i=$((i+1)); done'],
  // The kernel zeroing a reader's buffer (clear_user): what ERMS changes most.
  'dd zero 64 MiB': ['sh', '-c', 'dd if=/dev/zero of=/dev/null bs=64k count=1024 2>/dev/null'],
  'sed/grep/wc x10': ['sh', '-c', 'i=0; while [ $i -lt 10 ]; do echo "a b c" | sed s/a/b/ | grep b | wc -l >/dev/null; i=$((i+1)); done'],
  'node -e 0': ['node', '-e', '0'],
};
const results = new Map<string, number[]>();
const loads: number[] = [loadavg()[0]!];
try {
  const host = await prepareHost();
  if (host.accelerator.accelerator !== 'tcg') throw new Error('machines here run under kvm: the TCG CPU model does not apply');
  for (let round = 0; round < rounds; round++)
    for (const model of round % 2 === 0 ? models : [...models].reverse()) {
      process.env.TORPOR_TCG_CPU = model;
      const config = await createMachine({ image: 'node', memoryMiB: 512, command: ['sleep', '1000000'] });
      await startMachine(config.id);
      const client = await connectToMachine(config);
      try {
        for (const [name, argv] of Object.entries(workloads)) {
          const exec = () =>
            client.exec({ argv, env: ['PATH=/usr/local/bin:/usr/bin:/bin'], workingDirectory: '/', user: '', tty: false, stdin: false }).exited;
          await exec(); // translated once: the rows are warm
          for (let index = 0; index < 3; index++) {
            const began = performance.now();
            await exec();
            const key = `${name}\0${model}`;
            results.set(key, [...(results.get(key) ?? []), performance.now() - began]);
          }
        }
      } finally {
        client.close();
        await removeMachine(await findMachine(config.id), { force: true });
      }
      loads.push(loadavg()[0]!);
      process.stderr.write(`round ${round + 1}/${rounds}: ${model} done, load ${loadavg()[0]!.toFixed(2)}\n`);
    }
  console.log(`torpor TCG CPU models, ${new Date().toISOString()}: warm workloads (node image, 512 MiB), exec round trip, median`);
  console.log(`${rounds} rounds x 3 runs per model, interleaved; load average ${Math.min(...loads).toFixed(2)}-${Math.max(...loads).toFixed(2)}`);
  for (const name of Object.keys(workloads))
    for (const model of models) {
      const values = results.get(`${name}\0${model}`)!;
      console.log(
        `${name.padEnd(18)} ${model.padEnd(18)} median ${percentile(values, 50).toFixed(0)} ms, min ${Math.min(...values).toFixed(0)} ms (n=${values.length})`,
      );
    }
} finally {
  delete process.env.TORPOR_TCG_CPU;
  await rm(home, { recursive: true, force: true });
  await rm(memoryDirectory, { recursive: true, force: true });
}
