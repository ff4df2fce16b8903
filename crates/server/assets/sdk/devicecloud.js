// devicecloud.js: a small client for the devicecloud HTTP API, for web apps served by the
// server itself (the dashboard and user apps under /apps/NAME/).
//
//   import { DeviceCloud } from '/sdk/devicecloud.js';
//   const dc = new DeviceCloud();
//   const me = await dc.me();                    // {user, role, csrf_token}; throws 401 when not logged in
//   const devices = await dc.devices();          // [{id, online, last_seen, capabilities}]
//   const demo = await dc.device('demo');        // + reported, desired
//   await dc.set('demo', 'led', true);           // resolves with the value the device confirmed
//   await dc.telemetry('demo', 'temperature', { from: Date.now() - 3600e3, points: 300 });
//   const stop = dc.subscribe((event) => console.log(event));   // live presence/state/telemetry
//
// It runs with the logged-in user's rights: the session cookie is HttpOnly and never seen by
// JavaScript; mutating requests carry the CSRF token that /api/v1/me (or /api/v1/login) returns.
// Every failure is a DeviceCloudError with the HTTP status and the server's message.

const API = '/api/v1';

/** An API call that failed: `status` is the HTTP status (0 for a network failure). */
export class DeviceCloudError extends Error {
  constructor(status, message, { field, method, path, body } = {}) {
    super(message);
    this.name = 'DeviceCloudError';
    this.status = status;
    this.field = field;
    this.method = method;
    this.path = path;
    this.body = body;
  }

  /** True when the user has to log in (again). */
  get unauthenticated() {
    return this.status === 401;
  }
}

function describeStatus(status) {
  switch (status) {
    case 400: return 'the request was rejected';
    case 401: return 'not logged in (or the session expired): log in on the dashboard and try again';
    case 403: return 'your role does not allow this';
    case 404: return 'not found';
    case 409: return 'conflict';
    case 429: return 'too many attempts: wait a minute and try again';
    case 504: return 'the device did not answer in time';
    default: return `the server answered ${status}`;
  }
}

const enc = encodeURIComponent;

export class DeviceCloud {
  /**
   * @param {object} [options]
   * @param {string} [options.baseUrl] origin of the server; default: the page's own origin
   * @param {string} [options.token] an API token (`devicecloud token create`) instead of the session cookie
   */
  constructor({ baseUrl = '', token } = {}) {
    this.baseUrl = baseUrl.replace(/\/$/, '');
    this.token = token;
    this.csrfToken = null;
    this.user = null;
    this._live = null;
  }

  // ---- plumbing ----------------------------------------------------------------------------

  /** Any API call: `path` is relative to /api/v1 (e.g. '/devices'); `body` is sent as JSON. */
  async request(method, path, body, { signal, retried = false } = {}) {
    const url = this.baseUrl + API + path;
    const headers = { Accept: 'application/json' };
    const mutating = method !== 'GET' && method !== 'HEAD';
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (this.token) {
      headers.Authorization = `Bearer ${this.token}`;
    } else if (mutating && path !== '/login') {
      if (!this.csrfToken) await this.me();
      headers['X-CSRF-Token'] = this.csrfToken;
    }
    let response;
    try {
      response = await fetch(url, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        credentials: 'same-origin',
        signal,
      });
    } catch (err) {
      if (err && err.name === 'AbortError') throw err;
      throw new DeviceCloudError(0, `${method} ${path}: cannot reach the server (${err.message || err})`, { method, path });
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try {
        data = JSON.parse(text);
      } catch {
        data = text;
      }
    }
    if (!response.ok) {
      // A stale CSRF token (e.g. the session was renewed in another tab): fetch a fresh one once.
      if (response.status === 403 && mutating && !this.token && !retried && /csrf/i.test(text)) {
        this.csrfToken = null;
        return this.request(method, path, body, { signal, retried: true });
      }
      if (response.status === 401) this.csrfToken = null;
      const message = data && typeof data === 'object' && data.error ? data.error : describeStatus(response.status);
      throw new DeviceCloudError(response.status, message, {
        field: data && typeof data === 'object' ? data.field : undefined,
        method,
        path,
        body: data,
      });
    }
    return data;
  }

  // ---- session -----------------------------------------------------------------------------

  /** The logged-in user: `{user, role, csrf_token}`. Throws a 401 DeviceCloudError if nobody is. */
  async me() {
    const me = await this.request('GET', '/me');
    this.csrfToken = me.csrf_token || null;
    this.user = me;
    return me;
  }

  async login(username, password) {
    const me = await this.request('POST', '/login', { username, password });
    this.csrfToken = me.csrf_token || null;
    this.user = me;
    return me;
  }

  async logout() {
    try {
      await this.request('POST', '/logout');
    } finally {
      this.csrfToken = null;
      this.user = null;
      this._closeLive();
    }
  }

  // ---- devices -----------------------------------------------------------------------------

  devices() {
    return this.request('GET', '/devices');
  }

  device(id) {
    return this.request('GET', `/devices/${enc(id)}`);
  }

  /**
   * Sets output `name` of device `id` to `value` (true/false or a number).
   * With `wait` (the default) it resolves once the device confirms, with
   * `{device, name, value, command_id, status: "confirmed"}`; it rejects with status 504 when the
   * device does not confirm in time and 409 when it is offline.
   * With `{wait: false}` it resolves at once with `{command_id, status: "pending"}`; see `command()`.
   */
  set(id, name, value, { wait = true, signal } = {}) {
    const query = wait ? '' : '?wait=false';
    return this.request('PUT', `/devices/${enc(id)}/properties/${enc(name)}${query}`, value, { signal });
  }

  /** A command's status: `{id, device, name, value, status: pending|confirmed|failed|timeout, error}`. */
  command(commandId) {
    return this.request('GET', `/commands/${enc(commandId)}`);
  }

  /**
   * Readings of one sensor, downsampled: `{device, sensor, from, to, bucket_ms, points: [{ts, min, avg, max, count}]}`.
   * `from`/`to` are milliseconds (or Dates); default: the last hour.
   */
  telemetry(id, sensor, { from, to, points = 300, signal } = {}) {
    const end = to === undefined ? Date.now() : +to;
    const start = from === undefined ? end - 3600_000 : +from;
    const query = `?from=${start}&to=${end}&points=${points}`;
    return this.request('GET', `/devices/${enc(id)}/telemetry/${enc(sensor)}${query}`, undefined, { signal });
  }

  // ---- administration (admin role) ---------------------------------------------------------

  /** `credential`: "enroll" (a one-time code for `devicecloud agent enroll`), "certificate" or "token" (a bundle). */
  addDevice(id, credential = 'enroll') {
    return this.request('POST', '/devices', { id, credential });
  }

  removeDevice(id) {
    return this.request('DELETE', `/devices/${enc(id)}`);
  }

  tokens() {
    return this.request('GET', '/tokens');
  }

  /** Resolves with `{name, role, token}`: the token is shown this once. */
  createToken(name, role) {
    return this.request('POST', '/tokens', { name, role });
  }

  revokeToken(name) {
    return this.request('DELETE', `/tokens/${enc(name)}`);
  }

  users() {
    return this.request('GET', '/users');
  }

  createUser(name, role, password) {
    return this.request('POST', '/users', { name, role, password });
  }

  removeUser(name) {
    return this.request('DELETE', `/users/${enc(name)}`);
  }

  // ---- live updates ------------------------------------------------------------------------

  /**
   * Calls `handler(event)` for every live event:
   *   {type: "presence", device, online, ts} | {type: "state", device, name, value, ts, cmd}
   *   {type: "telemetry", device, sensor, ts, value} | {type: "meta", device, capabilities}
   * plus `{type: "connection", status: "open" | "reconnecting", reconnected: bool}` when the stream
   * comes or goes (after a reconnect, reload what you show: events may have been missed).
   * One WebSocket (/api/v1/live) is shared by all subscribers and reconnects with backoff; if
   * WebSockets never work (a proxy), it falls back to server-sent events (/api/v1/events).
   * Returns a function that unsubscribes.
   */
  subscribe(handler) {
    if (!this._live) this._live = new LiveStream(this.baseUrl);
    const live = this._live;
    live.handlers.add(handler);
    live.start();
    return () => {
      live.handlers.delete(handler);
      if (live.handlers.size === 0) this._closeLive();
    };
  }

  _closeLive() {
    if (this._live) {
      this._live.close();
      this._live = null;
    }
  }
}

/** The shared live connection: WebSocket with reconnect and backoff, SSE as fallback. */
class LiveStream {
  constructor(baseUrl) {
    this.baseUrl = baseUrl;
    this.handlers = new Set();
    this.socket = null;
    this.source = null;
    this.timer = null;
    this.closed = false;
    this.started = false;
    this.attempt = 0;
    this.everOpened = false;
    this.wasOpen = false;
  }

  start() {
    if (this.started) return;
    this.started = true;
    this.connect();
  }

  emit(event) {
    for (const handler of [...this.handlers]) {
      try {
        handler(event);
      } catch (err) {
        console.error('devicecloud: a subscriber threw', err);
      }
    }
  }

  dispatch(text) {
    let event;
    try {
      event = JSON.parse(text);
    } catch {
      console.warn('devicecloud: ignoring a live message that is not JSON', text);
      return;
    }
    if (event && typeof event === 'object') this.emit(event);
  }

  opened() {
    const reconnected = this.wasOpen;
    this.attempt = 0;
    this.everOpened = true;
    this.wasOpen = true;
    this.emit({ type: 'connection', status: 'open', reconnected });
  }

  connect() {
    if (this.closed) return;
    if (typeof WebSocket === 'undefined' || (!this.everOpened && this.attempt >= 3 && typeof EventSource !== 'undefined')) {
      this.connectEvents();
      return;
    }
    const origin = this.baseUrl || location.origin;
    const url = origin.replace(/^http/, 'ws') + API + '/live';
    let socket;
    try {
      socket = new WebSocket(url);
    } catch (err) {
      console.warn('devicecloud: cannot open the live WebSocket', err);
      this.retry();
      return;
    }
    this.socket = socket;
    socket.onopen = () => this.opened();
    socket.onmessage = (message) => {
      if (typeof message.data === 'string') this.dispatch(message.data);
    };
    socket.onclose = () => {
      if (this.socket === socket) this.socket = null;
      this.retry();
    };
    socket.onerror = () => {}; // onclose follows and schedules the retry
  }

  connectEvents() {
    if (this.closed || this.source) return;
    const source = new EventSource((this.baseUrl || '') + API + '/events', { withCredentials: true });
    this.source = source;
    source.onopen = () => this.opened();
    source.onmessage = (message) => this.dispatch(message.data);
    source.onerror = () => {
      // EventSource retries by itself; tell subscribers the stream is down meanwhile.
      this.emit({ type: 'connection', status: 'reconnecting', reconnected: false });
    };
  }

  retry() {
    if (this.closed) return;
    this.emit({ type: 'connection', status: 'reconnecting', reconnected: false });
    // 0.5 s, 1 s, 2 s ... capped at 15 s, with jitter so a restarted server is not stampeded.
    const delay = Math.min(15_000, 500 * 2 ** this.attempt) * (0.75 + Math.random() * 0.5);
    this.attempt += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.socket) {
      const socket = this.socket;
      this.socket = null;
      socket.onclose = null;
      socket.close();
    }
    if (this.source) {
      this.source.close();
      this.source = null;
    }
  }
}

export default DeviceCloud;
