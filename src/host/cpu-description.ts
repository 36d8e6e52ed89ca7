import { readFile } from 'node:fs/promises';

/** The host CPU a KVM machine's `-cpu host` copies: its model name and feature flags (from /proc/cpuinfo). */
export interface CpuDescription {
  model: string;
  flags: string[];
}

/** Parses the first processor of a /proc/cpuinfo text (all processors of one host are alike for this purpose). */
export function parseCpuInfo(text: string): CpuDescription {
  const first = text.split(/\n\s*\n/)[0] ?? '';
  const field = (name: string) => new RegExp(`^${name}\\s*:\\s*(.*)$`, 'm').exec(first)?.[1]?.trim() ?? '';
  return { model: field('model name') || 'unknown', flags: field('flags').split(/\s+/).filter(Boolean).sort() };
}

let cached: Promise<CpuDescription> | undefined;

export function hostCpu(): Promise<CpuDescription> {
  cached ??= readFile('/proc/cpuinfo', 'utf8').then(parseCpuInfo, () => ({ model: 'unknown', flags: [] }));
  return cached;
}
