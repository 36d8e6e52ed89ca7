import { TorporError } from '../../util/errors.ts';

/** Longest member path (bytes) and path component: Linux's PATH_MAX and NAME_MAX. */
export const MAX_PATH_BYTES = 4095;
export const MAX_COMPONENT_BYTES = 255;

/**
 * A tar member name as a path relative to the root ('' is the root itself). Leading '/' and './'
 * are dropped, as the OCI layer spec's reference implementations (containerd, GNU tar) do: layer
 * paths are relative to the image root whatever they start with. Any '..' component is refused
 * outright rather than resolved, because no honest image needs one; so are NUL bytes and names
 * longer than Linux accepts.
 */
export function memberPath(name: string, context: { layer: string; what?: string }): string {
  const what = context.what ?? 'member';
  const refuse = (why: string) =>
    new TorporError('layer-unsafe-path', `${context.layer}: ${what} ${JSON.stringify(name.length > 200 ? `${name.slice(0, 200)}…` : name)} ${why}`, {
      hint: 'the archive is malformed or malicious; nothing was imported',
    });
  if (name.includes('\0')) throw refuse('contains a NUL byte');
  if (Buffer.byteLength(name) > MAX_PATH_BYTES) throw refuse(`is longer than ${MAX_PATH_BYTES} bytes`);
  const components: string[] = [];
  for (const component of name.split('/')) {
    if (component === '' || component === '.') continue;
    if (component === '..') throw refuse("escapes the root filesystem ('..')");
    if (Buffer.byteLength(component) > MAX_COMPONENT_BYTES) throw refuse(`has a component longer than ${MAX_COMPONENT_BYTES} bytes`);
    components.push(component);
  }
  return components.join('/');
}

export function parentOf(path: string): string {
  const slash = path.lastIndexOf('/');
  return slash === -1 ? '' : path.slice(0, slash);
}

export function baseNameOf(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Every proper ancestor of a relative path, outermost first ('a/b/c' gives 'a', 'a/b'). */
export function ancestorsOf(path: string): string[] {
  const ancestors: string[] = [];
  let index = path.indexOf('/');
  while (index !== -1) {
    ancestors.push(path.slice(0, index));
    index = path.indexOf('/', index + 1);
  }
  return ancestors;
}
