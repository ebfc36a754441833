// Live: every device with its retained status and every call with its state and timers, pushed over MQTT.
// Status comes straight from the retained `devices/+/status` messages; a call message on any party's
// topic makes the page re-read the calls it shows (so no state is guessed from partial messages).
import { api } from './api.js';
import { listen, matches } from './link.js';
import { attempt, duration, h, when } from './ui.js';

export const title = 'Live';

const CALL_TOPICS = ['users/+/calls/incoming', 'users/+/calls/control', 'devices/+/calls/control'];
// Bridge mode: no MQTT in the browser, so calls and device statuses are read over REST this often instead.
const POLL_MS = 3000;
const devices = new Map(); // device_id -> directory row
const status = new Map(); // device_id -> last status message
let ctx;
let els;
let refreshing = false;
let again = false;

function table(id, headings) {
  const body = h('tbody', { id });
  return [h('div', { class: 'scroll' }, h('table', {}, h('thead', {}, h('tr', {}, headings.map((t) => h('th', { scope: 'col' }, t)))), body)), body];
}

export function mount(section, context) {
  ctx = context;
  const [activeWrap, active] = table('live-active', ['Call', 'State', 'Device', 'Household', 'Ringing / targets',
                                                     'Answered by', 'Started', 'Timer']);
  const [endedWrap, ended] = table('live-ended', ['Call', 'State', 'End reason', 'Device', 'Household', 'Answered by',
                                                  'Ended']);
  const [devWrap, devs] = table('live-devices', ['Device', 'Name', 'Household', 'Online', 'Battery', 'Properties',
                                                 'Last seen']);
  els = { active, ended, devs };
  section.append(
    h('h2', { tabindex: -1 }, 'Live'),
    h('p', { class: 'hint' }, ctx.cfg.bridge
      ? `Bridge mode: read over REST every ${POLL_MS / 1000} s (MQTT is the external broker's).`
      : 'Pushed over MQTT from the box as it happens; nothing here polls.'),
    h('div', { class: 'card' }, h('h3', {}, 'Active calls'), activeWrap),
    h('div', { class: 'card' }, h('h3', {}, 'Recently ended'), endedWrap),
    h('div', { class: 'card' }, h('h3', {}, 'Devices'), devWrap),
  );
  listen(onMessage);
  window.addEventListener('directory-changed', loadDevices);
  setInterval(tick, 1000);
  loadDevices();
  refreshCalls();
  if (ctx.cfg.bridge) {
    pollStatus();
    setInterval(() => {
      if (document.hidden) return;  // a background tab does not poll
      pollStatus();
      refreshCalls();
    }, POLL_MS);
  }
}

/** Bridge mode: every device's last status in one read (what the retained `devices/+/status` would push). */
async function pollStatus() {
  const site = await attempt(() => api.get('/api/admin/site?devices=true'));
  if (!site) return;
  status.clear();
  for (const st of site.device_status) status.set(st.device_id, { ...st, seen: st.updated_at });
  renderDevices();
}

function onMessage(msg) {
  if (msg.dir !== 'in') return;
  if (matches('devices/+/status', msg.topic) && msg.body && typeof msg.body === 'object') {
    const id = msg.topic.split('/')[1];
    status.set(id, { ...msg.body, seen: msg.body.updated_at || msg.at.toISOString() });
    renderDevices();
  } else if (CALL_TOPICS.some((f) => matches(f, msg.topic))) {
    scheduleRefresh();
  }
}

/**
 * Re-read the calls after a call message: one read per burst (a transition notifies several parties),
 * at most ~3 a second on a busy site (inside the admin's REST rate limit), and never missing the last
 * message: one arriving while a read is under way triggers one more read.
 */
function scheduleRefresh() {
  if (refreshing) {
    again = true;
    return;
  }
  refreshing = true;
  setTimeout(async () => {
    again = false;
    await refreshCalls();
    setTimeout(() => {
      refreshing = false;
      if (again) scheduleRefresh();
    }, 250);
  }, 100);
}

async function loadDevices() {
  const rows = await attempt(() => api.get('/api/admin/devices'));
  if (!rows) return;
  devices.clear();
  for (const row of rows) devices.set(row.device_id, row);
  renderDevices();
}

function renderDevices() {
  const ids = [...new Set([...devices.keys(), ...status.keys()])].sort();
  els.devs.replaceChildren(...ids.map((id) => {
    const dev = devices.get(id) || {};
    const st = status.get(id);
    const online = st ? h('span', { class: `badge ${st.online ? 'on' : 'off'}` }, st.online ? 'online' : 'offline')
      : h('span', { class: 'badge' }, 'never reported');
    const props = st?.properties && Object.keys(st.properties).length ? JSON.stringify(st.properties) : '';
    return h('tr', { dataset: { deviceId: id } }, h('td', { class: 'mono' }, id), h('td', {}, dev.name || ''),
      h('td', {}, dev.household_number || ''), h('td', {}, online),
      h('td', {}, st?.battery === null || st?.battery === undefined ? '' : `${st.battery} %`), h('td', { class: 'mono' }, props),
      h('td', {}, st ? when(st.seen) : ''));
  }));
}

function deadline(call) {
  const { ring_timeout_s: ring, max_duration_s: max } = ctx.cfg.calls;
  const ms = (iso) => new Date(iso).getTime();
  if (call.status === 'ringing' && call.ring_phase === 'forwarded' && call.forwarded_at) {
    return { at: ms(call.forwarded_at) + ring * 1000, label: 'rings for' }; // the second phase rings in full
  }
  if (call.status === 'ringing' && call.forward_to?.length && ctx.features.forwarding) {
    return { at: ms(call.start_time) + (call.forward_after_s ?? ring) * 1000, label: 'forwards in' };
  }
  if (call.status === 'ringing') return { at: ms(call.start_time) + ring * 1000, label: 'rings for' };
  if (call.status === 'connected' && call.connected_at) {
    return { at: new Date(call.connected_at).getTime() + max * 1000, label: 'ends in' };
  }
  return null;
}

function stateBadge(state) {
  return h('span', { class: `badge state-${state}` }, state);
}

/** Who rings now: the targets, or in a forwarded call's second phase the fallbacks; DND skips noted. */
function ringingCell(c) {
  const forwarded = c.ring_phase === 'forwarded';
  const now = forwarded ? c.forward_to
    : c.status === 'ringing' && c.ringing_resident_ids ? c.ringing_resident_ids : c.target_resident_ids;
  return h('td', {}, forwarded ? [h('span', { class: 'badge state-ringing' }, 'forwarded'), ` → ${now.join(', ')}`,
    h('span', { class: 'muted' }, ` (was ${c.target_resident_ids.join(', ')})`)] : now.join(', '),
  c.dnd_resident_ids?.length ? h('span', { class: 'muted' }, ` · DND: ${c.dnd_resident_ids.join(', ')}`) : null);
}

async function refreshCalls() {
  const calls = await attempt(() => Promise.all([
    api.get('/api/calls?status=ringing&limit=500'),
    api.get('/api/calls?status=connected&limit=500'),
    api.get('/api/calls?status=ended&limit=10'),
  ]));
  if (!calls) return;
  const [ringing, connected, ended] = calls;
  const active = [...ringing, ...connected].sort((a, b) => (a.start_time < b.start_time ? 1 : -1));
  els.active.replaceChildren(...(active.length ? active.map((c) => {
    const due = deadline(c);
    const timer = h('td', { class: 'timer', dataset: due ? { deadline: due.at, label: due.label } : {} });
    return h('tr', { dataset: { callId: c.call_id } }, h('td', { class: 'mono' }, c.call_id),
      h('td', {}, stateBadge(c.status)), h('td', {}, c.device_id), h('td', {}, c.household_number),
      ringingCell(c), h('td', {}, c.resident_id || ''), h('td', {}, when(c.start_time)),
      timer);
  }) : [h('tr', {}, h('td', { colspan: 8, class: 'muted' }, 'No call in progress.'))]));
  els.ended.replaceChildren(...ended.map((c) => h('tr', { dataset: { callId: c.call_id } },
    h('td', { class: 'mono' }, c.call_id), h('td', {}, stateBadge(c.status)), h('td', {}, c.end_reason || ''),
    h('td', {}, c.device_id), h('td', {}, c.household_number), h('td', {}, c.resident_id || ''),
    h('td', {}, when(c.ended_at)))));
  tick();
}

function tick() {
  for (const cell of els.active.querySelectorAll('td.timer[data-deadline]')) {
    const left = (Number(cell.dataset.deadline) - Date.now()) / 1000;
    cell.textContent = `${cell.dataset.label} ${duration(left)}`;
  }
}
