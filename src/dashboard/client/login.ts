// The login page's only script: it sends the token once, and the server answers with an HttpOnly
// cookie. The token is not kept anywhere a page script could read it again.
const form = document.getElementById('login') as HTMLFormElement;
const input = document.getElementById('token') as HTMLInputElement;
const error = document.getElementById('login-error') as HTMLParagraphElement;

form.addEventListener('submit', (event) => {
  event.preventDefault();
  const token = input.value.trim();
  const show = (message: string) => {
    error.textContent = message;
    error.hidden = false;
    input.setAttribute('aria-invalid', 'true');
    input.focus();
  };
  if (!token) return show('Paste the server’s API token.');
  const button = form.querySelector('button')!;
  button.disabled = true;
  fetch('/ui/login', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ token }) })
    .then(async (response) => {
      if (response.ok) {
        input.value = '';
        window.location.assign('/');
        return;
      }
      const body = (await response.json().catch(() => undefined)) as { error?: { message?: string; hint?: string } } | undefined;
      show([body?.error?.message ?? `sign-in failed (${response.status})`, body?.error?.hint].filter(Boolean).join(': '));
    })
    .catch((reason: Error) => show(`the server did not answer: ${reason.message}`))
    .finally(() => (button.disabled = false));
});
