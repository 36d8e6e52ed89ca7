import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { listMachines, killMachine } from '../machines.ts';
import { dropTemplateMemory } from '../template-memory.ts';

/**
 * A private TORPOR_HOME for a test file, so tests never see a user's machines or each other's.
 * Host-level artifacts (initramfs, KVM verdict) stay shared through TORPOR_CACHE's default.
 * Short paths: unix socket paths are limited to 108 bytes.
 */
export async function useTemporaryHome(): Promise<{ home: string; cleanup: () => Promise<void> }> {
  const home = await mkdtemp(join(tmpdir(), 'tp-'));
  process.env.TORPOR_HOME = home;
  // No spare machines unless a test asks after this (spare-pool.test.ts): a background fill would start VMs
  // that outlive the test's commands, on a host whose two cores the tests share.
  process.env.TORPOR_SPARE_MACHINES = '0';
  return {
    home,
    cleanup: async () => {
      for (const machine of await listMachines()) await killMachine(machine.config);
      await dropTemplateMemory();
      // Retried: a killed machine's processes may still be exiting and writing while the tree is removed
      // (seen once at load 8: ENOTEMPTY).
      await rm(home, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
    },
  };
}
