// Boot: learn the box's mode, sign in (authenticated mode), open the MQTT link, route between pages.
import { ApiError, api, token } from './api.js';
import * as audit from './audit.js';
import * as explorer from './explorer.js';
import * as history from './history.js';
import { connect, onState } from './link.js';
import * as live from './live.js';
import * as simulator from './simulator.js';
import * as site from './site.js';
import { h } from './ui.js';

const PAGES = { live, site, history, simulator, api: explorer, audit };
const $ = (id) => document.getElementById(id);
const mounted = new Map();
const ctx = { cfg: null, features: {}, signedIn: false };

const LINK_TEXT = { online: 'MQTT: live', connecting: 'MQTT: connecting…', offline: 'MQTT: offline',
                    refused: 'MQTT: refused', unavailable: 'MQTT: unavailable', bridge: 'MQTT: external broker' };

function showLinkState(state, detail) {
  const badge = $('link-state');
  badge.textContent = LINK_TEXT[state] || `MQTT: ${state}`;
  badge.className = `badge ${state === 'online' ? 'on' : state === 'connecting' ? '' : 'off'}`;
  badge.title = detail || '';
}

async function verify() {
  try {
    await api.post('/api/console/signin');  // checks the admin token; the box records the sign-in
    return null;
  } catch (err) {
    if (err instanceof ApiError && err.status === 403) return 'This token is valid but is not the admin token.';
    return englishFirst(err);
  }
}

/** "未授权: invalid or expired token" -> "invalid or expired token (401 未授权)": the English detail first, so a
 * browser without a CJK font still shows a readable reason (the category then shows as boxes at worst). */
function englishFirst(err) {
  const [category, ...rest] = String(err.message).split(': ');
  if (!(err instanceof ApiError) || !rest.length) return err.message;
  return `${rest.join(': ')} (${err.status} ${category})`;
}

function showSignIn(message = '') {
  $('loading').hidden = true;
  $('signin').hidden = false;
  $('signin-error').textContent = message;
  $('token').focus();
}

async function signIn(event) {
  event.preventDefault();
  const value = $('token').value.trim();
  if (!value) return;
  token.set(value);
  const problem = await verify();
  if (problem) {
    token.clear();
    showSignIn(problem);
    return;
  }
  $('token').value = '';
  start(value);
}

function start(adminToken) {
  ctx.signedIn = true;
  $('signin').hidden = true;
  $('loading').hidden = true;
  $('nav').hidden = false;
  $('signout').hidden = !adminToken;
  connect(ctx.cfg.mqtt, adminToken, Boolean(ctx.cfg.bridge));
  route(false);
}

function route(moveFocus = true) {
  if (!ctx.signedIn) return;
  const name = location.hash.slice(1) in PAGES ? location.hash.slice(1) : 'live';
  for (const [key, section] of mounted) section.hidden = key !== name;
  let section = mounted.get(name);
  if (!section) {
    section = h('section', { id: `page-${name}`, class: 'page', 'aria-label': PAGES[name].title });
    $('main').append(section);
    PAGES[name].mount(section, ctx);
    mounted.set(name, section);
  }
  section.hidden = false;
  PAGES[name].show?.();
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.getAttribute('href') === `#${name}`) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const where = ctx.cfg.site_id ? ` · site ${ctx.cfg.site_id}` : '';
  document.title = `${PAGES[name].title}${where} · intercom-broker console`;
  if (moveFocus) section.querySelector('h2')?.focus();
}

async function boot() {
  onState(showLinkState);
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', () => {
    token.clear();
    location.hash = '';
    location.reload();
  });
  window.addEventListener('hashchange', () => route());
  try {
    ctx.cfg = await api.get('/api/console/config');
  } catch (err) {
    $('loading').textContent = `Cannot load the console configuration: ${err.message}`;
    return;
  }
  ctx.features = ctx.cfg.features || {};
  $('mode').textContent = ctx.cfg.mode;
  if (ctx.cfg.site_id) {  // bridge mode with --site-id: one console per site, each under /sites/{site_id}/
    $('site').textContent = `site ${ctx.cfg.site_id}`;
    $('site').hidden = false;
  }
  if (ctx.cfg.mode === 'local-only') {
    start(null);
    return;
  }
  if (token.get() && !(await verify())) {
    start(token.get());
    return;
  }
  token.clear();
  showSignIn();
}

boot();
