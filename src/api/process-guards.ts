/**
 * Keeps `torpor serve` up when one piece of it fails unexpectedly. Sessions run in this process
 * beside each other: a rejected promise nobody awaited (a guest channel that broke in an odd way, a
 * bug reached by one agent's input) would, by Node's default, end the process and every session
 * with it. The session manager fails the session an error belongs to where it can tell; what
 * escapes that is logged here and the server goes on.
 */
export function installProcessGuards(write: (text: string) => void): () => void {
  const describe = (error: unknown) => (error instanceof Error ? (error.stack ?? error.message) : String(error));
  const onRejection = (reason: unknown) => write(`torpor: unhandled rejection (the server keeps running): ${describe(reason)}\n`);
  const onException = (error: unknown) => write(`torpor: uncaught exception (the server keeps running): ${describe(error)}\n`);
  process.on('unhandledRejection', onRejection);
  process.on('uncaughtException', onException);
  return () => {
    process.off('unhandledRejection', onRejection);
    process.off('uncaughtException', onException);
  };
}
