// History: calls with their outcome and times; filters, a date range, search, paging, CSV export, a 7-day chart.
import { api } from './api.js';
import { enabled, historyColumns } from './extensions.js';
import { attempt, duration, field, h, secondsBetween, when } from './ui.js';

export const title = 'History';

const OUTCOMES = ['answered', 'missed', 'rejected'];
const DAY = 86400000;
const PAGE = 50;
let ctx;
let els;
let rows = [];
let chartRows = [];
let cursors = [null]; // cursors[i]: the cursor of page i (null: the newest page)
let pageNo = 0;
let nextCursor = null;

/**
 * answered (someone picked up, or opened the door from the ringing call), rejected, missed (rang out,
 * cancelled, every resident in do-not-disturb, dropped), or the live state.
 */
export function outcome(call) {
  if (call.status !== 'ended') return call.status;
  if (call.connected_at || call.resident_id || call.door_opened_by) return 'answered';
  return call.end_reason === 'rejected' ? 'rejected' : 'missed';
}

export function mount(section, context) {
  ctx = context;
  const filters = h('form', { class: 'card row', id: 'history-filters', 'aria-label': 'Filter calls' },
    field('Search', h('input', { type: 'search', name: 'q', placeholder: 'call, resident or device id',
                                 autocomplete: 'off' })),
    field('Household', h('select', { name: 'household_number' }, h('option', { value: '' }, 'All'))),
    field('Device', h('select', { name: 'device_id' }, h('option', { value: '' }, 'All'))),
    field('From', h('input', { type: 'date', name: 'since' })),
    field('To', h('input', { type: 'date', name: 'until' })),
    h('label', { class: 'check' }, h('input', { type: 'checkbox', name: 'missed' }), 'Missed only'),
    h('button', { type: 'submit' }, 'Apply'),
    h('button', { type: 'button', class: 'secondary', onclick: exportCsv }, 'Export CSV'),
    h('button', { type: 'button', class: 'secondary', onclick: exportRange,
                  title: 'Every call from the From date to the To date, from the box' }, 'Export range'));
  filters.addEventListener('submit', (event) => {
    event.preventDefault();
    load();
  });
  const pager = h('nav', { class: 'row pager', 'aria-label': 'History pages' },
    h('button', { type: 'button', class: 'secondary', id: 'history-prev', onclick: () => turn(-1) }, 'Newer'),
    h('span', { id: 'history-page', 'aria-live': 'polite' }),
    h('button', { type: 'button', class: 'secondary', id: 'history-next', onclick: () => turn(1) }, 'Older'));
  const per = (value, text, checked) => h('label', { class: 'check' },
    h('input', { type: 'radio', name: 'per', value, checked, onchange: renderChart }), text);
  els = { filters, chart: h('div', { class: 'chart', id: 'history-chart' }), note: h('p', { class: 'hint' }),
          table: h('div', { class: 'scroll', id: 'history-table' }) };
  section.append(h('h2', { tabindex: -1 }, 'History'), filters,
    h('div', { class: 'card' }, h('h3', {}, 'Calls in the last 7 days'),
      h('fieldset', { class: 'row' }, h('legend', { class: 'muted' }, 'Group by'),
        per('day', 'Per day', true), per('hour', 'Per hour', false)),
      els.chart, h('div', { class: 'legend' }, OUTCOMES.map((o) => h('span', {}, h('span', { class: `sw c-${o}` }), o))),
      els.note),
    h('div', { class: 'card' }, els.table, pager));
  els.pager = pager;
}

export function show() {
  fillSelects();
  load();
}

async function fillSelects() {
  const lists = await attempt(() => Promise.all([api.get('/api/admin/households'), api.get('/api/admin/devices')]));
  if (!lists) return;
  const [households, devices] = lists;
  for (const [name, items, key] of [['household_number', households, 'household_number'], ['device_id', devices, 'device_id']]) {
    const select = els.filters.elements[name];
    const current = select.value;
    select.replaceChildren(h('option', { value: '' }, 'All'),
      ...items.map((it) => h('option', { value: it[key], selected: it[key] === current }, it[key] + (it.name ? ` · ${it.name}` : ''))));
  }
}

/** The filters as query parameters: the date inputs are local days, `until` inclusive. */
function query() {
  const f = els.filters.elements;
  const q = new URLSearchParams();
  for (const name of ['household_number', 'device_id', 'q']) if (f[name].value.trim()) q.set(name, f[name].value.trim());
  if (f.since.value) q.set('since', new Date(`${f.since.value}T00:00`).toISOString());
  if (f.until.value) q.set('until', new Date(new Date(`${f.until.value}T00:00`).getTime() + DAY).toISOString());
  return q;
}

async function load() {
  cursors = [null];
  pageNo = 0;
  await Promise.all([loadPage(), loadChart()]);
}

async function turn(step) {
  if (step > 0 && !nextCursor) return;
  if (step > 0) cursors[pageNo + 1] = nextCursor;
  pageNo = Math.max(0, pageNo + step);
  await loadPage();
}

async function loadPage() {
  const q = query();
  q.set('limit', String(PAGE));
  if (cursors[pageNo]) q.set('cursor', cursors[pageNo]);
  const page = await attempt(() => api.page(`/api/calls?${q}`));
  if (!page) return;
  nextCursor = page.next;
  rows = els.filters.elements.missed.checked ? page.data.filter((c) => outcome(c) === 'missed') : page.data;
  els.pager.querySelector('#history-page').textContent = `Page ${pageNo + 1}`;
  els.pager.querySelector('#history-prev').disabled = pageNo === 0;
  els.pager.querySelector('#history-next').disabled = !nextCursor;
  renderTable();
}

async function loadChart() {
  const q = query();
  q.set('since', new Date(Date.now() - 8 * DAY).toISOString());
  q.delete('until');
  q.set('limit', String(ctx.cfg.calls.history_limit_max));
  const page = await attempt(() => api.page(`/api/calls?${q}`));
  if (!page) return;
  chartRows = page.data;
  els.note.textContent = page.next ? `From the newest ${page.data.length} calls of these days.` : '';
  renderChart();
}

function columns() {
  const extra = enabled(historyColumns, ctx.features);
  return [
    { label: 'Started', csv: (r) => r.start_time, cell: (r) => when(r.start_time) },
    { label: 'Call', csv: (r) => r.call_id, cell: (r) => h('span', { class: 'mono' }, r.call_id) },
    { label: 'Device', csv: (r) => r.device_id, cell: (r) => r.device_id },
    { label: 'Household', csv: (r) => r.household_number, cell: (r) => r.household_number },
    { label: 'Outcome', csv: outcome, cell: (r) => h('span', { class: `badge state-${r.status}` }, outcome(r)) },
    { label: 'End reason', csv: (r) => r.end_reason ?? '', cell: (r) => r.end_reason ?? '' },
    { label: 'Answered by', csv: (r) => r.resident_id ?? '', cell: (r) => r.resident_id ?? '' },
    { label: 'Ring', csv: (r) => ring(r) ?? '', cell: (r) => duration(ring(r)) },
    { label: 'Talk', csv: (r) => talk(r) ?? '', cell: (r) => duration(talk(r)) },
    ...extra,
  ];
}

const ring = (r) => secondsBetween(r.start_time, r.connected_at || r.ended_at);
const talk = (r) => secondsBetween(r.connected_at, r.ended_at);

function renderTable() {
  const cols = columns();
  const body = rows.map((r) => h('tr', { dataset: { callId: r.call_id } },
    cols.map((c) => h('td', { dataset: { label: c.label } }, c.cell(r)))));
  els.table.replaceChildren(h('table', { class: 'stack' }, h('thead', {}, h('tr', {}, cols.map((c) => h('th', { scope: 'col' }, c.label)))),
    h('tbody', {}, body.length ? body : h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, 'No calls.')))));
}

function exportCsv() {
  const cols = columns();
  const quote = (v) => (/[",\n]/.test(String(v)) ? `"${String(v).replaceAll('"', '""')}"` : String(v));
  const lines = [cols.map((c) => quote(c.label)), ...rows.map((r) => cols.map((c) => quote(c.csv(r))))];
  const blob = new Blob([lines.map((l) => l.join(',')).join('\n') + '\n'], { type: 'text/csv' });
  const link = h('a', { href: URL.createObjectURL(blob), download: `calls-${new Date().toISOString().slice(0, 10)}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

/** Every call of the date range, as the box's own CSV (GET /api/calls.csv: no paging limit). */
async function exportRange() {
  const q = query();
  const file = await attempt(() => api.blob(`/api/calls.csv?${q}`));
  if (!file) return;
  const f = els.filters.elements;
  const link = h('a', { href: URL.createObjectURL(file), download: `calls-${f.since.value || 'start'}-${f.until.value || 'now'}.csv` });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 1000);
}

function renderChart() {
  const perHour = els.filters.closest('section').querySelector('input[name="per"]:checked')?.value === 'hour';
  const size = perHour ? 3600000 : DAY;
  const end = new Date();
  if (perHour) end.setMinutes(60, 0, 0); else end.setHours(24, 0, 0, 0);
  const count = perHour ? 7 * 24 : 7;
  const start = end.getTime() - count * size;
  const buckets = Array.from({ length: count }, () => ({ answered: 0, missed: 0, rejected: 0 }));
  const missedOnly = els.filters.elements.missed.checked;
  for (const r of chartRows) {
    if (missedOnly && outcome(r) !== 'missed') continue;
    const i = Math.floor((new Date(r.start_time).getTime() - start) / size);
    const o = outcome(r);
    if (i >= 0 && i < count && o in buckets[i]) buckets[i][o] += 1;
  }
  const total = Object.fromEntries(OUTCOMES.map((o) => [o, buckets.reduce((n, b) => n + b[o], 0)]));
  const top = Math.max(1, ...buckets.map((b) => b.answered + b.missed + b.rejected));
  const [W, H, pad] = [700, 180, 24];
  const bw = (W - pad) / count;
  const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H + 20}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', `Last 7 days: ${total.answered} answered, ${total.missed} missed, ${total.rejected} rejected`);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  add('line', { x1: pad, y1: H, x2: W, y2: H, stroke: '#888' });
  add('text', { x: 0, y: 12, 'font-size': 11 }, String(top));
  buckets.forEach((b, i) => {
    let y = H;
    const from = new Date(start + i * size);
    for (const o of OUTCOMES) {
      if (!b[o]) continue;
      const bh = (b[o] / top) * (H - 10);
      y -= bh;
      const rect = add('rect', { x: pad + i * bw + bw * 0.1, y, width: Math.max(1, bw * 0.8), height: bh, class: `c-${o}` });
      const t = document.createElementNS('http://www.w3.org/2000/svg', 'title');
      t.textContent = `${when(from.toISOString())}: ${b[o]} ${o}`;
      rect.append(t);
    }
    if (!perHour || from.getHours() === 0) {
      add('text', { x: pad + i * bw + (perHour ? 0 : bw / 2), y: H + 15, 'font-size': 11,
                    'text-anchor': perHour ? 'start' : 'middle' }, `${from.getMonth() + 1}/${from.getDate()}`);
    }
  });
  els.chart.replaceChildren(svg);
}
