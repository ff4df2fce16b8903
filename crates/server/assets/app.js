// The dashboard: a static page that talks to /api/v1 with the session cookie. Hash routes:
//   #/login  #/devices  #/devices/ID  #/tokens  #/users
// No secret is ever in the HTML: the CSRF token comes from /api/v1/login or /api/v1/me at run time.

import { DeviceCloud, DeviceCloudError } from '/sdk/devicecloud.js';
import { Fleet } from './js/fleet.js';
import { sameOriginPath } from './js/next.js';
import { announce, errorText, toast } from './js/ui.js';
import * as loginPage from './js/login.js';
import * as deviceListPage from './js/device_list.js';
import * as devicePage from './js/device_page.js';
import * as tokensPage from './js/tokens.js';
import * as usersPage from './js/users.js';

const dc = new DeviceCloud();
const fleet = new Fleet(dc);
const main = document.getElementById('main');
const topbar = document.querySelector('.topbar');

let me = null;
let cleanup = null;
// Where to go after logging in: the route asked for, or a user app that sent us here (/login?next=/apps/x/).
let afterLogin = null;

const ctx = {
  dc,
  fleet,
  get me() {
    return me;
  },
  isAdmin: () => me && me.role === 'admin',
  canOperate: () => me && (me.role === 'admin' || me.role === 'operator'),
  navigate: (hash) => {
    if (location.hash === hash) route();
    else location.hash = hash;
  },
  loggedIn: (who) => {
    me = who;
    startSession();
    const target = afterLogin;
    afterLogin = null;
    const path = target && !target.startsWith('#') ? sameOriginPath(target, location.origin) : null;
    if (path) {
      location.assign(path); // a user app under /apps/ sent us here
      return;
    }
    const hash = target && target.startsWith('#/') && target !== '#/login' ? target : '#/devices';
    if (location.pathname !== '/') location.assign(`/${hash}`);
    else ctx.navigate(hash);
  },
  /** Called with any error a page could not handle: a 401 sends the user to the login form. */
  failed: (err, what) => {
    if (err instanceof DeviceCloudError && err.status === 401) {
      sessionLost();
      return;
    }
    console.error(what, err);
    toast(what ? `${what}: ${errorText(err)}` : errorText(err), 'error');
  },
};

function sessionLost() {
  if (me) toast('Your session ended: please log in again', 'error');
  me = null;
  fleet.stop();
  topbar.hidden = true;
  if (location.hash !== '#/login') {
    if (!afterLogin && location.hash.startsWith('#/')) afterLogin = location.hash;
    location.hash = '#/login';
  } else {
    route();
  }
}

function startSession() {
  topbar.hidden = false;
  topbar.querySelector('[data-testid=whoami]').textContent = `${me.user} (${me.role})`;
  for (const link of topbar.querySelectorAll('[data-admin]')) link.hidden = !ctx.isAdmin();
  fleet.start();
}

const liveStatus = topbar.querySelector('.live-status');
fleet.addEventListener('connection', (e) => {
  const open = e.detail.status === 'open';
  liveStatus.textContent = open ? 'live' : 'reconnecting…';
  liveStatus.classList.toggle('ok', open);
});

topbar.querySelector('[data-testid=logout]').addEventListener('click', async () => {
  try {
    await dc.logout();
  } catch (err) {
    if (!(err instanceof DeviceCloudError && err.status === 401)) {
      ctx.failed(err, 'Logging out failed');
      return;
    }
  }
  me = null;
  fleet.stop();
  topbar.hidden = true;
  announce('Logged out');
  location.hash = '#/login';
});

function parseRoute() {
  const hash = location.hash || '';
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (location.pathname === '/login' && !hash) return { page: 'login' };
  switch (parts[0]) {
    case 'login': return { page: 'login' };
    case 'devices': return parts[1] ? { page: 'device', id: parts[1] } : { page: 'devices' };
    case 'tokens': return { page: 'tokens' };
    case 'users': return { page: 'users' };
    default: return { page: 'devices' };
  }
}

const pages = { login: loginPage, devices: deviceListPage, device: devicePage, tokens: tokensPage, users: usersPage };

function route() {
  const r = parseRoute();
  if (r.page !== 'login' && !me) {
    afterLogin = afterLogin || location.hash || null;
    location.hash = '#/login';
    return;
  }
  if (r.page === 'login' && me) {
    ctx.navigate('#/devices');
    return;
  }
  if (cleanup) {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
    cleanup = null;
  }
  for (const link of topbar.querySelectorAll('[data-nav]')) {
    const active = link.dataset.nav === r.page || (r.page === 'device' && link.dataset.nav === 'devices');
    if (active) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  main.replaceChildren();
  cleanup = pages[r.page].mount(main, ctx, r) || null;
  document.title = r.page === 'device' ? `${r.id} · devicecloud` : `${r.page[0].toUpperCase()}${r.page.slice(1)} · devicecloud`;
}

window.addEventListener('hashchange', route);

async function boot() {
  const next = new URLSearchParams(location.search).get('next');
  if (next) afterLogin = next;
  try {
    const who = await dc.me();
    if (location.pathname === '/login') {
      ctx.loggedIn(who);
      return;
    }
    me = who;
    startSession();
  } catch (err) {
    me = null;
    if (!(err instanceof DeviceCloudError && err.status === 401)) {
      toast(`Cannot reach the server: ${errorText(err)}`, 'error');
    }
  }
  route();
}

boot();
