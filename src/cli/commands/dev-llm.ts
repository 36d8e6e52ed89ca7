import type { Command } from 'commander';
import { startDevLlm } from '../../dev-llm/server.ts';

/**
 * Registers `torpor dev-llm`: a deterministic OpenAI-compatible server, so agents can be developed
 * and tested without a provider. 11434 is the port local model servers (Ollama) use, which agents
 * often default to.
 */
export function registerDevLlmCommand(program: Command): Command {
  return program
    .command('dev-llm')
    .description('serve a deterministic fake OpenAI-compatible LLM (for tests and offline demos) until interrupted')
    .option('--port <port>', 'port to listen on', '11434')
    .option('--host <host>', 'address to listen on (machines reach 127.0.0.1 at 10.0.2.2 when run with --allow-host PORT)', '127.0.0.1')
    .option('--quiet', 'do not log requests')
    .option('--chunk-delay <ms>', 'delay between streamed chunks, to watch streaming', '0')
    .action(async (options: { port: string; host: string; quiet?: boolean; chunkDelay: string }) => {
      if (!/^\d+$/.test(options.port) || Number(options.port) > 65535) {
        process.stderr.write(`torpor: --port must be a number from 0 to 65535, got ${JSON.stringify(options.port)}\n`);
        process.exitCode = 1;
        return;
      }
      if (!/^\d+$/.test(options.chunkDelay)) {
        process.stderr.write(`torpor: --chunk-delay must be a number of milliseconds, got ${JSON.stringify(options.chunkDelay)}\n`);
        process.exitCode = 1;
        return;
      }
      let server;
      try {
        server = await startDevLlm({
          port: Number(options.port),
          host: options.host,
          chunkDelayMs: Number(options.chunkDelay),
          onRequest: options.quiet
            ? undefined
            : ({ method, path, status, answer }) =>
                process.stderr.write(`${new Date().toISOString()} ${method} ${path} ${status}${answer ? ` ${answer}` : ''}\n`),
        });
      } catch (error) {
        const code = (error as NodeJS.ErrnoException).code;
        const hint = code === 'EADDRINUSE' ? ` (port ${options.port} is taken: pick another with --port)` : '';
        process.stderr.write(`torpor: cannot listen on ${options.host}:${options.port}: ${(error as Error).message}${hint}\n`);
        process.exitCode = 1;
        return;
      }
      process.stdout.write(`torpor dev-llm listening on ${server.url} (model torpor-dev; OPENAI_BASE_URL=${server.url})\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
      });
      await server.close();
    });
}
