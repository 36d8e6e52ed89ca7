import { createServer, type Server, type Socket } from 'node:net';
import { CappedLogWriter, capForeignLog } from '../util/capped-log.ts';
import { rm, mkdir, readFile, rename, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { AgentClient, GuestError, type GuestProcess } from '../guest/agent-client.ts';
import { FrameDecoder, FrameType, encodeFrame, encodeError, type Frame } from '../guest/protocol.ts';
import { qemuDriver } from '../vm/qemu-driver.ts';
import { prepareDeviceStateLoad, prepareDeviceStateSave } from '../vm/migration.ts';
import { finishDiskCaptureJob, openDiskCaptureTarget, startDiskCaptureJob, type DiskCaptureTarget } from './disk-capture-job.ts';
import { allocatedExtents } from '../snapshot/extents.ts';
import { recordTemplateMemoryOwner, templateMemoryFile } from './template-memory.ts';
import type { RunningVm, VmExit } from '../vm/driver.ts';
import { memoryDirectory } from '../state/paths.ts';
import { confineMachine, type Confinement } from '../network/machine-confinement.ts';
import { defaultNetworkPolicy } from '../network/policy.ts';
// machine-files, not machine-record: a supervisor lives as long as its machine, and zod would
// cost each one memory for nothing (its records are torpor's own files).
import { machineFiles, readMachineConfig, readMachineState, writeMachineState } from './machine-files.ts';
import type { MachineConfig, MachineState } from './machine-record.ts';
import { releaseMachine } from './machine-removal.ts';
import { releaseName } from './machine-names.ts';
import { writeJsonAtomic } from '../util/atomic-file.ts';
import type { ControlRequest, ControlReply, SnapshotSummary } from './control-protocol.ts';
import { keepWarm } from './warm-memory.ts';
import { forgetSpare, publishSpare, retireSpare, spareEntryPresent } from './spare-pool.ts';
import { loadPageMap, parentDeathEnvironment, protectGuestMemory, readLazyMemoryStatus } from '../snapshot/lazy-memory.ts';
import { environment } from '../config/environment.ts';
import { adoptStandby, removeStandbySlot, standbyMismatch, type StandbyQemu } from './standby-qemu.ts';
import {
  confirmPagerServing,
  earlyWorkingSet,
  knownMemoryOf,
  releaseLazyMemory,
  restoreEnvironment,
  verifyCleanChunks,
  startCaptureBesideGuest,
  pausedDiskCopyOf,
  type CaptureBesideGuest,
  type PausedPhases,
  type WriteBaseline,
} from './lazy-restore.ts';

/**
 * When a supervisor may go on with a start it was handed before the machine's files were ready
 * (supervisor-main.ts reads them from the starting process): `launch` once QEMU may start on the RAM
 * and disk files, `go` once the guest may run (device state and disk contents written). Either
 * rejects when the starting process went away first.
 */
export interface StartSignals {
  /** with the uid the starter claimed for this supervisor's QEMU, when it said */
  launch: Promise<{ preparedUid?: number }>;
  /** the device state file is written (QEMU may load it; the disk layer may still be being written) */
  deviceState: Promise<void>;
  /** everything is in place: the guest may run */
  go: Promise<void>;
}

/** How long a spare whose pool entry was taken waits for the claim before it ends itself (its claimer died). */
const spareClaimGraceMs = 15_000;

// Streams the supervisor opens for its clients live above its own (below 0x40000000), at a random
// start so that they do not meet streams a previous supervisor left running in a restored guest.
const firstRoutedStream = () => 0x40000000 + Math.floor(Math.random() * 0x3fffffff);

interface Client {
  socket: Socket;
  /** client's stream id -> guest stream id */
  outbound: Map<number, number>;
  attachedStream?: number;
}

/**
 * One per machine, detached from the CLI that started it. Owns QEMU (by pid), its QMP socket and
 * the single guest channel, and lets any number of CLI clients share that channel through its
 * control socket. Records the main process's output and the machine's state on disk.
 */
export class Supervisor {
  private vm?: RunningVm;
  private agent?: AgentClient;
  private server?: Server;
  private readonly clients = new Set<Client>();
  /** guest stream id -> (client, client's stream id) */
  private readonly inbound = new Map<number, { client: Client; stream: number }>();
  private nextRoutedStream = firstRoutedStream();
  private main?: GuestProcess;
  private readonly pendingMainInput: Frame[] = [];
  private processLog?: CappedLogWriter;
  /** Stops capping the console log (QEMU writes it; a guest can flood it). */
  private stopCappingConsole?: () => void;
  private state: MachineState = { status: 'starting' };
  private confinement?: Confinement;
  private stopping = false;
  private firstAttach?: () => void;
  /** A client attached already: it can come before run() waits for it (it sees `running` while the state file is still being synced). */
  private attachedOnce = false;
  private readonly files;
  /** the unlinked file QEMU's disk copy jobs write into (disk-capture-job.ts) */
  private diskCaptureTarget?: DiskCaptureTarget;
  /** a standby QEMU this spare started (adopted or being discarded): its slot's files go at the end */
  private standby?: { adopted: boolean; discarded?: Promise<void> };

  constructor(private config: MachineConfig) {
    this.files = machineFiles(config.id);
  }

  static async fromDirectory(id: string): Promise<Supervisor> {
    return new Supervisor(await readMachineConfig(id));
  }

  /** Settles when `run`'s start has succeeded or failed. */
  private startSettled?: Promise<void>;

  /** state.json writes, one after another in call order (a start does not wait for its first one). */
  private stateWrites: Promise<void> = Promise.resolve();

  private async setState(patch: Partial<MachineState>): Promise<void> {
    this.state = { ...this.state, ...patch };
    const state = this.state;
    const written = this.stateWrites.then(() => writeMachineState(this.config.id, state));
    this.stateWrites = written.catch(() => {});
    await written;
  }

  /** QEMU creates (restore) or connects to (snapshot) this socket, possibly after it dropped root. */
  private migrationSocket(): string {
    return join(this.confinement!.socketDirectory, 'migration.sock');
  }

  private memoryFile(): string {
    return this.files.memoryFile;
  }

  private vmSpec(incoming: boolean, environment?: Record<string, string>) {
    return {
      diskCaptureDescriptor: this.diskCaptureTarget?.handle.fd,
      environment,
      id: this.config.id,
      cpus: this.config.cpus,
      memoryMiB: this.config.memoryMiB,
      accelerator: this.config.accelerator,
      cpuModel: this.config.cpuModel,
      kernelPath: this.config.kernelPath,
      initramfsPath: this.config.initramfsPath,
      kernelArguments: this.config.kernelArguments,
      imageDisk: this.config.image.diskPath,
      imageMemoryBytes: this.config.imageMemoryBytes,
      layerDisk: this.files.layerDisk,
      memoryFile: this.memoryFile(),
      agentSocket: this.files.agentSocket,
      qmpSocket: this.files.qmpSocket,
      consoleLog: this.files.consoleLog,
      network: this.config.network,
      ports: this.config.ports,
      runAs: this.confinement?.runAs,
      incoming,
    };
  }

  /** Settings the guest needs on every start and after every restore: a fork must not share a clock, RNG state or name. */
  private guestSettings(): Record<string, string> {
    return { hostname: this.config.hostname, time: String(BigInt(Date.now()) * 1_000_000n), entropy: randomBytes(64).toString('hex') };
  }

  /** `standby`: a paused QEMU this spare started for a machine shape (standby-qemu.ts); a restore of that shape adopts it. */
  async run(signals?: StartSignals, standby?: Promise<StandbyQemu | undefined>): Promise<void> {
    const entered = Math.round(performance.now());
    const previous = await readMachineState(this.config.id);
    // Restore only on the first start; the runtime materialized RAM, disk and device state for it.
    const restore = this.config.restore && !previous.restored ? this.config.restore : undefined;
    this.state = {
      status: 'starting',
      supervisorPid: process.pid,
      startedAt: new Date().toISOString(),
      waitForAttach: previous.waitForAttach,
      restored: previous.restored || Boolean(restore),
    };
    // Not waited for: the starter wrote "starting" with this pid already; this adds the start time
    // and `restored`, and the writes after it queue behind it (setState).
    const startingWritten = this.setState({});
    startingWritten.catch(() => {});
    const started = performance.now();
    let bootFrom = started;
    // Where a start's time goes (the start and wake benchmarks print it): ms since this process started.
    const timings: Record<string, number> = { processStartedAt: Math.round(performance.timeOrigin), entered, run: Math.round(started) };
    const mark = (name: string) => (timings[name] = Math.round(performance.now()));
    let settleStart: () => void = () => {};
    this.startSettled = new Promise<void>((resolve) => (settleStart = resolve));
    try {
      await mkdir(memoryDirectory(), { recursive: true });
      if (!restore) {
        await rm(this.memoryFile(), { force: true });
        await releaseLazyMemory(this.config.id, this.memoryFile());
      }
      this.stopCappingConsole ??= capForeignLog(this.files.consoleLog);
      // The starting process prepared the network confinement and, for a restore, the RAM and disk
      // files by now (it may still be writing the disk's contents and the device state).
      const { preparedUid } = signals ? await signals.launch : {};
      if (signals) mark('launchSaid');
      // bootMs counts from here: the supervisor's own work, not its wait for the machine's files.
      bootFrom = performance.now();
      // The pager's environment (a look for the page map, the library, the pin taken over) needs
      // nothing of the confinement: found beside it, not after it.
      const pagerFound = restore ? restoreEnvironment(this.config.id, this.memoryFile()) : Promise.resolve(undefined);
      pagerFound.catch(() => {});
      // A paused copy (lazy-restore.ts) of a supervisor killed mid-checkpoint: nothing reads it any more.
      const pausedCopyRemoved = rm(pausedDiskCopyOf(this.files.layerDisk), { force: true });
      pausedCopyRemoved.catch(() => {});
      this.confinement = await confineMachine(this.config.id, {
        network: this.config.network,
        policy: this.config.networkPolicy ?? defaultNetworkPolicy(),
        ownSocketDirectory: this.files.qemuDirectory,
        preparedUid,
      });
      mark('confined');
      // A restored guest stays paused until its device state is loaded, so its rules may still be on
      // their way while QEMU starts; a cold-booting guest runs at once, so they must be in place.
      if (!restore) await Promise.all([this.confinement.rulesReady, signals?.go]);
      const pager = await pagerFound;
      mark('pagerEnvironment');
      const adopted = await this.standbyFor(restore !== undefined && pager !== undefined, standby);
      mark('standbyChecked');
      // The target of QEMU's disk copy for checkpoints that continue; without it they copy the disk paused.
      this.diskCaptureTarget = adopted ? adopted.diskCaptureTarget : await openDiskCaptureTarget(this.files.layerDisk).catch(() => undefined);
      await pausedCopyRemoved;
      // A QEMU that drops root (-runas) loses its parent-death signal; the preloaded library re-arms it.
      const parentDeath = this.confinement.runAs && !adopted ? await parentDeathEnvironment() : {};
      mark('qemuLaunching');
      if (adopted) {
        // Started before this machine was asked for: its RAM, page map, uid and names become this machine's.
        this.vm = adopted.vm;
        await adoptStandby(adopted, this.adoptingMachine(adopted), mark);
        mark('standbyAdopted');
      } else {
        this.vm = await qemuDriver.launch(this.vmSpec(Boolean(restore), { ...parentDeath, ...pager?.environment }), { logPath: this.files.supervisorLog });
      }
      mark('qmpReady');
      // Recorded with the pid: a claim whose supervisor died before this is stale, and is taken over.
      // Written beside a restore's device-state load (~2-10 ms under load), and always before the
      // guest runs (`cont`, or at once for a boot): QEMU dies with this process until then.
      const vmPid = this.vm.pid;
      const qemuRecorded = startingWritten.then(() =>
        this.setState({ qemuPid: vmPid, networkUid: this.confinement!.runAs?.uid, ...(adopted ? { qemuName: adopted.name } : {}) }),
      );
      qemuRecorded.catch(() => {});
      if (!restore) await qemuRecorded;
      this.vm.exited.then((exit) => this.onVmExit(exit));
      const vmGone = this.vm.exited.then((exit) => {
        throw new Error(`QEMU exited during ${restore ? 'restore' : 'boot'} (${exit.signal ?? `code ${exit.code}`}): ${exit.message}`);
      });
      if (restore) {
        // QEMU listens for the device state while the restore may still be writing it. The starter
        // writes the device state first and says so (`deviceState`): QEMU loads it while the disk
        // layer's contents are still being written. Loading it runs no guest code and reads no
        // disk; the guest runs only at `cont`, after `go` (disk complete) and the network rules.
        const deviceStateLoad = adopted ? Promise.resolve(adopted.deviceStateLoad) : prepareDeviceStateLoad(this.vm.qmp, this.migrationSocket());
        deviceStateLoad.catch(() => {});
        if (signals) {
          await Promise.race([signals.deviceState, vmGone]);
          mark('deviceStateSaid');
        }
        const deviceState = await readFile(this.files.deviceState);
        const vm = this.vm;
        await Promise.race([deviceStateLoad.then((prepared) => (mark('deviceStatePrepared'), prepared.load(deviceState))), vmGone]).catch(
          async (error: unknown) => {
            // A QEMU that cannot load a device state exits; its own words say why (QMP says only that it closed).
            const exit = await Promise.race([vm.exited, new Promise<undefined>((resolve) => setTimeout(() => resolve(undefined), 2000).unref())]);
            if (!exit) throw error;
            throw new Error(
              `QEMU could not load the snapshot's device state and exited (${exit.signal ?? `code ${exit.code}`}): ${exit.message.trim() || (error as Error).message}`,
            );
          },
        );
        mark('deviceStateIn');
        await Promise.race([this.confinement.rulesReady, vmGone]);
        mark('rulesReady');
        if (signals) {
          await Promise.race([signals.go, vmGone]);
          mark('goSaid');
        }
        if (pager) await confirmPagerServing(this.memoryFile());
        await qemuRecorded;
        mark('pagerConfirmed');
        await this.vm.qmp.execute('cont');
        if (pager) this.recordWorkingSet();
        mark('deviceStateLoaded');
      }
      this.agent = await Promise.race([AgentClient.connect(this.files.agentSocket, { timeoutMs: 10_000 }), vmGone]);
      mark('agentConnected');
      if (restore) {
        // The restored agent is running already: ask hello and hand over the new clock, RNG seed
        // and name in one go (each round trip is slow while TCG re-translates the guest's code).
        // User networking gives every machine its own private 10.0.2.0/24, so there is no network
        // identity to renew.
        // The machine's boot timeout bounds it (15 s was fixed here): a restored guest in a nested
        // machine (KVM on emulated SVM) answered after more than 10 s; a QEMU that dies is seen at once (vmGone).
        // Only the hello's answer is awaited: the agent handles frames one at a time, in order, so
        // the settings (sent with it) are applied before any frame the host sends later (a client's
        // exec, ping, input): nobody reaches the guest through the host before its fresh clock and
        // RNG seed. Their answer comes ~15-35 ms later under TCG; the host goes on meanwhile. A
        // guest that does not confirm them is not trusted: the machine is stopped.
        const agent = this.agent;
        const vm = this.vm;
        const waitMs = Math.max(15_000, this.config.bootTimeoutMs);
        let answered = false;
        // The hello first: the agent answers it before it applies the settings.
        const helloAnswered = agent.hello(waitMs);
        const settingsApplied = agent.configure(this.guestSettings(), FrameType.resumed, waitMs).then(
          () => void mark('settingsApplied'),
          async (error: unknown) => {
            const reason = `the restored guest did not apply its new clock and RNG seed: ${(error as Error).message}`;
            // Before the hello's answer this fails the start (below); after it, the running machine stops.
            if (!answered) throw new Error(reason);
            // A QEMU that died closed the agent's connection too: its exit is the story (onVmExit).
            const exited = await Promise.race([vm.exited.then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 1000).unref())]);
            if (exited || this.stopping) return;
            process.stderr.write(`torpor: ${reason}; stopping the machine\n`);
            void this.shutdown(1, reason);
          },
        );
        const settingsFailed = settingsApplied.then(() => new Promise<never>(() => {}));
        settingsFailed.catch(() => {});
        await Promise.race([helloAnswered, settingsFailed, vmGone]);
        answered = true;
      } else {
        await Promise.race([this.agent.hello(this.config.bootTimeoutMs), vmGone]);
        // Bounded like the hello: 10 s (the default) was too short for TCG inside a nested machine.
        await Promise.race([this.agent.configure(this.guestSettings(), FrameType.configure, this.config.bootTimeoutMs), vmGone]);
      }
      // A restored main process is followed before anyone can connect: input sent right after the
      // machine shows as running must reach it (it is not started again, so nothing else would flush it).
      if (restore?.mainStream !== undefined && !restore.startMain) this.adoptMain(restore.mainStream);
      mark('agentAnswered');
      await pager?.held;
      await this.openControlSocket();
      // (a restored guest that refused its settings meanwhile is being stopped: not running)
      if (this.stopping) return;
      mark('running');
      await this.setState({ status: 'running', readyAt: new Date().toISOString(), bootMs: Math.round(performance.now() - bootFrom), startTimings: timings });
      // Compression threads are loaded by the first snapshot, not here: idle, they would cost every
      // running machine ~70 MiB, and the first snapshot works on the main thread while they load.
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      await this.fail(`${message}; console log: ${this.files.consoleLog}`);
      return;
    } finally {
      settleStart();
    }
    if (this.config.captureTemplate) {
      try {
        await this.snapshot({ name: this.config.captureTemplate, stop: true });
        await this.finishAfterSnapshot(this.config.captureTemplate);
      } catch (error) {
        await this.fail(`could not save the boot template: ${(error as Error).message}`);
      }
      return;
    }
    if (this.config.spare) {
      await this.becomeSpare(this.config.spare.key);
      return;
    }
    if (this.main) return;
    if (this.state.waitForAttach && !this.attachedOnce) {
      // Foreground run: the CLI attaches before the process starts, so it sees every byte.
      await new Promise<void>((resolve) => {
        this.firstAttach = resolve;
        setTimeout(resolve, 30_000);
      });
    }
    this.startMain();
  }

  /**
   * The standby QEMU to adopt for this start, if it fits (a lazy restore of the same shape);
   * one that does not fit is ended in the background.
   */
  private async standbyFor(lazyRestore: boolean, standby?: Promise<StandbyQemu | undefined>): Promise<StandbyQemu | undefined> {
    const candidate = await standby;
    if (!candidate) return undefined;
    const mismatch = lazyRestore ? await standbyMismatch(candidate, this.adoptingMachine(candidate)) : 'not a lazy restore';
    if (mismatch === undefined) {
      this.standby = { adopted: true };
      return candidate;
    }
    process.stderr.write(`torpor: note: standby QEMU not used (${mismatch})\n`);
    this.standby = { adopted: false, discarded: candidate.discard().catch(() => {}) };
    return undefined;
  }

  private adoptingMachine(standby: StandbyQemu) {
    // The disk copy target is the standby's (QEMU has it as a descriptor already).
    const spec = { ...this.vmSpec(true), diskCaptureDescriptor: standby.diskCaptureTarget?.handle.fd };
    return { spec, layerDisk: this.files.layerDisk, consoleLog: this.files.consoleLog, supervisorLog: this.files.supervisorLog };
  }

  // ---------- spare machines (spare-pool.ts) ----------

  /** The pool a spare was published in (kept after the claim: its entries are removed at the end). */
  private spareKey?: string;
  private claimed = false;
  private spareWatch?: NodeJS.Timeout;

  /**
   * A spare runs one throwaway process first, so the guest code an exec goes through (fork, exec,
   * the agent's pipes) is translated and paged in before a user waits on it, then publishes itself
   * and waits for a claim. Its entry vanishing without a claim means the CLI that took it died:
   * after a grace period it ends itself (a spare is never handed to a second user).
   */
  private async becomeSpare(key: string): Promise<void> {
    this.spareKey = key;
    try {
      const warmUp = this.agent!.exec({
        argv: ['true'],
        env: ['PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'],
        workingDirectory: '/',
        user: '',
        tty: false,
        stdin: false,
      });
      await Promise.race([warmUp.exited.catch(() => {}), new Promise((resolve) => setTimeout(resolve, 10_000).unref())]);
    } catch {
      // an image without `true`: the spare is still good, only not warmed
    }
    if (this.stopping) return;
    await publishSpare(key, this.config.id);
    const retireAt = environment().TORPOR_SPARE_IDLE_SECONDS > 0 ? Date.now() + environment().TORPOR_SPARE_IDLE_SECONDS * 1000 : Infinity;
    let missingSince: number | undefined;
    let retiring = false;
    this.spareWatch = setInterval(() => {
      void spareEntryPresent(key, this.config.id).then(async (present) => {
        if (this.claimed || this.stopping || retiring) return;
        if (present && Date.now() > retireAt) {
          // Unclaimed for TORPOR_SPARE_IDLE_SECONDS: its memory goes back to the host (a claim racing this wins or loses whole).
          retiring = true;
          if (await retireSpare(key, this.config.id)) void this.shutdown(0);
          else retiring = false;
          return;
        }
        if (present) missingSince = undefined;
        else if (missingSince === undefined) missingSince = Date.now();
        else if (Date.now() - missingSince > spareClaimGraceMs) void this.shutdown(0);
      });
    }, 1000);
  }

  private async claim(): Promise<void> {
    if (!this.config.spare || this.claimed || this.stopping || this.spareKey === undefined) throw new Error('this machine is not a spare waiting for a claim');
    this.claimed = true;
    clearInterval(this.spareWatch);
    // The claimer wrote the user's settings, still marked a spare; from here it is the user's machine.
    const { spare, ...config } = await readMachineConfig(this.config.id);
    if (spare?.key !== this.spareKey || config.image.digest !== this.config.image.digest) {
      void this.shutdown(0);
      throw new Error('the claimed config does not fit this spare');
    }
    await writeJsonAtomic(this.files.config, config);
    this.config = config;
    await forgetSpare(this.spareKey, this.config.id);
    // A fresh name, clock and RNG seed, as after a restore (the spare's guest has been running, but
    // two spares of one template share the template's RNG state until reseeded).
    await this.agent!.configure(this.guestSettings(), FrameType.resumed, Math.max(15_000, this.config.bootTimeoutMs));
    await this.setState({ status: 'running', startedAt: new Date().toISOString(), readyAt: new Date().toISOString(), claimedAt: new Date().toISOString() });
    this.startMain();
  }

  private mainOutputHandlers() {
    this.processLog ??= new CappedLogWriter(this.files.processLog);
    const record = (stream: 'stdout' | 'stderr') => (data: Buffer) => {
      this.processLog!.write(JSON.stringify({ time: new Date().toISOString(), stream, log: data.toString() }) + '\n');
      this.forwardToAttached(stream === 'stdout' ? FrameType.stdout : FrameType.stderr, data);
    };
    return { stdout: record('stdout'), stderr: record('stderr') };
  }

  /** After a restore the main process is still running in the guest: follow it on its old stream. */
  private adoptMain(stream: number): void {
    this.main = this.agent!.adopt(stream, this.mainOutputHandlers());
    for (const frame of this.pendingMainInput.splice(0)) this.agent!.send(frame.type, this.main.stream, frame.payload);
    this.watchMain();
  }

  private startMain(): void {
    this.main = this.agent!.exec(
      {
        argv: this.config.command,
        env: this.config.env,
        workingDirectory: this.config.workingDir,
        user: this.config.user,
        tty: this.config.tty,
        stdin: this.config.interactive,
      },
      this.mainOutputHandlers(),
    );
    for (const frame of this.pendingMainInput.splice(0)) this.agent!.send(frame.type, this.main.stream, frame.payload);
    this.watchMain();
  }

  private watchMain(): void {
    // Like docker: 127 when the command does not exist, 126 when it cannot be run.
    this.main!.exited.then(
      (status) => this.onMainExit(status.code, undefined),
      async (error: Error) => {
        // A lost channel usually means QEMU died or was stopped for a snapshot: let that path report.
        if (this.agent!.closed || this.stopping) {
          const vmExited = await Promise.race([this.vm!.exited.then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 2000))]);
          if (vmExited || this.stopping) return;
        }
        await this.onMainExit(error instanceof GuestError && error.errno === 2 ? 127 : 126, error.message);
      },
    );
  }

  private forwardToAttached(type: number, payload: Buffer): void {
    for (const client of this.clients) {
      if (client.attachedStream !== undefined) client.socket.write(encodeFrame(type, client.attachedStream, payload));
    }
  }

  private async onMainExit(code: number, error: string | undefined): Promise<void> {
    if (error) {
      this.processLog?.write(JSON.stringify({ time: new Date().toISOString(), stream: 'stderr', log: `torpor: ${error}\n` }) + '\n');
      this.forwardToAttached(FrameType.stderr, Buffer.from(`torpor: ${error}\n`));
    }
    // A --rm machine is torn down after its user has the answer: shown as stopping from here on, never
    // as running while it is being removed.
    // Its name is free at once, so a script can `run --rm --name x` again right after.
    if (this.config.autoRemove && !this.stopping) {
      await this.setState({ status: 'stopping' });
      await releaseName(this.config);
    }
    const exit = Buffer.alloc(8);
    exit.writeInt32LE(code, 0);
    this.forwardToAttached(FrameType.exit, exit);
    await this.shutdown(code, error);
  }

  private async onVmExit(exit: VmExit): Promise<void> {
    // During a start its own error path reports a QEMU that exited (every wait there races QEMU's
    // exit): one account of it, the start's ("failed" and why), not two racing writes.
    await this.startSettled;
    if (this.stopping) return;
    this.stopping = true;
    const reason = exit.signal ? `killed by ${exit.signal}` : `exited with code ${exit.code}`;
    const code = exit.signal === 'SIGKILL' ? 137 : 128 + 15;
    this.forwardToAttached(FrameType.stderr, Buffer.from(`torpor: the machine's QEMU process ${reason}\n`));
    const payload = Buffer.alloc(8);
    payload.writeInt32LE(code, 0);
    this.forwardToAttached(FrameType.exit, payload);
    await this.finish({ status: 'exited', exitCode: code, error: `QEMU ${reason}${exit.message ? `: ${exit.message.split('\n').pop()}` : ''}` });
  }

  private async fail(message: string): Promise<void> {
    this.stopping = true;
    this.vm?.kill('SIGKILL');
    await this.vm?.exited;
    await this.finish({ status: 'failed', error: message, exitCode: 125 });
  }

  /** Syncs the guest's disks, then ends QEMU: politely, then by pid. */
  async shutdown(exitCode: number, error?: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    const paused = this.state.status === 'paused';
    await this.setState({ status: 'stopping' });
    const vm = this.vm!;
    // A paused guest cannot sync or power off (and its state is in the snapshot it was paused at).
    if (this.config.autoRemove || paused) {
      // A --rm machine's disk and memory are deleted next: nothing to sync, so no guest power-off
      // to wait for (a round trip and a kernel shutdown under TCG, on every `run --rm`).
      vm.kill('SIGKILL');
      await vm.exited;
      await this.finish({ status: 'exited', exitCode, ...(error ? { error } : {}) });
      return;
    }
    try {
      await Promise.race([
        this.agent!.request(FrameType.shutdown, undefined, (frame) => ({ done: frame.type === FrameType.ok })),
        new Promise((resolve) => setTimeout(resolve, 3000)),
      ]);
    } catch {
      // the agent is gone: the VM is going down anyway
    }
    const exited = await Promise.race([vm.exited.then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 3000))]);
    if (!exited) {
      await vm.qmp.execute('quit').catch(() => {});
      const quit = await Promise.race([vm.exited.then(() => true), new Promise<false>((resolve) => setTimeout(() => resolve(false), 2000))]);
      if (!quit) vm.kill('SIGKILL');
      await vm.exited;
    }
    await this.finish({ status: 'exited', exitCode, ...(error ? { error } : {}) });
  }

  private async finish(patch: Partial<MachineState>): Promise<void> {
    clearInterval(this.spareWatch);
    if (this.spareKey !== undefined) {
      await forgetSpare(this.spareKey, this.config.id);
      // Taken by a CLI that died before its claim: the name it reserved for its user is freed too.
      const written = this.claimed ? undefined : await readMachineConfig(this.config.id).catch(() => undefined);
      if (written && written.name !== this.config.name) await releaseName(written);
    }
    await new Promise<void>((resolve) => (this.processLog ? this.processLog.end(resolve) : resolve()));
    this.stopCappingConsole?.();
    this.server?.close();
    for (const client of this.clients) client.socket.end();
    this.agent?.close();
    this.vm?.qmp.close();
    // QEMU is gone (every path here waited for it): its uid and rules can go.
    await this.confinement?.release();
    if (this.config.captureTemplate && patch.status === 'exited') {
      // The template's RAM stays in tmpfs as the base every restore of its descendants copies from.
      await recordTemplateMemoryOwner();
      await rename(this.memoryFile(), templateMemoryFile(this.config.captureTemplate)).catch(() => rm(this.memoryFile(), { force: true }));
    } else {
      await rm(this.memoryFile(), { force: true });
    }
    await releaseLazyMemory(this.config.id, this.memoryFile());
    await this.diskCaptureTarget?.handle.close().catch(() => {});
    if (this.standby) {
      await this.standby.discarded;
      await removeStandbySlot(process.pid);
    }
    await rm(this.files.controlSocket, { force: true });
    await rm(this.files.agentSocket, { force: true });
    await rm(this.files.qmpSocket, { force: true });
    await this.setState({ ...patch, finishedAt: new Date().toISOString(), waitForAttach: undefined, networkUid: undefined });
    if (this.config.autoRemove && this.state.status === 'exited') await releaseMachine(this.config);
    setTimeout(() => process.exit(0), 50).unref();
  }

  // ---------- control socket ----------

  private async openControlSocket(): Promise<void> {
    await rm(this.files.controlSocket, { force: true });
    this.server = createServer((socket) => this.accept(socket));
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject);
      this.server!.listen(this.files.controlSocket, resolve);
    });
  }

  private accept(socket: Socket): void {
    const client: Client = { socket, outbound: new Map() };
    this.clients.add(client);
    const decoder = new FrameDecoder();
    socket.on('data', (chunk: Buffer) => {
      for (const frame of decoder.push(chunk)) this.fromClient(client, frame);
    });
    socket.on('error', () => {});
    socket.on('close', () => {
      this.clients.delete(client);
      for (const [guestStream, route] of this.inbound) {
        if (route.client !== client) continue;
        this.inbound.delete(guestStream);
        // A hung-up terminal ends what runs on it, as it would on a real one.
        if (!this.agent?.closed) {
          const hangup = Buffer.alloc(4);
          hangup.writeInt32LE(1, 0);
          this.agent?.send(FrameType.signal, guestStream, hangup);
        }
      }
    });
  }

  private fromClient(client: Client, frame: Frame): void {
    if (frame.type === FrameType.control) {
      // A request that is not JSON gets an error reply: thrown here, it would end the supervisor and its machine.
      let request: ControlRequest;
      try {
        request = JSON.parse(frame.payload.toString()) as ControlRequest;
      } catch {
        client.socket.write(encodeFrame(FrameType.error, frame.stream, encodeError(0, 'a control request must be JSON: {"op": "status"}')));
        return;
      }
      this.control(client, frame.stream, request).then(
        (reply) =>
          client.socket.write(encodeFrame(FrameType.controlReply, frame.stream, Buffer.from(JSON.stringify(reply))), () => {
            if (request.op === 'snapshot' && request.stop && !request.keepPaused) void this.finishAfterSnapshot(request.name);
          }),
        (error: Error) => client.socket.write(encodeFrame(FrameType.error, frame.stream, encodeError(0, error.message))),
      );
      return;
    }
    if (!this.agent || this.agent.closed || this.stopping) {
      client.socket.write(encodeFrame(FrameType.error, frame.stream, encodeError(0, 'the machine is stopping')));
      return;
    }
    if (client.attachedStream === frame.stream) {
      // Input for the main process: stdin, signals, terminal size (held until it has started).
      if (this.main) this.agent.send(frame.type, this.main.stream, frame.payload);
      else this.pendingMainInput.push(frame);
      return;
    }
    let guestStream = client.outbound.get(frame.stream);
    if (guestStream === undefined) {
      guestStream = this.nextRoutedStream++;
      client.outbound.set(frame.stream, guestStream);
      this.inbound.set(guestStream, { client, stream: frame.stream });
      this.routeReplies(guestStream);
    }
    this.agent.send(frame.type, guestStream, frame.payload);
  }

  private routeReplies(guestStream: number): void {
    this.agent!.route(guestStream, (frame) => {
      const route = this.inbound.get(guestStream);
      if (!route) return true;
      route.client.socket.write(encodeFrame(frame.type, route.stream, frame.payload));
      return false;
    });
  }

  private async control(client: Client, stream: number, request: ControlRequest): Promise<ControlReply> {
    if (typeof request !== 'object' || request === null) throw new Error('a control request must be a JSON object with an op: {"op": "status"}');
    switch (request.op) {
      case 'status':
        return { ok: true, state: this.state };
      case 'attach':
        client.attachedStream = stream;
        this.attachedOnce = true;
        this.firstAttach?.();
        this.firstAttach = undefined;
        return { ok: true, state: this.state };
      case 'stop': {
        if (this.state.status === 'paused') {
          // The guest is stopped and cannot end its process: its state is in the snapshot, QEMU just goes.
          await this.shutdown(0);
        } else if (this.main && !this.stopping) {
          this.main.signal(request.signal ?? 15);
          const timeout = (request.timeoutSeconds ?? 10) * 1000;
          const exited = await Promise.race([
            this.main.exited.then(
              () => true,
              () => true,
            ),
            new Promise<false>((resolve) => setTimeout(() => resolve(false), timeout)),
          ]);
          if (!exited) this.main.signal(9);
          await Promise.race([this.main.exited.catch(() => {}), new Promise((resolve) => setTimeout(resolve, 2000))]);
          if (!this.stopping) await this.shutdown(137);
        } else if (!this.stopping) {
          await this.shutdown(0);
        }
        return { ok: true, state: this.state };
      }
      case 'kill':
        if (this.state.status === 'paused')
          throw new Error('the machine is paused: a signal would wait for its resume; `torpor stop` or `torpor kill` ends it');
        this.main?.signal(request.signal ?? 9);
        return { ok: true, state: this.state };
      case 'snapshot':
        return { ok: true, snapshot: await this.snapshot(request), state: this.state };
      case 'resume':
        await this.resume();
        return { ok: true, state: this.state };
      case 'claim':
        await this.claim();
        return { ok: true, state: this.state };
      case 'discard':
        if (!this.config.spare || this.claimed) throw new Error('only an unclaimed spare machine can be discarded');
        void this.shutdown(0);
        return { ok: true, state: this.state };
      default:
        throw new Error(
          `unknown control op ${JSON.stringify((request as { op?: unknown } | null)?.op)}: one of status, attach, stop, kill, snapshot, resume, claim, discard`,
        );
    }
  }

  private snapshotInProgress = false;
  /** chunks a lazy restore served in its first second: snapshots of this machine carry them for the next restore to prefetch */
  private workingSet?: number[];
  /** what the pager's dirty flags are relative to (undefined: the restored snapshot; null: not trusted) */
  private writeBaseline?: WriteBaseline | null;

  private recordWorkingSet(): void {
    setTimeout(() => {
      earlyWorkingSet(this.memoryFile()).then(
        (chunks) => (this.workingSet = chunks),
        () => {},
      );
    }, 1000).unref();
  }

  /** The snapshot a paused machine stopped at: its next snapshot's parent after a resume. */
  private pausedAt?: string;

  /** Continues a machine the paused tier kept (`snapshot` with `keepPaused`). */
  async resume(): Promise<void> {
    if (this.stopping || this.state.status !== 'paused') {
      throw new Error(
        `the machine is ${this.stopping ? 'stopping' : this.state.status}, not paused: only a machine kept paused after a hibernation can be resumed`,
      );
    }
    const vm = this.vm!;
    await vm.qmp.execute('cont');
    // The guest's clock stood still while it was paused: hand it the time, as after a restore (and
    // a new RNG seed: a fork of its snapshot may be running elsewhere with the same state).
    await this.agent!.configure(this.guestSettings(), FrameType.resumed, Math.max(15_000, this.config.bootTimeoutMs));
    await this.setState({ status: 'running', snapshot: undefined, pausedAt: undefined, resumedAt: new Date().toISOString() });
  }

  private async finishAfterSnapshot(name: string): Promise<void> {
    await this.finish({ status: 'exited', exitCode: 0, snapshot: name, error: undefined });
  }

  /**
   * Pause, save the device state (RAM stays out of it: it is the tmpfs file), capture RAM file and
   * disk layer into the store, then resume or stop. The guest sees a pause, nothing else.
   */
  async snapshot(request: { name: string; stop?: boolean; keepPaused?: boolean; replace?: boolean; parent?: string }): Promise<SnapshotSummary> {
    if (this.stopping || this.state.status !== 'running') throw new Error(`the machine is ${this.state.status}, not running`);
    if (request.keepPaused && !request.stop) throw new Error('keepPaused needs stop: only a hibernation leaves the machine paused');
    if (request.keepPaused && (this.config.captureTemplate || this.config.spare)) throw new Error('a boot template or spare machine cannot be kept paused');
    if (this.snapshotInProgress) throw new Error('a snapshot of this machine is already in progress');
    this.snapshotInProgress = true;
    const vm = this.vm!;
    // A hibernation (the guest stops here): let the guest drop its clean caches first, so the
    // snapshot does not carry them (with init_on_free=1 their pages turn to zeros). Not for a
    // checkpoint that continues, nor for a boot template (shared by every machine, whose first
    // commands would all read those files again). Best effort: old guest agents ignore the
    // setting; a guest that does not answer soon is snapshotted as it is.
    const hibernation = request.stop && request.name !== this.config.captureTemplate;
    if (hibernation && environment().TORPOR_DROP_GUEST_CACHES && this.agent && !this.agent.closed) {
      const answered = this.agent.configure({ memory: 'drop-caches' }).catch(() => {});
      await Promise.race([answered, new Promise((resolve) => setTimeout(resolve, 2000).unref())]);
    }
    // Before the pause: the socket QEMU streams its device state to, and the migration capability.
    const deviceStateSave = await prepareDeviceStateSave(vm.qmp, this.migrationSocket(), { socketOwner: this.confinement?.runAs }).catch((error: unknown) => {
      this.snapshotInProgress = false;
      throw error;
    });
    // The page map, parsed before the pause (the first checkpoint of a machine would parse it paused).
    await loadPageMap(this.memoryFile());
    // The layer's size is fixed (the guest cannot resize it): read before the pause.
    const layerSize = await stat(this.files.layerDisk).then(
      (status) => status.size,
      () => 0,
    );
    // What the guest was paused for, step by step (the summary's `pausedPhases`).
    const phases: PausedPhases = {};
    const started = performance.now();
    let mark = started;
    const phase = (name: string) => {
      const now = performance.now();
      phases[name] = (phases[name] ?? 0) + now - mark;
      mark = now;
    };
    try {
      await vm.qmp.execute('stop');
      const paused = performance.now();
      phase('stopMs');
      // Steps that overlap are timed each on their own (their phases add up to more than the pause).
      const timed = <T>(name: string, step: Promise<T>): Promise<T> => {
        const begun = performance.now();
        return step.finally(() => (phases[name] = performance.now() - begun));
      };
      // Both need the guest paused and neither needs the other: the pager's flags are read while
      // QEMU saves the device state.
      const knownMemory = timed('pagerStatusMs', knownMemoryOf(this.memoryFile(), this.writeBaseline));
      knownMemory.catch(() => {});
      const deviceState = await timed('deviceStateMs', deviceStateSave.save()).finally(() => deviceStateSave.close());
      const saved = performance.now();
      // A checkpoint that continues, of a write-tracked machine: the guest runs again right after
      // its device state, while the capture reads copies of what it writes (copy-before-write).
      let beside: CaptureBesideGuest | undefined;
      let resumed: number | undefined;
      // A lazily restored machine: chunks it never loaded, and (write tracking) chunks not written
      // since the last snapshot, are not read again.
      const { known, manifest } = await (async () => {
        const known = await knownMemory;
        if (environment().TORPOR_VERIFY_WRITE_TRACKING && known.input) await verifyCleanChunks(this.memoryFile(), known.input, known.clean);
        mark = performance.now();
        if (!request.stop && known.status?.tracking) {
          const target = this.diskCaptureTarget;
          // QEMU copies the disk beside the guest (TORPOR_DISK_COPY_JOB=0: copied here, paused, as before).
          const diskJob =
            target && layerSize > 0 && environment().TORPOR_DISK_COPY_JOB
              ? async () => {
                  const job = await startDiskCaptureJob(vm.qmp, target, layerSize, phases);
                  let ended: Error | undefined;
                  job.failed.catch((error: Error) => (ended = error));
                  const allocated = async () => {
                    const extents = await allocatedExtents(job.file);
                    // Checked after the look: a job that ended before it may have let writes through uncopied.
                    if (ended) throw ended;
                    return extents;
                  };
                  return { copies: { file: job.file, allocated }, finish: () => finishDiskCaptureJob(vm.qmp, target, job) };
                }
              : undefined;
          beside = await startCaptureBesideGuest(this.memoryFile(), this.files.layerDisk, phases, diskJob);
          mark = performance.now();
          if (beside) {
            await vm.qmp.execute('cont');
            resumed = performance.now();
            phase('resumeMs');
          }
        }
        // Loaded on the first snapshot only: the store brings zstd, xxhash and worker threads, memory
        // that a machine which is never snapshotted should not carry.
        const { captureSnapshot } = await import('../snapshot/snapshot-store.ts');
        const manifest = await captureSnapshot({
          knownMemory: known.input,
          name: request.name,
          memoryFile: this.memoryFile(),
          diskFile: beside?.diskCopy ?? this.files.layerDisk,
          ...(beside?.diskCopies ? { diskCopies: beside.diskCopies } : {}),
          ...(beside ? { memoryCopies: beside.memoryCopies } : {}),
          deviceState,
          parent: request.parent ?? this.pausedAt ?? this.config.restore?.snapshot,
          replace: request.replace,
          metadata: {
            machine: this.config,
            mainStream: this.main?.stream,
            snapshotAt: new Date().toISOString(),
            ...(this.workingSet?.length ? { workingSet: this.workingSet } : {}),
          },
        });
        return { known, manifest };
      })()
        .catch(async (error: unknown) => {
          // Nothing was stored: keep the machine running and say why. (Running already: the pager's
          // dirty flags started a generation this capture did not finish, so the next one reads all.)
          if (resumed === undefined) await vm.qmp.execute('cont').catch(() => {});
          else this.writeBaseline = null;
          throw error;
        })
        .finally(async () => {
          if (beside) await beside.finish();
        });
      const captured = performance.now();
      if (request.keepPaused) {
        // The paused tier: the guest stays stopped in this QEMU, which keeps its translated code, so
        // a `resume` continues it without a restore. Write tracking starts a new generation here, as
        // for a paused checkpoint, so the next snapshot after the resume reads only what changed.
        if (known.status?.tracking) {
          this.writeBaseline = await protectGuestMemory(this.memoryFile()).then(
            (generation) => ({ generation, chunks: manifest.memory.chunks, deltaBases: manifest.memory.deltaBases ?? {} }),
            () => null,
          );
        }
        // The parent of the next snapshot is this one (the machine's own restore source is older).
        this.pausedAt = manifest.name;
        await this.setState({ status: 'paused', snapshot: request.name, pausedAt: new Date().toISOString() });
      } else if (request.stop) {
        // The guest lives on in the snapshot: end QEMU now; `finishAfterSnapshot` records it once
        // the caller has its reply (finishing closes every client socket).
        this.stopping = true;
        await this.setState({ status: 'stopping', snapshot: request.name });
        vm.kill('SIGKILL');
        await vm.exited;
        // Before the reply: whoever asked for the hibernation removes the machine right after it.
        const lazy = await readLazyMemoryStatus(this.memoryFile()).catch(() => undefined);
        await keepWarm(manifest.id, this.memoryFile(), this.files.layerDisk, lazy?.loaded).catch(() => false);
      } else if (beside) {
        this.writeBaseline = { generation: beside.generation, chunks: manifest.memory.chunks, deltaBases: manifest.memory.deltaBases ?? {} };
      } else {
        phase('captureMs');
        if (known.status?.tracking) {
          // Still paused: protect again, so the next snapshot reads only chunks written after this one.
          this.writeBaseline = await protectGuestMemory(this.memoryFile()).then(
            (generation) => ({ generation, chunks: manifest.memory.chunks, deltaBases: manifest.memory.deltaBases ?? {} }),
            () => null,
          );
          phase('protectMs');
        }
        await vm.qmp.execute('cont');
        resumed = performance.now();
        phase('resumeMs');
      }
      return {
        name: manifest.name,
        ...(resumed !== undefined ? { guestPausedMs: resumed - started, pausedPhases: phases } : {}),
        ...(beside ? { capturedBesideGuest: true, diskCapture: beside.diskMethod } : {}),
        pauseMs: paused - started,
        deviceStateMs: saved - paused,
        captureMs: captured - saved,
        totalMs: performance.now() - started,
        stats: manifest.stats as Record<string, unknown>,
      };
    } finally {
      this.snapshotInProgress = false;
    }
  }
}
