// A telemetry chart for one sensor: the bucket average as a line with the min..max band behind
// it, for the last hour, day or week, extended live as readings arrive.

import uPlot from '../vendor/uPlot.esm.js';
import { h, errorText, formatReading } from './ui.js';

const RANGES = [
  { key: 'hour', label: 'Hour', ms: 3600_000 },
  { key: 'day', label: 'Day', ms: 24 * 3600_000 },
  { key: 'week', label: 'Week', ms: 7 * 24 * 3600_000 },
];
const POINTS = 300;

export class TelemetryChart {
  constructor(ctx, deviceId, sensor) {
    this.ctx = ctx;
    this.deviceId = deviceId;
    this.sensor = sensor;
    this.range = RANGES[0];
    this.points = [];
    this.bucketMs = 0;
    this.plot = null;
    this.request = null;

    const name = sensor.name;
    this.buttons = RANGES.map((range) => h('button', {
      type: 'button',
      class: 'segment',
      'aria-pressed': range === this.range ? 'true' : 'false',
      testid: `chart-range-${name}-${range.key}`,
      onclick: () => this.setRange(range),
    }, range.label));
    this.status = h('p', { class: 'muted small chart-status', testid: `chart-status-${name}` });
    this.canvas = h('div', { class: 'chart-canvas', role: 'img', 'aria-label': `Chart of ${name}`, testid: `chart-${name}` });
    this.el = h('section', { class: 'card chart', 'aria-labelledby': `chart-title-${name}` },
      h('div', { class: 'chart-head' },
        h('h3', { id: `chart-title-${name}` }, name, sensor.unit ? h('span', { class: 'muted' }, ` (${sensor.unit})`) : null),
        h('div', { class: 'segments', role: 'group', 'aria-label': `Time range for ${name}` }, this.buttons)),
      this.canvas,
      this.status);

    this.resizeObserver = new ResizeObserver(() => this.resize());
    this.resizeObserver.observe(this.canvas);
  }

  setRange(range) {
    this.range = range;
    this.buttons.forEach((b, i) => b.setAttribute('aria-pressed', RANGES[i] === range ? 'true' : 'false'));
    this.load();
  }

  async load() {
    if (this.request) this.request.abort();
    const controller = new AbortController();
    this.request = controller;
    const to = Date.now();
    const from = to - this.range.ms;
    this.from = from;
    this.status.textContent = 'Loading…';
    try {
      const answer = await this.ctx.dc.telemetry(this.deviceId, this.sensor.name, { from, to, points: POINTS, signal: controller.signal });
      if (controller.signal.aborted) return;
      this.bucketMs = answer.bucket_ms || Math.ceil(this.range.ms / POINTS);
      this.points = (answer.points || []).map((p) => ({ ts: p.ts, min: p.min, avg: p.avg, max: p.max, count: p.count || 1 }));
      this.draw();
    } catch (err) {
      if (err.name === 'AbortError') return;
      if (err.status === 401) {
        this.ctx.failed(err);
        return;
      }
      this.status.textContent = `Could not load ${this.sensor.name}: ${errorText(err)}`;
    } finally {
      if (this.request === controller) this.request = null;
    }
  }

  /** A live reading: merged into the newest bucket, or a new bucket; old ones slide out. */
  add(ts, value) {
    if (typeof value !== 'number' || !Number.isFinite(value)) return;
    const last = this.points[this.points.length - 1];
    if (last && ts < last.ts) return; // older than what we show (a replayed reading)
    if (last && this.bucketMs && ts < last.ts + this.bucketMs) {
      last.min = Math.min(last.min, value);
      last.max = Math.max(last.max, value);
      last.avg = (last.avg * last.count + value) / (last.count + 1);
      last.count += 1;
    } else {
      const start = last && this.bucketMs ? last.ts + Math.floor((ts - last.ts) / this.bucketMs) * this.bucketMs : ts;
      this.points.push({ ts: start, min: value, avg: value, max: value, count: 1 });
    }
    this.from = Date.now() - this.range.ms;
    while (this.points.length && this.points[0].ts < this.from - this.bucketMs) this.points.shift();
    this.draw();
  }

  data() {
    const xs = this.points.map((p) => p.ts / 1000);
    return [xs, this.points.map((p) => p.min), this.points.map((p) => p.avg), this.points.map((p) => p.max)];
  }

  draw() {
    const count = this.points.length;
    const last = this.points[count - 1];
    this.status.textContent = count
      ? `${count} point${count === 1 ? '' : 's'} · latest ${formatReading(last.avg, this.sensor.unit)} · ${this.range.label.toLowerCase()} view`
      : `No readings of ${this.sensor.name} in the last ${this.range.label.toLowerCase()}.`;
    const data = this.data();
    if (this.plot) {
      this.plot.setData(data);
      this.plot.setScale('x', { min: this.from / 1000, max: Date.now() / 1000 });
      return;
    }
    if (!count) return;
    const styles = getComputedStyle(document.documentElement);
    const accent = styles.getPropertyValue('--accent').trim() || '#1f6feb';
    const band = styles.getPropertyValue('--band').trim() || 'rgba(31,111,235,0.15)';
    const axisColor = styles.getPropertyValue('--muted').trim() || '#666';
    const grid = styles.getPropertyValue('--grid').trim() || 'rgba(128,128,128,0.2)';
    const unit = this.sensor.unit || '';
    const axis = { stroke: axisColor, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = {
      width: this.width(),
      height: this.height(),
      scales: { x: { time: true, range: () => [this.from / 1000, Date.now() / 1000] } },
      legend: { live: true },
      cursor: { drag: { x: false, y: false } },
      series: [
        {},
        { label: 'min', stroke: 'transparent', points: { show: false }, value: (u, v) => formatReading(v, unit) },
        { label: 'avg', stroke: accent, width: 2, value: (u, v) => formatReading(v, unit) },
        { label: 'max', stroke: 'transparent', points: { show: false }, value: (u, v) => formatReading(v, unit) },
      ],
      bands: [{ series: [3, 1], fill: band }],
      axes: [axis, { ...axis, size: 56 }],
    };
    this.plot = new uPlot(opts, data, this.canvas);
  }

  width() {
    return Math.max(200, this.canvas.clientWidth || this.el.clientWidth - 24 || 320);
  }

  height() {
    return window.innerWidth < 600 ? 180 : 240;
  }

  resize() {
    if (this.plot) this.plot.setSize({ width: this.width(), height: this.height() });
  }

  destroy() {
    if (this.request) this.request.abort();
    this.resizeObserver.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}
