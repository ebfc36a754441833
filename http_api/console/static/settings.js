// Site page dialogs for a resident's or household's do-not-disturb and a household's forwarding
// (PUT /api/residents/{id}/dnd, /api/households/{n}/dnd, /api/households/{n}/forwarding).
import { api } from './api.js';
import { idList } from './extensions.js';
import { attempt, field, h } from './ui.js';

/** Open `entry`'s dialog for `subject` (e.g. "household 101") in `dialog`; `saved` runs after a save. */
export function openSetting(dialog, entry, ident, subject, current, saved) {
  const form = h('form', { method: 'dialog', 'aria-labelledby': 'setting-title' });
  const read = entry.key === 'dnd' ? dndControls(form, current) : forwardingControls(form, current);
  form.prepend(h('h3', { id: 'setting-title' }, `${entry.label}: ${subject}`));
  form.append(h('div', { class: 'actions' }, h('button', { type: 'submit', value: 'save' }, 'Save'),
    h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel')));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = read();
    if (!body) return;
    const done = await attempt(() => api.put(entry.path(ident), body));
    if (!done) return;
    dialog.close();
    saved(done);
  });
  dialog.replaceChildren(form);
  dialog.showModal();
}

function dndControls(form, dnd) {
  const on = h('input', { type: 'checkbox', name: 'enabled', checked: Boolean(dnd?.enabled) });
  const windows = h('div', { class: 'windows' });
  const addWindow = (w = { from: '22:00', to: '07:00' }) => {
    const n = windows.children.length + 1;
    const row = h('div', { class: 'row window' },
      field(`From (window ${n})`, h('input', { type: 'time', name: 'from', value: w.from, required: true })),
      field(`To (window ${n})`, h('input', { type: 'time', name: 'to', value: w.to, required: true })),
      h('button', { type: 'button', class: 'secondary', 'aria-label': `Remove window ${n}`,
                    onclick: () => row.remove() }, 'Remove'));
    windows.append(row);
  };
  for (const w of dnd?.schedule || []) addWindow(w);
  form.append(h('label', { class: 'check' }, on, 'Do not disturb'), windows,
    h('button', { type: 'button', class: 'secondary', onclick: () => addWindow() }, 'Add a time window'),
    h('p', { class: 'hint' }, `No window: all day. Times are in the site's zone (${dnd?.timezone || 'local'}); `
      + 'a window may run past midnight (22:00 to 07:00).'));
  return () => {
    const schedule = [...windows.querySelectorAll('.window')].map((row) => ({
      from: row.querySelector('[name="from"]').value, to: row.querySelector('[name="to"]').value }));
    return { enabled: on.checked, schedule: schedule.length ? schedule : null };
  };
}

function forwardingControls(form, f) {
  const own = f?.forward_to;
  const mode = h('select', { name: 'mode' },
    h('option', { value: 'site', selected: own === null || own === undefined }, "Use the site's setting"),
    h('option', { value: 'never', selected: Array.isArray(own) && !own.length }, 'Never forward'),
    h('option', { value: 'to', selected: Boolean(own?.length) }, 'Forward to these residents'));
  const to = h('input', { name: 'forward_to', value: own?.join(', ') || '', placeholder: 'e.g. 9, 10',
                          autocomplete: 'off' });
  const after = h('input', { name: 'forward_after_s', type: 'number', min: '1', max: '3600', step: 'any',
                             value: f?.forward_after_s ?? '', placeholder: 'the ring timeout' });
  const sync = () => { to.disabled = mode.value !== 'to'; };
  mode.addEventListener('change', sync);
  sync();
  form.append(field('When nobody answers', mode), field('Forward to (resident ids, comma-separated)', to),
    field('Forward after (seconds)', after),
    h('p', { class: 'hint' }, 'The same call then rings these residents (a concierge or guard) for the ring timeout.'));
  return () => {
    const forwardTo = mode.value === 'site' ? null : mode.value === 'never' ? [] : idList(to.value);
    if (mode.value === 'to' && !forwardTo) {
      to.setCustomValidity('Name at least one resident');
      to.reportValidity();
      to.addEventListener('input', () => to.setCustomValidity(''), { once: true });
      return null;
    }
    return { forward_to: forwardTo, forward_after_s: after.value ? Number(after.value) : null };
  };
}
