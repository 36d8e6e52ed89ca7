// Entry point of a machine's supervisor process:
//   supervisor-main <machine id>   supervise that machine
//   supervisor-main --standby      start up now, read the machine id from stdin later (a warm spare)
//
// A standby supervisor reads its instructions from stdin, one per line (machine-start.ts writes them):
//   standby <json>   (before the id, from the pool) start a paused QEMU of this shape now
//                  (standby-qemu.ts); a restore of a machine of that shape adopts it
//   <machine id>   the machine that is its: it starts on what needs no files of the machine yet
//   launch [uid]   the machine's RAM and disk files are in place and its uid claimed (QEMU may start;
//                  the guest stays paused); the uid the starter claimed for it, checked against the claim
//   state          (optional, after launch) the device state is written: QEMU may load it while
//                  the disk layer's contents are still being written (the guest stays paused)
//   go             everything is in place, the disk layer too (the guest may run)
// `go` alone stands for the lines before it. stdin ending before `go` means the starting process went away (or
// gave up): the supervisor fails the start and cleans up (machine-start.ts reports it).
import { Supervisor, type StartSignals } from './supervisor.ts';
import { environment } from '../config/environment.ts';
import { warmLazyRestore } from './lazy-restore.ts';
import { parseStandbyRequest, startStandbyQemu, sweepStandbySlots, type StandbyQemu } from './standby-qemu.ts';

process.on('SIGINT', () => {});
process.on('SIGHUP', () => {});

/** The lines of stdin, one at a time; undefined once stdin has ended. */
function stdinLines(): () => Promise<string | undefined> {
  const ready: string[] = [];
  let ended = false;
  let waiter: (() => void) | undefined;
  let text = '';
  process.stdin.on('data', (chunk: Buffer) => {
    text += chunk.toString();
    for (let end = text.indexOf('\n'); end >= 0; end = text.indexOf('\n')) {
      ready.push(text.slice(0, end).trim());
      text = text.slice(end + 1);
    }
    waiter?.();
  });
  process.stdin.once('end', () => {
    if (text.trim()) ready.push(text.trim());
    ended = true;
    waiter?.();
  });
  return async () => {
    while (ready.length === 0 && !ended) await new Promise<void>((resolve) => (waiter = resolve));
    waiter = undefined;
    return ready.shift();
  };
}

let id = process.argv[2];
let signals: StartSignals | undefined;
let standby: Promise<StandbyQemu | undefined> | undefined;
if (id === '--standby') {
  const nextLine = stdinLines();
  // Done while this spare waits: a start then does not wait for the probe or the library lookup.
  const warmed = Promise.all([warmLazyRestore(), import('../util/atomic-file.ts')]);
  // Standby slots of spares killed with -9 (their QEMU died with them): their files go now.
  void sweepStandbySlots().catch(() => {});
  id = (await nextLine()) ?? '';
  while (id.startsWith('standby ') && standby === undefined) {
    const request = (() => {
      try {
        return parseStandbyRequest(id.slice('standby '.length));
      } catch (error) {
        process.stderr.write(`torpor: note: no standby QEMU (${(error as Error).message})\n`);
        return undefined;
      }
    })();
    standby = request ? warmed.then(() => startStandbyQemu(request)) : Promise.resolve(undefined);
    id = (await nextLine()) ?? '';
  }
  if (!id || id.startsWith('standby ')) {
    await (await standby)?.discard();
    process.exit(0);
  }
  await warmed;
  let resolveLaunch: (uid?: number) => void = () => {};
  const launchSaid = new Promise<{ preparedUid?: number }>((resolve) => (resolveLaunch = (uid) => resolve({ preparedUid: uid })));
  let resolveDeviceState: () => void = () => {};
  const deviceStateSaid = new Promise<void>((resolve) => (resolveDeviceState = resolve));
  const go = (async () => {
    let line = await nextLine();
    const launch = /^launch(?: (\d{1,10}))?$/.exec(line ?? '');
    if (launch) {
      resolveLaunch(launch[1] === undefined ? undefined : Number(launch[1]));
      line = await nextLine();
    }
    if (line === 'state') {
      resolveDeviceState();
      line = await nextLine();
    }
    if (line === undefined) throw new Error('the process that started this machine went away before its files were in place');
    if (line !== 'go') throw new Error(`the process that started this machine sent ${JSON.stringify(line.slice(0, 80))} instead of "go"`);
  })();
  // `go` implies `launch`; an end before either fails both.
  const launch = Promise.race([launchSaid, go.then(() => ({}))]);
  const deviceState = Promise.race([deviceStateSaid, go]);
  go.catch(() => {});
  launch.catch(() => {});
  deviceState.catch(() => {});
  signals = { launch, deviceState, go };
} else if (environment().TORPOR_SUPERVISOR_WAIT) {
  // Started while its machine's memory is still being materialized: go on at the parent's word.
  await stdinLines()();
}
if (!id) {
  process.stderr.write('usage: supervisor-main <machine id> | --standby\n');
  process.exit(2);
}
const supervisor = await Supervisor.fromDirectory(id);
process.on('SIGTERM', () => void supervisor.shutdown(143));
await supervisor.run(signals, standby);
if (signals) process.stdin.destroy();
