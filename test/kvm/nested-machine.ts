import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runCommand, type CommandResult } from '../../src/util/command.ts';

/**
 * A `torpor` machine (the built-in image: QEMU, Node, the guest kernel and the kvm modules) under
 * this host's TCG with `-cpu max`, so its guest sees svm and runs torpor on KVM (emulated SVM).
 * The tests drive the CLI inside it through `torpor exec`: the code under test is the product as a
 * user runs it, nested. Everything lives in a private TORPOR_HOME and tmpfs directory, removed after.
 */
export class NestedMachine {
  private constructor(
    readonly home: string,
    readonly memoryDirectory: string,
    readonly name: string,
  ) {}

  private static readonly cli = fileURLToPath(new URL('../../bin/torpor.js', import.meta.url));

  private static environment(home: string, memoryDirectory: string): NodeJS.ProcessEnv {
    // No spare machines at the outer level: a spare of the 2 GiB torpor machine would boot beside the suite.
    return { ...process.env, TORPOR_HOME: home, TORPOR_MEMORY_DIR: memoryDirectory, TORPOR_ACCEL: 'tcg', TORPOR_SPARE_MACHINES: '0' };
  }

  /** Boots the outer machine (2 GiB: the inner torpor keeps guest RAM in its /dev/shm). */
  static async start(): Promise<NestedMachine> {
    const home = await mkdtemp(join(tmpdir(), 'tp-nested-'));
    const memoryDirectory = `/dev/shm/torpor-nested-test-${process.pid}`;
    const machine = new NestedMachine(home, memoryDirectory, `nest-${process.pid}`);
    const started = await machine.outer('run', '-d', '--name', machine.name, '--network', 'none', '--memory', '2g', 'torpor', 'sleep', '1000000');
    if (started.code !== 0) {
      await machine.remove();
      throw new Error(`the torpor machine did not start: ${started.stderr}`);
    }
    // The image's torpor command waits for its KVM setup (kvm.ko loads for seconds on emulated SVM):
    // after this, /dev/kvm is there or will not come.
    const ready = await machine.torpor('--version');
    if (ready.code !== 0) {
      await machine.remove();
      throw new Error(`torpor inside the machine does not run: ${ready.stderr}`);
    }
    return machine;
  }

  /** The host's torpor (outer level, TCG). */
  outer(...args: string[]): Promise<CommandResult> {
    return runCommand(process.execPath, [NestedMachine.cli, ...args], { allowFailure: true, env: NestedMachine.environment(this.home, this.memoryDirectory) });
  }

  /** A shell command inside the torpor machine (where `torpor` is the nested one, on KVM). */
  shell(script: string): Promise<CommandResult> {
    return this.outer('exec', this.name, 'sh', '-c', script);
  }

  /** The nested torpor's CLI; `--json` output comes back parsed by the caller. */
  torpor(...args: string[]): Promise<CommandResult> {
    return this.outer('exec', this.name, 'torpor', ...args);
  }

  async remove(): Promise<void> {
    await this.outer('rm', '-f', this.name);
    await rm(this.home, { recursive: true, force: true });
    await rm(this.memoryDirectory, { recursive: true, force: true });
  }
}

/** Fails with the command's output: a nested failure is otherwise hard to read. */
export function succeeded(result: CommandResult, what: string): string {
  if (result.code !== 0) throw new Error(`${what} failed (exit ${result.code}):\n${result.stderr}\n${result.stdout}`);
  return result.stdout;
}

/**
 * `run --rm` of a base machine in the nested torpor that prints its clock source and how often the
 * kernel saw the KVM hypervisor: `['kvm-clock', '1']` when it ran on KVM. `network: 'user'` (the smoke
 * test) also proves the policy's nft rules install inside; the suite passes 'none' so that all its
 * machines share one boot template (each network setting has its own, 512 MiB of the 1.5 GiB tmpfs).
 */
export async function clockSourceOfRunRm(nest: NestedMachine, network: 'user' | 'none'): Promise<string[]> {
  const output = succeeded(
    await nest.torpor(
      'run',
      '--rm',
      '--network',
      network,
      'base',
      'sh',
      '-c',
      'cat /sys/devices/system/clocksource/clocksource0/current_clocksource; dmesg | grep -c "Hypervisor detected: KVM"',
    ),
    'run --rm',
  );
  return output.trim().split('\n');
}
