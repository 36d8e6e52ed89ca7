import type { AgentClient } from '../../guest/agent-client.ts';

/** Runs a shell script in a machine through its guest agent and returns its trimmed stdout (tests). */
export async function shell(client: AgentClient, script: string): Promise<string> {
  let output = '';
  const process = client.exec(
    { argv: ['sh', '-c', script], env: [], workingDirectory: '/', user: '', tty: false, stdin: false },
    { stdout: (data) => (output += data) },
  );
  await process.exited;
  return output.trim();
}
