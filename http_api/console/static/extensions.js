// Extension points for features the box does not have yet (door unlock, do-not-disturb, forwarding,
// snapshots, device kind). Each entry names the flag in /api/console/config `features` that turns it
// on; the pages render only enabled entries, so adding a feature means flipping its flag on the
// server (http_api/console_views.py FEATURES) and, if needed, adjusting its entry here.

/** Extra fields of a directory entry, shown in the Site page's tables and add/edit forms. */
export const memberFields = {
  devices: [
    { key: 'kind', label: 'Kind', feature: 'device_kind', type: 'text' },
  ],
  residents: [
    { key: 'dnd', label: 'Do not disturb', feature: 'dnd', type: 'checkbox' },
    { key: 'forward_to', label: 'Forward to', feature: 'forwarding', type: 'text' },
  ],
};

/** Extra buttons of a simulated resident during a connected call; `action` goes in call_info.action. */
export const residentActions = [
  { action: 'open_door', label: 'Open door', feature: 'door_unlock' },
];

/** Extra History columns, shown when the feature is on and rendered from the call row's field. */
export const historyColumns = [
  { key: 'door_opened', label: 'Door opened', feature: 'door_unlock', render: (v) => (v ? 'yes' : 'no') },
  { key: 'snapshot_url', label: 'Snapshot', feature: 'snapshots', render: null }, // rendered as a thumbnail
];

export function enabled(entries, features) {
  return entries.filter((entry) => features?.[entry.feature]);
}
