// Worker threads do not inherit tsx's module hooks reliably on Node 20 (an --import of the loader
// races the entry module), so the worker starts in plain JavaScript, registers tsx, then loads the
// TypeScript worker.
import { register } from 'tsx/esm/api';

register();
await import('./chunk-worker.ts');
