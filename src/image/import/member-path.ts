import { TorporError } from '../../util/errors.ts';

/**
 * A tar member name as a path relative to the root ('' is the root itself). Leading '/' and './'
 * are dropped (GNU tar and containerd treat absolute names as relative to the root); any '..'
 * component is refused outright rather than resolved, because no honest image needs one.
 */
export function memberPath(name: string, context: { layer: string; what?: string }): string {
  const components: string[] = [];
  for (const component of name.split('/')) {
    if (component === '' || component === '.') continue;
    if (component === '..') {
      throw new TorporError('layer-unsafe-path', `${context.layer}: ${context.what ?? 'member'} ${JSON.stringify(name)} escapes the root filesystem ('..')`, {
        hint: 'the archive is malformed or malicious; nothing was imported',
      });
    }
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
