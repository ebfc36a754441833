// Audit: who changed what (admin changes, tokens, door unlocks, console sign-ins), newest first, a page at a time.
import { api } from './api.js';
import { attempt, field, h, when } from './ui.js';

export const title = 'Audit';

const PAGE = 50;
let els;
let cursor = null;

export function mount(section) {
  const filters = h('form', { class: 'card row', id: 'audit-filters', 'aria-label': 'Filter the audit log' },
    field('From', h('input', { type: 'datetime-local', name: 'since' })),
    field('Until', h('input', { type: 'datetime-local', name: 'until' })),
    h('button', { type: 'submit' }, 'Apply'));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    load(false);
  });
  els = { filters, table: h('div', { class: 'scroll', id: 'audit-table' }),
          more: h('button', { type: 'button', class: 'secondary', hidden: true, onclick: () => load(true) }, 'Older entries') };
  section.append(h('h2', { tabindex: -1 }, 'Audit'),
    h('p', { class: 'hint' }, 'Every admin change, token issue and revocation, door unlock and console sign-in.'),
    filters, h('div', { class: 'card' }, els.table, els.more));
}

export function show() {
  load(false);
}

/** A datetime-local value (the browser's zone) as ISO 8601 UTC, or null. */
const utc = (value) => (value ? new Date(value).toISOString() : null);

async function load(more) {
  const f = els.filters.elements;
  const query = new URLSearchParams({ limit: String(PAGE) });
  for (const name of ['since', 'until']) {
    const value = utc(f[name].value);
    if (value) query.set(name, value);
  }
  if (more && cursor) query.set('cursor', cursor);
  const page = await attempt(() => api.get(`/api/admin/audit?${query}`));
  if (!page) return;
  cursor = page.next_cursor;
  els.more.hidden = !cursor;
  const rows = page.items.map((e) => h('tr', { dataset: { auditId: e.id } },
    h('td', {}, when(e.at)), h('td', {}, e.actor), h('td', {}, e.action), h('td', { class: 'mono' }, e.target ?? ''),
    h('td', {}, h('span', { class: `badge ${e.outcome === 'ok' || e.outcome === 'opened' ? 'on' : 'off'}` }, e.outcome)),
    h('td', { class: 'muted' }, e.remote ?? '')));
  const tbody = more ? els.table.querySelector('tbody') : null;
  if (tbody) {
    tbody.append(...rows);
    return;
  }
  const head = ['When', 'Who', 'Action', 'Target', 'Outcome', 'From'].map((c) => h('th', { scope: 'col' }, c));
  els.table.replaceChildren(h('table', {}, h('thead', {}, h('tr', {}, head)),
    h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No entries.')))));
}
