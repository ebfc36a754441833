// Simulator: the browser plays a door station and residents over MQTT, exactly as real ones would,
// and logs every message in and out. In authenticated mode it speaks through the admin connection,
// so it can do nothing the admin token cannot, and the box logs each party it plays as simulated.
import { api, seg } from './api.js';
import { enabled, residentActions, snapshotThumb } from './extensions.js';
import { last, listen, matches, publish } from './link.js';
import { attempt, clock, duration, field, h, toast } from './ui.js';

export const title = 'Simulator';

const LOG_MAX = 200;
let ctx;
let els;
let door = null; // {device_id, request_id, call_id, state, creds, note, snapshot}
const residents = new Map(); // resident_id -> {row, call, el}

const rand = () => Math.random().toString(36).slice(2, 10);

export function mount(section, context) {
  ctx = context;
  if (ctx.cfg.bridge) {
    section.append(h('h2', { tabindex: -1 }, 'Simulator'), h('p', { class: 'card', id: 'sim-unavailable' },
      'The MQTT simulator is not available in bridge mode: the devices and apps talk to the external broker, '
      + 'which this page would have to reach over its own WebSocket listener with its own credentials. Use a '
      + 'real device, or an MQTT client with the credentials from `intercom-broker admin broker-acl`.'));
    return;
  }
  els = {
    device: h('select', { id: 'sim-device', name: 'device' }),
    household: h('select', { id: 'sim-household', name: 'household' }),
    target: h('select', { id: 'sim-target', name: 'target' }),
    ack: h('select', { id: 'sim-ack', name: 'ack' }, h('option', { value: 'ok' }, 'opens (ok)'),
      h('option', { value: 'fail' }, 'fails (relay jammed)'), h('option', { value: 'silent' }, 'does not answer')),
    door: h('div', { id: 'sim-door', 'aria-live': 'polite' }),
    residents: h('div', { class: 'grid', id: 'sim-residents' }),
    log: h('tbody', { id: 'sim-log' }),
  };
  const doorForm = h('form', { class: 'row' }, field('Door station', els.device),
    ctx.features.device_kind ? field('Calls household', els.target) : null,
    ctx.features.door_unlock ? field('On an unlock command it', els.ack) : null,
    h('button', { type: 'submit' }, 'Call'));
  doorForm.addEventListener('submit', (event) => {
    event.preventDefault();
    call();
  });
  const playForm = h('form', { class: 'row' }, field('Household', els.household),
    h('button', { type: 'submit' }, 'Play its residents'));
  playForm.addEventListener('submit', (event) => {
    event.preventDefault();
    playResidents();
  });
  section.append(
    h('h2', { tabindex: -1 }, 'Simulator'),
    h('p', { class: 'hint' }, ctx.cfg.mode === 'authenticated'
      ? 'Plays parties through the admin MQTT login: the box logs each party played here as simulated.'
      : 'Plays parties over the local MQTT connection. Open a second tab to play the other side.'),
    h('div', { class: 'grid' },
      h('section', { class: 'card panel', 'aria-label': 'Play a door station' }, h('h3', {}, 'Play a door station'),
        doorForm, els.door),
      h('section', { class: 'card panel', 'aria-label': 'Play residents' }, h('h3', {}, 'Play residents'), playForm,
        h('p', { class: 'hint' }, 'One panel per resident; each rings when its household is called.'))),
    els.residents,
    h('section', { class: 'card panel', 'aria-label': 'Message log' },
      h('h3', {}, 'Message log', h('button', { type: 'button', class: 'secondary', onclick: () => els.log.replaceChildren() }, 'Clear')),
      h('div', { class: 'scroll log' }, h('table', {}, h('thead', {}, h('tr', {},
        ['Time', 'Direction', 'Topic', 'Payload'].map((t) => h('th', { scope: 'col' }, t)))), els.log))),
  );
  listen(onMessage);
  renderDoor();
  // the played station goes offline with the tab, as a real one's connection would (best effort)
  window.addEventListener('pagehide', () => door?.markedOnline && reportOnline(door.device_id, false));
}

export async function show() {
  if (ctx.cfg.bridge) return;
  const lists = await attempt(() => Promise.all([api.get('/api/admin/devices'), api.get('/api/admin/households')]));
  if (!lists) return;
  const [devices, households] = lists;
  const keep = (select, items, key) => {
    const current = select.value;
    select.replaceChildren(...items.map((it) => h('option', { value: it[key], selected: it[key] === current },
      it[key] + (it.name ? ` · ${it.name}` : ''))));
  };
  keep(els.device, devices, 'device_id');
  keep(els.household, households, 'household_number');
  const target = els.target.value;
  els.target.replaceChildren(h('option', { value: '' }, 'its own'), ...households.map((hh) => h('option', {
    value: hh.household_number, selected: hh.household_number === target }, hh.household_number)));
}

function send(topic, body) {
  try {
    publish(topic, body);
    return true;
  } catch (err) {
    toast(err.message);
    return false;
  }
}

// ---- the door station -----------------------------------------------------------------------

/**
 * A real station reports itself online when it connects, and the box sends unlock commands only to a
 * station it knows is online. The played station does so only when the device is not online already
 * (a real one may be), and takes back only what it set (`door.markedOnline`).
 */
function reportOnline(deviceId, online) {
  if (!ctx.features.door_unlock) return false;
  if (online && last(`devices/${deviceId}/status`)?.body?.online) return false;
  return send(`devices/${deviceId}/status`, { online });
}

function call() {
  const deviceId = els.device.value;
  if (!deviceId) return;
  let markedOnline = door?.device_id === deviceId && door.markedOnline;
  if (door && door.device_id !== deviceId && door.markedOnline) reportOnline(door.device_id, false);
  if (door?.device_id !== deviceId) markedOnline = reportOnline(deviceId, true);
  door = { device_id: deviceId, request_id: `sim-${rand()}`, state: 'calling', note: '', markedOnline };
  const request = { request_id: door.request_id, timestamp: Date.now() };
  if (ctx.features.device_kind && els.target.value) request.household_number = els.target.value;
  if (!send(`calls/request/${deviceId}`, request)) door.state = 'idle';
  renderDoor();
}

/** The station's answer to an unlock command on `devices/{id}/commands/ack`, as chosen in the form. */
function onDoorCommand(body) {
  if (body.command !== 'unlock' || !body.command_id) return;
  const how = els.ack.value;
  door.note = `unlock of relay ${body.relay} by ${body.by}: ${how === 'silent' ? 'not answered' : how}`;
  if (how !== 'silent') {
    send(`devices/${door.device_id}/commands/ack`, how === 'ok' ? { command_id: body.command_id, ok: true }
      : { command_id: body.command_id, ok: false, error: 'relay jammed' });
  }
  renderDoor();
}

/** A visitor picture: drawn on a canvas and encoded as a JPEG by the browser, then attached to the call. */
async function attachSnapshot() {
  const canvas = h('canvas', { width: 160, height: 120 });
  const g = canvas.getContext('2d');
  g.fillStyle = '#14243a';
  g.fillRect(0, 0, 160, 120);
  g.fillStyle = '#f2c14e';
  g.beginPath();
  g.arc(80, 48, 22, 0, 2 * Math.PI);
  g.fill();
  g.fillRect(48, 76, 64, 44);
  g.fillStyle = '#fff';
  g.font = '11px sans-serif';
  g.fillText(`device ${door.device_id} ${clock().slice(0, 8)}`, 6, 14);
  const jpeg = await new Promise((resolve) => canvas.toBlob(resolve, 'image/jpeg', 0.8));
  const query = ctx.cfg.mode === 'local-only' ? `?device_id=${seg(door.device_id)}` : '';
  const done = await attempt(() => api.upload(`/api/calls/${seg(door.call_id)}/snapshot${query}`, jpeg, 'image/jpeg'));
  if (!done) return;
  door.note = `snapshot attached (${done.bytes} bytes)`;
  door.snapshot = done.snapshot_url;
  renderDoor();
}

function doorAction(action) {
  if (send(`devices/${door.device_id}/calls/control`, { call_info: { call_id: door.call_id, action } })) {
    door.note = `sent ${action}`;
    renderDoor();
  }
}

async function syncDoor() {
  const s = await attempt(() => api.get(`/api/mqtt/session?call_id=${seg(door.call_id)}`));
  if (s && door?.call_id === s.call_id) {
    door.state = s.status;
    door.answered_by = s.resident_id;
    renderDoor();
  }
}

function onDoorMessage(body) {
  if (body.request_id && body.request_id === door.request_id) {
    if (body.error?.reason === 'dnd') { // stored and ended at once: every resident is in do-not-disturb
      door.state = 'ended';
      door.note = 'ended (dnd): every resident is in do-not-disturb';
    } else if (body.error) {
      door.state = 'error';
      door.note = body.error.message;
      toast(`Call refused: ${body.error.message}`);
    } else {
      Object.assign(door, { call_id: body.call_id, creds: body.tencen_rtc, state: 'ringing',
                            targets: body.target_resident_ids });
    }
  } else if (body.call_info?.call_id && body.call_info.call_id === door.call_id) {
    const { action, reason } = body.call_info;
    if (body.error) toast(`${action || 'action'} refused: ${body.error.message}`);
    door.note = `${action}${body.resident_id ? ` by resident ${body.resident_id}` : ''}`
      + `${body.forward_to ? ` to ${body.forward_to.join(', ')}` : ''}${reason ? ` (${reason})` : ''}`;
    syncDoor(); // the call's state after this notice (a reject may leave others ringing)
  }
  renderDoor();
}

function creds(rtc) {
  if (!rtc) return [];
  return [h('dt', {}, 'TRTC app'), h('dd', {}, rtc.sdk_app_id), h('dt', {}, 'TRTC user'), h('dd', {}, rtc.user_id),
          h('dt', {}, 'TRTC room'), h('dd', {}, rtc.room_id),
          h('dt', {}, 'UserSig'), h('dd', { class: 'mono usersig' }, `${rtc.user_sig.slice(0, 24)}…`)];
}

function renderDoor() {
  if (!door) {
    els.door.replaceChildren(h('p', { class: 'muted' }, 'Pick a door station and press Call.'));
    return;
  }
  const buttons = [];
  if (door.state === 'ringing') buttons.push(h('button', { type: 'button', class: 'danger', onclick: () => doorAction('cancelled') }, 'Cancel'));
  if (door.state === 'connected') buttons.push(h('button', { type: 'button', class: 'danger', onclick: () => doorAction('hangup') }, 'Hang up'));
  if (ctx.features.snapshots && ['ringing', 'connected'].includes(door.state)) {
    buttons.push(h('button', { type: 'button', class: 'secondary', onclick: attachSnapshot }, 'Attach snapshot'));
  }
  els.door.replaceChildren(
    h('p', {}, `Device ${door.device_id}: `, h('span', { class: `badge state-${door.state}`, id: 'sim-door-state' }, door.state),
      door.note ? h('span', { class: 'muted' }, ` ${door.note}`) : null),
    h('dl', { class: 'kv' }, door.call_id ? [h('dt', {}, 'Call'), h('dd', { class: 'mono' }, door.call_id)] : [],
      door.targets ? [h('dt', {}, 'Ringing'), h('dd', {}, door.targets.join(', '))] : [],
      door.answered_by ? [h('dt', {}, 'Answered by'), h('dd', {}, door.answered_by)] : [], creds(door.creds),
      door.snapshot ? [h('dt', {}, 'Snapshot'), h('dd', {}, snapshotThumb(door.snapshot, 'Snapshot sent'))] : []),
    h('div', { class: 'actions' }, buttons));
}

// ---- residents ------------------------------------------------------------------------------

async function playResidents() {
  const n = els.household.value;
  const rows = await attempt(() => api.get(`/api/admin/residents?household_number=${seg(n)}`));
  if (!rows) return;
  if (!rows.length) toast(`Household ${n} has no residents`);
  for (const row of rows) {
    if (residents.has(row.resident_id)) continue;
    const r = { row, call: null, el: h('section', { class: 'card panel', 'aria-label': `Resident ${row.resident_id}` }) };
    residents.set(row.resident_id, r);
    els.residents.append(r.el);
    renderResident(r);
  }
}

function residentExtra(r, a) {
  if (send(a.topic(r.row.resident_id), a.body(r.call))) {
    r.call.note = `sent ${a.label.toLowerCase()}`;
    renderResident(r);
  }
}

async function markSeen(r) {
  await attempt(() => api.post(`/api/residents/${seg(r.row.resident_id)}/calls/seen`));
}

function residentAction(r, action) {
  const topic = `users/${r.row.resident_id}/calls/control`;
  if (!send(topic, { call_info: { call_id: r.call.call_id, action } })) return;
  r.call.note = `sent ${action}`;
  if (action === 'answered') r.call.state = 'connected';
  if (action === 'rejected' || action === 'hangup') r.call.state = 'ended';
  renderResident(r);
}

async function syncResident(r) {
  const s = await attempt(() => api.get(`/api/mqtt/session?call_id=${seg(r.call.call_id)}`));
  if (!s || r.call?.call_id !== s.call_id) return;
  const mine = s.resident_id === r.row.resident_id;
  r.call.state = s.status === 'connected' && !mine ? 'ended' : s.status;
  renderResident(r);
}

function onResidentMessage(r, kind, body) {
  if (kind === 'missed') {
    // the retained counter: re-rendered below from last()
  } else if (kind === 'incoming') {
    const forwarded = body.call_info?.action === 'forwarded';
    r.call = { call_id: body.call_id, device_id: body.device_id, state: 'ringing', creds: body.tencen_rtc,
               note: forwarded ? `forwarded call for household ${body.household_number}` : '',
               snapshot: body.snapshot_url,
               deadline: Date.now() + (body.ring_timeout_s || ctx.cfg.calls.ring_timeout_s) * 1000 };
  } else if (r.call && body.call_info?.action === 'snapshot' && body.call_info.call_id === r.call.call_id) {
    r.call.snapshot = body.snapshot_url;
  } else if (r.call && body.call_info?.action === 'door_opened' && !body.error) {
    r.call.note = `door of device ${body.door?.device_id} opened (relay ${body.door?.relay})`;
  } else if (r.call && body.call_info?.call_id === r.call.call_id) {
    const { action, reason } = body.call_info;
    if (body.error) {
      toast(`Resident ${r.row.resident_id}: ${action || 'action'} refused: ${body.error.message}`);
      r.call.note = body.error.message;
      syncResident(r);
    } else {
      r.call.note = `${action}${reason ? ` (${reason})` : ''}`;
      if (['cancelled', 'hangup', 'timeout'].includes(action)) r.call.state = 'ended';
    }
  } else {
    return;
  }
  renderResident(r);
}

function missedLine(r) {
  if (!ctx.features.missed_calls) return null;
  const counter = last(`users/${r.row.resident_id}/calls/missed`)?.body;
  const unseen = Number(counter?.unseen) || 0;
  return h('p', { class: 'missed' }, h('span', { class: `count${unseen ? ' bad' : ''}` }, `Missed calls: ${unseen}`),
    unseen ? [' ', h('button', { type: 'button', class: 'secondary', 'aria-label': `Mark resident ${r.row.resident_id}'s missed calls seen`,
                                 onclick: () => markSeen(r) }, 'Mark seen')] : null);
}

function renderResident(r) {
  const id = r.row.resident_id;
  const c = r.call;
  const buttons = [];
  if (c?.state === 'ringing') {
    buttons.push(h('button', { type: 'button', class: 'good', onclick: () => residentAction(r, 'answered') }, 'Answer'),
      h('button', { type: 'button', class: 'danger', onclick: () => residentAction(r, 'rejected') }, 'Reject'));
  } else if (c?.state === 'connected') {
    buttons.push(h('button', { type: 'button', class: 'danger', onclick: () => residentAction(r, 'hangup') }, 'Hang up'));
  }
  for (const a of enabled(residentActions, ctx.features)) {
    if (a.states.includes(c?.state)) {
      buttons.push(h('button', { type: 'button', class: 'secondary', onclick: () => residentExtra(r, a) }, a.label));
    }
  }
  const timer = c?.state === 'ringing' ? h('span', { class: 'muted ring-timer', dataset: { deadline: c.deadline } }) : null;
  r.el.replaceChildren(...[
    h('h3', {}, `Resident ${id}${r.row.name ? ` · ${r.row.name}` : ''}`,
      h('span', { class: `badge state-${c?.state || 'idle'}` }, c?.state || 'idle')),
    missedLine(r),
    c ? h('dl', { class: 'kv' }, h('dt', {}, 'Call'), h('dd', { class: 'mono' }, c.call_id), h('dt', {}, 'From device'),
      h('dd', {}, c.device_id), creds(c.creds),
      c.snapshot ? [h('dt', {}, 'Visitor'), h('dd', {}, snapshotThumb(c.snapshot, `Visitor at device ${c.device_id}`))] : [])
      : h('p', { class: 'muted' }, 'Waiting for a call.'),
    c?.note ? h('p', { class: 'muted' }, c.note) : null, timer,
    h('div', { class: 'actions' }, buttons)].filter(Boolean));
  tickRing(r.el);
}

function tickRing(root = els.residents) {
  for (const el of root.querySelectorAll('.ring-timer')) {
    el.textContent = `rings for ${duration((Number(el.dataset.deadline) - Date.now()) / 1000)}`;
  }
}
setInterval(() => els && tickRing(), 1000);

// ---- messages -------------------------------------------------------------------------------

function played(topic) {
  if (door && (topic === `calls/request/${door.device_id}` || matches(`devices/${door.device_id}/#`, topic))) return true;
  return [...residents.keys()].some((rid) => matches(`users/${rid}/#`, topic));
}

function onMessage(msg) {
  if (msg.dir === 'out' || played(msg.topic)) logRow(msg);
  if (msg.dir !== 'in' || !msg.body || typeof msg.body !== 'object' || msg.body.origin !== 'server') return;
  const parts = msg.topic.split('/');
  if (door && msg.topic === `devices/${door.device_id}/calls/control`) onDoorMessage(msg.body);
  if (door && msg.topic === `devices/${door.device_id}/commands` && ctx.features.door_unlock) onDoorCommand(msg.body);
  if (parts[0] === 'users' && residents.has(parts[1]) && parts[2] === 'calls') {
    onResidentMessage(residents.get(parts[1]), parts[3], msg.body);
  }
}

function logRow(msg) {
  els.log.prepend(h('tr', { class: `dir-${msg.dir}` }, h('td', {}, clock(msg.at)),
    h('td', {}, msg.dir === 'out' ? '→ out' : '← in'), h('td', { class: 'mono' }, msg.topic),
    h('td', { class: 'mono' }, msg.text)));
  while (els.log.rows.length > LOG_MAX) els.log.lastElementChild.remove();
}
