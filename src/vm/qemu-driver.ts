import { spawn } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { qemuArguments, qemuBinary } from './qemu-command.ts';
import { QmpClient } from './qmp.ts';
import type { MachineSpec } from './machine-spec.ts';
import type { RunningVm, VmDriver, VmExit } from './driver.ts';
import { TorporError } from '../util/errors.ts';

function lastLines(path: string, count: number): string {
  try {
    return readFileSync(path, 'utf8').trim().split('\n').slice(-count).join('\n');
  } catch {
    return '';
  }
}

export const qemuDriver: VmDriver = {
  name: 'qemu',
  async launch(spec: MachineSpec, { logPath }): Promise<RunningVm> {
    await rm(spec.qmpSocket, { force: true });
    await rm(spec.agentSocket, { force: true });
    const log = openSync(logPath, 'a');
    // With -runas the layer disk goes in as descriptors 3 (read-write) and 4 (read-only): `layerDescriptors`.
    const layer = spec.runAs && spec.layerDisk ? [openSync(spec.layerDisk, 'r+'), openSync(spec.layerDisk, 'r')] : [];
    const child = spawn(qemuBinary(), qemuArguments(spec), { stdio: ['ignore', log, log, ...layer], env: spec.environment ? { ...process.env, ...spec.environment } : process.env });
    closeSync(log);
    for (const fd of layer) closeSync(fd);
    const exited = new Promise<VmExit>((resolve) => {
      child.on('error', (error: NodeJS.ErrnoException) =>
        resolve({ code: null, signal: null, message: error.code === 'ENOENT' ? `${qemuBinary()} is not installed (apt-get install -y qemu-system-x86)` : error.message }),
      );
      child.on('exit', (code, signal) => resolve({ code, signal, message: lastLines(logPath, 5) }));
    });
    if (!child.pid) {
      const exit = await exited;
      throw new TorporError('qemu-failed', `could not start QEMU: ${exit.message}`, { hint: 'run `torpor doctor`' });
    }
    const qmp = await Promise.race([
      QmpClient.connect(spec.qmpSocket, 15_000),
      exited.then((exit) => {
        throw new TorporError('qemu-failed', `QEMU exited at start (${exit.signal ?? `code ${exit.code}`}): ${exit.message}`, { hint: `see ${logPath}` });
      }),
    ]);
    return {
      pid: child.pid,
      qmp,
      exited,
      kill: (signal = 'SIGKILL') => {
        if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      },
    };
  },
};
