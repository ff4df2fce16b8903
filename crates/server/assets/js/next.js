/**
 * Where the dashboard may send the browser after logging in (`/login?next=...`): only a path on
 * this server. `next` comes from the URL, so anyone can craft it; browsers read `/\evil.example`
 * and `/<tab>/evil.example` as `//evil.example`, another site, so everything that is not a plain
 * path is refused, before and after percent-decoding.
 *
 * @param {unknown} target the requested path
 * @param {string} origin this page's origin, e.g. `https://iot.example.com:8443`
 * @returns {string | null} the path to go to, or null to ignore the request
 */
export function sameOriginPath(target, origin) {
  if (typeof target !== 'string' || target.length > 2048) return null;
  let decoded;
  try {
    decoded = decodeURIComponent(target);
  } catch {
    return null;
  }
  for (const path of [target, decoded]) {
    if (!path.startsWith('/') || path.startsWith('//')) return null;
    // Backslashes, control characters and whitespace are what browsers "fix" into another host.
    if (/[\\\u0000-\u0020\u007f]/.test(path)) return null;
  }
  let url;
  try {
    url = new URL(target, origin);
  } catch {
    return null;
  }
  if (url.origin !== origin || url.pathname.startsWith('/login')) return null;
  return url.pathname + url.search + url.hash;
}
