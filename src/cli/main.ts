import type { Command } from 'commander';
import { TorporError } from '../util/errors.ts';

/** A module of commands: it adds its commands to the program. */
type Registration = (program: Command) => void;

interface CommandModule {
  /** The top-level commands the module registers, with the one line `torpor --help` shows for each. */
  commands: Record<string, string>;
  load: () => Promise<Registration>;
}

/**
 * Every command, and the module that implements it. A command's module (and what it imports: zod,
 * undici, hono, the QEMU driver...) is loaded only when that command runs, so `torpor ps` or
 * `torpor --version` pay for reading state files, not for the whole CLI. The summaries here are
 * what `torpor --help` lists without loading anything; a test checks them against the modules.
 */
export const commandModules: CommandModule[] = [
  {
    commands: { run: 'create and start a machine from an image, like docker run', create: 'create a machine without starting it' },
    load: async () => (await import('./commands/run.ts')).registerRunCommands,
  },
  {
    commands: { exec: 'run a command in a running machine; exits with its exit code' },
    load: async () => (await import('./commands/exec.ts')).registerExecCommand,
  },
  { commands: { ps: 'list machines (running ones; -a for all)' }, load: async () => (await import('./commands/ps.ts')).registerPsCommand },
  {
    commands: {
      start: 'start stopped machines (their files are kept; memory starts fresh)',
      stop: 'stop machines: SIGTERM to the process, SIGKILL after the timeout, then power off',
      kill: 'end machines at once (SIGKILL to their processes, by pid)',
      rm: 'remove machines',
      inspect: 'configuration and state of machines, as JSON',
    },
    load: async () => (await import('./commands/lifecycle.ts')).registerLifecycleCommands,
  },
  {
    commands: { logs: "output of a machine's main process (not the kernel console)" },
    load: async () => (await import('./commands/logs.ts')).registerLogsCommand,
  },
  {
    commands: { cp: 'copy files or directories between the host and a machine: cp ./f web:/tmp/f, cp web:/etc/hostname .' },
    load: async () => (await import('./commands/cp.ts')).registerCopyCommand,
  },
  {
    commands: { doctor: 'check what this host has and lacks for torpor, and how to fix it' },
    load: async () => (await import('./commands/doctor.ts')).registerDoctorCommand,
  },
  {
    commands: { system: 'disk and memory torpor uses (df), freeing what is not needed (prune), spare machines (pool)' },
    load: async () => (await import('./commands/system.ts')).registerSystemCommands,
  },
  {
    commands: {
      snapshot: 'save a running machine whole (memory, processes, files): pause, save, resume (or --stop)',
      restore: 'start a new machine from a snapshot; it continues exactly where the snapshot was taken',
      fork: 'make N live copies of a running machine, each independent from then on',
      snapshots: 'list, inspect, remove and garbage-collect snapshots',
    },
    load: async () => (await import('./commands/snapshot.ts')).registerSnapshotCommands,
  },
  {
    commands: {
      images: 'list images in the store',
      image: 'manage images: import, ls, rm',
      pull: 'pull an image from an OCI registry, like docker pull (linux/amd64)',
      push: 'publish a stored image to a registry as a single-layer OCI image',
      login: 'store credentials for a registry (checked against it first)',
    },
    load: async () => (await import('./commands/image.ts')).registerImageCommands,
  },
  {
    commands: { log: 'the context log: everything that went into and came out of the LLM, per session' },
    load: async () => (await import('./commands/log.ts')).registerLogCommands,
  },
  {
    commands: { serve: 'serve the HTTP API until interrupted: agent sessions under /v1/sessions, the context log under /v1/logs' },
    load: async () => (await import('./commands/serve.ts')).registerServeCommand,
  },
  {
    commands: { nodes: 'nodes of a torpor cluster (`torpor serve --cluster`): liveness, capacity, sessions' },
    load: async () => (await import('./commands/nodes.ts')).registerNodesCommands,
  },
  {
    commands: { token: 'API tokens of `torpor serve` (every request needs one: Authorization: Bearer TOKEN)' },
    load: async () => (await import('./commands/token.ts')).registerTokenCommands,
  },
  {
    commands: { session: 'durable agent sessions (a client of `torpor serve`)' },
    load: async () => (await import('./commands/session.ts')).registerSessionCommands,
  },
  {
    commands: { 'dev-llm': 'serve a deterministic fake OpenAI-compatible LLM (for tests and offline demos) until interrupted' },
    load: async () => (await import('./commands/dev-llm.ts')).registerDevLlmCommand,
  },
];

export const version = '0.1.0';

async function baseProgram(): Promise<Command> {
  // Loaded here, not at the top: `torpor ps` answers without it (quickPsFlags), ~10 ms sooner.
  const { Command } = await import('commander');
  return new Command('torpor')
    .description('durable AI agents: microVMs that hibernate between turns, and an append-only context log')
    .version(version)
    .enablePositionalOptions()
    .showHelpAfterError();
}

/** The command a command line names: its first word that is not an option (the program's own options take no value). */
function commandWord(argv: string[]): string | undefined {
  const words = argv.slice(2).filter((word) => !word.startsWith('-'));
  return words[0] === 'help' ? words[1] : words[0];
}

/**
 * The program with the modules this command line needs registered for real. Any other command is
 * a stub that only lists itself in `torpor --help`; `--all` registers every module (tests).
 */
export async function buildProgram(argv: string[] = [], options: { all?: boolean } = {}): Promise<Command> {
  const program = await baseProgram();
  const word = commandWord(argv);
  // A known command needs only its own module: the others' stubs (~40 commander objects) serve
  // `torpor --help` and the suggestions for an unknown word.
  const named = options.all ? undefined : commandModules.find((module) => word !== undefined && word in module.commands);
  if (named) {
    (await named.load())(program);
    return program;
  }
  for (const module of commandModules) {
    if (options.all || (word !== undefined && word in module.commands)) {
      (await module.load())(program);
      continue;
    }
    for (const [name, summary] of Object.entries(module.commands)) {
      program.command(name).description(summary).allowUnknownOption().allowExcessArguments();
    }
  }
  return program;
}

export async function main(argv: string[]): Promise<void> {
  try {
    // Machine configs hold env (API keys), RAM files hold guest memory: private to this user (0600/0700).
    process.umask(0o077);
    // The most frequent command, with nothing but its own flags, is answered without commander.
    if (argv[2] === 'ps') {
      const ps = await import('./commands/ps.ts');
      const flags = ps.quickPsFlags(argv.slice(3));
      if (flags) return await ps.listCommand(flags);
    }
    const program = await buildProgram(argv);
    program.exitOverride();
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof (await import('commander')).CommanderError) {
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
