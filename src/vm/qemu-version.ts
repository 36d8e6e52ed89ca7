import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, realpathSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { paths } from '../state/paths.ts';
import { writeFileAtomicSync } from '../util/atomic-file.ts';

/** A QEMU release, as its `--version` names it (`QEMU emulator version 10.0.2 (Debian ...)`). */
export interface QemuVersion {
  major: number;
  minor: number;
  micro: number;
}

/** The first `major.minor.micro` after "version" in QEMU's `--version` output; undefined when there is none. */
export function parseQemuVersion(output: string): QemuVersion | undefined {
  const match = /version\s+(\d+)\.(\d+)(?:\.(\d+))?/i.exec(output);
  if (!match) return undefined;
  return { major: Number(match[1]), minor: Number(match[2]), micro: Number(match[3] ?? 0) };
}

export const qemuVersionText = (version: QemuVersion): string => `${version.major}.${version.minor}.${version.micro}`;

/** True when `version` is `major.minor` or later. */
export function qemuAtLeast(version: QemuVersion, major: number, minor: number): boolean {
  return version.major > major || (version.major === major && version.minor >= minor);
}

/**
 * The version every command line was written for before versions were told apart (Debian 12's).
 * Assumed when a binary cannot be asked (missing: starting it then fails with the driver's clear
 * "not installed" error, not here).
 */
export const baselineQemuVersion: QemuVersion = { major: 7, minor: 2, micro: 0 };

/** Answers already had in this process, by binary file identity. */
const known = new Map<string, QemuVersion>();

/**
 * The version of the QEMU binary at `binary` (a path or a name on PATH). A wrapper script that execs
 * QEMU answers for the QEMU it runs. Undefined when the binary does not run or names no version
 * (not remembered: it may be installed next).
 *
 * Asked once per binary file, not per process: `--version` takes 40-130 ms under load here, and a
 * machine's supervisor builds QEMU's command line (synchronously) on the restore path. The answer
 * is kept in the cache directory under the file's identity (real path, inode, size, mtime), so an
 * upgraded or reinstalled binary is asked again; a wrapper is judged by its own file.
 */
export function probeQemuVersion(binary: string): QemuVersion | undefined {
  const identity = binaryIdentity(binary);
  const cached = identity === undefined ? undefined : known.get(identity);
  if (cached) return cached;
  const cacheFile = identity === undefined ? undefined : cacheFileFor(identity);
  const stored = cacheFile === undefined ? undefined : readCachedVersion(cacheFile, identity!);
  if (stored) {
    known.set(identity!, stored);
    return stored;
  }
  try {
    const output = execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
    const version = parseQemuVersion(output);
    if (!version || identity === undefined) return version;
    known.set(identity, version);
    try {
      writeFileAtomicSync(cacheFile!, JSON.stringify({ identity, ...version }));
    } catch {
      // A cache that cannot be written costs the next process one more question, nothing else.
    }
    return version;
  } catch {
    return undefined;
  }
}

/** Where the answer for `binary` as it is now is (or would be) kept; undefined when there is no such file. */
export function qemuVersionCacheFile(binary: string): string | undefined {
  const identity = binaryIdentity(binary);
  return identity === undefined ? undefined : cacheFileFor(identity);
}

const cacheFileFor = (identity: string) => join(paths.artifacts(), `qemu-version-${createHash('sha256').update(identity).digest('hex').slice(0, 16)}.json`);

/** The release (`major.minor`) of the QEMU at `binary`, which a snapshot's device state is bound to; undefined when it cannot tell. */
export function qemuReleaseOf(binary: string): string | undefined {
  const version = probeQemuVersion(binary);
  return version && `${version.major}.${version.minor}`;
}

/** `probeQemuVersion`, or the baseline when the binary cannot tell: starting it then fails with the driver's own error. */
export function qemuVersionOf(binary: string): QemuVersion {
  return probeQemuVersion(binary) ?? baselineQemuVersion;
}

/** The file `binary` names (as a spawn would find it on PATH), by what changes when it is replaced. */
function binaryIdentity(binary: string): string | undefined {
  const candidates = binary.includes('/') ? [binary] : (process.env.PATH ?? '').split(delimiter).filter(Boolean).map((directory) => join(directory, binary));
  for (const candidate of candidates) {
    try {
      const status = statSync(candidate);
      if (!status.isFile()) continue;
      return JSON.stringify([realpathSync(candidate), status.dev, status.ino, status.size, status.mtimeMs]);
    } catch {
      // Not there: the next directory of PATH.
    }
  }
  return undefined;
}

/** A cached answer, only if it is for this very file and well-formed (anything else is asked again). */
function readCachedVersion(file: string, identity: string): QemuVersion | undefined {
  try {
    const value = JSON.parse(readFileSync(file, 'utf8')) as Record<string, unknown>;
    const numbers = [value.major, value.minor, value.micro];
    if (value.identity !== identity || !numbers.every((number) => Number.isSafeInteger(number) && (number as number) >= 0)) return undefined;
    return { major: value.major as number, minor: value.minor as number, micro: value.micro as number };
  } catch {
    return undefined;
  }
}
