// Worker threads do not inherit tsx's module hooks reliably on Node 20, so the extraction worker
// starts in plain JavaScript, registers tsx, then loads the TypeScript worker (as the snapshot
// store's chunk workers do).
import { register } from 'tsx/esm/api';

register();
await import('./extract-worker.ts');
