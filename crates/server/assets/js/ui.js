// Small DOM helpers shared by the pages. Everything user- or device-supplied goes in as text
// (textContent / attributes), never as HTML.

/**
 * Builds an element: h('button', {type: 'button', class: 'x', onclick: fn, dataset: {testid: 'y'}}, 'text', child).
 * Attributes whose value is false/null/undefined are left out; `true` sets an empty attribute.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === false || value === null || value === undefined) continue;
    if (key.startsWith('on') && typeof value === 'function') {
      el.addEventListener(key.slice(2), value);
    } else if (key === 'dataset') {
      Object.assign(el.dataset, value);
    } else if (key === 'testid') {
      el.dataset.testid = value;
    } else if (key === 'class') {
      el.className = value;
    } else if (key === 'value' && 'value' in el) {
      el.value = value;
    } else if (key === 'checked' && 'checked' in el) {
      el.checked = !!value;
    } else {
      el.setAttribute(key, value === true ? '' : String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replaces an element's content. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** Milliseconds since the epoch from a number or a date string; null if neither. */
export function toMs(value) {
  if (typeof value === 'number') return value;
  if (typeof value === 'string') {
    const parsed = Date.parse(value);
    return Number.isNaN(parsed) ? null : parsed;
  }
  return null;
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", "2 days ago" or a date. */
export function timeAgo(value, now = Date.now()) {
  const ms = toMs(value);
  if (ms === null) return 'never';
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 5) return 'just now';
  if (s < 60) return `${s} s ago`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ago`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ago`;
  const days = Math.floor(hours / 24);
  if (days < 30) return `${days} days ago`;
  return new Date(ms).toLocaleDateString();
}

export function formatTime(value) {
  const ms = toMs(value);
  return ms === null ? '' : new Date(ms).toLocaleString();
}

/** A sensor reading with a sensible number of decimals and its unit. */
export function formatReading(value, unit) {
  if (value === null || value === undefined) return '–';
  let text;
  if (typeof value === 'number') {
    const abs = Math.abs(value);
    text = Number.isInteger(value) ? String(value) : value.toFixed(abs >= 100 ? 0 : abs >= 10 ? 1 : 2);
  } else {
    text = typeof value === 'string' ? value : JSON.stringify(value);
  }
  return unit ? `${text} ${unit}` : text;
}

/** The polite live region: screen readers read confirmations ("led is on"). */
export function announce(message) {
  const region = document.querySelector('.announcer');
  if (!region) return;
  // Clear first so the same message twice is announced twice.
  region.textContent = '';
  requestAnimationFrame(() => {
    region.textContent = message;
  });
}

/** A transient message at the bottom of the screen; errors stay until dismissed. */
export function toast(message, kind = 'info') {
  const box = document.querySelector('.toasts');
  if (!box) return;
  const item = h('div', { class: `toast toast-${kind}`, role: kind === 'error' ? 'alert' : 'status', testid: `toast-${kind}` },
    h('span', {}, message),
    h('button', { type: 'button', class: 'link', 'aria-label': 'Dismiss', onclick: () => item.remove() }, '×'));
  box.append(item);
  if (kind !== 'error') setTimeout(() => item.remove(), 4000);
  else setTimeout(() => item.remove(), 15000);
}

/** A button that copies `text()` to the clipboard (and selects it as a fallback). */
export function copyButton(getText, label = 'Copy', testid) {
  const button = h('button', {
    type: 'button',
    class: 'secondary',
    testid,
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(getText());
        button.textContent = 'Copied';
        announce('Copied to the clipboard');
        setTimeout(() => (button.textContent = label), 2000);
      } catch {
        toast('The browser did not allow copying: select the text and copy it by hand', 'error');
      }
    },
  }, label);
  return button;
}

/** Offers `text` as a file download (the browser's save dialog), without it ever being in the page. */
export function download(filename, text, type = 'application/toml') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const link = h('a', { href: url, download: filename, hidden: true });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/** A modal <dialog> with a title; returns {dialog, body, close}. Removed from the DOM on close. */
export function modal(title, testid) {
  const titleId = `dlg-${Math.random().toString(36).slice(2)}`;
  const body = h('div', { class: 'dialog-body' });
  const dialog = h('dialog', { 'aria-labelledby': titleId, testid },
    h('div', { class: 'dialog-head' },
      h('h2', { id: titleId }, title),
      h('button', { type: 'button', class: 'link close', 'aria-label': 'Close', onclick: () => dialog.close() }, '×')),
    body);
  dialog.addEventListener('close', () => dialog.remove());
  document.body.append(dialog);
  dialog.showModal();
  return { dialog, body, close: () => dialog.close() };
}

/** Error text for a failed call, naming the field the server complained about. */
export function errorText(err) {
  if (!err) return 'unknown error';
  const field = err.field ? ` (${err.field})` : '';
  return `${err.message || String(err)}${field}`;
}

export const ROLES = ['viewer', 'operator', 'admin'];

export function roleSelect(id, testid, selected = 'viewer') {
  return h('select', { id, name: 'role', testid },
    ROLES.map((role) => h('option', { value: role, selected: role === selected }, role)));
}
