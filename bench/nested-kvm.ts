// KVM vs TCG on the same guest, inside a nested `torpor` machine (the outer level is this host's
// TCG; the inner KVM runs on emulated SVM). Run by hand:
//   node --import tsx bench/nested-kvm.ts [kvm rounds, 3] [tcg rounds, 1] > bench/results/nested-kvm-2026-11-29-tcg.txt
// Per accelerator: cold boot to the agent answering (boot templates off), snapshot --stop (pause to
// durable), restore to the agent answering. Times are the supervisor's own (state.bootMs, the
// snapshot summary), so the nested CLI's Node start-up (many seconds under TCG) is not in them.
// TCG inside is TCG inside TCG: one cold boot of the guest takes minutes on a 2-core host, so it
// runs fewer rounds (and no warm-up of its own: the KVM warm-up reads the image into the page cache).
// These ratios are nested and emulated: they say how much KVM helps relative to TCG on one guest, not
// what a bare-metal host does.
import { loadavg } from 'node:os';
import { NestedMachine, succeeded } from '../test/kvm/nested-machine.ts';
import { ms, percentile } from './support.ts';

const roundsOf = { kvm: Number(process.argv[2] ?? 3), tcg: Number(process.argv[3] ?? 1) };
const memory = '256m';
const nest = await NestedMachine.start();
const results: Record<string, { boot: number[]; snapshot: number[]; pause: number[]; restore: number[] }> = {};
const bootMs = async (machine: string) => {
  const [inspected] = JSON.parse(succeeded(await nest.torpor('inspect', machine), 'inspect')) as { state: { bootMs?: number } }[];
  return inspected!.state.bootMs ?? NaN;
};
try {
  // Warm both paths once (image, KVM probe, first QEMU start from a cold page cache).
  succeeded(await nest.torpor('doctor'), 'doctor');
  for (const accelerator of ['kvm', 'tcg'] as const) {
    // 20 minutes for a boot or a restore: TCG inside TCG on a loaded 2-core host needs them.
    const env = `TORPOR_ACCEL=${accelerator} TORPOR_BOOT_TEMPLATES=0 TORPOR_BOOT_TIMEOUT_MS=1200000`;
    if (accelerator === 'kvm') succeeded(await nest.shell(`${env} torpor run --rm --memory ${memory} --network none base true`), `warm-up ${accelerator}`);
    const result = (results[accelerator] = { boot: [] as number[], snapshot: [] as number[], pause: [] as number[], restore: [] as number[] });
    for (let round = 0; round < roundsOf[accelerator]; round++) {
      const name = `${accelerator}-${round}`;
      succeeded(await nest.shell(`${env} torpor run -d --name ${name} --memory ${memory} --network none base sleep 1000000`), 'run -d');
      result.boot.push(await bootMs(name));
      const summary = JSON.parse(succeeded(await nest.torpor('snapshot', name, '--name', `${name}@1`, '--stop', '--json'), 'snapshot')) as {
        totalMs: number;
        pauseMs: number;
      };
      result.snapshot.push(summary.totalMs);
      result.pause.push(summary.pauseMs);
      succeeded(await nest.shell(`${env} torpor restore ${name}@1 --name ${name}-r`), 'restore');
      result.restore.push(await bootMs(`${name}-r`));
      succeeded(await nest.torpor('rm', '-f', name, `${name}-r`), 'rm');
    }
  }
} finally {
  await nest.remove();
}
const line = (label: string, values: number[]) =>
  `${label.padEnd(28)} p50 ${ms(percentile(values, 50)).padStart(9)}  min ${ms(Math.min(...values)).padStart(9)}  (${values.map((v) => v.toFixed(0)).join(', ')})`;
console.log(
  `nested-kvm, ${new Date().toISOString()}, rounds kvm ${roundsOf.kvm} / tcg ${roundsOf.tcg}, host load at the end ${loadavg()[0]!.toFixed(1)} (2 cores)`,
);
console.log(`outer: this host, TCG -cpu max, 2 GiB torpor machine; inner: base image, ${memory}, 1 vCPU, --network none, no boot templates`);
for (const [accelerator, result] of Object.entries(results)) {
  console.log(`\n${accelerator} (inside)`);
  console.log(line('cold boot to agent', result.boot));
  console.log(line('snapshot --stop total', result.snapshot));
  console.log(line('snapshot pause', result.pause));
  console.log(line('restore to agent', result.restore));
}
if (results.kvm && results.tcg) {
  const ratio = (key: 'boot' | 'snapshot' | 'restore') => (percentile(results.tcg![key], 50) / percentile(results.kvm![key], 50)).toFixed(2);
  console.log(
    `\nTCG/KVM p50 ratio: cold boot ${ratio('boot')}x, snapshot ${ratio('snapshot')}x, restore ${ratio('restore')}x (nested, emulated SVM: not bare metal)`,
  );
}
