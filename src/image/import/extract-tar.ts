import { TorporError } from '../../util/errors.ts';
import { baseNameOf, memberPath, parentOf } from './member-path.ts';
import { TarReader } from './tar-reader.ts';
import { TreeWriter, type WriterPolicy } from './tree-writer.ts';

/** What to extract where: plain data, so that it can be sent to the extraction thread. */
export interface ExtractSpec {
  root: string;
  policy: WriterPolicy;
  /** OCI layer semantics (whiteouts); without them (an image archive) `.wh.` names are ordinary files. */
  layerSemantics: boolean;
  maxMembers: number;
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';

/**
 * Reads a tar stream once and writes it into `spec.root` as it is read: the parse that checks a
 * member is the parse that writes it.
 */
export async function extractTar(chunks: AsyncIterable<Buffer>, spec: ExtractSpec): Promise<void> {
  const { policy } = spec;
  const reader = new TarReader(chunks, { maxMembers: spec.maxMembers });
  const writer = new TreeWriter(spec.root, policy);
  for (let entry = await reader.next(); entry; entry = await reader.next()) {
    const path = memberPath(entry.name, { layer: policy.description });
    const base = baseNameOf(path);
    if (spec.layerSemantics && base.startsWith(WHITEOUT_PREFIX)) {
      if (entry.type !== 'file')
        throw new TorporError('layer-unsafe-path', `${policy.description}: the whiteout ${JSON.stringify(entry.name)} is a ${entry.type}, not an empty file`, {
          hint: 'the image is malformed; nothing was imported',
        });
      if (base === OPAQUE_MARKER) writer.opaque(parentOf(path));
      else if (base.startsWith(WHITEOUT_PREFIX + WHITEOUT_PREFIX)) {
        // Other aufs bookkeeping (.wh..wh.plnk, .wh..wh.aufs) carries no meaning for OCI.
      } else {
        const hidden = base.slice(WHITEOUT_PREFIX.length);
        if (hidden === '' || hidden === '.' || hidden === '..') {
          throw new TorporError('layer-unsafe-path', `${policy.description}: the whiteout ${JSON.stringify(entry.name)} names no file`, {
            hint: 'the image is malformed or malicious; nothing was imported',
          });
        }
        const parent = parentOf(path);
        writer.remove(parent ? `${parent}/${hidden}` : hidden);
      }
      continue;
    }
    switch (entry.type) {
      case 'directory':
        writer.directory(path, entry);
        break;
      case 'file':
        await writer.file(path, entry, reader.data());
        break;
      case 'symlink':
        writer.symlink(path, entry);
        break;
      case 'hardlink':
        writer.hardlink(path, memberPath(entry.linkTarget, { layer: policy.description, what: `hard link target of ${JSON.stringify(entry.name)}` }));
        break;
      default:
        writer.device(path, entry);
    }
  }
  writer.finish();
}
