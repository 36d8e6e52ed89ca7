import type { Command } from 'commander';
import { listImages, removeImage } from '../../image/image-store.ts';
import { importImage } from '../../image/import/import-image.ts';
import { parseSize, type ImportLimits } from '../../image/import/import-limits.ts';
import { pullImage } from '../../registry/pull.ts';
import { login } from '../../registry/login.ts';
import { pushImage } from '../../registry/push.ts';
import { createPullReporter, silentReporter } from '../../registry/pull-progress.ts';
import { TorporError } from '../../util/errors.ts';
import { stderrProgress } from '../../util/progress.ts';
import { printTable, printJson, formatBytes, formatDuration } from '../output.ts';

interface LimitFlags {
  maxLayerBytes?: string;
  maxLayerMembers?: string;
  maxImageBytes?: string;
}

/** The import limits a command line sets (the rest come from TORPOR_MAX_LAYER_BYTES, TORPOR_MAX_LAYER_MEMBERS and TORPOR_MAX_IMAGE_BYTES or the defaults). */
function limitsFrom(flags: LimitFlags): Partial<ImportLimits> {
  const limits: Partial<ImportLimits> = {};
  if (flags.maxLayerBytes) limits.maxLayerBytes = parseSize(flags.maxLayerBytes, '--max-layer-bytes');
  if (flags.maxImageBytes) limits.maxImageBytes = parseSize(flags.maxImageBytes, '--max-image-bytes');
  if (flags.maxLayerMembers) {
    if (!/^\d+$/.test(flags.maxLayerMembers) || Number(flags.maxLayerMembers) <= 0) {
      throw new TorporError('invalid-limit', `--max-layer-members: ${JSON.stringify(flags.maxLayerMembers)} is not a positive number`, {
        hint: 'e.g. --max-layer-members 2000000',
      });
    }
    limits.maxLayerMembers = Number(flags.maxLayerMembers);
  }
  return limits;
}

function limitOptions(command: Command): Command {
  return command
    .option('--max-layer-bytes <size>', 'largest uncompressed layer accepted, e.g. 16g (default 16g, or TORPOR_MAX_LAYER_BYTES)')
    .option('--max-layer-members <count>', 'most tar members in one layer (default 1000000, or TORPOR_MAX_LAYER_MEMBERS)')
    .option('--max-image-bytes <size>', 'largest uncompressed image, all layers together (default 32g, or TORPOR_MAX_IMAGE_BYTES)');
}

const shortDigest = (digest: string) => digest.replace(/^sha256:/, '').slice(0, 12);

async function readStdin(): Promise<string> {
  if (process.stdin.isTTY) {
    throw new TorporError('password-stdin-tty', '--password-stdin reads the password from a pipe, not a terminal', {
      hint: 'echo "$PASSWORD" | torpor login REGISTRY -u USER --password-stdin',
    });
  }
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks)
    .toString('utf8')
    .replace(/\r?\n$/, '');
}

async function listCommand(flags: { json?: boolean; quiet?: boolean }): Promise<void> {
  const images = await listImages();
  if (flags.json) {
    printJson(images.map(({ name, digest, sizeBytes, createdAt, source, config }) => ({ name, digest, sizeBytes, createdAt, source, config })));
    return;
  }
  if (flags.quiet) {
    process.stdout.write(images.map((image) => `${image.name}\n`).join(''));
    return;
  }
  printTable(
    ['NAME', 'DIGEST', 'SIZE', 'CREATED', 'SOURCE'],
    images.map((image) => [
      image.name,
      shortDigest(image.digest),
      formatBytes(image.sizeBytes),
      `${formatDuration(Date.now() - Date.parse(image.createdAt))} ago`,
      image.source,
    ]),
  );
}

async function removeCommand(names: string[]): Promise<void> {
  for (const name of names) {
    const result = await removeImage(name);
    process.stdout.write(`untagged ${name}\n${result.contentRemoved ? `deleted ${result.digest}\n` : ''}`);
  }
}

export function registerImageCommands(program: Command): void {
  program
    .command('images')
    .description('list images in the store')
    .option('-q, --quiet', 'only names')
    .option('--json', 'machine-readable output')
    .action(listCommand);

  const image = program.command('image').description('manage images: import, ls, rm');
  image
    .command('ls')
    .description('list images in the store (same as `torpor images`)')
    .option('-q, --quiet', 'only names')
    .option('--json', 'machine-readable output')
    .action(listCommand);
  limitOptions(
    image
      .command('import')
      .description('import a root filesystem: a tar (plain, gzip, zstd), a directory, a `docker save` archive or an OCI layout')
      .argument('<path>', 'file or directory; the format is recognized from its content')
      .requiredOption('--name <name>', 'name to store it under, e.g. myimage or team/tool:1.0')
      .option('--json', 'print the stored image as JSON instead of its digest'),
  ).action(async (path: string, flags: { name: string; json?: boolean } & LimitFlags) => {
    const record = await importImage(path, { name: flags.name, progress: stderrProgress(), limits: limitsFrom(flags) });
    if (flags.json) printJson({ name: record.name, digest: record.digest, sizeBytes: record.sizeBytes, source: record.source, config: record.config });
    else process.stdout.write(`${record.digest}\n`);
  });
  image.command('rm').description('remove image names; the content goes when no name is left').argument('<name...>').action(removeCommand);

  limitOptions(
    program
      .command('pull')
      .description('pull an image from an OCI registry, like docker pull (linux/amd64)')
      .argument('<reference>', 'alpine, alpine:3.20, ghcr.io/owner/image:tag, localhost:5000/app@sha256:…')
      .option('--insecure', 'allow plain HTTP to a registry that is not on this machine')
      .option('-q, --quiet', 'no progress on stderr')
      .option('--json', 'print the stored image as JSON instead of its digest'),
  ).action(async (reference: string, flags: { insecure?: boolean; quiet?: boolean; json?: boolean } & LimitFlags) => {
    const record = await pullImage(reference, {
      insecure: flags.insecure,
      reporter: flags.quiet ? silentReporter : createPullReporter(process.stderr),
      limits: limitsFrom(flags),
    });
    if (flags.json)
      printJson({
        name: record.name,
        digest: record.digest,
        reference: record.reference,
        sizeBytes: record.sizeBytes,
        source: record.source,
        config: record.config,
      });
    else process.stdout.write(`${record.digest}\n`);
  });

  program
    .command('push')
    .description('publish a stored image to a registry as a single-layer OCI image')
    .argument('<name>', 'image in the store (see `torpor images`)')
    .argument('[destination]', 'registry/repository:tag (default: the name itself, e.g. localhost:5000/app:1)')
    .option('--insecure', 'allow plain HTTP to a registry that is not on this machine')
    .option('-q, --quiet', 'no progress on stderr')
    .action(async (name: string, destination: string | undefined, flags: { insecure?: boolean; quiet?: boolean }) => {
      const result = await pushImage(name, destination ?? name, {
        insecure: flags.insecure,
        reporter: flags.quiet ? silentReporter : createPullReporter(process.stderr),
      });
      process.stdout.write(`${result.reference}@${result.digest}\n`);
    });

  program
    .command('login')
    .description('store credentials for a registry (checked against it first)')
    .argument('<registry>', 'e.g. ghcr.io, docker.io, localhost:5000')
    .requiredOption('-u, --username <user>', 'user name')
    .option('--password-stdin', 'read the password (or token) from stdin')
    .option('--insecure', 'allow plain HTTP to a registry that is not on this machine')
    .action(async (registry: string, flags: { username: string; passwordStdin?: boolean; insecure?: boolean }) => {
      if (!flags.passwordStdin) {
        throw new TorporError('password-required', 'torpor login reads the password from stdin only', {
          hint: 'echo "$PASSWORD" | torpor login REGISTRY -u USER --password-stdin (keeps it out of your shell history)',
        });
      }
      const stored = await login(registry, { username: flags.username, password: await readStdin() }, { insecure: flags.insecure });
      process.stdout.write(`login succeeded for ${stored}\n`);
    });
}
