/** Long steps (builds, first-time setup, pulls) report what they are doing through this. */
export type Progress = (message: string) => void;

export const silentProgress: Progress = () => {};

export function stderrProgress(prefix = 'torpor'): Progress {
  return (message) => process.stderr.write(`${prefix}: ${message}\n`);
}
