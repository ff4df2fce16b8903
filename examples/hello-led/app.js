// One button, one LED: shows the state the DEVICE confirmed, not the one we asked for.
import { DeviceCloud } from '/sdk/devicecloud.js';

const DEVICE = 'demo';
const OUTPUT = 'led';

const dc = new DeviceCloud();
const led = document.getElementById('led');
const state = document.getElementById('state');
const button = document.getElementById('toggle');
const error = document.getElementById('error');
let on = null; // the confirmed value; null until the device has reported one

function show(value) {
  on = value;
  state.textContent = value === null ? 'unknown' : value ? 'on' : 'off';
  led.classList.toggle('on', value === true);
}

button.addEventListener('click', async () => {
  button.disabled = true;
  error.textContent = '';
  state.textContent = 'switching…';
  try {
    // Resolves once the device reports the new level read back from its GPIO line.
    const answer = await dc.set(DEVICE, OUTPUT, !on);
    show(answer.value);
  } catch (err) {
    show(on);
    error.textContent = err.status === 409 ? `${DEVICE} is offline.` : err.message;
  } finally {
    button.disabled = false;
  }
});

// Another browser (or the dashboard) may switch the LED too.
dc.subscribe((event) => {
  if (event.type === 'state' && event.device === DEVICE && event.name === OUTPUT) show(event.value);
  if (event.type === 'presence' && event.device === DEVICE && !event.online) error.textContent = `${DEVICE} went offline.`;
  if (event.type === 'presence' && event.device === DEVICE && event.online) error.textContent = '';
});

try {
  const device = await dc.device(DEVICE);
  show(device.reported?.[OUTPUT]?.value ?? null);
  if (!device.online) error.textContent = `${DEVICE} is offline.`;
  button.disabled = false;
} catch (err) {
  error.textContent = err.status === 401
    ? 'Log in on the dashboard first, then reload this page.'
    : `Cannot load ${DEVICE}: ${err.message}`;
}
