import { gzipSync } from 'node:zlib';
import { compress as zstdCompress } from 'zstd-napi';
import type { ImportLimits } from '../../import-limits.ts';
import type { TreeSnapshot } from '../tree-snapshot.ts';
import { archive, base256, BLOCK, endOfArchive, gnuLong, member, pax, paxRecord } from './tar-builder.ts';

// The hostile corpus: one archive per way a tar can be read two ways, or can reach outside the
// directory it is extracted into. Generated rather than stored, because the attacks aim at the
// test's own canary directory (an absolute path known only at run time).

export interface HostileLayer {
  bytes: Buffer;
  compression: 'none' | 'gzip' | 'zstd';
  /** The config's diff_id when it cannot be computed cheaply (bombs fail before it is checked). */
  diffId?: string;
}

export interface HostileCase {
  name: string;
  layers: HostileLayer[];
  /** What the import must fail with; absent when the archive is legitimate and must import. */
  refused?: { code: string; message: RegExp };
  /** For archives that import: what the image must (not) contain. */
  check?: (tree: TreeSnapshot) => void;
  limits?: Partial<ImportLimits>;
}

const plain = (bytes: Buffer): HostileLayer => ({ bytes, compression: 'none' });
const refuse = (code: string, message: RegExp) => ({ code, message });

function expect(condition: boolean, message: string): void {
  if (!condition) throw new Error(message);
}

/** A stream of zeros as one huge file: a few KiB compressed, `bytes` uncompressed. */
function bombTar(bytes: number): Buffer {
  const header = member({ name: 'bomb', rawSize: base256(bytes) }).subarray(0, BLOCK);
  return Buffer.concat([header, Buffer.alloc(bytes), endOfArchive()]);
}

/**
 * `canary` is an absolute directory outside the store that holds a file named `precious`;
 * every attack aims at it. `relativeEscape` climbs from anywhere up to `/`.
 */
export function hostileCorpus(canary: string): HostileCase[] {
  const relativeEscape = '../'.repeat(40) + canary.slice(1);
  const canaryInside = canary.slice(1);
  const plantedLink = member({ name: 'escape', flag: '2', linkTarget: canary });
  return [
    {
      name: 'size-trailing-garbage',
      // The original attack (issue 10): the old listing pass read this size as 1024 and skipped the
      // "data", which is a whole member; GNU tar found the header invalid, read on at the next
      // block and extracted escape/pwned through the link planted by the lower layer.
      layers: [
        plain(archive(plantedLink)),
        plain(
          archive(
            member({
              name: 'innocent',
              content: member({ name: 'escape/pwned', content: 'written outside the store' }),
              rawSize: Buffer.from('00000002000x', 'latin1'),
            }),
          ),
        ),
      ],
      refused: refuse('tar-invalid', /size field .* not an octal digit/),
    },
    {
      name: 'size-digits-after-terminator',
      layers: [plain(archive(member({ name: 'file', content: 'hello', rawSize: Buffer.from('0000005\u00001234', 'latin1') })))],
      refused: refuse('tar-invalid', /size field/),
    },
    {
      name: 'mode-garbage',
      layers: [plain(archive(member({ name: 'file', content: 'x', patch: { 100: '0644 9x\0' } })))],
      refused: refuse('tar-invalid', /mode field/),
    },
    {
      name: 'base256-size-accepted',
      layers: [plain(Buffer.concat([member({ name: 'big', content: 'base-256 sized', rawSize: base256(14) }), endOfArchive()]))],
      check: (tree) => expect(!!tree['big']?.content, 'the base-256 sized file must be imported'),
    },
    {
      name: 'base256-negative-size',
      layers: [plain(archive(member({ name: 'file', content: 'x', rawSize: Buffer.concat([Buffer.from([0xff]), Buffer.alloc(11, 0xff)]) })))],
      refused: refuse('tar-invalid', /negative/),
    },
    {
      name: 'bad-checksum',
      layers: [plain(archive(member({ name: 'etc/', flag: '5' }), member({ name: 'etc/passwd', content: 'root::0:0::/:/bin/sh\n', checksum: 'bad' })))],
      refused: refuse('tar-invalid', /checksum at byte 512 does not match/),
    },
    {
      name: 'v7-header-without-magic',
      layers: [plain(archive(member({ name: 'file', content: 'x', magic: 'v7' })))],
      refused: refuse('tar-invalid', /not a ustar, PAX or GNU header/),
    },
    {
      name: 'pax-path-dotdot',
      layers: [plain(archive(pax([['path', `${relativeEscape}/pwned`]]), member({ name: 'innocent', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /escapes the root filesystem/),
    },
    {
      name: 'pax-size-contradicts-header',
      layers: [plain(archive(pax([['size', '1024']]), member({ name: 'file', content: 'short' })))],
      refused: refuse('tar-invalid', /PAX size 1024 contradicts the header's size 5/),
    },
    {
      name: 'pax-size-swallows-next-header',
      // Header size 0 and a PAX size that covers the next header: read one way only, as the file's
      // bytes (a reader that ignored PAX would extract "hidden"; nothing here does).
      layers: [plain(archive(pax([['size', '1024']]), member({ name: 'file', content: '' }), member({ name: 'hidden', content: 'x' })))],
      check: (tree) => {
        expect(!!tree['file'] && !tree['hidden'], 'the next header is data of "file", never a member');
      },
    },
    {
      name: 'pax-duplicate-records',
      layers: [
        plain(
          archive(
            pax([
              ['path', 'safe'],
              ['path', `${relativeEscape}/pwned`],
            ]),
            member({ name: 'x', content: 'x' }),
          ),
        ),
      ],
      refused: refuse('tar-invalid', /path appears twice/),
    },
    {
      name: 'pax-two-headers',
      layers: [plain(archive(pax([['path', 'first']]), pax([['path', 'second']]), member({ name: 'x', content: 'x' })))],
      refused: refuse('tar-invalid', /two PAX extended headers/),
    },
    {
      name: 'pax-and-gnu-long-name',
      layers: [plain(archive(pax([['path', 'from-pax']]), gnuLong('L', 'from-gnu'), member({ name: 'x', content: 'x' })))],
      refused: refuse('tar-invalid', /both a PAX path and a GNU long name/),
    },
    {
      name: 'pax-dangling-at-end',
      layers: [plain(archive(member({ name: 'file', content: 'x' }), pax([['path', 'nothing-follows']])))],
      refused: refuse('tar-invalid', /followed by the end of the archive/),
    },
    {
      name: 'pax-global-path',
      layers: [plain(archive(pax([['path', 'everything']], 'g'), member({ name: 'a', content: 'x' }), member({ name: 'b', content: 'y' })))],
      refused: refuse('layer-unsupported-member', /global header sets path/),
    },
    {
      name: 'pax-unknown-record',
      layers: [plain(archive(pax([['SCHILY.acl.access', 'user::rwx']]), member({ name: 'x', content: 'x' })))],
      refused: refuse('layer-unsupported-member', /unknown record "SCHILY.acl.access"/),
    },
    {
      name: 'pax-length-lies',
      layers: [plain(archive(pax(Buffer.from('99 path=short\n')), member({ name: 'x', content: 'x' })))],
      refused: refuse('tar-invalid', /does not fit/),
    },
    {
      name: 'pax-nul-in-path',
      layers: [plain(archive(pax([['path', 'safe\0/../../../pwned']]), member({ name: 'x', content: 'x' })))],
      refused: refuse('tar-invalid', /NUL/),
    },
    {
      name: 'pax-sparse',
      layers: [
        plain(
          archive(
            pax([
              ['GNU.sparse.major', '1'],
              ['GNU.sparse.minor', '0'],
            ]),
            member({ name: 'x', content: 'x' }),
          ),
        ),
      ],
      refused: refuse('layer-unsupported-member', /sparse/),
    },
    {
      name: 'pax-linkpath-on-file',
      layers: [plain(archive(pax([['linkpath', canary]]), member({ name: 'x', content: 'x' })))],
      refused: refuse('tar-invalid', /has a link target/),
    },
    {
      name: 'pax-xattr-namespace',
      layers: [plain(archive(pax([['SCHILY.xattr.system.posix_acl_access', Buffer.from([2, 0, 0, 0])]]), member({ name: 'x', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /outside user\., security\. and trusted\./),
    },
    {
      name: 'gnu-long-name-absolute',
      // Absolute names are relative to the image root (as containerd and GNU tar read them): it lands inside.
      layers: [plain(archive(gnuLong('L', `${canary}/pwned`), member({ name: 'short', content: 'inside the image', magic: 'gnu' })))],
      check: (tree) => expect(!!tree[`${canaryInside}/pwned`], 'the absolute name must land inside the image root'),
    },
    {
      name: 'gnu-long-name-twice',
      layers: [plain(archive(gnuLong('L', 'one'), gnuLong('L', 'two'), member({ name: 'x', content: 'x', magic: 'gnu' })))],
      refused: refuse('tar-invalid', /two GNU long names/),
    },
    {
      name: 'gnu-long-name-garbage-after-nul',
      layers: [
        plain(
          archive(
            member({ name: '././@LongLink', flag: 'L', content: Buffer.from('name\0../../x'), magic: 'gnu' }),
            member({ name: 'x', content: 'x', magic: 'gnu' }),
          ),
        ),
      ],
      refused: refuse('tar-invalid', /bytes after its terminating NUL/),
    },
    {
      name: 'symlink-then-file-same-layer',
      layers: [plain(archive(plantedLink, member({ name: 'escape/pwned', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /"escape\/pwned" would go through the symbolic link "escape"/),
    },
    {
      name: 'symlink-then-file-lower-layer',
      layers: [plain(archive(plantedLink)), plain(archive(member({ name: 'escape/pwned', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /would go through the symbolic link "escape"/),
    },
    {
      name: 'relative-symlink-then-file',
      layers: [plain(archive(member({ name: 'up', flag: '2', linkTarget: relativeEscape }))), plain(archive(member({ name: 'up/pwned', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /symbolic link "up"/),
    },
    {
      name: 'directory-replaced-by-symlink-then-file',
      layers: [
        plain(archive(member({ name: 'dir/', flag: '5' }))),
        plain(archive(member({ name: 'dir', flag: '2', linkTarget: canary }), member({ name: 'dir/pwned', content: 'x' }))),
      ],
      refused: refuse('layer-unsafe-path', /symbolic link "dir"/),
    },
    {
      name: 'symlink-then-directory-member-through-it',
      layers: [plain(archive(plantedLink, member({ name: 'escape/sub/', flag: '5' })))],
      refused: refuse('layer-unsafe-path', /symbolic link "escape"/),
    },
    {
      name: 'symlink-then-hardlink-through-it',
      layers: [plain(archive(plantedLink, member({ name: 'stolen', flag: '1', linkTarget: 'escape/precious' })))],
      refused: refuse('layer-unsafe-path', /hard link target "escape\/precious" would go through the symbolic link "escape"/),
    },
    {
      name: 'hardlink-dotdot',
      layers: [plain(archive(member({ name: 'stolen', flag: '1', linkTarget: `${relativeEscape}/precious` })))],
      refused: refuse('layer-unsafe-path', /hard link target .* escapes the root/),
    },
    {
      name: 'hardlink-absolute-host-path',
      layers: [plain(archive(member({ name: 'stolen', flag: '1', linkTarget: `${canary}/precious` })))],
      refused: refuse('layer-unsafe-path', /does not exist \(yet\)/),
    },
    {
      name: 'hardlink-forward-reference',
      layers: [plain(archive(member({ name: 'early', flag: '1', linkTarget: 'later' }), member({ name: 'later', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /points at "later", which does not exist \(yet\)/),
    },
    {
      name: 'hardlink-to-directory',
      layers: [plain(archive(member({ name: 'dir/', flag: '5' }), member({ name: 'link', flag: '1', linkTarget: 'dir' })))],
      refused: refuse('layer-unsafe-path', /points at the directory "dir"/),
    },
    {
      name: 'hardlink-to-itself',
      layers: [plain(archive(member({ name: 'self', content: 'x' }), member({ name: 'self', flag: '1', linkTarget: 'self' })))],
      refused: refuse('layer-unsafe-path', /points at itself/),
    },
    {
      name: 'hardlink-to-symlink',
      // A second name for the symlink itself (link(2) does not follow); a later layer replaces it without writing through.
      layers: [
        plain(archive(member({ name: 'link', flag: '2', linkTarget: `${canary}/precious` }), member({ name: 'hard', flag: '1', linkTarget: 'link' }))),
        plain(archive(member({ name: 'hard', content: 'replaced, not written through' }))),
      ],
      check: (tree) => {
        expect(tree['link']?.content === `-> ${canary}/precious`, 'the symlink stays a symlink');
        expect(tree['hard']?.mode.startsWith('100') === true, 'the replaced hard link is a regular file');
      },
    },
    {
      name: 'whiteout-dotdot',
      layers: [plain(archive(member({ name: 'etc/', flag: '5' }))), plain(archive(member({ name: 'etc/.wh...' })))],
      refused: refuse('layer-unsafe-path', /names no file/),
    },
    {
      name: 'whiteout-parent-dotdot',
      layers: [plain(archive(member({ name: '../.wh.precious' })))],
      refused: refuse('layer-unsafe-path', /escapes the root/),
    },
    {
      name: 'whiteout-through-symlink',
      layers: [plain(archive(plantedLink)), plain(archive(member({ name: 'escape/.wh.precious' })))],
      refused: refuse('layer-unsafe-path', /symbolic link "escape"/),
    },
    {
      name: 'opaque-through-symlink',
      layers: [plain(archive(plantedLink)), plain(archive(member({ name: 'escape/.wh..wh..opq' })))],
      refused: refuse('layer-unsafe-path', /opaque directory "escape" is a symbolic link/),
    },
    {
      name: 'opaque-outside',
      layers: [plain(archive(member({ name: `${relativeEscape}/.wh..wh..opq` })))],
      refused: refuse('layer-unsafe-path', /escapes the root/),
    },
    {
      name: 'whiteout-is-a-directory',
      layers: [plain(archive(member({ name: '.wh.etc/', flag: '5' })))],
      refused: refuse('layer-unsafe-path', /is a directory, not an empty file/),
    },
    {
      name: 'whiteout-of-own-member',
      layers: [plain(archive(member({ name: 'new', content: 'x' }), member({ name: '.wh.new' })))],
      refused: refuse('layer-unsafe-path', /which this same layer writes/),
    },
    {
      name: 'root-replaced-by-symlink',
      layers: [plain(archive(member({ name: './', flag: '2', linkTarget: canary }), member({ name: 'pwned', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /the root must be a directory/),
    },
    {
      name: 'device-nodes-and-fifo',
      // Accepted: OCI layers may carry them; they only ever mean something inside the guest.
      layers: [
        plain(
          archive(
            member({ name: 'dev/', flag: '5' }),
            member({ name: 'dev/null', flag: '3', mode: 0o666, deviceMajor: 1, deviceMinor: 3 }),
            member({ name: 'dev/sda', flag: '4', mode: 0o660, deviceMajor: 8, deviceMinor: 0 }),
            member({ name: 'dev/fifo', flag: '6', mode: 0o600 }),
          ),
        ),
      ],
      check: (tree) => {
        expect(tree['dev/null']?.mode === '20666', 'character device');
        expect(tree['dev/sda']?.mode === '60660', 'block device');
        expect(tree['dev/fifo']?.mode === '10600', 'fifo');
      },
    },
    {
      name: 'owners-and-modes-exactly',
      // Not hostile, but easy to get wrong when syscalls are skipped: a setgid directory must not
      // hand its group to a root-owned file, and a 0666 file keeps 0666 whatever the umask.
      layers: [
        plain(
          archive(
            member({ name: 'shared/', flag: '5', mode: 0o2775, gid: 1000 }),
            member({ name: 'shared/root-file', content: 'x', mode: 0o644 }),
            member({ name: 'shared/world-writable', content: 'x', mode: 0o666 }),
            member({ name: 'setuid', content: 'x', mode: 0o4755 }),
          ),
        ),
      ],
      check: (tree) => {
        expect(tree['shared']?.mode === '42775' && tree['shared']?.gid === 1000, 'the setgid directory');
        expect(tree['shared/root-file']?.gid === 0, 'a root file in a setgid directory stays root:root');
        expect(tree['shared/world-writable']?.mode === '100666', 'mode 0666 survives the umask');
        expect(tree['setuid']?.mode === '104755', 'setuid bit');
      },
    },
    {
      name: 'device-with-data',
      layers: [plain(archive(member({ name: 'dev/x', flag: '3', content: 'hidden header', deviceMajor: 1, deviceMinor: 3 })))],
      refused: refuse('tar-invalid', /character-device "dev\/x" says it carries 13 bytes/),
    },
    {
      name: 'symlink-with-data',
      layers: [plain(archive(member({ name: 'link', flag: '2', linkTarget: 'x', content: member({ name: 'smuggled', content: 'x' }) })))],
      refused: refuse('tar-invalid', /symlink "link" says it carries/),
    },
    {
      name: 'sparse-member',
      layers: [plain(archive(member({ name: 'sparse', flag: 'S', content: 'x', magic: 'gnu' })))],
      refused: refuse('layer-unsupported-member', /GNU sparse file/),
    },
    {
      name: 'unknown-type',
      layers: [plain(archive(member({ name: 'odd', flag: 'Z' })))],
      refused: refuse('layer-unsupported-member', /unknown type "Z"/),
    },
    {
      name: 'invalid-utf8-name',
      layers: [plain(archive(member({ name: 'x', content: 'x', patch: { 0: Buffer.from([0x66, 0xff, 0xfe, 0x00]) } })))],
      refused: refuse('tar-invalid', /not valid UTF-8/),
    },
    {
      name: 'very-long-path',
      layers: [plain(archive(pax([['path', 'a/'.repeat(2100) + 'file']]), member({ name: 'x', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /longer than 4095 bytes/),
    },
    {
      name: 'very-long-component',
      layers: [plain(archive(gnuLong('L', 'n'.repeat(300)), member({ name: 'x', content: 'x', magic: 'gnu' })))],
      refused: refuse('layer-unsafe-path', /component longer than 255 bytes/),
    },
    {
      name: 'long-path-past-the-store',
      // Fits PATH_MAX on its own, not once the store's path is in front.
      layers: [plain(archive(pax([['path', `${'d'.repeat(200)}/`.repeat(20) + 'f'.repeat(50)]]), member({ name: 'x', content: 'x' })))],
      refused: refuse('layer-unsafe-path', /too long to create under the store/),
    },
    {
      name: 'member-count-bomb',
      layers: [plain(archive(...Array.from({ length: 150 }, (_, index) => member({ name: `f${index}`, content: '' }))))],
      limits: { maxLayerMembers: 100 },
      refused: refuse('layer-too-large', /member count exceeds the limit of 100 members/),
    },
    {
      name: 'layer-bytes-bomb',
      layers: [plain(bombTar(3 * 1024 * 1024))],
      limits: { maxLayerBytes: 1024 * 1024 },
      refused: refuse('layer-too-large', /uncompressed layer exceeds the limit of 1 MiB/),
    },
    {
      name: 'image-bytes-bomb',
      // Each layer under the per-layer limit, together over the image limit.
      layers: [plain(bombTar(700 * 1024)), plain(bombTar(700 * 1024))],
      limits: { maxLayerBytes: 1024 * 1024, maxImageBytes: 1024 * 1024 },
      refused: refuse('layer-too-large', /the image exceeds the limit of 1 MiB/),
    },
    {
      name: 'gzip-bomb',
      layers: [{ bytes: gzipSync(bombTar(64 * 1024 * 1024), { level: 9 }), compression: 'gzip', diffId: `sha256:${'0'.repeat(64)}` }],
      limits: { maxLayerBytes: 8 * 1024 * 1024 },
      refused: refuse('layer-too-large', /exceeds the limit of 8 MiB/),
    },
    {
      name: 'zstd-bomb',
      layers: [{ bytes: zstdCompress(bombTar(64 * 1024 * 1024)), compression: 'zstd', diffId: `sha256:${'0'.repeat(64)}` }],
      limits: { maxLayerBytes: 8 * 1024 * 1024 },
      refused: refuse('layer-too-large', /exceeds the limit of 8 MiB/),
    },
    {
      name: 'truncated-in-data',
      layers: [plain(archive(member({ name: 'file', content: 'x'.repeat(2000) })).subarray(0, BLOCK + 1000))],
      refused: refuse('tar-truncated', /in the middle of a member's data/),
    },
    {
      name: 'truncated-at-member-boundary',
      layers: [plain(member({ name: 'file', content: 'x' }))],
      refused: refuse('tar-truncated', /without the end-of-archive marker/),
    },
    {
      name: 'zero-block-in-the-middle',
      layers: [plain(Buffer.concat([member({ name: 'a', content: 'x' }), Buffer.alloc(BLOCK), member({ name: 'b', content: 'y' }), endOfArchive()]))],
      refused: refuse('tar-invalid', /zero block in the middle/),
    },
    {
      name: 'data-after-end',
      // A second archive appended after the end marker: invisible to us, visible to `tar -i`.
      layers: [plain(Buffer.concat([archive(member({ name: 'a', content: 'x' })), archive(member({ name: 'b', content: 'y' }))]))],
      refused: refuse('tar-invalid', /data follows the end-of-archive marker/),
    },
    {
      name: 'pax-record-without-newline',
      layers: [plain(archive(pax(Buffer.concat([paxRecord('path', 'ok').subarray(0, -1), Buffer.from('X')])), member({ name: 'x', content: 'x' })))],
      refused: refuse('tar-invalid', /does not end with a newline/),
    },
  ];
}
