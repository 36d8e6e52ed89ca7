import { join } from 'node:path';
import { environment, stateHome, cacheHome } from '../config/environment.ts';

/**
 * Where torpor keeps everything: one state directory (`stateHome`, TORPOR_HOME), so that several
 * independent installations (tests, users) never see each other's machines. The one resolver is
 * in config/environment.ts; it is re-exported here beside the layout it anchors.
 */
export { stateHome, cacheHome };

/** Guest RAM lives in tmpfs so a snapshot can take it without copying through QEMU. */
export function memoryDirectory(): string {
  return environment().TORPOR_MEMORY_DIR;
}

export const paths = {
  artifacts: () => cacheHome(),
  images: () => join(stateHome(), 'images'),
  machines: () => join(stateHome(), 'machines'),
  machine: (id: string) => join(stateHome(), 'machines', id),
  names: () => join(stateHome(), 'names'),
  snapshots: () => join(stateHome(), 'snapshots'),
};
