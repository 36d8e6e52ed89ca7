#!/usr/bin/env node
// The CLI runs from an esbuild bundle of src/ (rebuilt when a source changes): no build step to
// forget, and a start-up of ~0.1 s. TORPOR_NO_BUNDLE=1 runs the sources through tsx instead.
import { ensureBundles } from './bundles.mjs';

let main;
if (process.env.TORPOR_NO_BUNDLE === '1') {
  const { register } = await import('tsx/esm/api');
  register();
  ({ main } = await import('../src/cli/main.ts'));
} else {
  const bundles = await ensureBundles();
  ({ main } = await import(bundles.cli));
}
await main(process.argv);
