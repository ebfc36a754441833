// The table of sites: GET /api/sites every 10 s with the integrator token (session storage only).
const KEY = 'intercom.integratorToken';
const REFRESH_MS = 10000;
const $ = (id) => document.getElementById(id);
let timer = null;

function cell(text, cls) {
  const td = document.createElement('td');
  td.textContent = text === null || text === undefined ? '–' : String(text);
  if (cls) td.className = cls;
  return td;
}

function row(s) {
  const tr = document.createElement('tr');
  tr.dataset.siteId = s.site_id;
  const health = s.health ? (s.health.healthy ? 'healthy' : `HTTP ${s.health.status}: ${s.health.problems.join('; ')}`) : null;
  const idCheck = s.site_id_ok === null ? null : s.site_id_ok ? 'ok' : `says ${s.reported_site_id}`;
  const devices = s.devices ? `${s.devices.online} / ${s.devices.total}` : null;
  const error = s.last_error ? `${s.last_error} (${s.last_error_at})` : '';
  tr.append(cell(s.site_id, 'mono'), cell(s.reachable ? 'yes' : 'no', s.reachable ? 'on' : 'off'),
    cell(health, s.health?.healthy ? 'on' : 'off'), cell(idCheck, s.site_id_ok === false ? 'off flagged' : ''),
    cell(devices), cell(s.live_calls), cell(s.last_24h?.missed), cell(s.last_24h?.failed), cell(error, 'muted'));
  return tr;
}

async function load() {
  const res = await fetch('api/sites', { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY)}` } });
  const body = await res.json().catch(() => null);
  if (res.status === 401) {
    signedOut(body?.message || 'invalid integrator token');
    return false;
  }
  if (!res.ok || !body) throw new Error(body?.message || `HTTP ${res.status}`);
  $('sites').tBodies[0].replaceChildren(...body.data.map(row));
  $('updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
  return true;
}

function signedOut(message = '') {
  clearInterval(timer);
  sessionStorage.removeItem(KEY);
  $('view').hidden = true;
  $('signout').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message;
}

async function start() {
  if (!(await load())) return;
  $('signin').hidden = true;
  $('view').hidden = false;
  $('signout').hidden = false;
  timer = setInterval(() => load().catch((err) => { $('updated').textContent = `refresh failed: ${err.message}`; }),
    REFRESH_MS);
}

$('signin').addEventListener('submit', (event) => {
  event.preventDefault();
  sessionStorage.setItem(KEY, $('token').value.trim());
  $('token').value = '';
  start().catch((err) => signedOut(err.message));
});
$('signout').addEventListener('click', () => signedOut());
if (sessionStorage.getItem(KEY)) start().catch((err) => signedOut(err.message));
else signedOut();
