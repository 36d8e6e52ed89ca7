import { availableParallelism, homedir } from 'node:os';
import { join, resolve } from 'node:path';
import { TorporError } from '../util/errors.ts';
import {
  choice,
  flag,
  optionalText,
  optionalUrl,
  optionalWholeNumber,
  optionalWholeNumberOrAuto,
  textOr,
  wholeNumberOr,
  type EnvironmentValue,
} from './environment-values.ts';

/**
 * Every environment variable torpor reads, in one place: its value's kind, its default and what it
 * is for. Code reads `environment()` instead of `process.env`, so a typo or a bad value is caught
 * here with an error that says what to do, and README.md's table is generated from `variables` (a
 * test fails when the two differ: `node --import tsx scripts/environment-table.ts --write` updates it).
 * The kinds are small parsers (environment-values.ts), not zod: every command, even `torpor ps`,
 * reads the environment and must start fast.
 */

interface Variable<T> {
  schema: EnvironmentValue<T>;
  /** The default, as a person reads it (the README shows it). */
  shownDefault: string;
  description: string;
}

const variable = <T>(schema: EnvironmentValue<T>, shownDefault: string, description: string): Variable<T> => ({ schema, shownDefault, description });

export const variables = {
  TORPOR_HOME: variable(
    optionalText(),
    '`$XDG_DATA_HOME/torpor` or `~/.local/share/torpor`',
    'the state directory: machines, images, snapshots, the context log, sessions',
  ),
  TORPOR_CACHE: variable(
    optionalText(),
    '`$XDG_CACHE_HOME/torpor` or `~/.cache/torpor`',
    'host artifacts shared by every state directory (guest agent, initramfs, the KVM verdict)',
  ),
  TORPOR_MEMORY_DIR: variable(textOr('/dev/shm/torpor'), '`/dev/shm/torpor`', 'the tmpfs directory that holds guest RAM files'),
  TORPOR_URL: variable(optionalUrl(), 'the running `torpor serve`', 'the server the `log` and `session` commands talk to'),
  TORPOR_ACCEL: variable(choice(['auto', 'kvm', 'tcg'], 'auto'), '`auto`', '`kvm` or `tcg` skips the accelerator probe'),
  TORPOR_KVM_PROBE_MS: variable(
    wholeNumberOr(1, 8_000),
    '`8000`',
    'how long the KVM probe guest may take to answer before torpor uses TCG (the `torpor` image sets 600000: nested KVM under TCG boots in 10 s to minutes)',
  ),
  TORPOR_BOOT_TEMPLATES: variable(flag('1', true), '`1`', '`0` boots every machine cold instead of restoring a boot template'),
  TORPOR_SPARE_MACHINES: variable(
    wholeNumberOr(0, 1),
    '`1`',
    'spare machines kept started per image and settings, which `run` claims instead of starting one (each holds QEMU, its guest RAM and a supervisor: see `torpor system pool`); `0` keeps none',
  ),
  TORPOR_SPARE_IDLE_SECONDS: variable(
    wholeNumberOr(0, 1800),
    '`1800`',
    'a spare machine no `run` claimed within this many seconds ends itself, so a host where torpor ran once does not keep its memory forever; `0`: spares wait until claimed or cleared',
  ),
  TORPOR_BOOT_TIMEOUT_MS: variable(wholeNumberOr(1, 60_000), '`60000`', 'how long a cold boot may take before the machine fails'),
  TORPOR_KERNEL: variable(optionalText(), 'the newest `/boot/vmlinuz-*-cloud-amd64`', 'the guest kernel (with `TORPOR_KERNEL_MODULES`)'),
  TORPOR_KERNEL_MODULES: variable(textOr(''), 'its `/lib/modules/VERSION`', "the guest kernel's modules directory, when `TORPOR_KERNEL` is set"),
  TORPOR_QEMU: variable(textOr('qemu-system-x86_64'), '`qemu-system-x86_64`', 'the QEMU binary'),
  TORPOR_BUSYBOX: variable(textOr('/bin/busybox'), '`/bin/busybox`', 'the static busybox the built-in images are made of'),
  TORPOR_SNAPSHOT_WORKERS: variable(
    optionalWholeNumber(0),
    'the number of cores, at most 8',
    'threads that compress and hash snapshot chunks; `0` uses the main thread only',
  ),
  TORPOR_SNAPSHOT_LOCK_WAIT_MS: variable(wholeNumberOr(0, 60_000), '`60000`', 'how long a snapshot operation waits for the store lock (garbage collection)'),
  TORPOR_NO_BUNDLE: variable(flag('1', false), '`0`', '`1` runs the CLI and supervisors from the TypeScript sources instead of the esbuild bundles'),
  TORPOR_SUPERVISOR_WAIT: variable(flag('1', false), '`0`', 'internal: a supervisor started with its machine id waits for a line on stdin before it starts'),
  TORPOR_TOKEN: variable(
    optionalText(),
    "the server's `api/token` (loopback servers only)",
    'the bearer token the CLI, `RemoteContextLog` and the `torpor` client send to `torpor serve`',
  ),
  TORPOR_SERVER_NAMES: variable(optionalText(), 'none', "serve: extra names (comma-separated) the Host header may carry, e.g. a TLS proxy's public name"),
  TORPOR_MAX_CPUS: variable(optionalText(), "the host's cores", 'serve: most vCPUs of one machine (`--max-cpus`)'),
  TORPOR_MAX_MEMORY: variable(optionalText(), "half the host's RAM", 'serve: most memory of one machine, a size like `8g` (`--max-memory`)'),
  TORPOR_MAX_DISK: variable(optionalText(), '`16g`', 'serve: largest writable disk of one machine (`--max-disk`)'),
  TORPOR_MAX_MACHINES: variable(optionalText(), "3/4 of the host's RAM at 512m each", 'serve: most machines running at once (`--max-machines`)'),
  TORPOR_MAX_SESSIONS: variable(optionalText(), '`1000`', 'serve: most sessions that may exist (`--max-sessions`)'),
  TORPOR_MAX_BODY: variable(optionalText(), '`1m`', 'serve: largest request body except log appends and streams (`--max-body`)'),
  TORPOR_AGENT_MAX_LINE: variable(optionalText(), '8 MiB', "longest line (bytes) a session's agent may print; longer ones are dropped with an error event"),
  TORPOR_AGENT_MAX_HISTORY: variable(optionalText(), '4 MiB', 'largest history (bytes) sent to an agent in one answer; older entries are left out'),
  TORPOR_LOG_MAX: variable(optionalText(), '16 MiB', "bytes a machine's process or console log keeps (a current file plus one rotated `.1`)"),
  TORPOR_MAX_LAYER_BYTES: variable(optionalText(), 'see architecture/images.md', 'largest unpacked image layer (`--max-layer-bytes`)'),
  TORPOR_MAX_LAYER_MEMBERS: variable(optionalText(), 'see architecture/images.md', 'most members in one image layer (`--max-layer-members`)'),
  TORPOR_MAX_IMAGE_BYTES: variable(optionalText(), 'see architecture/images.md', 'largest unpacked image (`--max-image-bytes`)'),
  TORPOR_IMPORT_THREAD: variable(flag('1', false), '`0`', '`1` extracts every image layer on a worker thread (large ones always are)'),
  TORPOR_RUNTIME_DIR: variable(textOr('/run/torpor'), '`/run/torpor`', 'host-wide runtime state of a root-run torpor: QEMU uid claims and sockets'),
  TORPOR_QEMU_AS_ROOT: variable(flag('1', false), '`0`', '`1` runs QEMU as root without the network filter (benchmarks only: guests then reach the host)'),
  // The same names as vm/machine-spec.ts's `tcgCpuModels` (config/ may not import vm/; a test keeps them equal).
  TORPOR_TCG_CPU: variable(
    choice(['max-without-erms', 'max'], 'max-without-erms'),
    '`max-without-erms`',
    'the CPU model new TCG machines get (their snapshots keep it); `max` offers ERMS/FSRM too, which TCG runs slowly (architecture/runtime.md)',
  ),
  TORPOR_LAZY_MEMORY: variable(
    flag('1', true),
    '`1`',
    '`0` materializes guest RAM before a restore instead of serving it on demand (automatic without userfaultfd)',
  ),
  TORPOR_STANDBY_QEMU: variable(
    flag('1', true),
    '`1`',
    "`0`: the spare supervisors of `torpor serve` do not pre-start a paused QEMU for the shape of the last woken session's machine (a wake then starts QEMU itself, ~100 ms more under TCG)",
  ),
  TORPOR_POOL_SPARES: variable(
    wholeNumberOr(0, 4),
    '`4`',
    "at most this many spare supervisor processes `torpor serve` keeps started for session wakes and the machine API's restores and forks (one, or one per standby QEMU its last wake and fork need; ~50 MiB each); `0` starts a new one for every start",
  ),
  TORPOR_POOL_STANDBYS: variable(
    wholeNumberOr(0, 4),
    '`4`',
    "how many of those spares may hold a paused standby QEMU of a shape the server needed last (the last wake's, the last fork's once per child; ~50 MiB each under TCG): a fork of N takes up to N of them instead of starting QEMUs",
  ),
  TORPOR_LAZY_PREFETCH: variable(flag('1', true), '`1`', "`0` does not prefetch a snapshot's recorded working set on restore"),
  TORPOR_TRACK_WRITES: variable(flag('1', true), '`1`', '`0` hashes every loaded chunk at a snapshot instead of only those written since the last one'),
  TORPOR_ZERO_FREED_MEMORY: variable(
    flag('1', true),
    '`1`',
    '`0` boots new machines without `init_on_free=1` (freed guest pages then keep old bytes, which snapshots store)',
  ),
  TORPOR_IMAGE_DAX: variable(
    flag('1', true),
    '`1`',
    '`0` gives new machines their image as a virtio block device (its file pages then sit in guest RAM and in every snapshot) instead of shared read-only memory mounted with DAX',
  ),
  TORPOR_DROP_GUEST_CACHES: variable(
    flag('1', false),
    '`0`',
    '`1` has the guest drop its clean caches before a hibernation (measured: smaller once, but every wake reads them back and the next snapshot stores them again)',
  ),
  TORPOR_COPY_BEFORE_WRITE: variable(
    flag('1', true),
    '`1`',
    '`0` keeps the guest paused for the whole capture of a checkpoint that continues (instead of only for its device state)',
  ),
  TORPOR_DISK_COPY_JOB: variable(
    flag('1', true),
    '`1`',
    "`0` copies the disk layer of a checkpoint that continues with the guest paused, instead of with QEMU's copy job beside the running guest",
  ),
  TORPOR_PAGE_DELTAS: variable(flag('1', true), '`1`', '`0` stores every changed 256 KiB chunk whole instead of as its changed 4 KiB pages'),
  TORPOR_VERIFY_WRITE_TRACKING: variable(flag('1', false), '`0`', '`1` checks every chunk write tracking calls unchanged (tests)'),
  TORPOR_WARM_MEMORY: variable(
    optionalWholeNumberOrAuto(0),
    '`0`; `torpor serve`: `auto`',
    "MiB of host memory hibernated machines may keep: sessions' QEMUs paused (their wake is a resume), else RAM files in tmpfs, so a wake skips the store (`serve --warm-memory`); `auto` is 1/8 of the host's RAM",
  ),
  TORPOR_WARM_RESERVE: variable(
    optionalWholeNumber(0),
    "1/16 of the host's RAM, at least 512",
    'MiB of available host memory (`MemAvailable`) the warm and paused tiers leave to everything else: below it they keep no new machine and give back their oldest until it is free again',
  ),
  TORPOR_PAUSED_MACHINES: variable(
    flag('1', true),
    '`1`',
    "`0`: a hibernated session's QEMU is always ended; by default, within `TORPOR_WARM_MEMORY`, it is kept paused and its wake is a resume",
  ),
  TORPOR_TURN_SNAPSHOTS: variable(
    optionalWholeNumber(0),
    '`0`',
    'serve: keep a snapshot of each of the last N turns of a session, for rewind (`fork --at-turn`)',
  ),
  TORPOR_STREAM_LONG_POLL_MS: variable(optionalWholeNumber(1), "the protocol's default", 'serve: longest wait of a Durable Streams long-poll'),
  TORPOR_DASHBOARD_SCREENSHOTS: variable(optionalText(), 'none', "tests: the directory the dashboard's browser test saves its screenshots to"),
  TORPOR_TEST_S3: variable(
    choice(['radosgw', 's3rver'], 'radosgw'),
    '`radosgw`',
    'tests: the S3 server the object store tests start (Ceph radosgw, or s3rver from npm: faster, less faithful)',
  ),
  TORPOR_LAZY_MEMORY_MAP: variable(optionalText(), 'none', 'internal: set by torpor for QEMU, the page map its preloaded pager serves guest RAM from'),
  TORPOR_PARENT_DEATH: variable(optionalText(), 'none', 'internal: set by torpor for QEMU, re-arms its parent-death signal after it drops root'),
  TORPOR_LAZY_MEMORY_LATER: variable(
    optionalText(),
    'none',
    "internal: set by torpor for a standby QEMU, the empty RAM file whose pager waits for its page map (and holds QEMU's uid switch back until then)",
  ),
  TORPOR_STANDBY_LAYER: variable(
    optionalText(),
    'none',
    "internal: set by torpor for a standby QEMU, the layer disk whose descriptors its pager moves to the adopting machine's",
  ),
  TORPOR_CLUSTER: variable(
    optionalText(),
    'none (a single host)',
    'serve: the PostgreSQL URL of a cluster of nodes: sessions, leases and the log live there (`serve --cluster`)',
  ),
  TORPOR_NODE_NAME: variable(optionalText(), 'the host name', "serve: this node's name in the cluster, unique (`--node-name`)"),
  TORPOR_ADVERTISE_URL: variable(optionalUrl(), 'the address it listens on', 'serve: the URL other nodes forward requests to (`--advertise-url`)'),
  TORPOR_LEASE_SECONDS: variable(
    optionalWholeNumber(1),
    '`10`',
    "serve: seconds without a node's heartbeat before other nodes take its sessions over (`--lease-seconds`)",
  ),
  TORPOR_STORE: variable(optionalText(), 'none (snapshots stay on this host)', 'the object store for snapshot chunks, `s3://BUCKET/PREFIX` (`serve --store`)'),
  TORPOR_S3_ENDPOINT: variable(optionalUrl(), "the SDK's (AWS S3)", 'the S3 endpoint URL, for R2, Ceph RGW, MinIO or a test server'),
  TORPOR_S3_REGION: variable(optionalText(), '`AWS_REGION`, else `us-east-1`', 'the S3 region requests are signed for (`auto` for R2)'),
  TORPOR_S3_ACCESS_KEY_ID: variable(optionalText(), "the SDK's chain (`AWS_ACCESS_KEY_ID`, profiles, instance roles)", 'the S3 access key id'),
  TORPOR_S3_SECRET_ACCESS_KEY: variable(optionalText(), "the SDK's chain", 'the S3 secret access key'),
  TORPOR_S3_FORCE_PATH_STYLE: variable(
    flag('1', false),
    '`0`',
    '`1` addresses buckets as `ENDPOINT/BUCKET` instead of `BUCKET.ENDPOINT` (MinIO, Ceph RGW, test servers)',
  ),
  TORPOR_CHUNK_CACHE_BYTES: variable(
    optionalWholeNumber(0),
    'none (no limit)',
    'with an object store: bytes of snapshot chunks this host keeps; least recently used chunks the store holds are evicted past it',
  ),
  XDG_DATA_HOME: variable(optionalText(), '`~/.local/share`', 'the base of the default state directory'),
  XDG_CACHE_HOME: variable(optionalText(), '`~/.cache`', 'the base of the default cache directory'),
  DOCKER_CONFIG: variable(optionalText(), '`~/.docker`', "registry credentials are also read from its `config.json`, as docker's are"),
} as const;

export type Environment = { [Name in keyof typeof variables]: ReturnType<(typeof variables)[Name]['schema']['read']> };

const variableNames = new Set(Object.keys(variables));

/** The variables as they were last parsed: parsing happens again only when one of them changed (tests change them). */
let parsed: { key: string; value: Environment } | undefined;

/** The parsed environment; throws `invalid-environment` naming the variable and the values it takes. */
export function environment(source: NodeJS.ProcessEnv = process.env): Environment {
  // Called on every path lookup, so the check for a change must be cheap: each read of
  // process.env is a getenv (~0.5 us), so only the names the process has are read, not all of
  // ours (47 -> ~20 us a call). Empty means unset, as in most shells' habits (`TORPOR_HOME= torpor ...`).
  const relevant: Record<string, string> = {};
  let key = '';
  for (const name of Object.keys(source)) {
    if (!variableNames.has(name)) continue;
    const raw = source[name];
    if (!raw) continue;
    relevant[name] = raw;
    key += `${name}=${raw}\0`;
  }
  if (parsed?.key === key) return parsed.value;
  const result: Record<string, unknown> = {};
  for (const [name, { schema, shownDefault, description }] of Object.entries(variables)) {
    try {
      result[name] = (schema as EnvironmentValue<unknown>).read(relevant[name]);
    } catch (error) {
      throw new TorporError('invalid-environment', `${name}=${JSON.stringify(relevant[name])} is not valid: expected ${(error as Error).message}`, {
        hint: `${name}: ${description} (default ${shownDefault}); unset it or fix it`,
        status: 500,
      });
    }
  }
  parsed = { key, value: result as Environment };
  return parsed.value;
}

/**
 * The state directory: `$TORPOR_HOME`, else `~/.local/share/torpor` (XDG data home when set).
 * Everything torpor keeps on disk lives under it, so one variable moves or isolates an install.
 */
export function stateHome(source: NodeJS.ProcessEnv = process.env): string {
  const settings = environment(source);
  if (settings.TORPOR_HOME) return resolve(settings.TORPOR_HOME);
  return join(settings.XDG_DATA_HOME ? resolve(settings.XDG_DATA_HOME) : join(homedir(), '.local', 'share'), 'torpor');
}

/**
 * Host-level build products (guest agent, initramfs, the KVM probe's verdict): they depend only on
 * this host, so every state directory shares them.
 */
export function cacheHome(source: NodeJS.ProcessEnv = process.env): string {
  const settings = environment(source);
  if (settings.TORPOR_CACHE) return resolve(settings.TORPOR_CACHE);
  return join(settings.XDG_CACHE_HOME ? resolve(settings.XDG_CACHE_HOME) : join(homedir(), '.cache'), 'torpor');
}

/** Snapshot worker threads: the number of cores (the work is CPU-bound, at most 8) unless configured. */
export function snapshotWorkerCount(): number {
  return environment().TORPOR_SNAPSHOT_WORKERS ?? Math.min(availableParallelism(), 8);
}

/** README.md's environment table, made from `variables`. */
export function environmentTable(): string {
  const rows = Object.entries(variables).map(([name, { shownDefault, description }]) => `| \`${name}\` | ${shownDefault} | ${description} |`);
  return ['| variable | default | what it is for |', '| --- | --- | --- |', ...rows].join('\n');
}
