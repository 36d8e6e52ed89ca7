#!/usr/bin/env node
// The CLI runs from esbuild bundles of src/ (rebuilt when a source changes): no build step to
// forget. TORPOR_NO_BUNDLE=1 runs the sources through tsx instead.
import { readFileSync } from 'node:fs';

const words = process.argv.slice(2);
if (words.length === 1 && (words[0] === '--version' || words[0] === '-V')) {
  // Nothing to load for this one: scripts call it to check for torpor.
  process.stdout.write(JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')).version + '\n');
} else {
  let main;
  if (process.env.TORPOR_NO_BUNDLE === '1') {
    const { register } = await import('tsx/esm/api');
    register();
    ({ main } = await import('../src/cli/main.ts'));
  } else {
    const { ensureBundles } = await import('./bundles.mjs');
    ({ main } = await import((await ensureBundles()).cli));
  }
  await main(process.argv);
}
