/**
 * The two HTML documents the dashboard serves. Both are fixed text: no value from a request is
 * ever written into them, so there is nothing to escape and nothing to inject. Scripts come only
 * from this server (the Content-Security-Policy in dashboard-login.ts forbids inline code).
 */
const head = (title: string) => `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="color-scheme" content="light dark">
<title>${title}</title>
<link rel="stylesheet" href="/ui/app.css">
<link rel="icon" href="data:,">
</head>`;

/** The single-page app: every dashboard path gets this shell, and the bundle routes on the path. */
export const appPage = `${head('torpor')}
<body>
<div id="app"><p class="loading">Loading the dashboard…</p></div>
<noscript>The torpor dashboard needs JavaScript.</noscript>
<script type="module" src="/ui/app.js"></script>
</body>
</html>
`;

export const loginPage = `${head('Sign in · torpor')}
<body>
<main class="login">
<h1>torpor</h1>
<form id="login" novalidate>
<label for="token">API token</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus spellcheck="false">
<p class="hint">The token of this server is in its state directory: <code>cat $TORPOR_HOME/api/token</code> (default <code>~/.local/share/torpor/api/token</code>).</p>
<p id="login-error" class="error" role="alert" hidden></p>
<button type="submit">Sign in</button>
</form>
</main>
<script type="module" src="/ui/login.js"></script>
</body>
</html>
`;
