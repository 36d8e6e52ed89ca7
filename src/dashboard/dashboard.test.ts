// The dashboard in a real browser (Debian's chromium, headless) against a real `torpor serve`
// process with real sessions (QEMU machines running the shell agent).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { useTemporaryHome } from '../runtime/testing/temporary-home.ts';
import { readMachineState } from '../runtime/machine-files.ts';
import { shellAgent } from '../session/testing/shell-agent.ts';
import { collectPageErrors, launchChromium } from './testing/browser.ts';

// Functions handed to page.evaluate run in the browser; this program is typed for Node (no DOM library).
declare const document: {
  cookie: string;
  body: unknown;
  documentElement: { scrollWidth: number };
  querySelector(selector: string): { getAttribute(name: string): string | null } | null;
};
declare const window: { innerWidth: number };

const cli = fileURLToPath(new URL('../../bin/torpor.js', import.meta.url));
const projectDirectory = fileURLToPath(new URL('../../', import.meta.url));
// Screenshots go to docs/ only when asked (TORPOR_DASHBOARD_SCREENSHOTS=docs), so a test run leaves the tree clean.
const screenshotDirectory = process.env.TORPOR_DASHBOARD_SCREENSHOTS === 'docs' ? join(projectDirectory, 'docs') : await mkdtemp(join(tmpdir(), 'tp-shots-'));

let home: Awaited<ReturnType<typeof useTemporaryHome>>;
let server: ChildProcess;
let url = '';
let browser: Browser;
let token = '';
let sessionId = '';

const api = async (path: string, init: RequestInit = {}) => {
  const response = await fetch(url + path, {
    ...init,
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json', ...(init.headers ?? {}) },
  });
  if (!response.ok) throw new Error(`${init.method ?? 'GET'} ${path}: ${response.status} ${await response.text()}`);
  return response;
};
const sessionState = async (id: string) => ((await (await api(`/v1/sessions/${id}`)).json()) as { state: string }).state;

async function waitFor(what: string, check: () => Promise<boolean>, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

async function signedInPage(
  options: { viewport?: { width: number; height: number } } = {},
): Promise<{ context: BrowserContext; page: Page; errors: string[] }> {
  const context = await browser.newContext({ viewport: options.viewport ?? { width: 1280, height: 860 } });
  const page = await context.newPage();
  const errors = collectPageErrors(page);
  await page.goto(`${url}/login`);
  await page.getByLabel('API token').fill(token);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.waitForURL(`${url}/`);
  return { context, page, errors };
}

before(async () => {
  home = await useTemporaryHome();
  // The token the server guards with, made here as `torpor serve` would have made it.
  token = `torpor_${randomBytes(32).toString('base64url')}`;
  mkdirSync(join(home.home, 'api'), { recursive: true, mode: 0o700 });
  writeFileSync(join(home.home, 'api', 'token'), `${token}\n`, { mode: 0o600 });
  server = spawn(process.execPath, [cli, 'serve', '--port', '0'], { env: { ...process.env, TORPOR_HOME: home.home }, stdio: ['ignore', 'ignore', 'inherit'] });
  await waitFor('torpor serve to start', async () => {
    try {
      url = (JSON.parse(readFileSync(join(home.home, 'server.json'), 'utf8')) as { url: string }).url;
      return await fetch(`${url}/health`).then(
        (response) => response.status < 500,
        () => false,
      );
    } catch {
      return false;
    }
  });
  browser = await launchChromium();
  const created = await api('/v1/sessions', {
    method: 'POST',
    body: JSON.stringify({ image: 'base', command: ['sh', '-c', shellAgent], name: 'browser-chat', idle: '1s', resources: { cpus: 1, memory: '256m' } }),
  });
  sessionId = ((await created.json()) as { id: string }).id;
});

after(async () => {
  await browser?.close();
  server?.kill('SIGTERM');
  if (server && server.exitCode === null) await new Promise((resolve) => server.once('exit', resolve));
  await home?.cleanup();
  if (process.env.TORPOR_DASHBOARD_SCREENSHOTS !== 'docs') await rm(screenshotDirectory, { recursive: true, force: true });
});

test('without signing in, pages lead to the login page and the data routes refuse', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  for (const path of ['/', `/session/${sessionId}`, '/machines', '/host']) {
    await page.goto(url + path);
    assert.equal(new URL(page.url()).pathname, '/login', `${path} was shown without signing in`);
  }
  // The page's own calls (same origin, no cookie) are refused too.
  const status = await page.evaluate(async () =>
    Promise.all(['/ui/api/sessions', '/ui/api/host', '/ui/api/events'].map((path) => fetch(path).then((response) => response.status))),
  );
  assert.deepEqual(status, [401, 401, 401]);
  // A forged cookie is no better than none.
  await context.addCookies([{ name: 'torpor_token', value: `torpor_${randomBytes(32).toString('base64url')}`, url }]);
  await page.goto(`${url}/`);
  assert.equal(new URL(page.url()).pathname, '/login');
  // A wrong token is refused with a message, and no cookie is set.
  await page.getByLabel('API token').fill('torpor_not-the-token-of-this-server');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByRole('alert').filter({ hasText: 'not this server’s token' }).waitFor();
  assert.ok(!(await context.cookies()).some((cookie) => cookie.value.startsWith('torpor_not')));
  await context.close();
});

test('signing in keeps the token in an HttpOnly, SameSite=Strict cookie that page scripts cannot read', async () => {
  const { context, page, errors } = await signedInPage();
  const cookie = (await context.cookies()).find((each) => each.name === 'torpor_token');
  assert.ok(cookie);
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/');
  assert.equal(await page.evaluate(() => document.cookie.includes('torpor_')), false);
  await page.getByRole('heading', { name: 'Sessions' }).waitFor();
  // Signing out drops the cookie: the next visit is back at the login page.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.waitForURL(`${url}/login`);
  await page.goto(`${url}/`);
  assert.equal(new URL(page.url()).pathname, '/login');
  assert.deepEqual(errors, []);
  await context.close();
});

test('the sessions table follows a session live as it hibernates, wakes and hibernates again', async () => {
  const { context, page, errors } = await signedInPage();
  const row = page.locator(`tr[data-session="${sessionId}"]`);
  await row.waitFor();
  // Record every state the row shows, as the page shows it (a MutationObserver in the page).
  // A string, not a function: tsx would wrap a function's inner names in a helper the page does not have.
  await page.evaluate(`(() => {
    const seen = (window.seenStates = []);
    const note = () => {
      const state = document.querySelector('tr[data-session="${sessionId}"]')?.getAttribute('data-state');
      if (state && seen.at(-1) !== state) seen.push(state);
    };
    note();
    new MutationObserver(note).observe(document.body, { subtree: true, attributes: true, childList: true });
  })()`);
  await row.and(page.locator('[data-state="hibernated"]')).waitFor({ timeout: 60_000 });
  assert.equal(await page.getByText('Loading the dashboard').count(), 0, 'the shell placeholder is replaced');
  // A message from elsewhere (the API) wakes it; the table shows the wake and the next hibernation without a reload.
  await api(`/v1/sessions/${sessionId}/messages`, { method: 'POST', body: JSON.stringify({ content: 'from the api' }) });
  await row.locator('td[data-label="Turns"]').filter({ hasText: '1' }).waitFor({ timeout: 30_000 });
  await waitFor('the session to hibernate again', async () => (await sessionState(sessionId)) === 'hibernated');
  await row.and(page.locator('[data-state="hibernated"]')).waitFor({ timeout: 30_000 });
  const seen = await page.evaluate(() => (window as unknown as { seenStates: string[] }).seenStates);
  const firstHibernated = seen.indexOf('hibernated');
  assert.ok(firstHibernated >= 0, `states seen: ${seen.join(' ')}`);
  const after = seen.slice(firstHibernated + 1);
  assert.ok(
    after.some((state) => state === 'waking' || state === 'running' || state === 'idle'),
    `no wake seen after hibernation: ${seen.join(' ')}`,
  );
  assert.equal(after.at(-1), 'hibernated', `states seen: ${seen.join(' ')}`);
  assert.notEqual(await row.locator('td[data-label="Stored"]').textContent(), '–', 'a hibernated session shows its stored bytes');
  assert.deepEqual(errors, []);
  await context.close();
});

test('a message sent from the session page streams its answer into the page, and the timeline shows the hibernation', async () => {
  const { context, page, errors } = await signedInPage();
  await page.getByRole('link', { name: 'browser-chat' }).click();
  await page.waitForURL(`${url}/session/${sessionId}`);
  await page.getByRole('heading', { name: 'browser-chat' }).waitFor();
  // The history so far is there, from the log.
  await page.locator('.message.assistant').filter({ hasText: 'turn 1: from the api' }).waitFor();
  const composer = page.getByLabel('Message');
  await composer.fill('hello from the browser');
  await composer.press('Control+Enter');
  // The live bubble first (from the turn's SSE), then the log's copy of the same reply.
  await page.locator('.message.assistant').filter({ hasText: 'turn 2: hello from the browser; notes 2; child yes' }).first().waitFor({ timeout: 60_000 });
  await page.locator('.message.user').filter({ hasText: 'hello from the browser' }).waitFor();
  await waitFor('the session to hibernate', async () => (await sessionState(sessionId)) === 'hibernated');
  const timeline = page.getByRole('list', { name: 'Machine timeline' });
  await timeline.locator('li[data-state="hibernated"]').first().waitFor({ timeout: 30_000 });
  await timeline.locator('li[data-state="creating"]').first().waitFor();
  await timeline.locator('li[data-state="waking"]').first().waitFor();
  await timeline.locator('li[data-kind="snapshot"]').first().waitFor();
  // The chart has a point per finished turn, with the wake that preceded it.
  await page.locator('.chart .wake-dot').first().waitFor();
  assert.ok((await page.locator('.chart .bar').count()) >= 2);
  // The page follows the session to its present: the newest span is the hibernation (and its snapshot is listed).
  // Polled from the test, not with waitForFunction: the page's CSP (script-src 'self') forbids the eval
  // that waitForFunction falls back to once its first check is false.
  const spans = page.locator('ol.timeline-list li[data-state]');
  await waitFor('the newest timeline span to be the hibernation', async () => (await spans.last().getAttribute('data-state')) === 'hibernated');
  await page.screenshot({ path: join(screenshotDirectory, 'dashboard-session.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test('what an agent says is shown as text, never run as markup', async () => {
  const { context, page, errors } = await signedInPage();
  await page.goto(`${url}/session/${sessionId}`);
  const hostile = '<img src=x onerror=window.injected=1><script>window.injected=2</script>';
  await page.getByLabel('Message').fill(hostile);
  await page.getByRole('button', { name: 'Send', exact: true }).click();
  await page.locator('.message.user').filter({ hasText: '<img src=x' }).waitFor({ timeout: 60_000 });
  await page.locator('.message.assistant').filter({ hasText: 'turn 3: <img' }).first().waitFor({ timeout: 60_000 });
  assert.equal(await page.evaluate(() => (window as unknown as { injected?: number }).injected), undefined);
  assert.equal(await page.locator('.conversation img, .conversation script').count(), 0);
  assert.deepEqual(errors, []);
  await context.close();
});

test('a rate-limit sleep shows in the conversation and on the timeline, and the timer wakes the session', async () => {
  const { context, page, errors } = await signedInPage();
  await page.goto(`${url}/session/${sessionId}`);
  // The shell agent answers "sleep" with sleep-until two seconds ahead (as an agent hitting a 429 would).
  await page.getByLabel('Message').fill('sleep');
  await page.getByRole('button', { name: 'Send', exact: true }).click();
  await page.locator('.system-line').filter({ hasText: 'rate limited' }).waitFor({ timeout: 60_000 });
  const timeline = page.getByRole('list', { name: 'Machine timeline' });
  await timeline.locator('li[data-state="hibernated"]').filter({ hasText: 'rate-limit sleep until' }).waitFor({ timeout: 60_000 });
  // The durable timer restores the machine; the agent finishes its turn; the session goes idle and hibernates again.
  await waitFor(
    'the timer to wake the session and the turn to finish',
    async () => {
      const session = (await (await api(`/v1/sessions/${sessionId}`)).json()) as { turns: number; wakeAt?: string };
      return session.turns >= 4 && session.wakeAt === undefined;
    },
    90_000,
  );
  await page.locator('.facts').filter({ hasText: '4 turns' }).waitFor({ timeout: 30_000 });
  assert.deepEqual(errors, []);
  await context.close();
});

test('a machine killed with -9 shows on the timeline as a crash and its recovery', async () => {
  const { context, page, errors } = await signedInPage();
  await page.goto(`${url}/session/${sessionId}`);
  await page.getByRole('heading', { name: 'browser-chat' }).waitFor();
  await api(`/v1/sessions/${sessionId}/messages`, { method: 'POST', body: JSON.stringify({ content: 'before the crash' }) });
  // Right after the turn the machine is still up (it hibernates after a second of idleness): kill its QEMU.
  const { machineId } = (await (await api(`/v1/sessions/${sessionId}`)).json()) as { machineId?: string };
  assert.ok(machineId, 'the session has a running machine right after a turn');
  const { qemuPid } = await readMachineState(machineId);
  assert.ok(qemuPid);
  process.kill(qemuPid, 'SIGKILL');
  const timeline = page.getByRole('list', { name: 'Machine timeline' });
  // Recovered from the snapshot or rebuilt from the log, or (if the kill hit a hibernation) kept running: each is named.
  await timeline.locator('li[data-kind="recovery"], li[data-kind="crash"]').first().waitFor({ timeout: 90_000 });
  await waitFor('the session to settle', async () => ['idle', 'hibernated'].includes(await sessionState(sessionId)), 90_000);
  assert.deepEqual(errors, []);
  await context.close();
});

test('fork and delete from the table, each behind a confirmation, by keyboard', async () => {
  const { context, page, errors } = await signedInPage();
  await waitFor('the session to hibernate', async () => (await sessionState(sessionId)) === 'hibernated');
  const fork = page.getByRole('button', { name: 'Fork browser-chat' });
  await fork.focus();
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog', { name: 'Fork browser-chat?' });
  await dialog.waitFor();
  // Escape cancels without forking.
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'hidden' });
  assert.equal(await page.locator('tr[data-session]').count(), 1);
  await fork.click();
  await dialog.getByLabel('Name of the fork (optional)').fill('browser-fork');
  await dialog.getByRole('button', { name: 'Fork', exact: true }).click();
  await page.getByRole('heading', { name: 'browser-fork' }).waitFor({ timeout: 30_000 });
  await page.getByRole('link', { name: 'Sessions' }).click();
  await page.getByRole('button', { name: 'Delete browser-fork' }).click();
  const confirm = page.getByRole('dialog', { name: 'Delete browser-fork?' });
  await confirm.getByRole('button', { name: 'Delete', exact: true }).click();
  await page.locator('tr[data-session]').filter({ hasText: 'browser-fork' }).waitFor({ state: 'detached', timeout: 30_000 });
  assert.equal(await page.locator('tr[data-session]').count(), 1);
  assert.deepEqual(errors, []);
  await context.close();
});

test('machines, snapshots and host pages; the sessions table at phone width', async () => {
  // A fork starts hibernated on the same snapshot (no machine), so the table shows a family.
  await api(`/v1/sessions/${sessionId}/fork`, { method: 'POST', body: JSON.stringify({ name: 'browser-chat-fork' }) });
  const { context, page, errors } = await signedInPage();
  await page.locator(`tr[data-session="${sessionId}"]`).waitFor();
  await page.locator('tr[data-session]').filter({ hasText: 'browser-chat-fork' }).waitFor();
  await page.screenshot({ path: join(screenshotDirectory, 'dashboard-sessions.png') });
  await page.getByRole('link', { name: 'Machines' }).click();
  await page.getByRole('heading', { name: 'Snapshots' }).waitFor();
  const snapshotRow = page
    .locator('tr')
    .filter({ hasText: `session-${sessionId}` })
    .first();
  await snapshotRow.waitFor();
  assert.match((await snapshotRow.locator('td[data-label="Exclusive"]').textContent()) ?? '', /\d/);
  await page.screenshot({ path: join(screenshotDirectory, 'dashboard-machines.png'), fullPage: true });
  await page.getByRole('link', { name: 'Host' }).click();
  await page.getByRole('heading', { name: 'Doctor' }).waitFor({ timeout: 60_000 });
  assert.match((await page.locator('.accelerator').textContent()) ?? '', /^(kvm|tcg)$/);
  assert.ok((await page.locator('table.doctor tbody tr').count()) >= 5);
  await page.screenshot({ path: join(screenshotDirectory, 'dashboard-host.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();

  const phone = await signedInPage({ viewport: { width: 390, height: 844 } });
  await phone.page.locator(`tr[data-session="${sessionId}"]`).waitFor();
  // Nothing is wider than the screen: no sideways scrolling on a phone.
  assert.ok(await phone.page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1));
  await phone.page.screenshot({ path: join(screenshotDirectory, 'dashboard-phone.png'), fullPage: true });
  assert.deepEqual(phone.errors, []);
  await phone.context.close();
});
