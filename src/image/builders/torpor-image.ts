import { mkdir, copyFile, chmod, realpath, readFile, readdir, writeFile, cp, stat, rm } from 'node:fs/promises';
import { join, dirname, basename } from 'node:path';
import { buildNodeRoot, copySharedLibraries } from './node-image.ts';
import { runCommand } from '../../util/command.ts';
import { TorporError } from '../../util/errors.ts';
import { projectRoot } from '../../util/project-root.ts';
import { environment } from '../../config/environment.ts';
import type { ImageConfig } from '../image-config.ts';

/**
 * What the `torpor` image takes from the host that image/ cannot make itself (the layers that make
 * them sit above image/): runtime/ gathers them and passes them in.
 */
export interface NestedTorporInputs {
  /** The guest kernel torpor boots, and its modules directory (modules.dep, kvm*.ko). */
  kernel: { version: string; imagePath: string; modulesDirectory: string };
  /** Files of the host's cache torpor would otherwise build inside (initramfs, native helpers), copied into the image's cache. */
  cacheFiles: string[];
  /** The directory of the current esbuild bundles (cli.mjs, supervisor.mjs, chunk-worker.mjs, chunks/). */
  bundleDirectory: string;
}

/** Where the project lives inside the image, and the cache the prebuilt files go to. */
export const nestedProjectDirectory = '/opt/torpor';
export const nestedCacheDirectory = '/var/cache/torpor';
export const kvmSetupProgram = '/usr/local/sbin/torpor-kvm-setup';
/** Written by the setup program once KVM is loaded (or known to be absent). */
export const kvmSetupDone = '/run/torpor-kvm-setup.done';

// Kernel module folders (and files) copied into the image, relative to the guest kernel's modules
// directory: KVM (irqbypass, kvm, kvm-amd/intel) and netfilter, whose nf_tables the network policy of
// the machines inside needs. busybox's modprobe loads them with their dependencies from modules.dep,
// and the kernel asks it for the nft expressions a rule set uses (kernel.modprobe).
const moduleParts = [
  'kernel/virt/lib',
  'kernel/arch/x86/kvm',
  'kernel/net/netfilter',
  'kernel/net/ipv4/netfilter',
  'kernel/net/ipv6/netfilter',
  'kernel/lib/libcrc32c.ko',
];

// Host programs the runtime starts (QEMU through setpriv; mkfs.ext4 for layers and images; nft for
// the network filter, when the guest kernel has nf_tables; zstd for `doctor`). Optional ones may be absent.
const hostPrograms: { name: string; required: boolean }[] = [
  { name: 'setpriv', required: true },
  // GNU cp: RAM and layer files are copied with --sparse=always, which busybox's cp lacks.
  { name: 'cp', required: true },
  { name: 'mkfs.ext4', required: true },
  { name: 'debugfs', required: false },
  { name: 'nft', required: false },
  { name: 'zstd', required: false },
];

// Native npm packages (a binding.gyp) carry their C sources beside the compiled addon: not needed at run time.
const nativeBuildInputs = new Set(['deps', 'src']);

async function findProgram(name: string): Promise<string | undefined> {
  for (const directory of (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':').concat(['/usr/sbin', '/sbin'])) {
    try {
      const path = join(directory, name);
      if ((await stat(path)).isFile()) return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** Copies a program to the same path in the image, with every shared library ldd lists (as node-image does for Node). */
async function copyProgramWithLibraries(root: string, program: string): Promise<void> {
  const target = join(root, program);
  await mkdir(dirname(target), { recursive: true });
  // The path may be one of busybox's applet links (/bin/cp): copying onto it would overwrite busybox itself.
  await rm(target, { force: true });
  await copyFile(await realpath(program), target);
  await chmod(target, 0o755);
  await copyLibraries(root, program);
}

const copyLibraries = (root: string, program: string) => copySharedLibraries(root, program, { allowFailure: true });

async function filesEndingWith(directory: string, suffix: string): Promise<string[]> {
  const entries = await readdir(directory, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile() && entry.name.endsWith(suffix)).map((entry) => join(entry.parentPath, entry.name));
}

/** The npm packages the bundles import, with everything they depend on. */
async function runtimePackages(projectDirectory: string): Promise<string[]> {
  const manifest = JSON.parse(await readFile(join(projectDirectory, 'package.json'), 'utf8')) as { dependencies?: Record<string, string> };
  const queue = Object.keys(manifest.dependencies ?? {}).filter((name) => !name.startsWith('@types/'));
  const found = new Set<string>();
  while (queue.length > 0) {
    const name = queue.pop()!;
    if (found.has(name)) continue;
    let dependencies: Record<string, string>;
    try {
      const packageManifest = JSON.parse(await readFile(join(projectDirectory, 'node_modules', name, 'package.json'), 'utf8')) as {
        dependencies?: Record<string, string>;
        optionalDependencies?: Record<string, string>;
      };
      dependencies = { ...packageManifest.dependencies, ...packageManifest.optionalDependencies };
    } catch {
      continue; // an optional dependency for another platform
    }
    found.add(name);
    queue.push(...Object.keys(dependencies).filter((dependency) => !dependency.startsWith('@types/')));
  }
  return [...found].sort();
}

// Runs as the image's entrypoint, before the user's command: KVM inside a machine needs the guest
// kernel's kvm modules (Debian's cloud kernel builds them as modules) and /dev/kvm. Only when the
// virtual CPU offers hardware virtualization (svm: AMD, vmx: Intel); otherwise torpor inside uses TCG.
const kvmSetupScript = `#!/bin/sh
# torpor image: load KVM when the virtual CPU has svm or vmx, and nf_tables for the network policy of
# the machines inside, then run the command. The image's torpor command waits for ${kvmSetupDone}
# (loading kvm takes seconds on emulated SVM), so a \`torpor exec <machine> torpor ...\` right after
# \`run -d\` does not probe before /dev/kvm exists.
# Nested machines keep their RAM in /dev/shm, which the guest mounts at half of its memory by default.
mount -o remount,size=75% /dev/shm 2>/dev/null
modprobe=$(command -v modprobe)
# The kernel runs this for modules a rule set needs (nft expressions); its default, /sbin/modprobe, may not exist here.
[ -n "$modprobe" ] && [ -w /proc/sys/kernel/modprobe ] && echo "$modprobe" > /proc/sys/kernel/modprobe
if [ ! -e /dev/kvm ]; then
  vendor=
  if grep -qw svm /proc/cpuinfo; then vendor=amd; elif grep -qw vmx /proc/cpuinfo; then vendor=intel; fi
  if [ -n "$vendor" ]; then
    modprobe kvm-$vendor || echo "torpor image: modprobe kvm-$vendor failed" >&2
    # devtmpfs makes the node when kvm registers; mknod covers a /dev without it (10:232 is KVM's misc minor).
    grep -q "^kvm_$vendor " /proc/modules && [ ! -e /dev/kvm ] && mknod -m 0660 /dev/kvm c 10 232
  fi
  [ -e /dev/kvm ] || echo "torpor image: no KVM here (no svm/vmx in the CPU flags, or no kvm modules for $(uname -r)); torpor inside uses TCG" >&2
fi
modprobe -a nf_tables nft_ct nft_reject_inet nft_fib_inet 2>/dev/null || echo "torpor image: nf_tables did not load; machines inside need --network none or unrestricted" >&2
mkdir -p /run && : > ${kvmSetupDone}
exec "$@"
`;

// The image's \`torpor\` command: waits (at most 5 min) for the setup above when it has not finished.
const torporCommand = `#!/bin/sh
if [ ! -e ${kvmSetupDone} ] && [ -e /proc/1 ] && grep -q "[t]orpor-kvm-setup" /proc/[0-9]*/cmdline 2>/dev/null; then
  waited=0
  while [ ! -e ${kvmSetupDone} ] && [ $waited -lt 3000 ]; do sleep 0.1; waited=$((waited + 1)); done
fi
exec /usr/local/bin/node ${nestedProjectDirectory}/bin/torpor.js "$@"
`;

/**
 * \`torpor\`: torpor itself in a machine (node plus QEMU, the guest kernel and initramfs, the kvm
 * modules and the bundled CLI), so that machines run nested: on a CI runner without /dev/kvm, or to
 * exercise the KVM path on emulated SVM (architecture/nested-kvm.md).
 */
export async function buildTorporRoot(root: string, inputs: NestedTorporInputs): Promise<ImageConfig> {
  const base = await buildNodeRoot(root);
  const qemu = environment().TORPOR_QEMU;
  const qemuPath = qemu.startsWith('/') ? qemu : await findProgram(qemu);
  if (!qemuPath)
    throw new TorporError('qemu-missing', `${qemu} not found: the torpor image carries the host's QEMU`, { hint: 'apt-get install -y qemu-system-x86' });
  // Same path as on the host, so TORPOR_QEMU's default (a name on PATH) finds it inside too.
  await copyProgramWithLibraries(root, qemuPath);
  // Debian builds TCG as a loadable QEMU module: without it `-accel tcg` fails ("could not load module for type 'tcg-accel-ops'").
  const qemuModules = '/usr/lib/x86_64-linux-gnu/qemu';
  for (const module of ['accel-tcg-x86_64.so']) {
    const path = join(qemuModules, module);
    if (
      await stat(path).then(
        () => false,
        () => true,
      )
    )
      continue; // a QEMU with TCG built in
    await copyProgramWithLibraries(root, path);
  }
  // QEMU's firmware search path (`qemu-system-x86_64 -L help`): its own data, and SeaBIOS, which q35
  // machines (the image as DAX memory) boot through; Debian keeps bios-256k.bin only in the latter.
  for (const directory of ['/usr/share/qemu', '/usr/share/seabios']) {
    const firmware = await realpath(directory).catch(() => undefined);
    if (firmware) await cp(firmware, join(root, directory), { recursive: true, dereference: true });
  }
  for (const program of hostPrograms) {
    const path = await findProgram(program.name);
    if (!path) {
      if (program.required) throw new TorporError('program-missing', `${program.name} not found: the torpor image needs it`, { hint: 'run `torpor doctor`' });
      continue;
    }
    await copyProgramWithLibraries(root, path);
  }
  await copyFile('/etc/mke2fs.conf', join(root, 'etc/mke2fs.conf')).catch(() => {});

  // The guest kernel at the path findGuestKernel looks at, with modules.dep (its key) and the kvm modules.
  const { kernel } = inputs;
  await mkdir(join(root, 'boot'), { recursive: true });
  await copyFile(kernel.imagePath, join(root, 'boot', `vmlinuz-${kernel.version}`));
  const modules = join(root, 'lib/modules', kernel.version);
  await mkdir(modules, { recursive: true });
  for (const index of ['modules.dep', 'modules.alias', 'modules.symbols', 'modules.builtin']) {
    await copyFile(join(kernel.modulesDirectory, index), join(modules, index)).catch(() => {}); // modules.dep is findGuestKernel's key; the rest help modprobe
  }
  for (const part of moduleParts) {
    const from = join(kernel.modulesDirectory, part);
    if (!(await stat(from).catch(() => undefined))) continue; // built into this kernel, or not built at all
    await mkdir(dirname(join(modules, part)), { recursive: true });
    await cp(from, join(modules, part), { recursive: true });
  }

  // The initramfs and native helpers, prebuilt: the image has no compiler.
  const cache = join(root, nestedCacheDirectory);
  await mkdir(cache, { recursive: true });
  for (const file of inputs.cacheFiles) {
    await copyFile(file, join(cache, basename(file)));
    await chmod(join(cache, basename(file)), (await stat(file)).mode & 0o777);
    // The pager library is preloaded into QEMU and links libzstd, which QEMU itself may not.
    if (!file.endsWith('.cpio')) await copyLibraries(root, file);
  }

  // The project as an installed package runs it: no src/, so bin/bundles.mjs uses build/current.json as it is.
  const source = projectRoot();
  const project = join(root, nestedProjectDirectory);
  const buildName = basename(inputs.bundleDirectory);
  await mkdir(join(project, 'build'), { recursive: true });
  await cp(inputs.bundleDirectory, join(project, 'build', buildName), { recursive: true });
  await writeFile(join(project, 'build/current.json'), JSON.stringify({ stamp: 'torpor-image', directory: buildName }));
  for (const part of ['package.json', 'bin', 'guest', 'native']) await cp(join(source, part), join(project, part), { recursive: true });
  for (const name of await runtimePackages(source)) {
    const from = join(source, 'node_modules', name);
    const native = await stat(join(from, 'binding.gyp')).then(
      () => true,
      () => false,
    );
    await cp(from, join(project, 'node_modules', name), {
      recursive: true,
      dereference: true,
      filter: (path) => !native || dirname(path) !== from || !nativeBuildInputs.has(basename(path)),
    });
  }
  // Native addons (better-sqlite3, zstd-napi, xxhash) link libraries Node itself does not (librt...).
  for (const addon of await filesEndingWith(join(project, 'node_modules'), '.node')) await copyLibraries(root, addon);
  await mkdir(join(root, 'usr/local/sbin'), { recursive: true });
  await writeFile(join(root, 'usr/local/bin/torpor'), torporCommand);
  await chmod(join(root, 'usr/local/bin/torpor'), 0o755);
  await writeFile(join(root, kvmSetupProgram), kvmSetupScript);
  await chmod(join(root, kvmSetupProgram), 0o755);
  await mkdir(join(root, 'var/lib/torpor'), { recursive: true });
  return {
    entrypoint: [kvmSetupProgram],
    cmd: ['/bin/sh'],
    env: [
      ...base.env,
      `TORPOR_CACHE=${nestedCacheDirectory}`,
      'TORPOR_HOME=/var/lib/torpor',
      'HOME=/root',
      // KVM on emulated SVM (this image under TCG) boots its probe guest in ~10 s on a quiet 2-core host and
      // took ~5 min at load 80; a real host needs < 8 s. The verdict is cached, so this wait happens once.
      'TORPOR_KVM_PROBE_MS=600000',
      // The same for a machine's first boot (its boot template): 60 s was too short for nested KVM here.
      'TORPOR_BOOT_TIMEOUT_MS=600000',
      // No spare machines: in a 2 GiB machine a spare's RAM left a user's restore no room (KVM suite).
      'TORPOR_SPARE_MACHINES=0',
      // Machines inside keep the image as a block device on microvm: a q35 machine (the DAX image) boots
      // through SeaBIOS, whose port I/O traps twice under emulated SVM; its first boot under nested KVM
      // did not reach the agent in 10 min at load 6-10, where microvm's took ~3 min.
      'TORPOR_IMAGE_DAX=0',
    ],
    workingDir: '/root',
    exposedPorts: [],
  };
}
