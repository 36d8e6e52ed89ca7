import type { Command } from 'commander';
import type { CreateMachineOptions } from '../../runtime/machines.ts';
import { effectiveState } from '../../runtime/machine-status.ts';
import { attachToMainProcess, type AttachedProcess } from '../../runtime/attach.ts';
import { activateSpare, refillInBackground, spareCount, spareSettingsOf, takeSpare } from '../../runtime/spare-pool.ts';
import type { AgentClient } from '../../guest/agent-client.ts';
import type { MachineConfig } from '../../runtime/machine-record.ts';
import { parseCpus, parseMemory, parsePort, parseEnvironment, networkOptionsFrom } from '../../runtime/run-options.ts';
import { connectTerminal, terminalSize } from '../terminal.ts';
import { collect } from '../output.ts';
import { stderrProgress } from '../../util/progress.ts';
import { machineDefaults } from '../../config/machine-defaults.ts';
import { addNetworkPolicyFlags } from '../network-flags.ts';

interface RunFlags {
  name?: string;
  detach?: boolean;
  rm?: boolean;
  env?: string[];
  workdir?: string;
  cpus?: string;
  memory?: string;
  publish?: string[];
  entrypoint?: string;
  interactive?: boolean;
  tty?: boolean;
  hostname?: string;
  user?: string;
  network?: string;
  allowHost?: string[];
  egressAllow?: string[];
  egressDeny?: string[];
}

function addMachineOptions(command: Command): Command {
  return addNetworkPolicyFlags(command, 'guest')
    .option('--name <name>', 'name the machine')
    .option('-e, --env <KEY=VALUE>', 'set an environment variable (repeatable)', collect)
    .option('-w, --workdir <dir>', 'working directory of the process')
    .option('--cpus <n>', 'virtual CPUs', String(machineDefaults.cpus))
    .option('-m, --memory <size>', 'guest memory, e.g. 512m, 2g', machineDefaults.memory)
    .option('-p, --publish <[ip:]host:guest[/proto]>', 'publish a guest port on the host (repeatable)', collect)
    .option('--entrypoint <program>', "override the image's entrypoint")
    .option('-i, --interactive', 'keep stdin open and send it to the process')
    .option('-t, --tty', 'give the process a terminal')
    .option('--hostname <name>', 'guest hostname (default: the machine name)')
    .option('-u, --user <user[:group]>', 'run the process as this user')
    .option(
      '--network <mode>',
      "user (default: the public internet and published ports, not the host or private networks), none, or unrestricted (also the host's loopback and private networks)",
      'user',
    );
}

export function machineOptionsFrom(image: string, command: string[], flags: RunFlags): CreateMachineOptions {
  const network = networkOptionsFrom({
    network: flags.network ?? 'user',
    allowHost: flags.allowHost ?? [],
    egressAllow: flags.egressAllow ?? [],
    egressDeny: flags.egressDeny ?? [],
  });
  return {
    image,
    command,
    name: flags.name,
    env: parseEnvironment(flags.env ?? []),
    workingDir: flags.workdir,
    cpus: parseCpus(flags.cpus ?? String(machineDefaults.cpus)),
    memoryMiB: parseMemory(flags.memory ?? machineDefaults.memory),
    ports: (flags.publish ?? []).map(parsePort),
    entrypoint: flags.entrypoint,
    interactive: flags.interactive ?? false,
    tty: flags.tty ?? false,
    hostname: flags.hostname,
    user: flags.user,
    ...network,
    autoRemove: flags.rm ?? false,
  };
}

export function registerRunCommands(program: Command): void {
  addMachineOptions(
    program
      .command('run')
      .description('create and start a machine from an image, like docker run')
      .argument('<image>', 'image name (base, node, or one from `torpor images`)')
      .argument('[command...]', 'command to run (default: the image command)')
      .option('-d, --detach', 'run in the background and print the machine id')
      .option('--rm', 'remove the machine when its process exits'),
  )
    .passThroughOptions()
    .action(async (image: string, command: string[], flags: RunFlags) => {
      const options = machineOptionsFrom(image, command, flags);
      const handlers = { stdout: (data: Buffer) => process.stdout.write(data), stderr: (data: Buffer) => process.stderr.write(data) };
      // A spare machine of the same settings, if one is ready: the user's process starts in a guest
      // that is already up (spare-pool.ts). Otherwise a machine of its own, the cold way.
      const spareSettings = spareCount() > 0 ? spareSettingsOf(options) : undefined;
      let running: { config: MachineConfig; client?: AgentClient; attached?: AttachedProcess } | undefined;
      const taken = spareSettings ? await takeSpare(options) : undefined;
      if (taken) {
        const attached = flags.detach ? undefined : await attachToMainProcess(taken.client, handlers);
        if (await activateSpare(taken)) running = { config: taken.config, client: taken.client, attached };
      }
      // The pool refills in a detached process, after this run's own start (not competing with it).
      const refill = () => (spareSettings ? refillInBackground(spareSettings).catch(() => {}) : undefined);
      if (!running) {
        // Loaded only here: creating a machine brings the image store, snapshots and zod, which a claim does not need.
        const { createMachine, startMachine, connectToMachine } = await import('../../runtime/machines.ts');
        const config = await createMachine(options, stderrProgress());
        if (flags.detach) {
          await startMachine(config.id);
          process.stdout.write(config.id + '\n');
          await refill();
          return;
        }
        const state = await startMachine(config.id, { waitForAttach: true });
        if (state.status !== 'running') {
          process.exitCode = state.exitCode ?? 125;
          await refill();
          return;
        }
        const client = await connectToMachine(config);
        running = { config, client, attached: await attachToMainProcess(client, handlers) };
      }
      const { config, client, attached } = running;
      if (flags.detach || !attached) {
        client?.close();
        process.stdout.write(config.id + '\n');
        await refill();
        return;
      }
      if (options.tty) attached.resize(terminalSize().rows, terminalSize().columns);
      const disconnect = connectTerminal(attached, { tty: options.tty ?? false, interactive: options.interactive ?? false });
      let code = await attached.exited;
      disconnect();
      client?.close();
      if (code < 0) code = (await effectiveState(config)).exitCode ?? 125;
      if (flags.rm) {
        // The supervisor removes the machine after the answer (its name is free already). Only a
        // machine whose supervisor is gone (killed) is removed here.
        const state = await effectiveState(config).catch(() => undefined);
        if (state && (state.status === 'exited' || state.status === 'failed') && !state.finishedAt) {
          const { removeMachine } = await import('../../runtime/machines.ts');
          await removeMachine(config, { force: true }).catch(() => {});
        }
      }
      await refill();
      process.exitCode = code;
    });

  addMachineOptions(program.command('create').description('create a machine without starting it').argument('<image>').argument('[command...]'))
    .passThroughOptions()
    .action(async (image: string, command: string[], flags: RunFlags) => {
      const { createMachine } = await import('../../runtime/machines.ts');
      const config = await createMachine(machineOptionsFrom(image, command, flags), stderrProgress());
      process.stdout.write(config.id + '\n');
    });
}
