// Site: households, residents and devices, edited through the admin REST API; a new token is shown once.
// Search and pages of households; each device's health (online/offline, battery) over the last days.
import { api, seg } from './api.js';
import { enabled, idList, memberFields, settings } from './extensions.js';
import { openSetting } from './settings.js';
import { attempt, copyText, duration, field, h, toast, when } from './ui.js';

export const title = 'Site';

const KINDS = {
  households: { one: 'household', key: 'household_number', label: 'Household number' },
  residents: { one: 'resident', key: 'resident_id', label: 'Resident id' },
  devices: { one: 'device', key: 'device_id', label: 'Device id' },
};
const PAGE = 20; // households per page
let ctx;
let els;
let data = { households: [], residents: [], devices: [] };
let pageNo = 0;

export function mount(section, context) {
  ctx = context;
  els = { list: h('div', { id: 'site-list' }), token: h('div', { id: 'site-token', class: 'card', hidden: true }),
          dialog: h('dialog', { id: 'site-edit', 'aria-labelledby': 'site-edit-title' }),
          search: h('input', { type: 'search', id: 'site-search', placeholder: 'household, resident or device',
                               autocomplete: 'off', oninput: () => { pageNo = 0; render(); } }),
          pages: h('span', { id: 'site-pages', 'aria-live': 'polite' }),
          prev: h('button', { type: 'button', class: 'secondary', onclick: () => turn(-1) }, 'Previous'),
          next: h('button', { type: 'button', class: 'secondary', onclick: () => turn(1) }, 'Next') };
  section.append(
    h('h2', { tabindex: -1 }, 'Site'),
    h('div', { class: 'grid' }, addForm('households'), addForm('residents'), addForm('devices')),
    els.token,
    h('div', { class: 'card row', role: 'search', 'aria-label': 'Find on the site' },
      field('Search', els.search), h('nav', { class: 'row pager', 'aria-label': 'Household pages' },
        els.prev, els.pages, els.next)),
    els.list, els.dialog,
  );
}

function turn(step) {
  pageNo = Math.max(0, pageNo + step);
  render();
}

/** Households matching the search: by number or name, or through one of their residents or devices. */
function matching() {
  const q = els.search.value.trim().toLowerCase();
  if (!q) return data.households;
  const hit = (...texts) => texts.some((t) => t && String(t).toLowerCase().includes(q));
  const via = new Set([...data.residents.filter((r) => hit(r.resident_id, r.name)),
                       ...data.devices.filter((d) => hit(d.device_id, d.name))].map((m) => m.household_number));
  return data.households.filter((hh) => via.has(hh.household_number) || hit(hh.household_number, hh.name));
}

export function show() {
  load();
}

/** The extra fields a form edits (`type`), and the extra table columns (`column`). */
function extraFields(kind) {
  return enabled(memberFields[kind] || [], ctx.features).filter((f) => f.type);
}

function extraColumns(kind) {
  return enabled(memberFields[kind] || [], ctx.features).filter((f) => f.column);
}

function extraInput(f, value) {
  if (f.type === 'checkbox') return h('input', { name: f.key, type: 'checkbox', checked: Boolean(value) });
  if (f.type === 'select') {
    return h('select', { name: f.key },
      f.options.map((o) => h('option', { value: o, selected: o === (value ?? '') }, o || 'not set')));
  }
  if (f.type === 'list') {
    return h('input', { name: f.key, value: value?.join(', ') ?? '', placeholder: f.placeholder, title: f.hint,
                        autocomplete: 'off' });
  }
  return h('input', { name: f.key, type: f.type, value: value ?? '' });
}

/** Enable the controls whose `when` names another field only while that field has the given value. */
function linkControls(form, kind) {
  for (const f of extraFields(kind).filter((x) => x.when)) {
    const source = form.elements[f.when.key];
    const sync = () => { form.elements[f.key].disabled = source.value !== f.when.value; };
    source.addEventListener('change', sync);
    sync();
  }
}

function extraRow(f, value) {
  return f.type === 'checkbox' ? h('label', { class: 'check' }, extraInput(f, value), f.label)
    : field(f.label, extraInput(f, value));
}

function householdSelect(name, selected) {
  return h('select', { name, required: true },
    data.households.map((hh) => h('option', { value: hh.household_number, selected: hh.household_number === selected },
      hh.household_number + (hh.name ? ` · ${hh.name}` : ''))));
}

function formValues(form, kind) {
  const values = {};
  for (const [k, v] of new FormData(form).entries()) values[k] = typeof v === 'string' ? v.trim() : v;
  for (const f of extraFields(kind)) {
    if (f.type === 'checkbox') values[f.key] = form.elements[f.key].checked;
    if (f.type === 'list') values[f.key] = idList(values[f.key]); // disabled (left out of the form data): null
    if (f.type === 'select' && values[f.key] === '') delete values[f.key]; // not set: left as it is
  }
  if (kind === 'devices' && values.kind === 'door') values.households = null; // a door calls its own household
  if (values.name === '') values.name = null;
  return values;
}

function addForm(kind) {
  const info = KINDS[kind];
  const form = h('form', { class: 'card', id: `add-${info.one}`, 'aria-label': `Add a ${info.one}` });
  const render = () => {
    // rebuilt when the site loads or changes (new household options): what the user typed so far stays
    const typed = form.elements.length ? new FormData(form) : new FormData();
    const rows = [field(info.label, h('input', { name: info.key, required: true, autocomplete: 'off' }))];
    if (kind !== 'households') rows.push(field('Household', householdSelect('household_number')));
    rows.push(field('Name', h('input', { name: 'name', autocomplete: 'off' })));
    for (const f of extraFields(kind)) rows.push(extraRow(f));
    form.replaceChildren(h('h3', {}, `Add a ${info.one}`), h('div', { class: 'row' }, rows,
      h('button', { type: 'submit' }, `Add ${info.one}`)));
    for (const el of form.elements) {
      if (!el.name || !typed.has(el.name)) continue;
      if (el.type === 'checkbox') el.checked = true;
      else if (typed.get(el.name) !== '') el.value = typed.get(el.name);
    }
    linkControls(form, kind);
  };
  form.render = render;
  render();
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const created = await attempt(() => api.post(`/api/admin/${kind}`, formValues(form, kind)));
    if (!created) return;
    form.reset();
    toast(`Added ${info.one} ${created[info.key]}`, 'info');
    if (created.token) showToken(info.one, created[info.key], created.token);
    changed();
  });
  return form;
}

function showToken(one, ident, value) {
  const input = h('input', { id: 'site-token-value', readonly: true, value, 'aria-label': `Token for ${one} ${ident}` });
  const done = h('button', { type: 'button', class: 'secondary', onclick: () => { els.token.hidden = true; } }, 'Done');
  const copy = h('button', { type: 'button', onclick: async () => {
    toast((await copyText(value, input)) ? 'Token copied' : 'Select the token and copy it', 'info');
  } }, 'Copy');
  els.token.replaceChildren(h('h3', {}, `Token for ${one} ${ident}`),
    h('p', {}, 'Shown this once: copy it into the app or door station now. Issuing a new one replaces it.'),
    h('div', { class: 'token-box' }, input, copy, done));
  els.token.hidden = false;
  input.focus();
  input.select();
}

async function load() {
  const loaded = await attempt(() => Promise.all(Object.keys(KINDS).map((k) => api.get(`/api/admin/${k}`))));
  if (!loaded) return;
  [data.households, data.residents, data.devices] = loaded;
  for (const form of document.querySelectorAll('#page-site form[id^="add-"]')) form.render();
  render();
}

function changed() {
  window.dispatchEvent(new Event('directory-changed'));
  load();
}

function settingButtons(kind, ident, row) {
  const label = `${KINDS[kind].one} ${ident}`;
  return enabled(settings[kind] || [], ctx.features).map((entry) => h('button', {
    type: 'button', class: 'secondary', 'aria-label': `${entry.label} for ${label}`,
    onclick: () => openSetting(els.dialog, entry, ident, label, row[entry.key], () => {
      toast(`${entry.label} saved for ${label}`, 'info');
      load();
    }) }, entry.label));
}

function memberTable(kind, rows) {
  const info = KINDS[kind];
  const extras = extraColumns(kind);
  const head = h('tr', {}, ['Id', 'Name', ...extras.map((f) => f.heading || f.label), 'Actions']
    .map((t) => h('th', { scope: 'col' }, t)));
  const body = rows.map((row) => {
    const id = row[info.key];
    const label = `${info.one} ${id}`;
    return h('tr', { dataset: { id } }, h('td', { class: 'mono', dataset: { label: 'Id' } }, id),
      h('td', { dataset: { label: 'Name' } }, row.name || ''),
      extras.map((f) => h('td', { dataset: { label: f.heading || f.label } }, f.column(row))),
      h('td', { dataset: { label: 'Actions' } }, h('div', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Edit ${label}`, onclick: () => edit(kind, row) }, 'Edit'),
        kind === 'devices' ? h('button', { type: 'button', class: 'secondary', 'aria-label': `Health of ${label}`,
                                           onclick: () => health(id) }, 'Health') : null,
        settingButtons(kind, id, row),
        h('button', { type: 'button', class: 'secondary', 'aria-label': `New token for ${label}`,
                      onclick: () => reissue(kind, id) }, 'New token'),
        h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${label}`, onclick: () => remove(kind, id) },
          'Delete'))));
  });
  return h('div', { class: 'scroll' }, h('table', { class: 'stack' }, h('caption', { class: 'muted' }, kind), h('thead', {}, head),
    h('tbody', {}, body.length ? body : h('tr', {}, h('td', { colspan: 3 + extras.length, class: 'muted' }, `No ${kind}.`)))));
}

function render() {
  const found = matching();
  const pages = Math.max(1, Math.ceil(found.length / PAGE));
  pageNo = Math.min(pageNo, pages - 1);
  const shownHouseholds = found.slice(pageNo * PAGE, (pageNo + 1) * PAGE);
  els.pages.textContent = found.length
    ? `Households ${pageNo * PAGE + 1}–${pageNo * PAGE + shownHouseholds.length} of ${found.length}` : 'No household matches';
  els.prev.disabled = pageNo === 0;
  els.next.disabled = pageNo >= pages - 1;
  els.list.replaceChildren(...shownHouseholds.map((hh) => {
    const n = hh.household_number;
    const label = `household ${n}`;
    const shown = enabled(settings.households, ctx.features);
    return h('section', { class: 'card panel', 'aria-label': `Household ${n}`, dataset: { household: n } },
      h('h3', {}, h('span', {}, `${n}${hh.name ? ` · ${hh.name}` : ''}`), h('span', { class: 'actions' },
        h('button', { type: 'button', class: 'secondary', 'aria-label': `Edit ${label}`, onclick: () => edit('households', hh) }, 'Edit'),
        settingButtons('households', n, hh),
        h('button', { type: 'button', class: 'danger', 'aria-label': `Delete ${label}`, onclick: () => remove('households', n) }, 'Delete'))),
      shown.length ? h('p', { class: 'muted household-settings' },
        shown.map((entry) => `${entry.label}: ${entry.text(hh[entry.key])}`).join(' · ')) : null,
      memberTable('residents', data.residents.filter((r) => r.household_number === n)),
      memberTable('devices', data.devices.filter((d) => d.household_number === n)));
  }));
}

function edit(kind, row) {
  const info = KINDS[kind];
  const id = row[info.key];
  const form = h('form', { method: 'dialog' });
  const rows = [h('h3', { id: 'site-edit-title' }, `Edit ${info.one} ${id}`),
                field('Name', h('input', { name: 'name', value: row.name || '' }))];
  if (kind !== 'households') rows.push(field('Household', householdSelect('household_number', row.household_number)));
  for (const f of extraFields(kind)) rows.push(extraRow(f, row[f.key]));
  rows.push(h('div', { class: 'actions' }, h('button', { type: 'submit', value: 'save' }, 'Save'),
    h('button', { type: 'button', class: 'secondary', onclick: () => els.dialog.close() }, 'Cancel')));
  form.append(...rows);
  linkControls(form, kind);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const saved = await attempt(() => api.patch(`/api/admin/${kind}/${seg(id)}`, formValues(form, kind)));
    if (!saved) return;
    els.dialog.close();
    changed();
  });
  els.dialog.replaceChildren(form);
  els.dialog.showModal();
}

async function reissue(kind, id) {
  const one = KINDS[kind].one;
  if (!window.confirm(`Issue a new token for ${one} ${id}? Its current token stops working.`)) return;
  const issued = await attempt(() => api.post(`/api/admin/${kind}/${seg(id)}/token`));
  if (issued) showToken(one, id, issued.token);
}

async function remove(kind, id) {
  const one = KINDS[kind].one;
  if (!window.confirm(`Delete ${one} ${id}?`)) return;
  const done = await attempt(async () => {
    await api.del(`/api/admin/${kind}/${seg(id)}`);
    return true;
  });
  if (done) {
    toast(`Deleted ${one} ${id}`, 'info');
    changed();
  }
}

/** The device's online/offline and battery changes over the last 7 days, with a summary, in the dialog. */
async function health(id) {
  const report = await attempt(() => api.get(`/api/devices/${seg(id)}/status/history?days=7`));
  if (!report) return;
  const s = report.summary;
  const pct = s.online_ratio === null ? 'no reports yet' : `online ${Math.round(s.online_ratio * 1000) / 10} %`;
  const battery = s.battery_last === null ? '' : ` · battery ${s.battery_first} % → ${s.battery_last} % (lowest ${s.battery_min} %)`;
  const rows = report.changes.slice().reverse().map((c) => h('tr', {},
    h('td', { dataset: { label: 'Since' } }, when(c.ts)),
    h('td', { dataset: { label: 'State' } }, h('span', { class: `badge ${c.online ? 'on' : 'off'}` },
      c.online === null ? 'unknown' : c.online ? 'online' : 'offline')),
    h('td', { dataset: { label: 'Battery' } }, c.battery === null ? '' : `${c.battery} %`)));
  els.dialog.replaceChildren(h('form', { method: 'dialog', id: 'device-health' },
    h('h3', { id: 'site-edit-title' }, `Health of device ${id}, last 7 days`),
    h('p', { class: 'health-summary' }, `${pct}${battery}`,
      s.longest_outage_s ? ` · longest outage ${duration(s.longest_outage_s)}` : ''),
    h('div', { class: 'scroll' }, h('table', { class: 'stack' },
      h('thead', {}, h('tr', {}, ['Since', 'State', 'Battery'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 3, class: 'muted' }, 'No reports in these days.'))))),
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Close'))));
  els.dialog.showModal();
}
