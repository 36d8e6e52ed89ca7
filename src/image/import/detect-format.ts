import { lstat, readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import { TorporError, isNodeError } from '../../util/errors.ts';
import { pathIsPresent } from '../../util/path-exists.ts';
import { openDecompressed } from './compression.ts';
import { readTarEntries } from './tar-reader.ts';
import { importLimits, limitExceeded, type ImportLimits } from './import-limits.ts';

export type ImportFormat = 'rootfs-directory' | 'rootfs-tar' | 'docker-archive' | 'oci-layout';

export interface DetectedFormat {
  format: ImportFormat;
  /** Whether the image metadata is inside a tar that has to be unpacked first. */
  archived: boolean;
}

const rootfsTopLevel = new Set(['bin', 'boot', 'dev', 'etc', 'home', 'lib', 'lib64', 'opt', 'proc', 'root', 'run', 'sbin', 'srv', 'sys', 'tmp', 'usr', 'var']);

async function isDockerManifest(path: string): Promise<boolean> {
  try {
    const document = JSON.parse(await readFile(path, 'utf8'));
    return Array.isArray(document) && document.length > 0 && typeof document[0]?.Config === 'string';
  } catch {
    return false;
  }
}

/**
 * What a path holds, from its content rather than its name: an OCI layout or a docker-save
 * archive (unpacked or as a tar), or else a plain root filesystem. `docker save` from Docker 25
 * writes both layouts into one archive; the OCI one is preferred since its blobs carry digests.
 */
export async function detectImportFormat(path: string, limits: ImportLimits = importLimits()): Promise<DetectedFormat> {
  let info;
  try {
    info = await lstat(path);
  } catch (error) {
    if (isNodeError(error, 'ENOENT'))
      throw new TorporError('import-missing', `${path} does not exist`, {
        hint: 'give the path of a rootfs tar, a directory, a docker-save archive or an OCI layout',
      });
    throw error;
  }
  if (info.isDirectory()) {
    if (await pathIsPresent(join(path, 'oci-layout'), lstat)) return { format: 'oci-layout', archived: false };
    if (await isDockerManifest(join(path, 'manifest.json'))) return { format: 'docker-archive', archived: false };
    return { format: 'rootfs-directory', archived: false };
  }
  if (!info.isFile()) throw new TorporError('import-unsupported', `${path} is neither a file nor a directory`, { hint: 'give a tar file or a directory' });

  const seen = new Set<string>();
  const stream = await openDecompressed(path);
  // This pass decompresses the whole file too: a bomb must stop here, not only when layers are applied.
  async function* bounded(): AsyncGenerator<Buffer> {
    let bytes = 0;
    for await (const chunk of stream) {
      bytes += (chunk as Buffer).length;
      if (bytes > limits.maxImageBytes) throw limitExceeded(`${path}: the uncompressed archive`, 'maxImageBytes', limits.maxImageBytes);
      yield chunk as Buffer;
    }
  }
  try {
    for await (const entry of readTarEntries(bounded(), { maxMembers: limits.maxLayerMembers })) {
      const top = entry.name.replace(/^(\.\/|\/)+/, '');
      if (top === 'oci-layout') return { format: 'oci-layout', archived: true };
      if (!top.includes('/') || (top.endsWith('/') && top.indexOf('/') === top.length - 1)) seen.add(top.replace(/\/$/, ''));
      // A root filesystem shows itself early; image archives never have these at the top.
      const first = top.split('/')[0]!;
      if (rootfsTopLevel.has(first)) return { format: 'rootfs-tar', archived: false };
    }
  } catch (error) {
    // Unreadable past some point: import it as a plain tar, whose extraction reports the damage.
    if (error instanceof TorporError && ((error.code === 'tar-invalid' && seen.size === 0) || error.code === 'layer-too-large')) {
      throw new TorporError(error.code, `${basename(path)}: ${error.message}`, { hint: error.hint, cause: error });
    }
    return { format: 'rootfs-tar', archived: false };
  } finally {
    stream.destroy();
  }
  if (seen.has('manifest.json')) return { format: 'docker-archive', archived: true };
  return { format: 'rootfs-tar', archived: false };
}
