// Users (admins): list, add with a role and password, remove.

import { h, replace, errorText, roleSelect, announce, toast } from './ui.js';

export function mount(main, ctx) {
  if (!ctx.isAdmin()) {
    main.append(h('p', { class: 'card', role: 'alert' }, 'Only admins manage users.'));
    return null;
  }
  const name = h('input', { id: 'user-name', name: 'name', required: true, autocapitalize: 'off', spellcheck: 'false', autocomplete: 'off', testid: 'user-name' });
  const password = h('input', { id: 'user-password', name: 'password', type: 'password', required: true, minlength: 8, autocomplete: 'new-password', testid: 'user-password' });
  const role = roleSelect('user-role', 'user-role', 'viewer');
  const error = h('p', { class: 'form-error', role: 'alert', hidden: true, testid: 'user-error' });
  const submit = h('button', { type: 'submit', testid: 'user-create' }, 'Add user');
  const form = h('form', { class: 'card stack', 'aria-labelledby': 'user-form-title' },
    h('h2', { id: 'user-form-title' }, 'New user'),
    h('div', { class: 'fields' },
      h('span', {}, h('label', { for: 'user-name' }, 'User name'), name),
      h('span', {}, h('label', { for: 'user-password' }, 'Password'), password),
      h('span', {}, h('label', { for: 'user-role' }, 'Role'), role)),
    h('p', { class: 'muted small' }, 'viewer: watches · operator: also controls outputs · admin: also manages devices, users and tokens.'),
    error,
    h('div', { class: 'actions' }, submit));
  const list = h('div', { testid: 'user-list' });

  main.append(h('div', { class: 'page-head' }, h('h1', {}, 'Users')), form, list);

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.hidden = true;
    submit.disabled = true;
    try {
      const answer = await ctx.dc.createUser(name.value.trim(), role.value, password.value);
      const who = answer?.name || name.value.trim();
      name.value = '';
      password.value = '';
      announce(`User ${who} added`);
      toast(`User ${who} added`);
      load();
    } catch (err) {
      if (err.status === 401) return ctx.failed(err);
      error.textContent = `Adding the user failed: ${errorText(err)}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  async function remove(user) {
    if (!confirm(`Remove the user “${user.name}”? Their sessions end at once.`)) return;
    try {
      await ctx.dc.removeUser(user.name);
      toast(`User ${user.name} removed`);
      load();
    } catch (err) {
      ctx.failed(err, `Removing ${user.name} failed`);
    }
  }

  async function load() {
    try {
      const users = await ctx.dc.users();
      replace(list, h('table', { class: 'table' },
        h('caption', { class: 'visually-hidden' }, 'Users'),
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Role'), h('th', { scope: 'col' }, h('span', { class: 'visually-hidden' }, 'Actions')))),
        h('tbody', {}, users.map((user) => h('tr', { testid: `user-row-${user.name}` },
          h('td', {}, user.name, user.name === ctx.me?.user ? h('span', { class: 'muted' }, ' (you)') : null),
          h('td', {}, user.role || ''),
          h('td', { class: 'right' }, user.name === ctx.me?.user
            ? null
            : h('button', { type: 'button', class: 'danger small', testid: `user-remove-${user.name}`, onclick: () => remove(user) }, 'Remove')))))));
    } catch (err) {
      ctx.failed(err, 'Loading the users failed');
    }
  }

  load();
  return null;
}
