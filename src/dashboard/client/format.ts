import { formatBytes as formatByteSize } from '../../util/byte-size.ts';

/** Human units for the tables: binary byte units, durations that fit a cell. */
export function formatBytes(bytes: number | undefined): string {
  return bytes === undefined ? '–' : formatByteSize(bytes, { separator: ' ' });
}

export function formatDuration(milliseconds: number | undefined): string {
  if (milliseconds === undefined || !Number.isFinite(milliseconds)) return '–';
  if (milliseconds < 1000) return `${Math.round(milliseconds)} ms`;
  const seconds = Math.floor(milliseconds / 1000);
  if (seconds < 60) return `${(milliseconds / 1000).toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes}m ${seconds % 60}s`;
  const hours = Math.floor(minutes / 60);
  if (hours < 48) return `${hours}h ${minutes % 60}m`;
  return `${Math.floor(hours / 24)}d`;
}

export const formatTime = (iso: string | undefined) => (iso ? new Date(iso).toLocaleTimeString() : '–');
export const formatDateTime = (iso: string | undefined) => (iso ? new Date(iso).toLocaleString() : '–');

export const since = (iso: string, now: number) => formatDuration(Math.max(0, now - Date.parse(iso)));
