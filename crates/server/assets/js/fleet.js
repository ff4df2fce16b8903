// The dashboard's picture of the devices: loaded from the API, then kept current by the live
// stream. Pages listen for 'change' (detail: {id, event}) and 'telemetry' events.

import { toMs } from './ui.js';

export class Fleet extends EventTarget {
  constructor(dc) {
    super();
    this.dc = dc;
    this.devices = new Map();
    this.liveStatus = 'connecting';
    this.unsubscribe = null;
  }

  /** Reloads the device list (keeping the per-device details already fetched). */
  async load() {
    const list = await this.dc.devices();
    const seen = new Set();
    for (const device of list) {
      seen.add(device.id);
      const known = this.devices.get(device.id);
      this.devices.set(device.id, { reported: {}, desired: {}, ...known, ...device });
    }
    for (const id of [...this.devices.keys()]) {
      if (!seen.has(id)) this.devices.delete(id);
    }
    this.changed(null, { type: 'reload' });
    return this.list();
  }

  /** Fetches one device with its reported and desired state. */
  async loadDevice(id) {
    const device = await this.dc.device(id);
    // Sensors' latest readings come as `telemetry`; pages read every current value from `reported`.
    device.reported = { ...(device.telemetry || {}), ...(device.reported || {}) };
    device.desired = device.desired || {};
    device.loadedDetail = true;
    this.devices.set(id, device);
    this.changed(id, { type: 'reload' });
    return device;
  }

  reload() {
    this.load().catch(() => {});
    for (const [id, device] of this.devices) {
      if (device.loadedDetail) this.loadDevice(id).catch(() => {});
    }
  }

  list() {
    return [...this.devices.values()].sort((a, b) => a.id.localeCompare(b.id));
  }

  get(id) {
    return this.devices.get(id);
  }

  start() {
    if (this.unsubscribe) return;
    this.unsubscribe = this.dc.subscribe((event) => this.apply(event));
  }

  stop() {
    if (this.unsubscribe) this.unsubscribe();
    this.unsubscribe = null;
    this.devices.clear();
  }

  apply(event) {
    if (event.type === 'connection') {
      this.liveStatus = event.status;
      this.dispatchEvent(new CustomEvent('connection', { detail: event }));
      // Events were missed while the stream was down: reload what is shown.
      if (event.reconnected) this.reload();
      return;
    }
    if (event.type === 'lagged') {
      // The server dropped events for us (we were too slow): re-read everything.
      this.reload();
      return;
    }
    const id = event.device;
    if (!id) return;
    let device = this.devices.get(id);
    if (!device) {
      // A device we have not seen yet (just added or just enrolled): fetch it properly.
      device = { id, online: false, last_seen: null, capabilities: {}, reported: {}, desired: {} };
      this.devices.set(id, device);
      this.dc.device(id).then((full) => {
        Object.assign(device, full, { reported: { ...full.telemetry, ...full.reported, ...device.reported } });
        this.changed(id, { type: 'reload' });
      }).catch(() => {});
    }
    const ts = toMs(event.ts) ?? Date.now();
    switch (event.type) {
      case 'presence':
        device.online = !!event.online;
        device.last_seen = Math.max(toMs(device.last_seen) || 0, ts);
        break;
      case 'state':
      case 'event': {
        // 'event' (an input edge) is not in the live contract yet; accept it if the server sends it.
        const name = event.name || event.input;
        if (!name) return;
        device.reported = device.reported || {};
        device.reported[name] = { value: event.value, ts };
        device.last_seen = Math.max(toMs(device.last_seen) || 0, ts);
        break;
      }
      case 'telemetry':
        device.reported = device.reported || {};
        device.reported[event.sensor] = { value: event.value, ts };
        device.last_seen = Math.max(toMs(device.last_seen) || 0, ts);
        this.dispatchEvent(new CustomEvent('telemetry', { detail: event }));
        break;
      case 'meta':
        device.capabilities = event.capabilities || {};
        break;
      case 'command':
        // A command from anyone (another tab, a script): what was asked and what became of it.
        device.desired = device.desired || {};
        device.desired[event.name] = { value: event.value, ts, command_id: event.command_id, status: event.status, error: event.error };
        break;
      default:
        return;
    }
    this.changed(id, event);
  }

  changed(id, event) {
    this.dispatchEvent(new CustomEvent('change', { detail: { id, event } }));
  }
}
