import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, normalize, relative } from 'node:path';
import { test } from 'node:test';
import { projectRoot } from './util/project-root.ts';

// Checks the import rules of ARCHITECTURE.md against the code: the table there is the rule, this
// test only reads it. Test files are exempt (a test may reach into any layer to set up its case).

const root = projectRoot();
const sourceRoot = join(root, 'src');

interface Rule {
  /** Layers (`dir/`) and single files (`dir/file.ts`) this layer may import. */
  allowed: string[];
  everything: boolean;
  /** When set, only these files (outside the layer itself) may import it. */
  importedOnlyBy?: string[];
}

function readRules(): Map<string, Rule> {
  const text = readFileSync(join(root, 'ARCHITECTURE.md'), 'utf8');
  const section = text.slice(text.indexOf('## Import rules'), text.indexOf('\n## ', text.indexOf('## Import rules') + 1));
  const rules = new Map<string, Rule>();
  for (const line of section.split('\n')) {
    const cells = line
      .split('|')
      .slice(1, -1)
      .map((cell) => cell.trim());
    if (cells.length !== 3) continue;
    const layer = /^`([a-z-]+)\/`$/.exec(cells[0]!)?.[1];
    if (!layer) continue;
    const tokens = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((match) => match[1]!);
    const onlyBy = tokens(cells[2]!);
    rules.set(layer, { allowed: tokens(cells[1]!), everything: cells[1] === 'every layer', importedOnlyBy: onlyBy.length > 0 ? onlyBy : undefined });
  }
  return rules;
}

function sourceFiles(directory: string): string[] {
  return readdirSync(directory).flatMap((name) => {
    const path = join(directory, name);
    if (statSync(path).isDirectory()) return sourceFiles(path);
    return name.endsWith('.ts') && !name.endsWith('.test.ts') ? [path] : [];
  });
}

/** Relative imports of one file, static and dynamic (`import()`), as paths relative to src/. */
export function importsOf(file: string, text: string): string[] {
  const specifiers = [
    ...text.matchAll(/^\s*(?:import|export)\s(?:[^'";]*?\sfrom\s)?['"](\.{1,2}\/[^'"]+)['"]/gm),
    ...text.matchAll(/\bimport\(\s*['"](\.{1,2}\/[^'"]+)['"]\s*\)/g),
  ].map((match) => match[1]!);
  return specifiers.map((specifier) => relative(sourceRoot, normalize(join(dirname(file), specifier))));
}

const layerOf = (path: string) => path.split('/')[0]!;

test('ARCHITECTURE.md has an import rule for every layer of src/', () => {
  const rules = readRules();
  assert.ok(rules.size >= 10, 'the rules table of ARCHITECTURE.md was not found');
  const layers = readdirSync(sourceRoot).filter((name) => statSync(join(sourceRoot, name)).isDirectory());
  assert.deepEqual(
    layers.filter((layer) => !rules.has(layer)),
    [],
    'add a row for these layers to the "Import rules" table of ARCHITECTURE.md',
  );
  for (const [layer, rule] of rules) {
    for (const entry of rule.allowed) assert.ok(rules.has(layerOf(entry)), `ARCHITECTURE.md: ${layer}/ may import ${entry}, which is not a layer`);
  }
});

test('every import follows the rules of ARCHITECTURE.md', () => {
  const rules = readRules();
  const broken: string[] = [];
  for (const file of sourceFiles(sourceRoot)) {
    const from = relative(sourceRoot, file);
    const fromLayer = layerOf(from);
    const rule = rules.get(fromLayer);
    if (!rule || from.indexOf('/') < 0) continue; // reported by the test above
    for (const target of importsOf(file, readFileSync(file, 'utf8'))) {
      if (target.startsWith('..')) continue; // outside src/ (bin/bundles.mjs is loaded by path, not import)
      const toLayer = layerOf(target);
      if (toLayer === fromLayer) continue;
      const allowed = rule.everything || rule.allowed.some((entry) => (entry.endsWith('/') ? `${toLayer}/` === entry : target === entry));
      if (!allowed)
        broken.push(`${from} imports ${target}: ${fromLayer}/ may import ${rule.everything ? 'every layer' : rule.allowed.join(' ') || 'nothing of ours'}`);
      const importedOnlyBy = rules.get(toLayer)?.importedOnlyBy;
      if (importedOnlyBy && !importedOnlyBy.includes(from))
        broken.push(`${from} imports ${target}: ${toLayer}/ is imported only by ${importedOnlyBy.join(' ')}`);
    }
  }
  assert.deepEqual(broken, []);
});

/** The import cycles among files (each as a path of files that leads back to its start). */
export function findCycles(graph: Map<string, string[]>): string[][] {
  const cycles: string[][] = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const path: string[] = [];
  const visit = (file: string) => {
    state.set(file, 'visiting');
    path.push(file);
    for (const next of graph.get(file) ?? []) {
      if (!graph.has(next)) continue;
      if (state.get(next) === 'visiting') cycles.push([...path.slice(path.indexOf(next)), next]);
      else if (!state.has(next)) visit(next);
    }
    path.pop();
    state.set(file, 'done');
  };
  for (const file of graph.keys()) if (!state.has(file)) visit(file);
  return cycles;
}

test('no two files import each other, directly or through others (type imports included)', () => {
  const graph = new Map<string, string[]>();
  for (const file of sourceFiles(sourceRoot)) graph.set(relative(sourceRoot, file), importsOf(file, readFileSync(file, 'utf8')));
  assert.deepEqual(
    findCycles(graph).map((cycle) => cycle.join(' -> ')),
    [],
    'move what both sides need into a module below them (as runtime/ did with machine-status.ts and supervisor-client.ts)',
  );
  assert.deepEqual(
    findCycles(
      new Map([
        ['a.ts', ['b.ts']],
        ['b.ts', ['c.ts']],
        ['c.ts', ['a.ts']],
      ]),
    ),
    [['a.ts', 'b.ts', 'c.ts', 'a.ts']],
    'the cycle finder finds cycles',
  );
});

test('the import reader sees static, re-exported and dynamic imports (so the check can fail)', () => {
  const file = join(sourceRoot, 'image', 'example.ts');
  const text = [
    "import { a } from '../registry/pull.ts';",
    "import type { B } from '../vm/machine-spec.ts';",
    "export { c } from './image-store.ts';",
    "import '../host/side-effect.ts';",
    "const d = await import('../registry/reference.ts');",
    "import {\n  e,\n  f,\n} from '../util/errors.ts';",
    "import { readFile } from 'node:fs/promises';",
  ].join('\n');
  assert.deepEqual(importsOf(file, text).sort(), [
    'host/side-effect.ts',
    'image/image-store.ts',
    'registry/pull.ts',
    'registry/reference.ts',
    'util/errors.ts',
    'vm/machine-spec.ts',
  ]);
});
