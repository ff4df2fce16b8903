// The login form: POST /api/v1/login sets the HttpOnly session cookie and returns the CSRF token.

import { h, errorText } from './ui.js';

export function mount(main, ctx) {
  const error = h('p', { class: 'form-error', role: 'alert', testid: 'login-error', hidden: true });
  const username = h('input', { id: 'login-username', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'off', spellcheck: 'false', testid: 'login-username' });
  const password = h('input', { id: 'login-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true, testid: 'login-password' });
  const submit = h('button', { type: 'submit', testid: 'login-submit' }, 'Log in');

  const form = h('form', { class: 'card login', 'aria-labelledby': 'login-title', novalidate: false },
    h('h1', { id: 'login-title' }, 'devicecloud'),
    h('p', { class: 'muted' }, 'Log in to see and control your devices.'),
    h('label', { for: 'login-username' }, 'User name'), username,
    h('label', { for: 'login-password' }, 'Password'), password,
    error,
    submit);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    submit.textContent = 'Logging in…';
    try {
      const me = await ctx.dc.login(username.value.trim(), password.value);
      password.value = '';
      ctx.loggedIn(me);
    } catch (err) {
      error.textContent = err.status === 401
        ? 'Wrong user name or password.'
        : err.status === 429
          ? 'Too many attempts from this address: wait a minute, then try again.'
          : `Logging in failed: ${errorText(err)}`;
      error.hidden = false;
      password.select();
    } finally {
      submit.disabled = false;
      submit.textContent = 'Log in';
    }
  });

  main.append(h('div', { class: 'center' }, form));
  username.focus();
}
