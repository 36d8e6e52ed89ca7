// Smaller hibernations (issue 11): what a hibernated coding agent costs in the store, side by side
// with today's design in one run: init_on_free=1 on the guest kernel command line
// (TORPOR_ZERO_FREED_MEMORY), 4 KiB page deltas (TORPOR_PAGE_DELTAS), dropping the guest's clean
// caches before a hibernation (TORPOR_DROP_GUEST_CACHES), the image as shared DAX memory instead of
// a block device whose file pages sit in guest RAM (TORPOR_IMAGE_DAX), and combinations.
// Called by bench/lazy-memory.ts (`coding`); on its own (it sets up its own state directory):
//   node --import tsx bench/hibernation-sizes.ts [turns] [all|dax]
// `dax` runs only the two rows that differ in the image device (today's defaults otherwise).
import { MiB, percentile, ms, sleep, codingAgentSpec } from './support.ts';

export interface HibernationVariant {
  name: string;
  zeroFreed: boolean;
  dropCaches: boolean;
  pageDeltas: boolean;
  /** The image as virtio-pmem mounted with DAX (the default) instead of a virtio block device. */
  imageDax: boolean;
}

export const hibernationVariants: HibernationVariant[] = [
  { name: 'none (image as block device)', zeroFreed: false, dropCaches: false, pageDeltas: false, imageDax: false },
  { name: 'init_on_free=1', zeroFreed: true, dropCaches: false, pageDeltas: false, imageDax: false },
  { name: '4 KiB deltas', zeroFreed: false, dropCaches: false, pageDeltas: true, imageDax: false },
  { name: 'init_on_free=1 + 4 KiB deltas (before DAX)', zeroFreed: true, dropCaches: false, pageDeltas: true, imageDax: false },
  { name: 'init_on_free=1 + deltas + drop caches', zeroFreed: true, dropCaches: true, pageDeltas: true, imageDax: false },
  { name: 'init_on_free=1 + deltas + DAX image (default)', zeroFreed: true, dropCaches: false, pageDeltas: true, imageDax: true },
];

/** Today's defaults with the image as a block device, then as DAX memory: the side-by-side of the image device alone. */
export const imageDeviceVariants = hibernationVariants.filter((variant) => variant.zeroFreed && variant.pageDeltas && !variant.dropCaches);

export interface HibernationSizes {
  variant: HibernationVariant;
  /** non-zero bytes the last hibernation read of the guest's RAM (chunks a lazy restore never loaded count 0) */
  nonZeroBytes: number;
  /** compressed bytes only the session's snapshot holds (what the hibernated session costs beyond the template) */
  exclusiveBytes: number;
  /** compressed bytes each hibernation after the first added to the store */
  newBytesPerTurn: number[];
  /** message -> first reply byte of the wakes */
  wakeMs: number[];
  /** bytes of the running machine's RAM file in tmpfs right after each turn's reply (guest RAM the host holds for it) */
  residentBytes: number[];
  /** QEMU's own anonymous memory at the same moment (RssAnon: device state, TCG's code cache, firmware) */
  qemuAnonymousBytes: number[];
}

const mib = (bytes: number) => `${(bytes / MiB).toFixed(1)} MiB`;

/** Runs `turns` turns of the coding agent per variant (each turn wakes it, each idle second hibernates it). */
export async function measureHibernationSizes(
  turns: number,
  progress: (text: string) => void = () => {},
  variants: HibernationVariant[] = hibernationVariants,
): Promise<HibernationSizes[]> {
  const { openContextLog } = await import('../src/context/index.ts');
  const { SessionManager } = await import('../src/session/session-manager.ts');
  const { SessionStore } = await import('../src/session/session-store.ts');
  const { storeUsage, readSnapshot } = await import('../src/snapshot/snapshot-store.ts');
  const { buildCodingAgentImage } = await import('../examples/coding-agent/image.ts');
  const { memoryDirectory } = await import('../src/state/paths.ts');
  const { readMachineState } = await import('../src/runtime/machine-files.ts');
  const { readFile } = await import('node:fs/promises');
  const { stat } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { startDevLlm } = await import('../src/dev-llm/index.ts');
  type SessionEvent = import('../src/session/session-manager.ts').SessionEvent;
  await buildCodingAgentImage();
  const llm = await startDevLlm({ port: 0, host: '127.0.0.1' });
  const log = await openContextLog({ stateDirectory: process.env.TORPOR_HOME! });
  const results: HibernationSizes[] = [];
  try {
    for (const variant of variants) {
      process.env.TORPOR_ZERO_FREED_MEMORY = variant.zeroFreed ? '1' : '0';
      process.env.TORPOR_DROP_GUEST_CACHES = variant.dropCaches ? '1' : '0';
      process.env.TORPOR_PAGE_DELTAS = variant.pageDeltas ? '1' : '0';
      process.env.TORPOR_IMAGE_DAX = variant.imageDax ? '1' : '0';
      // A new manager per variant: supervisors read the environment when they start.
      const manager = new SessionManager({ log, store: new SessionStore(), tickMs: 50, turnTimeoutMs: 180_000 });
      try {
        const record = await manager.create(codingAgentSpec(llm.port, 1), { name: `hibernation-${results.length}` });
        const waitHibernated = async () => {
          for (let attempt = 0; attempt < 2400 && manager.get(record.id).state !== 'hibernated'; attempt++) await sleep(50);
          if (manager.get(record.id).state !== 'hibernated') throw new Error(`session did not hibernate: ${manager.get(record.id).state}`);
        };
        const result: HibernationSizes = {
          variant,
          nonZeroBytes: NaN,
          exclusiveBytes: NaN,
          newBytesPerTurn: [],
          wakeMs: [],
          residentBytes: [],
          qemuAnonymousBytes: [],
        };
        for (let turn = 0; turn < turns; turn++) {
          const started = performance.now();
          let first = NaN;
          const { events } = await manager.send(record.id, `remember fact number ${turn}: the build server is called host-${turn}`, (event: SessionEvent) => {
            if (event.type === 'text-delta' && Number.isNaN(first)) first = performance.now() - started;
          });
          const failure = events.find((event) => event.type === 'error');
          if (failure) throw new Error(`turn failed: ${JSON.stringify(failure)}`);
          if (turn > 0) result.wakeMs.push(first);
          // The machine still runs (it hibernates after an idle second): what its guest RAM holds in tmpfs now.
          const machineId = manager.get(record.id).machineId;
          const qemuPid = machineId ? (await readMachineState(machineId)).qemuPid : undefined;
          if (qemuPid)
            result.qemuAnonymousBytes.push(
              await readFile(`/proc/${qemuPid}/status`, 'utf8').then(
                (status) => Number(/RssAnon:\s+(\d+) kB/.exec(status)?.[1] ?? NaN) * 1024,
                () => NaN,
              ),
            );
          if (machineId)
            result.residentBytes.push(
              await stat(join(memoryDirectory(), `${machineId}.ram`)).then(
                (info) => info.blocks * 512,
                () => NaN,
              ),
            );
          await waitHibernated();
          const manifest = await readSnapshot(manager.get(record.id).snapshot!);
          if (turn > 0) result.newBytesPerTurn.push(Number(manifest.stats.newCompressedBytes));
          result.nonZeroBytes = Number(manifest.stats.nonZeroBytes);
          await sleep(200);
        }
        const usage = await storeUsage();
        result.exclusiveBytes = usage.snapshots.find((snapshot) => snapshot.name === manager.get(record.id).snapshot)?.exclusiveBytes ?? NaN;
        results.push(result);
        progress(
          `hibernation sizes: ${variant.name}: exclusive ${mib(result.exclusiveBytes)}, new per turn p50 ${mib(percentile(result.newBytesPerTurn, 50))}`,
        );
        await manager.delete(record.id);
      } finally {
        await manager.close();
      }
    }
  } finally {
    delete process.env.TORPOR_ZERO_FREED_MEMORY;
    delete process.env.TORPOR_DROP_GUEST_CACHES;
    delete process.env.TORPOR_PAGE_DELTAS;
    delete process.env.TORPOR_IMAGE_DAX;
    await llm.close();
  }
  return results;
}

/**
 * The coding agent's image file and how much of it the host's page cache holds (util-linux fincore):
 * with DAX that is the only copy of the image's file pages, shared by every machine; with a block
 * device each guest holds its own copy in its RAM besides.
 */
export async function imageFootprint(imageName: string): Promise<string> {
  const { resolveImage } = await import('../src/image/image-store.ts');
  const { runCommand } = await import('../src/util/command.ts');
  const image = await resolveImage(imageName);
  if (!image) return `image ${imageName}: not found`;
  const { stdout } = await runCommand('fincore', ['--bytes', '--noheadings', '--output', 'RES,SIZE', image.diskPath], { allowFailure: true });
  const [resident, size] = stdout.trim().split(/\s+/).map(Number);
  return `image ${imageName}: ${mib(size ?? NaN)} file, ${mib(resident ?? NaN)} of it in the host's page cache (counted once for every machine of the image)`;
}

/** Table rows: metric, target, value, versus today. */
export function hibernationRows(results: HibernationSizes[], turns: number): string[][] {
  const today = results[0];
  const rows: string[][] = [];
  for (const result of results) {
    const newBytes = percentile(result.newBytesPerTurn, 50);
    rows.push([
      `hibernated coding agent after ${turns} turns: ${result.variant.name}`,
      result === today ? '<= 10 MiB excl, <= 4 MiB new' : '-',
      `exclusive ${mib(result.exclusiveBytes)}, new per turn p50 ${mib(newBytes)}, non-zero read ${mib(result.nonZeroBytes)}, wake p50 ${ms(percentile(result.wakeMs, 50))}, guest RAM in tmpfs at a turn p50 ${mib(percentile(result.residentBytes, 50))} + QEMU anon ${mib(percentile(result.qemuAnonymousBytes, 50))}`,
      result === today || !today
        ? '-'
        : `${(today.exclusiveBytes / result.exclusiveBytes).toFixed(2)}x smaller, new ${(percentile(today.newBytesPerTurn, 50) / newBytes).toFixed(2)}x`,
    ]);
  }
  return rows;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { mkdtemp, rm } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const turns = Number(process.argv[2] ?? 10);
  const variants = process.argv[3] === 'dax' ? imageDeviceVariants : hibernationVariants;
  const home = await mkdtemp(join(tmpdir(), 'tp-bhs-'));
  process.env.TORPOR_HOME = home;
  const memoryDirectory = await mkdtemp('/dev/shm/tp-bhs-');
  process.env.TORPOR_MEMORY_DIR = memoryDirectory;
  process.env.TORPOR_BOOT_TEMPLATES = '1';
  const { prepareHost, listMachines, findMachine, removeMachine } = await import('../src/runtime/machines.ts');
  try {
    await prepareHost();
    const { loadavg } = await import('node:os');
    const startLoad = loadavg()[0]!;
    const results = await measureHibernationSizes(turns, (text) => process.stderr.write(`${text}\n`), variants);
    console.log(`load average: ${startLoad.toFixed(1)} at start, ${loadavg()[0]!.toFixed(1)} at end`);
    console.log(await imageFootprint('coding-agent'));
    for (const entry of hibernationRows(results, turns)) console.log(entry.join(' | '));
    for (const result of results)
      console.log(
        `${result.variant.name}: new per turn (MiB) ${result.newBytesPerTurn.map((value) => (value / MiB).toFixed(2)).join(', ')}; wakes (ms) ${result.wakeMs.map((value) => value.toFixed(0)).join(', ')}; guest RAM in tmpfs (MiB) ${result.residentBytes.map((value) => (value / MiB).toFixed(1)).join(', ')}`,
      );
  } finally {
    for (const view of await listMachines().catch(() => [])) {
      const config = await findMachine(view.config.id).catch(() => undefined);
      if (config) await removeMachine(config, { force: true }).catch(() => {});
    }
    await rm(home, { recursive: true, force: true });
    await rm(memoryDirectory, { recursive: true, force: true });
  }
}
