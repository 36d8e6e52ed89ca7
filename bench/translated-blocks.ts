// Translated-blocks benchmark (run by hand; issue 11): what TCG translates after a restore. Under
// TCG a restored guest's first answers are bounded by QEMU translating its code again (a new QEMU
// has an empty translation cache), so the work a restored guest does is what to cut. QEMU's
// `translate_block` trace event (log backend) names every block TCG translates; the guest's
// /proc/kallsyms names the kernel function each one starts in; the blocks translated from `cont`
// until the restored agent answered its first ping are counted by kernel subsystem. One child process per tree (this checkout and
// another one, e.g. the last stop's: `git worktree add --detach /tmp/blocks-old <commit>`),
// interleaved; each restores a snapshot of an idle `base` machine under a new name through a
// supervisor pool (as `torpor serve` does) and pings it. The trace slows QEMU: only the counts mean
// something, not the times. Commit the output under bench/results/translated-blocks-<date>-tcg.txt.
//   node --import tsx bench/translated-blocks.ts [rounds] [old tree|-] [restores per round]
// BLOCKS_DETAIL=<subsystem, as printed> writes the function each of that subsystem's blocks starts in to stderr.
import { chmod, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { percentile, progress, runJsonChild, sleep } from './support.ts';

/** Kernel subsystems, by the name of the function a block starts in (first match wins). */
const subsystems: Array<[string, RegExp]> = [
  [
    'ext4, overlayfs and block writes',
    /^(ext4|__ext4|jbd2|mb_|ovl_|truncate|__es_|es_|delete_from_page|release_pages|notify_change|do_truncate|generic_perform_write|block_|__block|mark_buffer|submit_bh|bio_|blk_|__blk|virtio_queue_rq|mpage_)/,
  ],
  [
    'networking',
    /^(rtnl|inet|ip6|ipv6|ndisc|neigh|___neigh|__neigh|dev_|__dev|netdev|netif|arp|skb|__skb|kfree_skb|sk_|start_xmit|virtnet|napi|__napi|net_|addrconf|fib)/,
  ],
  ['RCU', /^(rcu|__rcu|call_rcu)/],
  [
    'scheduler',
    /^(__schedule|schedule|enqueue|dequeue|update_|__update|pick_next|try_to_wake|check_preempt|psi_|task_tick|select_task|set_next|put_prev|ttwu|finish_task)/,
  ],
  ['timers and clocks', /^(hrtimer|__hrtimer|timekeeping|tick_|__run_timers|run_timer|clockevents|lapic|ktime|timerqueue|update_wall|do_timer|__timekeeping)/],
  [
    'memory',
    /^(__handle_mm|handle_mm|do_user_addr|do_anonymous|alloc_pages|__alloc|get_page_from|rmqueue|mtree|mt_|vma_|do_fault|filemap_map|next_uptodate|copy_page|clear_page|kmem_cache|___slab|__slab)/,
  ],
  ['virtio console', /^(virtio|vring|virtqueue|control_work|port_|fill_queue|hvc|__send_control|add_inbuf)/],
  ['random', /^(crng|chacha|blake2s|mix_pool|credit_|_extract|extract_|random_|get_random|add_device_rand|write_pool|urandom)/],
  [
    'system calls and paths',
    /^(path_|do_sys|__x64|x64_sys|do_dentry|link_path|walk_component|lookup|vfs_|ksys|do_epoll|ep_|__fdget|fput|__fput|dput|do_filp|getname)/,
  ],
];

interface Counts {
  total: number;
  user: number;
  bySubsystem: Record<string, number>;
}

interface ChildResult {
  restores: Counts[];
}

const thisTree = resolve(dirname(fileURLToPath(import.meta.url)), '..');

if (process.argv[2] === '--child') {
  console.log(JSON.stringify(await child(process.argv[3]!, Number(process.argv[4]))));
  process.exit(0);
}

const rounds = Math.max(1, Number(process.argv[2] ?? 2));
const oldTree = process.argv[3] && process.argv[3] !== '-' ? resolve(process.argv[3]) : undefined;
const restoresPerRound = Math.max(1, Number(process.argv[4] ?? 2));
const trees = [{ name: 'new', path: thisTree }, ...(oldTree ? [{ name: 'old', path: oldTree }] : [])];
const results = new Map<string, Counts[]>(trees.map((tree) => [tree.name, []]));
const loadAtStart = loadavg();
const started = Date.now();
for (let round = 0; round < rounds; round++) {
  // Alternate which tree goes first: a host whose load drifts favours neither.
  for (const tree of round % 2 === 0 ? trees : [...trees].reverse()) {
    progress(`round ${round + 1}/${rounds}: ${tree.name} tree`);
    results.get(tree.name)!.push(...(await runChild(tree.path)).restores);
  }
}

console.log(`torpor translated-blocks benchmark (issue 11), ${new Date().toISOString()}`);
console.log(
  `accel: tcg (the trace event is TCG's); host: ${cpus().length} cores, node ${process.version}; run took ${((Date.now() - started) / 1000).toFixed(0)} s`,
);
console.log(`load average at start ${loadAtStart.map((value) => value.toFixed(2)).join(' ')}, at end ${loadavg()[0]!.toFixed(2)}`);
console.log(`trees: new = ${thisTree}${oldTree ? `, old = ${oldTree}` : ''}; ${rounds} rounds x ${restoresPerRound} restores per tree, interleaved`);
console.log(
  'blocks of guest code TCG translated from `cont` until the agent answered its first ping, in a pool restore under a new name; median (min-max) per restore',
);
console.log('');
const column = (name: string, pick: (counts: Counts) => number) => {
  const values = results.get(name)!.map(pick);
  return `${String(percentile(values, 50)).padStart(6)} (${Math.min(...values)}-${Math.max(...values)})`;
};
console.log(`${'subsystem'.padEnd(34)} ${trees.map((tree) => tree.name.padStart(18)).join(' ')}`);
for (const [label, pick] of [
  ['all blocks', (counts: Counts) => counts.total],
  ['user space', (counts: Counts) => counts.user],
  ...[...subsystems.map(([name]) => name), 'other kernel code'].map((name) => [name, (counts: Counts) => counts.bySubsystem[name] ?? 0] as const),
] as Array<[string, (counts: Counts) => number]>)
  console.log(`${label.padEnd(34)} ${trees.map((tree) => column(tree.name, pick).padStart(18)).join(' ')}`);

async function runChild(tree: string): Promise<ChildResult> {
  return runJsonChild<ChildResult>(join(thisTree, 'bench', 'translated-blocks.ts'), ['--child', tree, String(restoresPerRound)], { cwd: tree });
}

/** One tree: its own home, a QEMU wrapper that traces, a snapshot of an idle machine, `count` pool restores. */
async function child(tree: string, count: number): Promise<ChildResult> {
  const home = await mkdtemp(join(tmpdir(), 'tp-bblocks-'));
  const memoryDirectory = await mkdtemp('/dev/shm/tp-bblocks-');
  const traces = await mkdtemp(join(tmpdir(), 'tp-bblocks-trace-'));
  // QEMU writes its trace as root before it drops to the machine's uid; `exec` keeps the pid, so the
  // file is named after the QEMU process the machine's state records.
  const wrapper = join(traces, 'qemu-traced');
  await writeFile(
    wrapper,
    `#!/bin/sh\nexec qemu-system-x86_64 "$@" -msg timestamp=on -trace translate_block -trace vm_state_notify -D ${traces}/qemu-$$.log\n`,
  );
  await chmod(wrapper, 0o755);
  Object.assign(process.env, { TORPOR_HOME: home, TORPOR_MEMORY_DIR: memoryDirectory, TORPOR_BOOT_TEMPLATES: '1', TORPOR_QEMU: wrapper });
  const from = (path: string) => import(pathToFileURL(join(tree, path)).href);
  const { createMachine, startMachine, connectToMachine, removeMachine, prepareHost, createSupervisorPool } = await from('src/runtime/machines.ts');
  const { snapshotMachine, restoreMachine } = await from('src/runtime/snapshots.ts');
  const { readMachineState } = await from('src/runtime/machine-files.ts');
  const pool = createSupervisorPool(1);
  const restores: Counts[] = [];
  try {
    await prepareHost();
    const origin = await createMachine({ image: 'base', memoryMiB: 512, command: ['sleep', '100000'], name: 'origin' });
    await startMachine(origin.id);
    // Idle long enough that the guest's own start-up work (IPv6 address configuration's timers) is over.
    await sleep(8000);
    await snapshotMachine(origin, { name: 'origin@1' });
    await removeMachine(origin, { force: true });
    // The first restore through the pool teaches it the shape (a standby QEMU of it), and gives the
    // guest's kernel symbols (every restore of one snapshot has the same kernel layout).
    await sleep(1500);
    const first = await restoreMachine('origin@1', { name: 'warm-up', pool });
    const client = await connectToMachine(first);
    const parts: Buffer[] = [];
    await client.readFile('/proc/kallsyms', (chunk: Buffer) => parts.push(chunk));
    client.close();
    await removeMachine(first, { force: true });
    const symbols = kernelSymbols(Buffer.concat(parts).toString());
    for (let index = 0; index < count; index++) {
      await sleep(2500); // the pool refills and its spare starts the standby QEMU
      const restored = await restoreMachine('origin@1', { name: `copy-${index}`, pool });
      const pinger = await connectToMachine(restored);
      await pinger.ping(30_000);
      // (QEMU stamps its trace lines with the wall clock too)
      const answeredAt = Date.now();
      pinger.close();
      const { qemuPid } = await readMachineState(restored.id);
      await removeMachine(restored, { force: true });
      restores.push(countBlocks(await readFile(join(traces, `qemu-${qemuPid}.log`), 'utf8'), symbols, answeredAt));
    }
  } finally {
    await pool.close();
    await rm(home, { recursive: true, force: true });
    await rm(memoryDirectory, { recursive: true, force: true });
    await rm(traces, { recursive: true, force: true });
  }
  return { restores };
}

/** Text symbols of the guest kernel, sorted by address. */
function kernelSymbols(kallsyms: string): { addresses: bigint[]; names: string[] } {
  const entries: Array<[bigint, string]> = [];
  for (const line of kallsyms.split('\n')) {
    const [address, type, name] = line.split(/\s+/);
    if (address && name && type && 'tTwW'.includes(type)) entries.push([BigInt(`0x${address}`), name]);
  }
  entries.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return { addresses: entries.map(([address]) => address), names: entries.map(([, name]) => name) };
}

function symbolOf(symbols: { addresses: bigint[]; names: string[] }, pc: bigint): string {
  let low = 0;
  let high = symbols.addresses.length - 1;
  while (low < high) {
    const middle = (low + high + 1) >> 1;
    if (symbols.addresses[middle]! <= pc) low = middle;
    else high = middle - 1;
  }
  return symbols.names[low] ?? '?';
}

/** The blocks translated from the moment the guest was let run (`cont`) until `until` (ms since the epoch), by subsystem. */
function countBlocks(trace: string, symbols: { addresses: bigint[]; names: string[] }, until: number): Counts {
  const counts: Counts = { total: 0, user: 0, bySubsystem: {} };
  let resumedAt: number | undefined;
  for (const line of trace.split('\n')) {
    const match = /^\d+@([\d.]+):(\S+)(.*)$/.exec(line);
    if (!match) continue;
    const at = Number(match[1]) * 1000;
    if (resumedAt === undefined) {
      if (match[2] === 'vm_state_notify' && match[3]!.includes('running 1')) resumedAt = at;
      continue;
    }
    if (at > until) break;
    if (match[2] !== 'translate_block') continue;
    const pc = /pc:0x([0-9a-f]+)/.exec(match[3]!)?.[1];
    if (!pc) continue;
    counts.total++;
    const address = BigInt(`0x${pc}`);
    if (address < 0xffff000000000000n) {
      counts.user++;
      continue;
    }
    const name = symbolOf(symbols, address);
    const subsystem = subsystems.find(([, pattern]) => pattern.test(name))?.[0] ?? 'other kernel code';
    if (process.env.BLOCKS_DETAIL === subsystem) process.stderr.write(`${name}\n`);
    counts.bySubsystem[subsystem] = (counts.bySubsystem[subsystem] ?? 0) + 1;
  }
  if (resumedAt === undefined) throw new Error('the trace has no resume (vm_state_notify running): was QEMU traced?');
  return counts;
}
