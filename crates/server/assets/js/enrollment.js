// "Add device" (admins): registers a device and shows either its one-time enrollment command or
// offers its credential bundle as a file download. The bundle holds a private key or token, so it
// goes straight from the API answer into a Blob: never into the page's markup.

import { h, modal, copyButton, download, errorText, formatTime, announce } from './ui.js';

// As proto::topics::validate_device_id: lowercase letters, digits, '_' and '-'.
const ID_PATTERN = '[a-z0-9][a-z0-9_\\-]{0,62}';

export function openAddDevice(ctx) {
  const { body, close } = modal('Add a device', 'add-device-dialog');

  const id = h('input', { id: 'add-device-id', name: 'id', required: true, pattern: ID_PATTERN, autocapitalize: 'off', spellcheck: 'false', testid: 'add-device-id', 'aria-describedby': 'add-device-id-help' });
  const choice = (value, label, help, checked) => h('label', { class: 'choice' },
    h('input', { type: 'radio', name: 'credential', value, checked, testid: `add-device-${value}` }),
    h('span', {}, h('strong', {}, label), h('span', { class: 'muted small' }, help)));
  const error = h('p', { class: 'form-error', role: 'alert', hidden: true, testid: 'add-device-error' });
  const submit = h('button', { type: 'submit', testid: 'add-device-submit' }, 'Add');

  const form = h('form', { class: 'stack' },
    h('label', { for: 'add-device-id' }, 'Device id'),
    id,
    h('p', { id: 'add-device-id-help', class: 'muted small' }, 'Lowercase letters, digits, “-” and “_”; e.g. kitchen.'),
    h('fieldset', {},
      h('legend', {}, 'Credential'),
      choice('enroll', 'Enrollment code', 'A one-time command to run on the device (valid 15 minutes); the key never leaves the device.', true),
      choice('certificate', 'Certificate bundle', 'A file with a client certificate and its key, to copy to the device.', false),
      choice('token', 'Token bundle', 'A file with a token, for devices that cannot use certificates.', false)),
    error,
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: close }, 'Cancel'),
      submit));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.hidden = true;
    if (!id.checkValidity()) {
      error.textContent = 'Enter a device id made of lowercase letters, digits, “-” and “_”, starting with a letter or digit.';
      error.hidden = false;
      id.focus();
      return;
    }
    const credential = form.querySelector('input[name=credential]:checked').value;
    submit.disabled = true;
    try {
      const answer = await ctx.dc.addDevice(id.value.trim(), credential);
      body.replaceChildren(result(answer, close));
      announce(`Device ${answer.id} added`);
      ctx.fleet.load().catch(() => {});
    } catch (err) {
      if (err.status === 401) {
        close();
        ctx.failed(err);
        return;
      }
      error.textContent = `Adding the device failed: ${errorText(err)}`;
      error.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });

  body.append(form);
  id.focus();
}

function result(answer, close) {
  if (answer.enroll_command || answer.code) {
    const command = answer.enroll_command || `devicecloud agent enroll ${location.origin} ${answer.code}`;
    return h('div', { class: 'stack', testid: 'enroll-result' },
      h('p', {}, 'Run this on the device (Raspberry Pi) within 15 minutes:'),
      h('pre', { class: 'secret', testid: 'enroll-command' }, command),
      h('div', { class: 'actions' }, copyButton(() => command, 'Copy command', 'enroll-copy')),
      h('p', { class: 'muted small' },
        'One-time code: ', h('code', { testid: 'enroll-code' }, answer.code || ''),
        answer.expires_at ? ` · valid until ${formatTime(answer.expires_at)}` : ''),
      h('div', { class: 'actions' }, h('button', { type: 'button', onclick: close }, 'Done')));
  }
  const filename = `${answer.id}.toml`;
  return h('div', { class: 'stack', testid: 'bundle-result' },
    h('p', {}, `The bundle for ${answer.id} holds its secret credential. Download it and copy it to the device, e.g. `,
      h('code', {}, `/etc/devicecloud/${filename}`), '. It is not shown again.'),
    h('div', { class: 'actions' },
      h('button', { type: 'button', testid: 'bundle-download', onclick: () => download(filename, answer.bundle || '') }, `Download ${filename}`),
      h('button', { type: 'button', class: 'secondary', onclick: close }, 'Done')));
}
