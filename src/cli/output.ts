import { formatBytes as formatByteSize } from '../util/byte-size.ts';
/** Aligned columns for humans; scripts use --json. */
export function printTable(headers: string[], rows: string[][]): void {
  const widths = headers.map((header, column) => Math.max(header.length, ...rows.map((row) => (row[column] ?? '').length)));
  const line = (cells: string[]) => cells.map((cell, column) => (column === cells.length - 1 ? cell : cell.padEnd(widths[column]!))).join('   ');
  process.stdout.write([line(headers), ...rows.map(line)].join('\n') + '\n');
}

export function printJson(value: unknown): void {
  process.stdout.write(JSON.stringify(value, null, 2) + '\n');
}

export function formatDuration(milliseconds: number): string {
  const seconds = Math.floor(milliseconds / 1000);
  if (seconds < 60) return `${seconds}s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m${seconds % 60}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d`;
}

/** Bytes in binary units, as the CLI's tables show them (`38MiB`). */
export const formatBytes = (bytes: number): string => formatByteSize(bytes);

/** Repeatable options: -e A -e B. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}
