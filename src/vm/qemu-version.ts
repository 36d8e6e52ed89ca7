import { execFileSync } from 'node:child_process';

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

const known = new Map<string, QemuVersion>();

/**
 * The version of the QEMU binary at `binary` (a path or a name on PATH), asked once per binary and
 * process: about 15 ms, synchronous, because the command line is built synchronously from it. A
 * wrapper script that execs QEMU answers for the QEMU it runs. Undefined when the binary does not
 * run or names no version (not remembered: it may be installed next).
 */
export function probeQemuVersion(binary: string): QemuVersion | undefined {
  const cached = known.get(binary);
  if (cached) return cached;
  try {
    const output = execFileSync(binary, ['--version'], { encoding: 'utf8', timeout: 10_000, stdio: ['ignore', 'pipe', 'ignore'] });
    const version = parseQemuVersion(output);
    if (version) known.set(binary, version);
    return version;
  } catch {
    return undefined;
  }
}

/** `probeQemuVersion`, or the baseline when the binary cannot tell: starting it then fails with the driver's own error. */
export function qemuVersionOf(binary: string): QemuVersion {
  return probeQemuVersion(binary) ?? baselineQemuVersion;
}
