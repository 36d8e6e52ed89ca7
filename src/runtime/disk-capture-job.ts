import { open, rm, type FileHandle } from 'node:fs/promises';
import type { QmpClient, QmpEvent } from '../vm/qmp.ts';
import { diskCaptureFdSet } from '../vm/qemu-command.ts';

// The disk layer of a checkpoint that continues, taken beside the running guest with QEMU's own
// copy-before-write: `blockdev-backup sync=none` into a file QEMU was given at launch. Started with
// the guest paused, the job's filter copies each range of the layer to the target, at the same
// offset, before the guest's first write (or discard) to it lands; it copies nothing else. The
// capture reads the live layer and takes every range the target holds from the target instead
// (snapshot-store.ts, `diskCopies`), the same scheme as the RAM's copy-before-write. Why not
// sync=full: QEMU 7.2 then writes zeros to the target for every hole of the layer (4096
// FALLOC_FL_ZERO_RANGE calls, allocating 4 GiB, for a 4 GiB layer), on its main loop, which held
// the blockdev-backup reply 85-360 ms. architecture/lazy-memory.md.

const nodeName = 'torpor-capture';
const jobId = 'torpor-capture';
/** QEMU's name for the layer drive (`-drive id=layer`, qemu-command.ts). */
const layerDevice = 'layer';

/**
 * The file the job copies into, opened by the supervisor before QEMU starts and passed to it as a
 * descriptor (a QEMU that dropped root could not open a path in the machine's private directory).
 * It is unlinked at once: a supervisor or QEMU killed with -9 mid-job leaves no file behind, the
 * kernel frees it with the last descriptor. The supervisor reads it through /proc.
 */
export interface DiskCaptureTarget {
  handle: FileHandle;
  /** a path to the unlinked file for readers in this process and its children (/proc/<pid>/fd/<n>) */
  path: string;
}

export async function openDiskCaptureTarget(layerDisk: string): Promise<DiskCaptureTarget> {
  // One name per machine: a supervisor killed between the open and the unlink left it, the next one removes it.
  const name = `${layerDisk}.capture-job`;
  await rm(name, { force: true });
  const handle = await open(name, 'wx+', 0o600);
  await rm(name, { force: true });
  return { handle, path: `/proc/${process.pid}/fd/${handle.fd}` };
}

export interface DiskCaptureJob {
  /** where QEMU copies the ranges the guest overwrites, as they were at the pause */
  file: string;
  /** rejects if the job ends before it is stopped (it failed, or QEMU went away): the capture must not be stored */
  failed: Promise<never>;
}

/**
 * Guest paused: sizes the (empty) target like the layer, adds it to QEMU and starts the job.
 * Throws when QEMU refuses (nothing is left started); the caller then copies the disk itself.
 */
export async function startDiskCaptureJob(
  qmp: QmpClient,
  target: DiskCaptureTarget,
  layerSize: number,
  phases: Record<string, number> = {},
): Promise<DiskCaptureJob> {
  // Emptied after the last capture (off the pause: freeing its blocks can wait on the filesystem).
  const { blocks, size } = await target.handle.stat();
  if (blocks > 0) await target.handle.truncate(0);
  if (blocks > 0 || size !== layerSize) await target.handle.truncate(layerSize);
  const begun = performance.now();
  // Listening first: a job that fails at once says so before the command's reply.
  const { failed, stopListening } = jobEnd(qmp);
  failed.catch(() => {});
  // Both commands at once (QMP runs them in order; a failed add fails the backup too): one round
  // trip less with the guest paused. Started paused, the job has nothing in flight when `cont`
  // reactivates the layer (which reopens its descriptor after the device-state save inactivated
  // it): sync=none copies only on the guest's writes.
  const added = qmp.execute('blockdev-add', {
    driver: 'raw',
    'node-name': nodeName,
    // locking off: the fd set keeps its own descriptor open, and OFD locks would outlive the node (as for the layer).
    file: { driver: 'file', filename: `/dev/fdset/${diskCaptureFdSet}`, locking: 'off' },
  });
  const backup = qmp.execute('blockdev-backup', { 'job-id': jobId, device: layerDevice, target: nodeName, sync: 'none' });
  const [addition, start] = await Promise.allSettled([added, backup]);
  if (start.status === 'rejected') {
    stopListening();
    if (addition.status === 'fulfilled') await qmp.execute('blockdev-del', { 'node-name': nodeName }).catch(() => {});
    throw addition.status === 'rejected' ? addition.reason : start.reason;
  }
  phases.diskJobCommandsMs = performance.now() - begun;
  return { file: target.path, failed };
}

/** Rejects when the job ends: any end before `finishDiskCaptureJob` stops it means copies may be missing. */
function jobEnd(qmp: QmpClient): { failed: Promise<never>; stopListening: () => void } {
  let stopListening = () => {};
  const failed = new Promise<never>((_, reject) => {
    stopListening = () => {
      qmp.off('event', onEvent);
      qmp.off('close', onClose);
    };
    const finish = (message: string) => {
      stopListening();
      reject(new Error(message));
    };
    const onEvent = (event: QmpEvent) => {
      if (event.data?.device !== jobId) return;
      if (event.event === 'BLOCK_JOB_COMPLETED' || event.event === 'BLOCK_JOB_CANCELLED') {
        const error = event.data.error;
        finish(`QEMU's disk copy-before-write ended during the capture${typeof error === 'string' ? `: ${error}` : ''}`);
      }
    };
    const onClose = () => finish('QEMU went away during the capture');
    qmp.on('event', onEvent);
    qmp.on('close', onClose);
  });
  return { failed, stopListening };
}

/**
 * After the capture (or its failure): the job is stopped (the guest's writes go straight to the
 * layer again), the node removed, and the target emptied so that it holds no disk space until the
 * next checkpoint.
 */
export async function finishDiskCaptureJob(qmp: QmpClient, target: DiskCaptureTarget, job: DiskCaptureJob): Promise<void> {
  const ended = job.failed.catch(() => {});
  await qmp.execute('block-job-cancel', { device: jobId, force: true }).catch(() => {});
  await Promise.race([ended, new Promise((resolve) => setTimeout(resolve, 5000).unref())]);
  await qmp.execute('blockdev-del', { 'node-name': nodeName }).catch(() => {});
  await target.handle.truncate(0).catch(() => {});
}
