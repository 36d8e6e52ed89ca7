import { Hono } from 'hono';
import { TorporError } from '../util/errors.ts';
import type { SessionManager } from '../session/session-manager.ts';

/**
 * GET /v1/sessions/:id/turns: the past turns a session can be forked at (rewind), each with the
 * log offset it ended at. Fork one with POST /v1/sessions/:id/fork {"atTurn": N}.
 */
export function createSessionTurnRoutes(manager: SessionManager): Hono {
  const app = new Hono();
  app.get('/:id/turns', (context) => {
    try {
      return context.json({
        turns: manager.turnsOf(context.req.param('id')).map(({ turn, logOffset, takenAt, snapshot }) => ({ turn, logOffset, takenAt, snapshot })),
      });
    } catch (error) {
      if (error instanceof TorporError)
        return context.json({ error: { code: error.code, message: error.message, hint: error.hint } }, error.code === 'session-unknown' ? 404 : 500);
      throw error;
    }
  });
  return app;
}
