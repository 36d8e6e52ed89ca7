import { spawn } from 'node:child_process';
import { readFile, open } from 'node:fs/promises';
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
import { watchMachineDirectory, type MachineDirectoryWatch } from './machine-directory-watch.ts';
import { requireNetworkFilter } from '../network/firewall.ts';
import { prepareConfinement, releaseConfinement } from '../network/machine-confinement.ts';
import { defaultNetworkPolicy } from '../network/policy.ts';
import type { StartTimeline } from './start-timeline.ts';

/**
 * Starts a created or exited machine: hands it to a supervisor (a pool's spare or a new detached
 * one), which boots QEMU (or restores the machine's snapshot), and waits until the guest answers.
 */
export async function startMachine(
  id: string,
  options: {
    waitForAttach?: boolean;
    pool?: SupervisorPool;
    /** the snapshot's files are already in place (fork) */ materialized?: boolean;
    /** records where the start's time goes (benchmarks) */ timeline?: StartTimeline;
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
  // `restored` survives: a machine made from a snapshot restores once, then boots cold on its own disk.
  await writeMachineState(id, { status: 'starting', waitForAttach: options.waitForAttach, restored: current.restored });
  timeline?.mark('start: checked and marked starting');
  const restoring = config.restore !== undefined && !current.restored;
  let child = options.pool?.take();
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
  timeline?.mark(options.pool ? 'start: supervisor taken from the pool' : 'start: supervisor spawned');
  // The supervisor starts up while the snapshot is materialized and its network rules are set up
  // on its behalf; then it is told which machine is its.
  try {
    await Promise.all([
      restoring && !options.materialized ? materializeForRestore(config).then(() => timeline?.mark('start: snapshot materialized')) : undefined,
      prepareConfinement(id, { network: config.network, policy: config.networkPolicy ?? defaultNetworkPolicy() }, child.pid!).then(() =>
        timeline?.mark('start: network confinement prepared'),
      ),
    ]);
  } catch (error) {
    child.kill('SIGKILL');
    await releaseConfinement(id);
    await writeMachineState(id, { status: 'failed', error: (error as Error).message, restored: restoring || current.restored });
    throw error;
  } finally {
    child.stdin?.end(`${id}\n`);
    (child.stdin as unknown as { unref?: () => void } | null)?.unref?.();
  }
  timeline?.mark('start: supervisor told its machine');
  // Wait for the supervisor to report the guest ready (or failed): woken by its state.json
  // writes, and every 100 ms anyway to notice a supervisor that died without writing.
  const changes = watchMachineDirectory(files.directory);
  try {
    const state = await waitForStart(id, config.name, supervisorPid, changes);
    timeline?.mark('start: running state seen');
    timeline?.addSupervisorTimings(state.startTimings);
    return state;
  } finally {
    changes.close();
  }
}

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
      const log = await readFile(files.supervisorLog, 'utf8').catch(() => '');
      await writeMachineState(id, { ...after, status: 'failed', error: 'supervisor died during start' });
      throw new TorporError('start-failed', `machine ${name} failed to start: its supervisor exited\n${log.trim().split('\n').slice(-8).join('\n')}`, {
        hint: `supervisor log: ${files.supervisorLog}`,
      });
    }
    await changes.next(100);
  }
}
