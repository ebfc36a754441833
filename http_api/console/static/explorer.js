// API: every operation of /api/openapi.json, with a form to try it from the browser (signed-in token attached).
import { BASE, raw } from './api.js';
import { attempt, field, h } from './ui.js';

export const title = 'API';

let spec = null;
let els;

export function mount(section) {
  els = { list: h('div', { id: 'api-ops' }), filter: h('input', { type: 'search', id: 'api-filter', autocomplete: 'off' }) };
  els.filter.addEventListener('input', applyFilter);
  section.append(
    h('h2', { tabindex: -1 }, 'API'),
    h('p', {}, 'The OpenAPI 3.1 description of the REST API, generated from the route table and the payload models: ',
      h('a', { href: `${BASE}/api/openapi.json` }, `${BASE}/api/openapi.json`),
      '. Requests sent from here carry the signed-in admin token (none in local-only mode).'),
    h('div', { class: 'card row' }, field('Filter operations', els.filter)),
    els.list);
  load();
}

async function load() {
  spec = await attempt(async () => {
    const res = await fetch(`${BASE}/api/openapi.json`);
    if (!res.ok) throw new Error(`cannot load the API description: HTTP ${res.status}`);
    return res.json();
  });
  if (!spec) return;
  const byTag = new Map();
  for (const [path, ops] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      const tag = op.tags?.[0] || 'other';
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method, op });
    }
  }
  els.list.replaceChildren(...[...byTag].map(([tag, ops]) => h('section', { class: 'card', 'aria-label': `${tag} operations` },
    h('h3', {}, tag), ops.map(operation))));
}

function applyFilter() {
  const q = els.filter.value.trim().toLowerCase();
  for (const d of els.list.querySelectorAll('details.op')) d.hidden = q !== '' && !d.dataset.text.includes(q);
}

function resolve(schema) {
  let s = schema;
  for (let i = 0; s?.$ref && i < 10; i += 1) s = spec.components.schemas[s.$ref.split('/').pop()];
  return s || {};
}

/** A starting body for a schema: every property, with its default or an empty value of its type. */
export function example(schema, depth = 0) {
  const s = resolve(schema);
  if (depth > 5) return null;
  if ('default' in s) return s.default;
  if (s.enum) return s.enum[0];
  const alt = s.anyOf || s.oneOf;
  if (alt) return example(alt.find((x) => x.type !== 'null') || alt[0], depth + 1);
  switch (s.type) {
    case 'object':
      return Object.fromEntries(Object.entries(s.properties || {}).map(([k, v]) => [k, example(v, depth + 1)]));
    case 'array': return [];
    case 'integer': case 'number': return 0;
    case 'boolean': return false;
    case 'string': return '';
    default: return null;
  }
}

function operation({ path, method, op }) {
  const details = h('details', { class: 'op', dataset: { op: `${method.toUpperCase()} ${path}`,
                                                         text: `${method} ${path} ${op.summary}`.toLowerCase() } },
    h('summary', {}, h('span', { class: 'method' }, method.toUpperCase()), h('code', {}, path),
      h('span', { class: 'muted' }, op.summary), op.deprecated ? h('span', { class: 'badge' }, 'older shape') : null));
  details.addEventListener('toggle', () => {
    if (details.open && !details.dataset.built) {
      details.dataset.built = '1';
      details.append(tryForm(path, method, op));
    }
  }, { once: false });
  return details;
}

function tryForm(path, method, op) {
  const form = h('form', { 'aria-label': `Try ${method.toUpperCase()} ${path}` });
  const inputs = (op.parameters || []).map((p) => {
    const control = p.schema?.enum
      ? h('select', { name: p.name }, p.schema.enum.map((v) => h('option', { value: v }, v)))
      : h('input', { name: p.name, required: p.required, autocomplete: 'off' });
    control.dataset.in = p.in;
    return field(`${p.name} (${p.in}${p.required ? ', required' : ''})`, control);
  });
  const content = op.requestBody?.content?.['application/json']?.schema;
  const variants = content ? (content.oneOf || [content]) : [];
  const body = content ? h('textarea', { name: 'body', spellcheck: false, rows: 8 }) : null;
  const variant = variants.length > 1
    ? h('select', { name: 'variant' }, variants.map((v, i) => h('option', { value: i }, v.$ref?.split('/').pop() || `variant ${i + 1}`)))
    : null;
  const fill = () => { body.value = JSON.stringify(example(variants[Number(variant?.value || 0)]), null, 2); };
  if (body) fill();
  variant?.addEventListener('change', fill);
  const out = h('div', { class: 'response', 'aria-live': 'polite' });
  form.append(...inputs, variant ? field('Body shape', variant) : null, body ? field('JSON body', body) : null,
    h('div', { class: 'actions' }, h('button', { type: 'submit' }, 'Send')), out);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let url = path;
    const query = new URLSearchParams();
    for (const el of form.querySelectorAll('[data-in]')) {
      if (el.dataset.in === 'path') url = url.replace(`{${el.name}}`, encodeURIComponent(el.value));
      else if (el.value !== '') query.set(el.name, el.value);
    }
    if ([...query].length) url += `?${query}`;
    const result = await attempt(() => raw(method.toUpperCase(), url, body ? body.value : undefined));
    if (!result) return;
    let text = result.text;
    try {
      text = JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      // not JSON (the console's own files): shown as is
    }
    out.replaceChildren(h('p', {}, h('span', { class: `badge ${result.status < 400 ? 'on' : 'bad'}` }, `HTTP ${result.status}`),
      ` ${method.toUpperCase()} ${url} · ${result.ms} ms`), h('pre', { class: 'response-body' }, text.slice(0, 20000)));
  });
  return h('div', {}, form);
}
