// The dashboard's end-to-end test in Debian's chromium (playwright-core drives it over CDP; no
// browser is downloaded). Usage:
//
//   node test.mjs URL USER PASSWORD
//
// with env DATA (the server's data directory, to read the simulated GPIO lines), ARTIFACTS (where
// screenshots go; default artifacts/browser) and CHROMIUM (default /usr/bin/chromium).
// It logs in, opens device `demo`, clicks the LED toggle, waits for the state the DEVICE confirms
// ("on"), checks that the simulated GPIO line is high, and keeps screenshots. Exits non-zero with a
// message on the first failure.

import fs from 'node:fs';
import path from 'node:path';
import { chromium } from 'playwright-core';

const [url, user, password] = process.argv.slice(2);
if (!url || !user || !password) {
  console.error('usage: node test.mjs URL USER PASSWORD   (env: DATA, ARTIFACTS, CHROMIUM)');
  process.exit(2);
}
const base = url.replace(/\/+$/, '');
const dataDir = process.env.DATA;
const artifacts = path.resolve(process.env.ARTIFACTS || 'artifacts/browser');
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 15_000;
fs.mkdirSync(artifacts, { recursive: true });

let step = 'starting';
const log = (message) => console.log(`browser test: ${message}`);
// Every example in examples/ is installed by run.sh: a missing one is a failure, never a skip.
async function openApp(appUrl) {
  const response = await page.goto(appUrl);
  const status = response ? response.status() : 'no response';
  if (status !== 200) fail(`${appUrl} answered ${status}; run.sh installs every example in DATA/apps`);
}

function fail(message) {
  throw new Error(message);
}

/** The simulated GPIO state file of the demo device somewhere under DATA (see agent::gpio::sim). */
function findGpioFile(dir, depth = 0) {
  if (!dir || depth > 4) return null;
  let entries;
  try {
    entries = fs.readdirSync(dir, { withFileTypes: true });
  } catch {
    return null;
  }
  for (const entry of entries) {
    if (entry.isFile() && entry.name === 'sim-gpio.json') return path.join(dir, entry.name);
  }
  for (const entry of entries) {
    if (entry.isDirectory()) {
      const found = findGpioFile(path.join(dir, entry.name), depth + 1);
      if (found) return found;
    }
  }
  return null;
}

/** Waits until the simulated line `name` has logical level `value`; returns the line. */
async function waitGpio(name, value) {
  if (!dataDir) fail('DATA is not set: cannot check the simulated GPIO line');
  const deadline = Date.now() + TIMEOUT;
  let last = 'no sim-gpio.json under the data directory yet';
  while (Date.now() < deadline) {
    const file = findGpioFile(dataDir);
    if (file) {
      try {
        const state = JSON.parse(fs.readFileSync(file, 'utf8'));
        const line = state.lines?.[name];
        if (!line) last = `${file} has no line '${name}' (lines: ${Object.keys(state.lines || {}).join(', ')})`;
        else if (line.value === value) return { file, line };
        else last = `${file}: line '${name}' is ${JSON.stringify(line)}`;
      } catch (err) {
        last = `cannot read ${file}: ${err.message}`;
      }
    }
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  fail(`the simulated GPIO line '${name}' did not become ${value ? 'high' : 'low'} within ${TIMEOUT / 1000}s: ${last}`);
}

async function waitText(page, testid, expected, timeout = TIMEOUT) {
  const locator = page.getByTestId(testid);
  try {
    await page.waitForFunction(
      ([id, want]) => {
        const el = document.querySelector(`[data-testid="${id}"]`);
        return el && want.includes(el.textContent.trim());
      },
      [testid, Array.isArray(expected) ? expected : [expected]],
      { timeout },
    );
  } catch {
    const actual = (await locator.count()) ? await locator.first().textContent() : '(element missing)';
    fail(`[data-testid=${testid}] should read ${JSON.stringify(expected)} but reads ${JSON.stringify(actual)} after ${timeout / 1000}s`);
  }
}

// launch() gives chromium a fresh temporary profile (user-data-dir) and removes it on close.
const browser = await chromium.launch({
  executablePath,
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync',
  ],
  timeout: 60_000,
});
const pageErrors = [];
let page;

try {
  // The server's certificate comes from its own CA, which this fresh profile does not trust.
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
  context.setDefaultTimeout(TIMEOUT);
  page = await context.newPage();
  page.on('pageerror', (err) => pageErrors.push(err.message));
  page.on('console', (msg) => {
    // Failed requests (401 before login, the deliberate 400/404s below) show up as console errors too.
    if (msg.type() === 'error' && !/Failed to load resource/.test(msg.text())) log(`console error: ${msg.text()}`);
  });

  step = 'the page holds no secret';
  const html = await (await context.request.get(`${base}/`)).text();
  if (!/<script type="module" src="\/assets\/app.js">/.test(html)) fail(`GET / did not return the dashboard: ${html.slice(0, 200)}`);
  if (html.includes(password)) fail('the dashboard HTML contains the admin password');

  step = 'log in';
  await page.goto(`${base}/`);
  await page.getByTestId('login-username').fill(user);
  await page.getByTestId('login-password').fill(password);
  await page.getByTestId('login-submit').click();
  const row = page.getByTestId('device-row-demo');
  try {
    await row.waitFor();
  } catch {
    const error = await page.getByTestId('login-error').textContent().catch(() => '');
    fail(`after logging in, device 'demo' is not in the list${error ? `: ${error}` : ''}`);
  }
  const csrf = (await (await context.request.get(`${base}/api/v1/me`)).json()).csrf_token;
  if (csrf && html.includes(csrf)) fail('the dashboard HTML contains the CSRF token');

  step = 'demo is online in the list';
  await waitText(page, 'device-status-demo', 'online', 30_000);
  await page.screenshot({ path: path.join(artifacts, 'devices.png') });

  step = 'open demo';
  await row.locator('a').click();
  await page.getByTestId('output-toggle-led').waitFor();
  // The device reports its LED (off after start) once connected.
  await waitText(page, 'output-state-led', ['off', 'on'], 30_000);
  if ((await page.getByTestId('output-state-led').textContent()).trim() === 'on') {
    log('the LED is already on: switching it off first');
    await page.getByTestId('output-toggle-led').click();
    await waitText(page, 'output-state-led', 'off');
  }
  await waitGpio('led', false);

  step = 'click the LED toggle';
  const clicked = Date.now();
  await page.getByTestId('output-toggle-led').click();
  await waitText(page, 'output-state-led', 'on');
  log(`the device confirmed "on" ${Date.now() - clicked} ms after the click`);
  const checked = await page.getByTestId('output-toggle-led').getAttribute('aria-checked');
  if (checked !== 'true') fail(`the toggle shows aria-checked=${checked} although the state reads "on"`);
  if (await page.getByTestId('output-error-led').isVisible()) {
    fail(`an error is shown: ${await page.getByTestId('output-error-led').textContent()}`);
  }
  // Let the chart and sensor values settle for the picture.
  await page.getByTestId('sensor-value-temperature').waitFor();
  await page.screenshot({ path: path.join(artifacts, 'led-on.png'), fullPage: true });

  step = 'the simulated GPIO line is high';
  const { file, line } = await waitGpio('led', true);
  log(`${path.relative(dataDir, file)}: led ${JSON.stringify(line)}`);

  step = 'the phone layout';
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300); // the chart re-lays itself out on resize (ResizeObserver)
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
  if (overflow > 1) fail(`on a 390 px wide screen the device page scrolls sideways by ${overflow} px`);
  await page.screenshot({ path: path.join(artifacts, 'led-on-mobile.png'), fullPage: true });

  step = 'switch the LED off again';
  await page.getByTestId('output-toggle-led').click();
  await waitText(page, 'output-state-led', 'off');
  await waitGpio('led', false);

  step = 'the hello-led user app';
  const appUrl = `${base}/apps/hello-led/`;
  await openApp(appUrl);
  await page.waitForFunction(() => !document.getElementById('toggle').disabled
    || document.getElementById('error').textContent, null, { timeout: TIMEOUT });
  const appError = await page.textContent('#error');
  if (appError) fail(`hello-led shows an error: ${appError}`);
  await page.click('#toggle');
  await page.waitForFunction(() => document.getElementById('state').textContent === 'on', null, { timeout: TIMEOUT })
    .catch(async () => fail(`hello-led: the state reads ${JSON.stringify(await page.textContent('#state'))}, error ${JSON.stringify(await page.textContent('#error'))}`));
  await waitGpio('led', true);
  await page.screenshot({ path: path.join(artifacts, 'hello-led.png') });
  log('hello-led switched the LED on through /sdk/devicecloud.js');

  step = 'the sensor-chart user app';
  await openApp(`${base}/apps/sensor-chart/`);
  await page.waitForFunction(() => document.getElementById('status').textContent
    || document.getElementById('error').textContent, null, { timeout: TIMEOUT });
  const chartError = await page.textContent('#error');
  if (chartError) fail(`sensor-chart shows an error: ${chartError}`);
  await page.waitForSelector('#chart canvas', { timeout: TIMEOUT })
    .catch(() => fail('sensor-chart drew no chart'));
  await page.screenshot({ path: path.join(artifacts, 'sensor-chart.png') });
  log(`sensor-chart drew the temperature chart (${await page.textContent('#status')})`);

  step = 'the SDK from a page';
  await page.goto(`${base}/`);
  await page.getByTestId('device-row-demo').waitFor();
  const sdk = await page.evaluate(async () => {
    const { DeviceCloud } = await import('/sdk/devicecloud.js');
    const dc = new DeviceCloud();
    const failure = async (promise) => promise.then(
      (value) => ({ ok: true, value }),
      (err) => ({ ok: false, name: err.name, status: err.status, message: err.message }));
    const me = await dc.me();
    const devices = await dc.devices();
    const confirmed = await dc.set('demo', 'led', false);
    const unknownDevice = await failure(dc.device('no-such-device'));
    const unknownOutput = await failure(dc.set('demo', 'no-such-output', true));
    const wrongType = await failure(dc.set('demo', 'led', 'bright'));
    const now = Date.now();
    const series = await dc.telemetry('demo', 'temperature', { from: now - 3600_000, to: now, points: 50 });
    return { me, ids: devices.map((d) => d.id), confirmed, unknownDevice, unknownOutput, wrongType, series };
  });
  if (sdk.me.user !== user) fail(`dc.me() says ${JSON.stringify(sdk.me)}`);
  if (!sdk.ids.includes('demo')) fail(`dc.devices() lacks demo: ${JSON.stringify(sdk.ids)}`);
  if (sdk.confirmed.value !== false || sdk.confirmed.status !== 'confirmed') fail(`dc.set(demo, led, false) answered ${JSON.stringify(sdk.confirmed)}`);
  for (const [what, result, status] of [
    ['dc.device("no-such-device")', sdk.unknownDevice, 404],
    ['dc.set("demo", "no-such-output")', sdk.unknownOutput, 400],
    ['dc.set("demo", "led", "bright")', sdk.wrongType, 400],
  ]) {
    if (result.ok || result.name !== 'DeviceCloudError' || result.status !== status || !result.message) {
      fail(`${what} should fail with a ${status} DeviceCloudError and a message, got ${JSON.stringify(result)}`);
    }
  }
  if (!Array.isArray(sdk.series.points)) fail(`dc.telemetry() answered ${JSON.stringify(sdk.series).slice(0, 200)}`);
  await waitGpio('led', false);
  log(`the SDK works: 404/400 errors carry messages ("${sdk.wrongType.message}"); telemetry query answered ${sdk.series.points.length} bucket(s) for the last hour`);

  if (pageErrors.length) fail(`uncaught errors in the page: ${pageErrors.join(' | ')}`);
  log(`passed; screenshots in ${artifacts}`);
} catch (err) {
  console.error(`browser test FAILED at "${step}": ${err.message}`);
  if (page) {
    await page.screenshot({ path: path.join(artifacts, 'failure.png'), fullPage: true }).catch(() => {});
    console.error(`the page at the failure: ${path.join(artifacts, 'failure.png')}`);
  }
  process.exitCode = 1;
} finally {
  await browser.close().catch(() => {});
}
