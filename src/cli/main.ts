import { Command, CommanderError } from 'commander';
import { TorporError } from '../util/errors.ts';
import { registerRunCommands } from './commands/run.ts';
import { registerExecCommand } from './commands/exec.ts';
import { registerPsCommand } from './commands/ps.ts';
import { registerLifecycleCommands } from './commands/lifecycle.ts';
import { registerLogsCommand } from './commands/logs.ts';
import { registerCopyCommand } from './commands/cp.ts';
import { registerDoctorCommand } from './commands/doctor.ts';
import { registerLogCommands } from './commands/log.ts';
import { registerImageCommands } from './commands/image.ts';
import { registerSessionCommands } from './commands/session.ts';
import { registerDevLlmCommand } from './commands/dev-llm.ts';
import { registerSnapshotCommands } from './commands/snapshot.ts';
import { registerServeCommand } from './commands/serve.ts';
import { registerTokenCommands } from './commands/token.ts';

export function buildProgram(): Command {
  const program = new Command('torpor')
    .description('durable AI agents: microVMs that hibernate between turns, and an append-only context log')
    .version('0.1.0')
    .enablePositionalOptions()
    .showHelpAfterError();
  registerRunCommands(program);
  registerExecCommand(program);
  registerPsCommand(program);
  registerLifecycleCommands(program);
  registerLogsCommand(program);
  registerCopyCommand(program);
  registerDoctorCommand(program);
  registerSnapshotCommands(program);
  registerImageCommands(program);
  registerLogCommands(program);
  registerServeCommand(program);
  registerTokenCommands(program);
  registerSessionCommands(program);
  registerDevLlmCommand(program);
  return program;
}

export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  program.exitOverride();
  // Machine configs hold env (API keys), RAM files hold guest memory: private to this user (0600/0700).
  process.umask(0o077);
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      process.exitCode = error.exitCode === 0 ? 0 : 125;
      return;
    }
    if (error instanceof TorporError) {
      process.stderr.write(`torpor: error: ${error.message}\n${error.hint ? `  hint: ${error.hint}\n` : ''}`);
      process.exitCode = error.exitCode;
      return;
    }
    process.stderr.write(`torpor: unexpected error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 125;
  }
}
