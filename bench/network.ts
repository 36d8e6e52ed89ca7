// Network policy benchmark (run by hand, as root): what the guest network filter costs, side by side
// in one run with the design before it (QEMU as root on a plain user network, TORPOR_QEMU_AS_ROOT=1
// with --network unrestricted) and with a host process doing the same work without any VM:
//   - throughput and latency from a guest to an allowed port of the host's loopback (10.0.2.2)
//   - time from the start of a restore to the guest's first packet reaching the host
//   - start (from the boot template) and wake (restore of a snapshot) times
// Everything runs inside a network namespace this benchmark makes (no packet leaves the machine).
//   node --import tsx bench/network.ts [runs]
// Commit the output as bench/results/network-<date>-<tcg|kvm>.txt.
import { spawn } from 'node:child_process';
import { createServer, type Server } from 'node:net';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir, cpus, totalmem } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const runs = Number(process.argv[2] ?? 3);
const port = 11500; // the test network already serves 11434 and 7070 on its loopback
const payloadMiB = 16;

if (process.env.TORPOR_BENCH_INSIDE !== '1') {
  const { createTestNetwork } = await import('../src/network/testing/test-network.ts');
  const network = await createTestNetwork();
  try {
    const child = spawn('ip', ['netns', 'exec', network.hostNamespace, process.execPath, '--import', 'tsx', fileURLToPath(import.meta.url), String(runs)], {
      stdio: 'inherit',
      env: { ...process.env, TORPOR_BENCH_INSIDE: '1' },
    });
    process.exitCode = await new Promise<number>((resolve) => child.on('exit', (code) => resolve(code ?? 1)));
  } finally {
    await network.cleanup();
  }
} else {
  await inside();
}

async function inside(): Promise<void> {
  const { createMachine, startMachine, connectToMachine, removeMachine, prepareHost, findMachine } = await import('../src/runtime/machines.ts');
  const { snapshotMachine, restoreMachine } = await import('../src/runtime/snapshots.ts');
  const { readMachineState } = await import('../src/runtime/machine-files.ts');
  const { dropTemplateMemory } = await import('../src/runtime/template-memory.ts');
  const { buildNetworkPolicy } = await import('../src/network/policy.ts');

  const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)]!;

  // The host service: a payload for GET /big, a word for anything else; it notes when requests arrive.
  const payload = Buffer.alloc(payloadMiB * 1024 * 1024, 7);
  let arrivals: number[] = [];
  const server: Server = createServer((socket) => {
    arrivals.push(performance.now());
    socket.once('data', (request) => {
      const big = request.toString().startsWith('GET /big');
      const body = big ? payload : Buffer.from('ok\n');
      socket.end(Buffer.concat([Buffer.from(`HTTP/1.0 200 OK\r\ncontent-length: ${body.length}\r\n\r\n`), body]));
    });
    socket.on('error', () => {});
  });
  await new Promise<void>((resolve, reject) => server.once('error', reject).listen(port, '127.0.0.1', resolve));
  // Made once the service listens, so that a failure before the try below leaves nothing behind.
  process.env.TORPOR_HOME = await mkdtemp(join(tmpdir(), 'tp-bench-'));
  process.env.TORPOR_MEMORY_DIR = await mkdtemp('/dev/shm/torpor-bench-network-');

  type Mode = { label: string; unrestricted: boolean };
  const modes: Mode[] = [
    { label: 'before: QEMU as root, unfiltered', unrestricted: true },
    { label: 'now: own uid + nftables filter', unrestricted: false },
  ];
  const useMode = (mode: Mode) => {
    if (mode.unrestricted) process.env.TORPOR_QEMU_AS_ROOT = '1';
    else delete process.env.TORPOR_QEMU_AS_ROOT;
    return mode.unrestricted ? buildNetworkPolicy({ mode: 'unrestricted' }) : buildNetworkPolicy({ allowHost: [String(port)] });
  };

  async function guest(id: string, script: string): Promise<string> {
    const client = await connectToMachine(await findMachine(id));
    const output: Buffer[] = [];
    const process = client.exec(
      { argv: ['sh', '-c', script], env: [], workingDirectory: '/', user: '', tty: false, stdin: false },
      { stdout: (data) => output.push(data), stderr: (data) => output.push(data) },
    );
    const status = await process.exited;
    client.close();
    if (status.code !== 0) throw new Error(`guest script failed (${status.code}): ${Buffer.concat(output).toString()}`);
    return Buffer.concat(output).toString();
  }

  const results = new Map<string, Record<string, number[]>>();
  const record = (mode: Mode, metric: string, value: number) => {
    const byMetric = results.get(mode.label) ?? {};
    (byMetric[metric] ??= []).push(value);
    results.set(mode.label, byMetric);
  };

  try {
    const host = await prepareHost();
    // Warm up: image and boot template are made outside the measurements.
    const warm = await createMachine({ image: 'base', command: ['true'], networkPolicy: useMode(modes[0]!) });
    await startMachine(warm.id);
    await removeMachine(warm, { force: true });

    for (let run = 0; run < runs; run++) {
      // Alternate the order so neither mode always runs on a warmer host.
      for (const mode of run % 2 === 0 ? modes : [...modes].reverse()) {
        const policy = useMode(mode);
        let began = performance.now();
        const config = await createMachine({
          image: 'base',
          // Once a snapshot has been restored, this loop's next request is the guest's first packet.
          command: ['sh', '-c', `while true; do wget -q -O /dev/null http://10.0.2.2:${port}/tick 2>/dev/null; usleep 20000; done`],
          networkPolicy: policy,
        });
        await startMachine(config.id);
        record(mode, 'start from boot template, wall (ms)', performance.now() - began);
        record(mode, 'start, supervisor-measured (ms)', (await readMachineState(config.id)).bootMs ?? NaN);

        began = performance.now();
        const transfer = await guest(config.id, `wget -q -O /dev/null http://10.0.2.2:${port}/big && echo done`);
        const seconds = (performance.now() - began) / 1000;
        if (!transfer.includes('done')) throw new Error(transfer);
        record(mode, `download ${payloadMiB} MiB from host port (MiB/s)`, payloadMiB / seconds);

        began = performance.now();
        const requests = 20;
        await guest(config.id, `i=0; while [ $i -lt ${requests} ]; do wget -q -O /dev/null http://10.0.2.2:${port}/small; i=$((i+1)); done`);
        record(mode, 'HTTP GET round trip incl. guest wget start (ms)', (performance.now() - began) / requests);

        const snapshotName = `bench-${run}-${mode.unrestricted ? 'before' : 'now'}`;
        await snapshotMachine(config, { name: snapshotName, stop: true });
        await removeMachine(await findMachine(config.id), { force: true });
        arrivals = [];
        began = performance.now();
        const restored = await restoreMachine(snapshotName, { ports: [] });
        record(mode, 'wake: restore until running (ms)', performance.now() - began);
        record(mode, 'wake, supervisor-measured (ms)', (await readMachineState(restored.id)).bootMs ?? NaN);
        const deadline = performance.now() + 20_000;
        while (!arrivals.some((time) => time > began) && performance.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 2));
        const first = arrivals.find((time) => time > began);
        record(mode, 'restore start -> first guest packet at host (ms)', first === undefined ? NaN : first - began);
        await removeMachine(await findMachine(restored.id), { force: true });
      }
    }

    // The filter's own work on the start path: one nft transaction (done while the snapshot is materialized).
    const { installMachineRules, removeMachineRules } = await import('../src/network/firewall.ts');
    const { uidRange } = await import('../src/network/uid-claims.ts');
    const installs: number[] = [];
    for (let run = 0; run < 10; run++) {
      const began = performance.now();
      await installMachineRules(uidRange.last, buildNetworkPolicy({ allowHost: [String(port)] }));
      installs.push(performance.now() - began);
      await removeMachineRules(uidRange.last);
    }
    const filterRow = results.get(modes[1]!.label)!;
    filterRow['nft rules install, done while the snapshot is materialized (ms)'] = installs;

    // Reference: the same download and round trips by a host process, no VM at all.
    const hostRow: Record<string, number[]> = {};
    for (let run = 0; run < runs; run++) {
      let began = performance.now();
      await (await fetch(`http://127.0.0.1:${port}/big`)).arrayBuffer();
      (hostRow[`download ${payloadMiB} MiB from host port (MiB/s)`] ??= []).push(payloadMiB / ((performance.now() - began) / 1000));
      began = performance.now();
      for (let index = 0; index < 20; index++) await (await fetch(`http://127.0.0.1:${port}/small`)).text();
      (hostRow['HTTP GET round trip incl. guest wget start (ms)'] ??= []).push((performance.now() - began) / 20);
    }
    results.set('peer: host process, no VM (fetch)', hostRow);

    console.log(`torpor network benchmark, ${new Date().toISOString()}`);
    console.log(
      `host: ${cpus().length} cores (${cpus()[0]?.model}), ${(totalmem() / 1024 ** 3).toFixed(0)} GiB; accel: ${host.accelerator.accelerator}; runs: ${runs} per mode (medians)`,
    );
    console.log('inside a network namespace made by the benchmark; the host service listens on its 127.0.0.1, the guest reaches it at 10.0.2.2');
    const metrics = [...new Set([...results.values()].flatMap((row) => Object.keys(row)))];
    const labels = [...results.keys()];
    console.log(['metric'.padEnd(50), ...labels.map((label) => label.padStart(36))].join(''));
    for (const metric of metrics) {
      console.log(
        [
          metric.padEnd(50),
          ...labels.map((label) => {
            const values = results.get(label)![metric];
            return (values ? median(values).toFixed(1) : '-').padStart(36);
          }),
        ].join(''),
      );
    }
    const before = results.get(modes[0]!.label)!;
    const now = results.get(modes[1]!.label)!;
    for (const metric of [
      'start from boot template, wall (ms)',
      'start, supervisor-measured (ms)',
      'wake: restore until running (ms)',
      'wake, supervisor-measured (ms)',
    ]) {
      const change = (median(now[metric]!) / median(before[metric]!) - 1) * 100;
      console.log(`${metric}: ${change >= 0 ? '+' : ''}${change.toFixed(1)}% with the filter (budget: +5%)`);
    }
  } finally {
    server.close();
    await dropTemplateMemory();
    await rm(process.env.TORPOR_HOME!, { recursive: true, force: true });
    await rm(process.env.TORPOR_MEMORY_DIR!, { recursive: true, force: true });
  }
}
