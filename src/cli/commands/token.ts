import type { Command } from 'commander';
import { stateDirectory } from '../../context/state-directory.ts';
import { TorporError } from '../../util/errors.ts';
import { apiTokenPaths, createScopedToken, ensureAdminToken, listScopedTokens, revokeScopedToken } from '../../state/api-tokens.ts';
import { printJson, printTable } from '../output.ts';

/** Registers `torpor token show|create|ls|rm`: the API's bearer tokens, kept in the state directory. */
export function registerTokenCommands(program: Command): void {
  const token = program.command('token').description('API tokens of `torpor serve` (every request needs one: Authorization: Bearer TOKEN)');

  token
    .command('show')
    .description('print the full-access token of this state directory (created if there is none yet)')
    .option('--json', 'machine-readable output')
    .action((flags: { json?: boolean }) => {
      const { token: value, created, path } = ensureAdminToken(stateDirectory());
      if (flags.json) printJson({ token: value, path, created });
      else process.stdout.write(`${value}\n`);
    });

  token
    .command('create')
    .description('create a scoped token for a less trusted client; it is printed once and stored only as a digest')
    .option('--read-only', 'allow only reads (GET): list and inspect sessions, read logs')
    .option('--session <id>', 'allow only the routes of this one session (its log, messages, inspect, delete; no fork)')
    .option('--json', 'machine-readable output')
    .action((flags: { readOnly?: boolean; session?: string; json?: boolean }) => {
      if (flags.session !== undefined && !/^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,62}$/.test(flags.session)) {
        throw new TorporError('invalid-session', `invalid --session ${JSON.stringify(flags.session)}`, {
          hint: 'give a session id (s-...) or name',
          exitCode: 1,
        });
      }
      const { token: value, record } = createScopedToken(stateDirectory(), { readOnly: Boolean(flags.readOnly), session: flags.session });
      if (flags.json) printJson({ token: value, id: record.id, readOnly: record.readOnly, session: record.session, createdAt: record.createdAt });
      else process.stdout.write(`${value}\n`);
      if (!flags.json) process.stderr.write(`token ${record.id} created; it is shown only now (revoke it with: torpor token rm ${record.id})\n`);
    });

  token
    .command('ls')
    .description('list scoped tokens (not their values)')
    .option('--json', 'machine-readable output')
    .action((flags: { json?: boolean }) => {
      const tokens = listScopedTokens(stateDirectory()).map(({ digest: _digest, ...rest }) => rest);
      if (flags.json) return printJson(tokens);
      printTable(
        ['ID', 'SCOPE', 'CREATED'],
        tokens.map((record) => [
          record.id,
          [record.readOnly ? 'read-only' : 'read-write', record.session ? `session ${record.session}` : 'all sessions'].join(', '),
          record.createdAt,
        ]),
      );
      process.stdout.write(`full-access token: ${apiTokenPaths(stateDirectory()).adminToken}\n`);
    });

  token
    .command('rm')
    .description('revoke scoped tokens (a running server notices at once)')
    .argument('<ids...>')
    .action((ids: string[]) => {
      for (const id of ids) {
        if (!revokeScopedToken(stateDirectory(), id))
          throw new TorporError('token-unknown', `no scoped token ${id}`, { hint: 'see `torpor token ls`', exitCode: 1 });
        process.stdout.write(`${id}\n`);
      }
    });
}
