// The console's parts for the features beyond the seed (issue 13): door unlock, door/lobby device kinds,
// do-not-disturb, no-answer forwarding, visitor snapshots, missed calls. Each entry names its flag in
// /api/console/config `features` (http_api/console_views.py FEATURES); the pages render only enabled entries.
import { api, seg } from './api.js';
import { h, when } from './ui.js';

export function enabled(entries, features) {
  return entries.filter((entry) => features?.[entry.feature]);
}

/** "101, 102" -> ['101', '102']; empty -> null. */
export function idList(text) {
  const ids = String(text ?? '').split(/[\s,]+/).filter(Boolean);
  return ids.length ? ids : null;
}

export function kindText(row) {
  if (row.kind !== 'lobby') return row.kind || 'not set (any household)';
  return `lobby · ${row.households?.length ? row.households.join(', ') : 'any household'}`;
}

export function dndText(dnd) {
  if (!dnd?.enabled) return 'off';
  const windows = dnd.schedule?.length ? ` ${dnd.schedule.map((w) => `${w.from}–${w.to}`).join(', ')}` : '';
  return `on${windows}${dnd.active ? ' (now)' : ''}`;
}

export function forwardingText(f) {
  if (!f) return '';
  const eff = f.effective || {};
  const after = eff.forward_after_s ? ` after ${eff.forward_after_s} s` : ' after the ring timeout';
  if (f.forward_to === null || f.forward_to === undefined) {
    return `site's (${eff.forward_to?.length ? `${eff.forward_to.join(', ')}${after}` : 'none'})`;
  }
  return f.forward_to.length ? `${f.forward_to.join(', ')}${after}` : 'never';
}

/**
 * Extra fields of a directory entry in the Site page: `type` makes it a form control (add and edit),
 * `column` a table column, `when` enables the control only while another field has a value. `list` values
 * are ids typed comma-separated.
 */
export const memberFields = {
  devices: [
    { key: 'kind', label: 'Kind', feature: 'device_kind', type: 'select', options: ['', 'door', 'lobby'], column: kindText },
    { key: 'households', label: 'Lobby calls households', feature: 'device_kind', type: 'list',
      placeholder: 'any household', hint: 'ids, comma-separated', when: { key: 'kind', value: 'lobby' } },
    { key: 'emergency', label: 'Emergency (rings through do-not-disturb)', feature: 'dnd', type: 'checkbox',
      heading: 'Emergency', column: (row) => (row.emergency ? 'yes' : '') },
  ],
  residents: [
    { key: 'dnd', label: 'Do not disturb', feature: 'dnd', column: (row) => dndText(row.dnd) },
  ],
};

/** Settings of a resident or household edited in their own dialog (http_api/resident_views.py). */
export const settings = {
  households: [
    { key: 'dnd', label: 'Do not disturb', feature: 'dnd', text: dndText,
      path: (n) => `/api/households/${seg(n)}/dnd` },
    { key: 'forwarding', label: 'Forwarding', feature: 'forwarding', text: forwardingText,
      path: (n) => `/api/households/${seg(n)}/forwarding` },
  ],
  residents: [
    { key: 'dnd', label: 'Do not disturb', feature: 'dnd', text: dndText,
      path: (id) => `/api/residents/${seg(id)}/dnd` },
  ],
};

/** Extra buttons of a simulated resident: published on its own topic, as the real app does. */
export const residentActions = [
  { label: 'Open door', feature: 'door_unlock', states: ['ringing', 'connected'],
    topic: (rid) => `users/${rid}/commands`,
    body: (call) => ({ command: 'unlock', device_id: call.device_id, call_id: call.call_id,
                       request_id: `sim-${Math.random().toString(36).slice(2, 10)}` }) },
];

const snapshots = new Map(); // snapshot URL -> object URL of its JPEG, fetched once

function loadSnapshot(img) {
  const url = img.dataset.snapshot;
  api.blob(url).then((data) => {
    if (!snapshots.has(url)) snapshots.set(url, URL.createObjectURL(data));
    img.src = snapshots.get(url);
  }).catch((err) => {
    img.replaceWith(h('span', { class: 'muted' }, `snapshot: ${err.message}`));
  });
}

// Fetched when scrolled into view: a long history does not spend the admin's REST rate limit at once.
const onScreen = typeof IntersectionObserver === 'function' ? new IntersectionObserver((entries) => {
  for (const entry of entries) {
    if (!entry.isIntersecting) continue;
    onScreen.unobserve(entry.target);
    loadSnapshot(entry.target);
  }
}) : null;

/** A thumbnail of a call's snapshot, fetched with the admin token (an <img src> cannot send it). */
export function snapshotThumb(url, alt) {
  const img = h('img', { class: 'thumb', alt, dataset: { snapshot: url } });
  if (snapshots.has(url)) img.src = snapshots.get(url);
  else if (onScreen) onScreen.observe(img);
  else loadSnapshot(img);
  return img;
}

/** Extra History columns (the CSV gets `csv`, the table `cell`). */
export const historyColumns = [
  { label: 'Door', feature: 'door_unlock', csv: (r) => r.door_opened_by ?? '',
    cell: (r) => (r.door_opened_by ? h('span', { title: when(r.door_opened_at) }, `door opened by ${r.door_opened_by}`) : '') },
  { label: 'Snapshot', feature: 'snapshots', csv: (r) => r.snapshot_url ?? '',
    cell: (r) => (r.snapshot_url ? snapshotThumb(r.snapshot_url, `Snapshot of ${r.call_id}`) : '') },
  { label: 'Forwarded', feature: 'forwarding', csv: (r) => (r.forwarded_at ? (r.forward_to || []).join(' ') : ''),
    cell: (r) => (r.forwarded_at ? `forwarded to ${(r.forward_to || []).join(', ')}` : '') },
  { label: 'Do not disturb', feature: 'dnd', csv: (r) => (r.dnd_resident_ids || []).join(' '),
    cell: (r) => (r.dnd_resident_ids?.length ? `skipped ${r.dnd_resident_ids.join(', ')}` : '') },
];
