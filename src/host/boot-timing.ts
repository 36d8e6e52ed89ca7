import { readFileSync } from 'node:fs';

/**
 * Kernel command-line values that skip timer calibration. Under TCG on a busy host the guest's
 * calibration loop can spin forever; telling it the host's TSC rate avoids that. The values must
 * come from this host, never be hard-coded.
 */
export function bootTimingArguments(): string[] {
  let kilohertz = 0;
  try {
    const match = /cpu MHz\s*:\s*([\d.]+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    if (match) kilohertz = Math.round(Number(match[1]) * 1000);
  } catch {
    // no /proc/cpuinfo: let the guest calibrate
  }
  if (!kilohertz) return [];
  const guestTimerHertz = 250; // CONFIG_HZ of Debian's kernels
  const loopsPerJiffy = Math.round((kilohertz * 1000) / guestTimerHertz);
  return [`lpj=${loopsPerJiffy}`, `tsc_early_khz=${kilohertz}`, 'tsc=reliable'];
}
