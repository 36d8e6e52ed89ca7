import { createHash } from 'node:crypto';
import { readFile, mkdir, rename, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { projectRoot } from '../util/project-root.ts';
import { findGuestKernel, type GuestKernel } from './kernel.ts';
import { writeCpio, type CpioEntry } from './cpio.ts';
import { runCommand, commandExists } from '../util/command.ts';
import { TorporError } from '../util/errors.ts';
import { writeFileAtomic } from '../util/atomic-file.ts';
import { paths } from '../state/paths.ts';
import { type Progress, silentProgress } from '../util/progress.ts';
import { pathExists } from '../util/path-exists.ts';

export interface GuestArtifacts {
  kernel: GuestKernel;
  initramfsPath: string;
  /** Changes whenever the agent or the kernel changes: boot templates are keyed on it. */
  key: string;
  /** The kernel can take the image as virtio-pmem memory (its drivers are in the initramfs or built in). */
  imageMemory: boolean;
}

const agentSource = join(projectRoot(), 'guest', 'agent.c');

// The drivers a microvm guest needs that Debian's cloud kernel builds as modules.
const wantedModules = ['virtio_mmio', 'virtio_blk', 'virtio_net', 'virtio_console', 'overlay'];
// A q35 machine with the image as virtio-pmem (vm/image-memory.ts) also needs PCI virtio and the
// pmem drivers. A second list, loaded by the agent only on such machines: a microvm boot does not
// pay for drivers it has no device for.
const imageMemoryModules = ['virtio_pci', 'virtio_pmem', 'nd_pmem'];

async function moduleLoadOrder(kernel: GuestKernel, wanted: string[], loaded: string[] = []): Promise<string[]> {
  const dependencies = new Map<string, string[]>();
  for (const line of (await readFile(join(kernel.modulesDirectory, 'modules.dep'), 'utf8')).split('\n')) {
    const [module, rest] = line.split(':');
    if (module && rest !== undefined) dependencies.set(module, rest.trim().split(/\s+/).filter(Boolean));
  }
  const byName = new Map(
    [...dependencies.keys()].map((path) => [
      path
        .split('/')
        .pop()!
        .replace(/\.ko(\..*)?$/, ''),
      path,
    ]),
  );
  const ordered: string[] = [];
  const visit = (path: string) => {
    if (ordered.includes(path) || loaded.includes(path)) return;
    // modules.dep lists the full closure, deepest last; loading in reverse satisfies each before its user.
    for (const dependency of [...(dependencies.get(path) ?? [])].reverse()) visit(dependency);
    ordered.push(path);
  };
  for (const name of wanted) {
    const path = byName.get(name);
    if (path) visit(path); // absent means built in
  }
  return ordered;
}

const artifactKey = (agent: Buffer, kernel: GuestKernel, modules: string[], pmemModules: string[]) =>
  createHash('sha256')
    .update(agent)
    .update(kernel.version)
    .update(modules.join('\n'))
    .update(pmemModules.join('\n'))
    .update('initramfs-v2')
    .digest('hex')
    .slice(0, 16);

/**
 * Whether the kernel has the drivers the image needs as memory: virtio_pmem (a module, or built in:
 * modules.builtin) and a DAX-capable ext4 (CONFIG_FS_DAX, read from /boot/config-VERSION when it is
 * there; without DAX the guest would still mount the image, only with a page cache of its own).
 */
async function kernelTakesImageMemory(kernel: GuestKernel, pmemModules: string[]): Promise<boolean> {
  let builtin = '';
  try {
    builtin = await readFile(join(kernel.modulesDirectory, 'modules.builtin'), 'utf8');
  } catch {
    // no list: nothing known to be built in
  }
  if (!pmemModules.some((path) => /\/virtio_pmem\.ko/.test(path)) && !/\/virtio_pmem\.ko/.test(builtin)) return false;
  try {
    const config = await readFile(join('/boot', `config-${kernel.version}`), 'utf8');
    return /^CONFIG_FS_DAX=y$/m.test(config);
  } catch {
    return true;
  }
}

async function kernelModules(kernel: GuestKernel): Promise<{ modules: string[]; pmemModules: string[] }> {
  const modules = await moduleLoadOrder(kernel, wantedModules);
  return { modules, pmemModules: await moduleLoadOrder(kernel, imageMemoryModules, modules) };
}

/** Whether the initramfs for this agent and kernel is built already (then musl-gcc is not needed: the `torpor` image ships it). */
export async function guestArtifactsBuilt(): Promise<boolean> {
  try {
    const kernel = await findGuestKernel();
    const { modules, pmemModules } = await kernelModules(kernel);
    const key = artifactKey(await readFile(agentSource), kernel, modules, pmemModules);
    return await pathExists(join(paths.artifacts(), `initramfs-${key}.cpio`));
  } catch {
    return false;
  }
}

/** Builds (once, cached by content) the static guest agent and the initramfs that carries it. */
export async function ensureGuestArtifacts(progress: Progress = silentProgress): Promise<GuestArtifacts> {
  const kernel = await findGuestKernel();
  const source = await readFile(agentSource);
  const { modules, pmemModules } = await kernelModules(kernel);
  const key = artifactKey(source, kernel, modules, pmemModules);
  const imageMemory = await kernelTakesImageMemory(kernel, pmemModules);
  const directory = paths.artifacts();
  const initramfsPath = join(directory, `initramfs-${key}.cpio`);
  if (await pathExists(initramfsPath)) return { kernel, initramfsPath, key, imageMemory };

  if (!(await commandExists('musl-gcc'))) {
    throw new TorporError('musl-missing', 'musl-gcc is needed to build the guest agent', { hint: 'apt-get install -y musl-tools' });
  }
  progress(`building the guest agent and initramfs for kernel ${kernel.version}`);
  await mkdir(directory, { recursive: true });
  const agentPath = join(directory, `agent-${key}`);
  await runCommand('musl-gcc', ['-static', '-O2', '-s', '-o', `${agentPath}.tmp`, agentSource]);
  await rename(`${agentPath}.tmp`, agentPath);

  const entries: CpioEntry[] = [
    { path: 'init', mode: 0o100755, data: await readFile(agentPath) },
    { path: 'modules.order', mode: 0o100644, data: Buffer.from(modules.map((path) => `/modules/${path.split('/').pop()}`).join('\n') + '\n') },
    { path: 'modules.pmem.order', mode: 0o100644, data: Buffer.from(pmemModules.map((path) => `/modules/${path.split('/').pop()}`).join('\n') + '\n') },
    ...['dev', 'proc', 'sys', 'modules', 'lower', 'upper', 'newroot'].map((path) => ({ path, mode: 0o40755 })),
  ];
  for (const module of [...modules, ...pmemModules]) {
    entries.push({ path: `modules/${module.split('/').pop()}`, mode: 0o100644, data: await readFile(join(kernel.modulesDirectory, module)) });
  }
  await writeFileAtomic(initramfsPath, writeCpio(entries));
  await rm(agentPath, { force: true });
  progress(`initramfs ready (${modules.length + pmemModules.length} modules)`);
  return { kernel, initramfsPath, key, imageMemory };
}
