import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync, existsSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { qemuArguments, qemuBinary } from './qemu-command.ts';
import { QmpClient } from './qmp.ts';
import type { MachineSpec } from './machine-spec.ts';
import type { RunningVm, VmDriver, VmExit } from './driver.ts';
import { TorporError } from '../util/errors.ts';
import { hasExited } from '../util/child-exit.ts';

function lastLines(path: string, count: number): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-count).join('\n');
  } catch {
    return '';
  }
}

/**
 * util-linux's setpriv (essential in Debian, so always there) sets PR_SET_PDEATHSIG and then execs
 * QEMU: when the process that started QEMU (a machine's supervisor) dies, even by kill -9, the
 * kernel sends QEMU SIGKILL. A QEMU never outlives its supervisor unseen, still holding its RAM.
 */
const parentDeathWrapper = ['/usr/bin/setpriv', '/bin/setpriv'].find((path) => existsSync(path));

/** The command that starts QEMU and ties its life to this process's. */
export function qemuSpawnCommand(spec: MachineSpec): { file: string; arguments: string[] } {
  if (!parentDeathWrapper) return { file: qemuBinary(), arguments: qemuArguments(spec) };
  return { file: parentDeathWrapper, arguments: ['--pdeathsig', 'KILL', '--', qemuBinary(), ...qemuArguments(spec)] };
}

export const qemuDriver: VmDriver = {
  name: 'qemu',
  async launch(spec: MachineSpec, { logPath }): Promise<RunningVm> {
    await rm(spec.qmpSocket, { force: true });
    await rm(spec.agentSocket, { force: true });
    const log = openSync(logPath, 'a');
    // With -runas the layer disk goes in as descriptors 3 (read-write) and 4 (read-only): `layerDescriptors`.
    const layer = spec.runAs && spec.layerDisk ? [openSync(spec.layerDisk, 'r+'), openSync(spec.layerDisk, 'r')] : [];
    // The disk copy target goes in as descriptor 5 (`diskCaptureDescriptor`); the caller keeps its own.
    const capture = spec.layerDisk && spec.diskCaptureDescriptor !== undefined ? [spec.diskCaptureDescriptor] : [];
    const layerSlots = layer.length > 0 ? layer : capture.length > 0 ? ['ignore' as const, 'ignore' as const] : [];
    const command = qemuSpawnCommand(spec);
    const child = spawn(command.file, command.arguments, {
      stdio: ['ignore', log, log, ...layerSlots, ...capture],
      env: spec.environment ? { ...process.env, ...spec.environment } : process.env,
    });
    closeSync(log);
    for (const fd of layer) closeSync(fd);
    const exited = new Promise<VmExit>((resolve) => {
      child.on('error', (error: NodeJS.ErrnoException) =>
        resolve({
          code: null,
          signal: null,
          message: error.code === 'ENOENT' ? `${qemuBinary()} is not installed (apt-get install -y qemu-system-x86)` : error.message,
        }),
      );
      child.on('exit', (code, signal) => {
        const message = lastLines(logPath, 5);
        // setpriv says this when it cannot exec QEMU (the binary is missing).
        if (code === 127 && message.includes('failed to execute'))
          resolve({ code, signal, message: `${qemuBinary()} is not installed (apt-get install -y qemu-system-x86)` });
        else resolve({ code, signal, message });
      });
    });
    if (!child.pid) {
      const exit = await exited;
      throw new TorporError('qemu-failed', `could not start QEMU: ${exit.message}`, { hint: 'run `torpor doctor`' });
    }
    // Without this the connect loop went on retrying for 15 s after QEMU exited at start, keeping
    // the process alive (a failed KVM probe held its command 15 s longer).
    let qemuGone = false;
    void exited.then(() => (qemuGone = true));
    const qmp = await Promise.race([
      // Generous: a QEMU that fails exits, and that is seen at once (qemuGone ends the retries and
      // the race below answers). A slow start is not a failure: QEMU inside a TCG machine (nested,
      // the `torpor` image) takes 5-20 s to open QMP.
      QmpClient.connect(spec.qmpSocket, 120_000, () => qemuGone),
      exited.then((exit) => {
        throw new TorporError('qemu-failed', `QEMU exited at start (${exit.signal ?? `code ${exit.code}`}): ${exit.message}`, { hint: `see ${logPath}` });
      }),
    ]);
    return {
      pid: child.pid,
      qmp,
      exited,
      kill: (signal = 'SIGKILL') => {
        if (!hasExited(child)) child.kill(signal);
      },
    };
  },
};
