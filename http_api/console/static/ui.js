// Small DOM helpers shared by the pages: an element builder, toasts, and time formatting.

/** h('button', {class: 'x', onclick: fn}, 'text', child) -> element; null/false children are skipped. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
    else if (key === 'class') el.className = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key in el && typeof value !== 'string') el[key] = value;
    else el.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

let fieldIds = 0;

/** A form control with its label (`for`/`id`, so the label's name is just `text`). */
export function field(text, control) {
  if (!control.id) {
    fieldIds += 1;
    control.id = `field-${fieldIds}`;
  }
  return h('div', { class: 'field' }, h('label', { for: control.id }, text), control);
}

/** Show a message to the user; errors stay until closed or 10 s pass. */
export function toast(message, kind = 'error') {
  const box = document.getElementById('toasts');
  const close = h('button', { type: 'button', 'aria-label': 'Dismiss' }, '×');
  const item = h('div', { class: `toast ${kind}` }, h('span', {}, message), close);
  close.addEventListener('click', () => item.remove());
  box.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 10000 : 4000);
}

/** Run an async action, showing its error (the REST envelope's message) to the user. */
export async function attempt(fn) {
  try {
    return await fn();
  } catch (err) {
    toast(err.message || String(err));
    return undefined;
  }
}

const two = (n) => String(n).padStart(2, '0');

export function when(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
}

export function clock(date = new Date()) {
  return `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}.${String(date.getMilliseconds()).padStart(3, '0')}`;
}

/** Seconds as "1:05" or "1:02:03"; empty for null. */
export function duration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return '';
  const s = Math.max(0, Math.round(seconds));
  const [hh, mm, ss] = [Math.floor(s / 3600), Math.floor((s % 3600) / 60), s % 60];
  return hh ? `${hh}:${two(mm)}:${two(ss)}` : `${mm}:${two(ss)}`;
}

export function secondsBetween(fromIso, toIso) {
  if (!fromIso || !toIso) return null;
  return (new Date(toIso) - new Date(fromIso)) / 1000;
}

/** Put text on the clipboard; falls back to selecting an input where the async API is not allowed (plain http on the LAN). */
export async function copyText(text, input) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    input?.select();
    return document.execCommand?.('copy') ?? false;
  }
}
