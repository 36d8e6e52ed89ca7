/**
 * Bytes in binary units as people read them (`512B`, `1.5KiB`, `38MiB`, or with `separator: ' '`
 * `38 MiB`). Shared by the CLI's tables, the dashboard's pages and its timeline labels. `decimals`
 * 'small' shows one decimal below 10 units only, 'always' always shows one.
 */
export function formatBytes(bytes: number, options: { separator?: string; decimals?: 'small' | 'always' } = {}): string {
  const separator = options.separator ?? '';
  if (bytes < 1024) return `${bytes}${separator}B`;
  const units = ['KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  const number = options.decimals === 'always' || value < 10 ? value.toFixed(1) : String(Math.round(value));
  return `${number}${separator}${units[unit]}`;
}
