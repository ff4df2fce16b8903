// One device: a control per declared output showing the state the DEVICE confirmed (not what we
// asked for), live input and sensor values, and charts of numeric telemetry.

import { h, replace, timeAgo, formatTime, formatReading, announce, errorText, toast } from './ui.js';
import { TelemetryChart } from './chart.js';

function boolText(value) {
  if (value === true) return 'on';
  if (value === false) return 'off';
  return 'unknown';
}

function inputText(input, value) {
  if (value === undefined || value === null) return '–';
  if (input.type === 'bool' || typeof value === 'boolean') return value ? 'pressed' : 'released';
  return formatReading(value, input.unit);
}

export function mount(main, ctx, route) {
  const id = route.id;
  const pending = new Map(); // output name -> true while a PUT is in flight
  const errors = new Map(); // output name -> message of the last failure
  const charts = new Map(); // sensor name -> TelemetryChart
  let shapeKey = null; // capabilities the page was built for: rebuilt when they change
  let device = ctx.fleet.get(id);
  let loaded = false;

  const title = h('h1', {}, id);
  const statusDot = h('span', { class: 'dot', 'aria-hidden': 'true' });
  const statusText = h('span', { class: 'status', testid: 'device-status' });
  const seen = h('span', { class: 'muted small', testid: 'device-last-seen' });
  const body = h('div', { class: 'device-body' }, h('p', { class: 'muted' }, 'Loading…'));
  main.append(
    h('p', { class: 'crumbs' }, h('a', { href: '#/devices' }, '← Devices')),
    h('div', { class: 'page-head' }, title, h('span', { class: 'presence' }, statusDot, statusText, seen)),
    body);

  // --- outputs ---------------------------------------------------------------------------------

  const outputRefs = new Map();

  function outputControl(output) {
    const name = output.name;
    const labelId = `output-label-${name}`;
    const state = h('span', { class: 'state', testid: `output-state-${name}` });
    const error = h('p', { class: 'form-error small', role: 'alert', testid: `output-error-${name}`, hidden: true });
    let control;
    let numberInput = null;
    if (output.type === 'bool') {
      control = h('button', {
        type: 'button',
        role: 'switch',
        class: 'switch',
        'aria-labelledby': labelId,
        'aria-checked': 'false',
        testid: `output-toggle-${name}`,
        onclick: () => {
          const current = device?.reported?.[name]?.value;
          send(name, !(current === true));
        },
      }, h('span', { class: 'knob', 'aria-hidden': 'true' }));
    } else {
      numberInput = h('input', { type: 'number', step: 'any', id: `output-input-${name}`, 'aria-labelledby': labelId, testid: `output-input-${name}`, inputmode: 'decimal' });
      control = h('form', {
        class: 'inline',
        onsubmit: (e) => {
          e.preventDefault();
          const value = Number(numberInput.value);
          if (numberInput.value.trim() === '' || !Number.isFinite(value)) {
            errors.set(name, 'Enter a number');
            updateOutputs();
            return;
          }
          send(name, value);
        },
      }, numberInput, h('button', { type: 'submit', testid: `output-set-${name}` }, 'Set'));
    }
    const row = h('div', { class: 'control-row', testid: `output-${name}` },
      h('span', { class: 'control-label', id: labelId }, name),
      h('span', { class: 'control-value' }, state, control),
      error);
    outputRefs.set(name, { output, state, control, error, numberInput });
    return row;
  }

  async function send(name, value) {
    if (pending.get(name)) return;
    pending.set(name, true);
    errors.delete(name);
    updateOutputs();
    try {
      const answer = await ctx.dc.set(id, name, value);
      device.reported = device.reported || {};
      // The answer carries the value the device read back from its hardware.
      device.reported[name] = { value: answer.value, ts: Date.now() };
      pending.delete(name);
      announce(`${name} is ${typeof answer.value === 'boolean' ? boolText(answer.value) : formatReading(answer.value)} (confirmed by ${id})`);
    } catch (err) {
      pending.delete(name);
      if (err.status === 401) {
        ctx.failed(err);
        return;
      }
      let message;
      if (err.status === 409) message = `${id} is offline: the command was not sent. ${err.message}`;
      else if (err.status === 504) message = `No confirmation: ${err.message}`;
      else if (err.status === 403) message = `Your role (${ctx.me?.role}) may not control devices.`;
      else message = `Setting ${name} failed: ${errorText(err)}`;
      errors.set(name, message);
      announce(message);
    }
    updateOutputs();
  }

  function updateOutputs() {
    const canOperate = ctx.canOperate();
    for (const [name, ref] of outputRefs) {
      const reported = device?.reported?.[name];
      const isPending = !!pending.get(name);
      if (ref.output.type === 'bool') {
        const on = reported?.value === true;
        ref.state.textContent = isPending ? 'pending' : boolText(reported?.value);
        ref.control.setAttribute('aria-checked', on ? 'true' : 'false');
        ref.control.classList.toggle('pending', isPending);
      } else {
        ref.state.textContent = isPending ? 'pending' : formatReading(reported?.value, ref.output.unit);
      }
      ref.state.classList.toggle('pending', isPending);
      ref.state.title = reported ? `reported ${formatTime(reported.ts)}` : 'not reported yet';
      ref.control.toggleAttribute('aria-busy', isPending);
      const disabled = isPending || !canOperate;
      if (ref.output.type === 'bool') ref.control.disabled = disabled;
      else for (const el of ref.control.querySelectorAll('input,button')) el.disabled = disabled;
      if (!canOperate) ref.control.title = 'Your role can only watch';
      const message = errors.get(name);
      ref.error.hidden = !message;
      ref.error.textContent = message || '';
    }
  }

  // --- inputs and sensors ----------------------------------------------------------------------

  const valueRefs = new Map(); // name -> {el, seen, format}

  function valueRow(kind, item, format) {
    const value = h('span', { class: 'reading', testid: `${kind}-value-${item.name}` });
    const when = h('span', { class: 'muted small' });
    valueRefs.set(item.name, { value, when, format });
    return h('div', { class: 'control-row' },
      h('span', { class: 'control-label' }, item.name),
      h('span', { class: 'control-value' }, value, when));
  }

  function updateValues() {
    for (const [name, ref] of valueRefs) {
      const reported = device?.reported?.[name];
      ref.value.textContent = ref.format(reported?.value);
      ref.when.textContent = reported?.ts ? timeAgo(reported.ts) : '';
      ref.when.title = reported?.ts ? formatTime(reported.ts) : '';
    }
  }

  // --- page ------------------------------------------------------------------------------------

  function build() {
    const caps = device.capabilities || {};
    const outputs = caps.outputs || [];
    const inputs = caps.inputs || [];
    const sensors = caps.sensors || [];
    outputRefs.clear();
    valueRefs.clear();
    for (const chart of charts.values()) chart.destroy();
    charts.clear();

    const sections = [];
    if (outputs.length) {
      sections.push(h('section', { class: 'card', 'aria-labelledby': 'outputs-title' },
        h('h2', { id: 'outputs-title' }, 'Outputs'),
        outputs.map(outputControl)));
    }
    if (inputs.length) {
      sections.push(h('section', { class: 'card', 'aria-labelledby': 'inputs-title' },
        h('h2', { id: 'inputs-title' }, 'Inputs'),
        inputs.map((input) => valueRow('input', input, (v) => inputText(input, v)))));
    }
    if (sensors.length) {
      sections.push(h('section', { class: 'card', 'aria-labelledby': 'sensors-title' },
        h('h2', { id: 'sensors-title' }, 'Sensors'),
        sensors.map((sensor) => valueRow('sensor', sensor, (v) => formatReading(v, sensor.unit)))));
    }
    if (!sections.length) {
      sections.push(h('p', { class: 'muted card' },
        `${id} has not described itself yet: its outputs, inputs and sensors appear here once its agent connects.`));
    }
    const chartBox = h('div', { class: 'charts' });
    for (const sensor of sensors) {
      const chart = new TelemetryChart(ctx, id, sensor);
      charts.set(sensor.name, chart);
      chartBox.append(chart.el);
    }
    if (sensors.length) sections.push(h('h2', { class: 'section-title' }, 'History'), chartBox);
    if (ctx.isAdmin()) {
      sections.push(h('section', { class: 'danger-zone' },
        h('button', { type: 'button', class: 'danger', testid: 'remove-device', onclick: remove }, `Remove ${id}`)));
    }
    replace(body, sections);
    for (const chart of charts.values()) chart.load();
  }

  async function remove() {
    if (!confirm(`Remove ${id}? Its credentials stop working at once and it is disconnected.`)) return;
    try {
      await ctx.dc.removeDevice(id);
      toast(`${id} removed`);
      ctx.fleet.load().catch(() => {});
      ctx.navigate('#/devices');
    } catch (err) {
      ctx.failed(err, `Removing ${id} failed`);
    }
  }

  function render() {
    device = ctx.fleet.get(id) || device;
    if (!device) return;
    const online = !!device.online;
    statusDot.className = `dot ${online ? 'online' : 'offline'}`;
    statusText.className = `status ${online ? 'online' : 'offline'}`;
    statusText.textContent = online ? 'online' : 'offline';
    seen.textContent = online ? '' : `last seen ${timeAgo(device.last_seen)}`;
    seen.title = formatTime(device.last_seen);
    const key = JSON.stringify(device.capabilities || {});
    if (loaded && key !== shapeKey) {
      shapeKey = key;
      build();
    }
    updateOutputs();
    updateValues();
  }

  const onChange = (e) => {
    if (e.detail.id === id || e.detail.id === null) render();
  };
  const onTelemetry = (e) => {
    const event = e.detail;
    if (event.device !== id) return;
    const chart = charts.get(event.sensor);
    if (chart) chart.add(event.ts || Date.now(), event.value);
  };
  ctx.fleet.addEventListener('change', onChange);
  ctx.fleet.addEventListener('telemetry', onTelemetry);
  const tick = setInterval(() => {
    if (device) {
      seen.textContent = device.online ? '' : `last seen ${timeAgo(device.last_seen)}`;
      updateValues();
    }
  }, 5000);

  ctx.fleet.loadDevice(id).then((full) => {
    device = full;
    loaded = true;
    render();
  }).catch((err) => {
    if (err.status === 404) {
      replace(body, h('p', { class: 'card', role: 'alert', testid: 'device-not-found' }, `There is no device “${id}”. `, h('a', { href: '#/devices' }, 'Back to the list')));
      return;
    }
    ctx.failed(err, `Loading ${id} failed`);
  });

  return () => {
    ctx.fleet.removeEventListener('change', onChange);
    ctx.fleet.removeEventListener('telemetry', onTelemetry);
    clearInterval(tick);
    for (const chart of charts.values()) chart.destroy();
  };
}
