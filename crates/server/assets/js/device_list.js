// The device list: online/offline and "last seen", kept live by the fleet.

import { h, timeAgo, formatTime, formatReading } from './ui.js';
import { openAddDevice } from './enrollment.js';

function plural(n, word) {
  return `${n} ${word}${n === 1 ? '' : 's'}`;
}

function summary(device) {
  const caps = device.capabilities || {};
  const parts = [];
  if (caps.outputs && caps.outputs.length) parts.push(plural(caps.outputs.length, 'output'));
  if (caps.inputs && caps.inputs.length) parts.push(plural(caps.inputs.length, 'input'));
  if (caps.sensors && caps.sensors.length) parts.push(plural(caps.sensors.length, 'sensor'));
  return parts.join(' · ') || 'no self-description yet';
}

function firstReading(device) {
  const sensor = (device.capabilities?.sensors || [])[0];
  const reading = sensor && device.reported?.[sensor.name];
  return reading ? `${sensor.name} ${formatReading(reading.value, sensor.unit)}` : '';
}

export function mount(main, ctx) {
  const list = h('ul', { class: 'device-list', testid: 'device-list', 'aria-live': 'off' });
  const empty = h('p', { class: 'muted', hidden: true, testid: 'device-list-empty' });
  const header = h('div', { class: 'page-head' },
    h('h1', {}, 'Devices'),
    ctx.isAdmin()
      ? h('button', { type: 'button', testid: 'add-device', onclick: () => openAddDevice(ctx) }, 'Add device')
      : null);
  main.append(header, empty, list);

  // One <li> per device, updated in place so keyboard focus survives live updates.
  const rows = new Map();

  function createRow(id) {
    const dot = h('span', { class: 'dot', 'aria-hidden': 'true' });
    const info = h('span', { class: 'muted small' });
    const status = h('span', { class: 'status', testid: `device-status-${id}` });
    const seen = h('span', { class: 'muted small', testid: `device-seen-${id}` });
    const li = h('li', { class: 'device-row', testid: `device-row-${id}` },
      h('a', { href: `#/devices/${encodeURIComponent(id)}` },
        dot,
        h('span', { class: 'device-main' }, h('strong', { class: 'device-id' }, id), info),
        h('span', { class: 'device-side' }, status, seen)));
    return { li, dot, info, status, seen };
  }

  function updateRow(r, device) {
    const state = device.online ? 'online' : 'offline';
    r.dot.className = `dot ${state}`;
    r.status.className = `status ${state}`;
    r.status.textContent = state;
    r.info.textContent = summary(device);
    r.seen.title = device.last_seen ? `last seen ${formatTime(device.last_seen)}` : 'never seen';
    r.seen.textContent = device.online && firstReading(device) ? firstReading(device) : `last seen ${timeAgo(device.last_seen)}`;
  }

  function render() {
    const devices = ctx.fleet.list();
    empty.hidden = devices.length > 0;
    empty.textContent = ctx.isAdmin()
      ? 'No devices yet. Add one with “Add device”, or run `devicecloud device add NAME --enroll` on the server.'
      : 'No devices yet.';
    const ids = new Set(devices.map((d) => d.id));
    for (const [id, r] of rows) {
      if (!ids.has(id)) {
        r.li.remove();
        rows.delete(id);
      }
    }
    devices.forEach((device, index) => {
      let r = rows.get(device.id);
      if (!r) {
        r = createRow(device.id);
        rows.set(device.id, r);
      }
      updateRow(r, device);
      if (list.children[index] !== r.li) list.insertBefore(r.li, list.children[index] || null);
    });
  }

  const onChange = () => render();
  ctx.fleet.addEventListener('change', onChange);
  // "x min ago" moves on by itself.
  const tick = setInterval(render, 10_000);

  render();
  ctx.fleet.load().catch((err) => ctx.failed(err, 'Loading the devices failed'));

  return () => {
    ctx.fleet.removeEventListener('change', onChange);
    clearInterval(tick);
  };
}
