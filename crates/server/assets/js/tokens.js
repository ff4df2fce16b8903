// API tokens for scripts (admins): create (the token is shown once), list, revoke.

import { h, replace, copyButton, errorText, formatTime, roleSelect, announce, toast } from './ui.js';

export function mount(main, ctx) {
  if (!ctx.isAdmin()) {
    main.append(h('p', { class: 'card', role: 'alert' }, 'Only admins manage API tokens.'));
    return null;
  }
  const name = h('input', { id: 'token-name', name: 'name', required: true, autocapitalize: 'off', spellcheck: 'false', testid: 'token-name' });
  const role = roleSelect('token-role', 'token-role', 'operator');
  const error = h('p', { class: 'form-error', role: 'alert', hidden: true, testid: 'token-error' });
  const created = h('div', { testid: 'token-created' });
  const submit = h('button', { type: 'submit', testid: 'token-create' }, 'Create token');
  const form = h('form', { class: 'card stack', 'aria-labelledby': 'token-form-title' },
    h('h2', { id: 'token-form-title' }, 'New token'),
    h('div', { class: 'fields' },
      h('span', {}, h('label', { for: 'token-name' }, 'Name'), name),
      h('span', {}, h('label', { for: 'token-role' }, 'Role'), role)),
    error,
    h('div', { class: 'actions' }, submit));
  const list = h('div', { testid: 'token-list' });

  main.append(
    h('div', { class: 'page-head' }, h('h1', {}, 'API tokens')),
    h('p', { class: 'muted' }, 'Scripts send a token as “Authorization: Bearer TOKEN”. The token is shown once, when it is created.'),
    form, created, list);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      const answer = await ctx.dc.createToken(name.value.trim(), role.value);
      name.value = '';
      replace(created, h('section', { class: 'card notice', 'aria-labelledby': 'token-once' },
        h('h2', { id: 'token-once' }, `Token “${answer.name}” (${answer.role})`),
        h('p', {}, 'Copy it now: it is not shown again.'),
        h('pre', { class: 'secret', testid: 'token-value' }, answer.token),
        h('div', { class: 'actions' },
          copyButton(() => answer.token, 'Copy token', 'token-copy'),
          h('button', { type: 'button', class: 'secondary', onclick: () => created.replaceChildren() }, 'Done'))));
      announce(`Token ${answer.name} created`);
      load();
    } catch (err) {
      if (err.status === 401) return ctx.failed(err);
      error.textContent = `Creating the token failed: ${errorText(err)}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  async function revoke(token) {
    if (!confirm(`Revoke the token “${token.name}”? Scripts using it stop working at once.`)) return;
    try {
      await ctx.dc.revokeToken(token.name);
      toast(`Token ${token.name} revoked`);
      load();
    } catch (err) {
      ctx.failed(err, `Revoking ${token.name} failed`);
    }
  }

  async function load() {
    try {
      const tokens = await ctx.dc.tokens();
      if (!tokens.length) {
        replace(list, h('p', { class: 'muted' }, 'No tokens yet.'));
        return;
      }
      replace(list, h('table', { class: 'table' },
        h('caption', { class: 'visually-hidden' }, 'API tokens'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Role'), h('th', { scope: 'col' }, 'Created'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
        h('tbody', {}, tokens.map((token) => h('tr', { testid: `token-row-${token.name}` },
          h('td', {}, token.name),
          h('td', {}, token.role || ''),
          h('td', {}, formatTime(token.created_at)),
          h('td', { class: 'right' }, h('button', { type: 'button', class: 'danger small', testid: `token-revoke-${token.name}`, onclick: () => revoke(token) }, 'Revoke')))))));
    } catch (err) {
      ctx.failed(err, 'Loading the tokens failed');
    }
  }

  load();
  return null;
}
