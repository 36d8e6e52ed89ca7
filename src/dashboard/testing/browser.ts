import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';
import { ensureDebianPackages } from '../../registry/testing/ensure-debian-packages.ts';

/** Debian's browser: the tests drive it, they never download one. */
export const chromiumPath = '/usr/bin/chromium';

/** Installs Debian's chromium when missing (a fresh CI machine), then starts it headless. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(chromiumPath)) ensureDebianPackages(['chromium']);
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    // Root has no user namespace sandbox here; /dev/shm is shared with guest RAM, so keep off it.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
}

/**
 * Everything a page reports as wrong: console errors and uncaught exceptions. A test asserts the
 * list is empty at its end ("no console errors"), minus the failures it provoked on purpose.
 */
export function collectPageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });
  page.on('pageerror', (error) => errors.push(`page error: ${error.message}`));
  return errors;
}
