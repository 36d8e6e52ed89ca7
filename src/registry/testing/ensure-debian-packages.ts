import { spawnSync } from 'node:child_process';

/** Programs the image and registry tests drive, and the Debian package each comes from. */
const programs: Record<string, string> = {
  tar: 'tar',
  zstd: 'zstd',
  setfattr: 'attr',
  debugfs: 'e2fsprogs',
  'mkfs.ext4': 'e2fsprogs',
  'docker-registry': 'docker-registry',
  skopeo: 'skopeo',
  umoci: 'umoci',
  htpasswd: 'apache2-utils',
  nft: 'nftables',
};

const has = (program: string) => spawnSync('sh', ['-c', `command -v ${program}`], { stdio: 'ignore' }).status === 0;

/**
 * Installs whatever test tools are missing, so a fresh CI machine needs nothing by hand. Takes the
 * shared apt lock, because other test suites in this repository install packages too.
 */
export function ensureDebianPackages(wanted: string[] = Object.keys(programs)): void {
  const missing = [...new Set(wanted.filter((program) => !has(program)).map((program) => programs[program] ?? program))];
  if (missing.length > 0) {
    const apt = (args: string[]) =>
      spawnSync('flock', ['/tmp/torpor-apt.lock', 'apt-get', ...args], {
        stdio: ['ignore', 'ignore', 'inherit'],
        env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
      });
    let result = apt(['install', '-y', '-q', ...missing]);
    if (result.status !== 0) {
      apt(['update', '-q']);
      result = apt(['install', '-y', '-q', ...missing]);
    }
    if (result.status !== 0) throw new Error(`could not install ${missing.join(' ')} (apt-get failed); the image tests need them`);
  }
}
