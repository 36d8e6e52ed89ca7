import type { AgentClient } from '../../guest/agent-client.ts';
import type { MachineConfig } from '../machine-record.ts';
import { connectToMachine } from '../machines.ts';

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

/** `shell` over a connection of its own to a running machine (opened and closed around the script). */
export async function shellIn(config: MachineConfig, script: string): Promise<string> {
  const client = await connectToMachine(config);
  try {
    return await shell(client, script);
  } finally {
    client.close();
  }
}
