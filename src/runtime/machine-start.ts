import { spawn, type ChildProcess } from 'node:child_process';
import { readFile, open, stat } from 'node:fs/promises';
import { TorporError } from '../util/errors.ts';
import { processMatches } from '../util/process-identity.ts';
import { type MachineState } from './machine-record.ts';
import { isLive, machineFiles, readMachineConfig, readMachineState, writeMachineState } from './machine-files.ts';
import type { SupervisorPool } from './supervisor-pool.ts';
import { supervisorCommand, supervisorEnvironment } from './supervisor-process.ts';
import { supervisorMarker } from './process-liveness.ts';
import { effectiveState } from './machine-status.ts';
import { ensureMemoryRoom, ensurePortsFree } from './host-preparation.ts';
import { materializeForRestore } from './restore-materialization.ts';
import type { SnapshotManifest } from '../snapshot/snapshot-store.ts';
import { watchMachineDirectory, type MachineDirectoryWatch } from './machine-directory-watch.ts';
import { requireNetworkFilter } from '../network/firewall.ts';
import { prepareConfinement, releaseConfinement } from '../network/machine-confinement.ts';
import { defaultNetworkPolicy } from '../network/policy.ts';
import type { StartTimeline } from './start-timeline.ts';
import { standbyRequestOf } from './standby-qemu.ts';
import { environment } from '../config/environment.ts';
import { exitOf } from '../util/child-exit.ts';

/**
 * Starts a created or exited machine: hands it to a supervisor (a pool's spare or a new detached
 * one), which boots QEMU (or restores the machine's snapshot), and waits until the guest answers.
 */
export async function startMachine(
  id: string,
  options: {
    waitForAttach?: boolean;
    pool?: SupervisorPool;
    /** a spare supervisor already taken from a pool for this start (a fork's child: forkMachine picks it by shape) */ supervisor?: ChildProcess;
    /** the snapshot's files are in place (true), or will be when this settles (a fork makes them while its children's starts begin) */ materialized?:
      boolean | Promise<void>;
    /** records where the start's time goes (benchmarks) */ timeline?: StartTimeline;
    /** the restore's snapshot, read already by the caller (`restoreMachine`) */ manifest?: SnapshotManifest;
  } = {},
): Promise<MachineState> {
  const timeline = options.timeline;
  const config = await readMachineConfig(id);
  const current = await effectiveState(config);
  if (isLive(current.status)) {
    throw new TorporError('already-running', `machine ${config.name} is already ${current.status}`, { hint: `torpor stop ${config.name}` });
  }
  await ensureMemoryRoom(config.memoryMiB);
  // Said here, before a supervisor starts, so the user sees the reason and the way out.
  if (config.network && (config.networkPolicy?.mode ?? 'filtered') === 'filtered') requireNetworkFilter();
  if (config.network) await ensurePortsFree(config.ports);
  const files = machineFiles(id);
  const restoring = config.restore !== undefined && !current.restored;
  // The restore's files are written from here on, beside the supervisor's take or spawn, the state
  // write, the uid claim and the confinement (the supervisor is told `launch`, `state` and `go`
  // as they become true). A kill -9 of this process meanwhile leaves a machine still "created" with
  // some of its files written: its next start writes them again.
  let launchable: () => void = () => {};
  const filesLaunchable = new Promise<void>((resolve) => (launchable = resolve));
  let deviceStateWritten: () => void = () => {};
  const deviceStateReady = new Promise<void>((resolve) => (deviceStateWritten = resolve));
  const materialized =
    restoring && !options.materialized
      ? materializeForRestore(config, timeline, launchable, { manifest: options.manifest, onDeviceState: deviceStateWritten }).then(() =>
          timeline?.mark('start: snapshot materialized'),
        )
      : options.materialized instanceof Promise
        ? options.materialized
        : undefined;
  materialized?.catch(() => {});
  let child = options.supervisor ?? options.pool?.take();
  if (!child) {
    const log = await open(files.supervisorLog, 'a');
    child = spawn(process.execPath, [...(await supervisorCommand()), '--standby'], {
      detached: true,
      stdio: ['pipe', log.fd, log.fd],
      env: supervisorEnvironment(),
    });
    await log.close();
    child.unref();
  }
  const supervisorPid = child.pid;
  timeline?.mark(options.pool || options.supervisor ? 'start: supervisor taken from the pool' : 'start: supervisor spawned');
  // Marked starting with the supervisor's pid from the first write: `ps` judges a starting machine by
  // that process, and one marked without it showed as killed ("exited (137)") for as long as a slow
  // restore took before the supervisor wrote its own state (minutes, in a nested machine).
  // `restored` survives: a machine made from a snapshot restores once, then boots cold on its own disk.
  await writeMachineState(id, { status: 'starting', supervisorPid, waitForAttach: options.waitForAttach, restored: current.restored });
  timeline?.mark('start: checked and marked starting');
  // The supervisor learns its machine at once and starts on what needs none of the machine's files;
  // it starts QEMU at `launch` (RAM and disk files in place, its uid claimed on its behalf) and lets
  // the guest run at `go` (disk contents, device state and network rules in place: supervisor-main.ts),
  // so QEMU's start overlaps the restore's writes and the nft transaction.
  const supervisorInput = child.stdin!;
  supervisorInput.on('error', () => {}); // a supervisor that died is noticed below, by its pid
  supervisorInput.write(`${id}\n`);
  let claimed: (uid?: number) => void = () => {};
  const uidClaimed = new Promise<number | undefined>((resolve) => (claimed = resolve));
  const confined = prepareConfinement(id, { network: config.network, policy: config.networkPolicy ?? defaultNetworkPolicy() }, child.pid!, (uid) => {
    timeline?.mark('start: uid claimed');
    claimed(uid);
  }).then(() => timeline?.mark('start: network confinement prepared'));
  const launchSaid = Promise.all([filesLaunchable, uidClaimed]).then(([, uid]) => {
    // With the uid it claimed: the supervisor checks that one claim instead of reading every one.
    supervisorInput.write(uid === undefined ? 'launch\n' : `launch ${uid}\n`);
    timeline?.mark('start: supervisor told to launch');
  });
  launchSaid.catch(() => {});
  // Said after `launch`, when the device state is written before the disk layer (a lazy restore).
  const stateSaid = Promise.all([launchSaid, deviceStateReady]).then(() => {
    supervisorInput.write('state\n');
    timeline?.mark('start: supervisor told the device state is written');
  });
  stateSaid.catch(() => {});
  try {
    await Promise.all([materialized, confined]);
    launchable();
    claimed();
    await launchSaid;
    // (`go` implies `state`: a start that wrote its device state last says only `go`)
    deviceStateWritten();
    await stateSaid;
    supervisorInput.end('go\n');
  } catch (error) {
    // Without `go` the supervisor fails the start itself (and stops a QEMU it started): wait for
    // that, so that its cleanup does not undo what is written below; then make sure.
    supervisorInput.end();
    await exitOf(child, 5000);
    child.kill('SIGKILL');
    await releaseConfinement(id);
    // Which QEMU the start had, when its supervisor recorded one (an adopted standby has its own name): kept for `inspect`.
    const { qemuPid, qemuName } = await readMachineState(id).catch(() => ({}) as MachineState);
    await writeMachineState(id, {
      status: 'failed',
      error: (error as Error).message,
      restored: restoring || current.restored,
      ...(qemuName ? { qemuPid, qemuName } : {}),
    });
    throw error;
  } finally {
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
  timeline?.mark('start: supervisor told to go');
  // Wait for the supervisor to report the guest ready (or failed): woken by its state.json
  // writes, and every 100 ms anyway to notice a supervisor that died without writing.
  const changes = watchMachineDirectory(files.directory);
  try {
    const state = await waitForStart(id, config.name, supervisorPid, changes);
    timeline?.mark('start: running state seen');
    timeline?.addSupervisorTimings(state.startTimings);
    // The pool's next spare pre-starts a QEMU of this machine's shape: the next wake of a session
    // like this one adopts it instead of starting QEMU (standby-qemu.ts).
    if (options.pool && restoring && environment().TORPOR_STANDBY_QEMU) {
      const layerBytes = await stat(files.layerDisk).then(
        (status) => status.size,
        () => 0,
      );
      options.pool.preStart(standbyRequestOf(config, layerBytes));
    }
    return state;
  } finally {
    changes.close();
  }
}

/** The supervisor's verdict on the start (`running` or `exited`; `failed` throws with its reason), or its death noticed by its pid. */
async function waitForStart(id: string, name: string, supervisorPid: number | undefined, changes: MachineDirectoryWatch): Promise<MachineState> {
  const files = machineFiles(id);
  for (;;) {
    const state = await readMachineState(id);
    if (state.status === 'running' || state.status === 'exited' || state.status === 'failed') {
      if (state.status === 'failed') {
        throw new TorporError('start-failed', `machine ${name} failed to start: ${state.error}`, { hint: `supervisor log: ${files.supervisorLog}` });
      }
      return state;
    }
    if (!processMatches(supervisorPid, supervisorMarker)) {
      const after = await readMachineState(id);
      if (after.status === 'running' || after.status === 'exited') return after;
      // It wrote its reason and exited between the two reads: that reason, not "died".
      if (after.status === 'failed')
        throw new TorporError('start-failed', `machine ${name} failed to start: ${after.error}`, { hint: `supervisor log: ${files.supervisorLog}` });
      const log = await readFile(files.supervisorLog, 'utf8').catch(() => '');
      await writeMachineState(id, { ...after, status: 'failed', error: 'supervisor died during start' });
      throw new TorporError('start-failed', `machine ${name} failed to start: its supervisor exited\n${log.trim().split('\n').slice(-8).join('\n')}`, {
        hint: `supervisor log: ${files.supervisorLog}`,
      });
    }
    await changes.next(100);
  }
}
