// The last hour of demo's temperature (bucket average with its min..max band), extended live.
// uPlot comes from the dashboard's vendored copy; the data from the SDK with the user's login.
import uPlot from '/assets/vendor/uPlot.esm.js';
import { DeviceCloud } from '/sdk/devicecloud.js';

const DEVICE = 'demo';
const SENSOR = 'temperature';
const HOUR = 3600_000;

const dc = new DeviceCloud();
const box = document.getElementById('chart');
const now = document.getElementById('now');
const status = document.getElementById('status');
const error = document.getElementById('error');

// Columns for uPlot: time (seconds), min, avg, max.
const data = [[], [], [], []];
let plot = null;
let unit = '';

function fmt(v) {
  return v === null || v === undefined ? '–' : `${v.toFixed(1)} ${unit}`.trim();
}

function draw() {
  const from = (Date.now() - HOUR) / 1000;
  // Slide the window: drop what is now older than an hour.
  while (data[0].length && data[0][0] < from) data.forEach((column) => column.shift());
  status.textContent = `${data[0].length} point${data[0].length === 1 ? '' : 's'} in the last hour`;
  if (plot) {
    plot.setData(data);
    return;
  }
  plot = new uPlot({
    width: box.clientWidth || 600,
    height: 300,
    // Always the whole last hour, however few readings there are yet.
    scales: { x: { time: true, range: () => [(Date.now() - HOUR) / 1000, Date.now() / 1000] } },
    series: [
      {},
      { label: 'min', stroke: 'transparent', points: { show: false }, value: (u, v) => fmt(v) },
      { label: 'average', stroke: '#1f6feb', width: 2, value: (u, v) => fmt(v) },
      { label: 'max', stroke: 'transparent', points: { show: false }, value: (u, v) => fmt(v) },
    ],
    bands: [{ series: [3, 1], fill: 'rgba(31,111,235,0.15)' }],
  }, data, box);
  new ResizeObserver(() => plot.setSize({ width: box.clientWidth, height: 300 })).observe(box);
}

try {
  const device = await dc.device(DEVICE);
  unit = device.capabilities?.sensors?.find((s) => s.name === SENSOR)?.unit || '';
  const series = await dc.telemetry(DEVICE, SENSOR, { from: Date.now() - HOUR, points: 300 });
  for (const p of series.points) {
    data[0].push(p.ts / 1000);
    data[1].push(p.min);
    data[2].push(p.avg);
    data[3].push(p.max);
  }
  const last = series.points[series.points.length - 1];
  now.textContent = last ? fmt(last.avg) : 'no reading yet';
  draw();
  dc.subscribe((event) => {
    if (event.type !== 'telemetry' || event.device !== DEVICE || event.sensor !== SENSOR) return;
    data[0].push(event.ts / 1000);
    data[1].push(event.value);
    data[2].push(event.value);
    data[3].push(event.value);
    now.textContent = fmt(event.value);
    draw();
  });
} catch (err) {
  error.textContent = err.status === 401
    ? 'Log in on the dashboard first, then reload this page.'
    : `Cannot load ${DEVICE}'s ${SENSOR}: ${err.message}`;
}
