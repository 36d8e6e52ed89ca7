import { render } from 'preact';
import { useEffect, useRef } from 'preact/hooks';
import { signOut } from './api.ts';
import { HostPage } from './host-page.tsx';
import { useLiveConnection } from './live.ts';
import { MachinesPage } from './machines-page.tsx';
import { onLinkClick, usePath } from './router.ts';
import { SessionPage } from './session-page.tsx';
import { SessionsPage } from './sessions-page.tsx';

const links = [
  { path: '/', label: 'Sessions' },
  { path: '/machines', label: 'Machines' },
  { path: '/host', label: 'Host' },
];

function App() {
  const path = usePath();
  const { connected } = useLiveConnection();
  const sessionMatch = /^\/session\/([^/]+)\/?$/.exec(path);
  const page = sessionMatch ? (
    <SessionPage sessionId={decodeURIComponent(sessionMatch[1]!)} />
  ) : path === '/machines' ? (
    <MachinesPage />
  ) : path === '/host' ? (
    <HostPage />
  ) : (
    <SessionsPage />
  );
  const current = sessionMatch ? '/' : path;
  // After an in-app navigation, keyboard and screen-reader users land at the new page's content.
  const firstRender = useRef(true);
  useEffect(() => {
    if (firstRender.current) firstRender.current = false;
    else document.getElementById('main')?.focus();
  }, [path]);
  return (
    <div onClick={onLinkClick}>
      <a class="skip-link" href="#main">
        Skip to content
      </a>
      <header class="top">
        <a href="/" class="brand">
          torpor
        </a>
        <nav aria-label="Main">
          {links.map((link) => (
            <a href={link.path} aria-current={current === link.path ? 'page' : undefined}>
              {link.label}
            </a>
          ))}
        </nav>
        <span class={`live ${connected ? 'on' : 'off'}`} role="status" title={connected ? 'live updates on' : 'reconnecting'}>
          {connected ? 'live' : 'offline'}
        </span>
        <button type="button" class="link-button" onClick={() => void signOut()}>
          Sign out
        </button>
      </header>
      <main id="main" tabIndex={-1}>
        {page}
      </main>
    </div>
  );
}

const container = document.getElementById('app')!;
// The shell's "Loading…" placeholder is not Preact's: render does not replace it, so clear it first.
container.textContent = '';
render(<App />, container);
