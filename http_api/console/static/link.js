// The tab's one MQTT-over-WebSocket connection to the embedded broker; every page listens through it.
import mqtt from './vendor/mqtt.esm.js';

const listeners = new Set();
const lastByTopic = new Map(); // topic -> the last message in: retained counters reach pages mounted later
const stateListeners = new Set();
let client = null;
let state = 'offline';

function setState(next, detail = '') {
  state = next;
  for (const fn of stateListeners) fn(next, detail);
}

function emit(message) {
  for (const fn of listeners) {
    try {
      fn(message);
    } catch (err) {
      console.error('MQTT listener failed', err);
    }
  }
}

function decode(payload) {
  const text = new TextDecoder().decode(payload);
  try {
    return { text, body: JSON.parse(text) };
  } catch {
    return { text, body: text };
  }
}

/**
 * Connect as the admin principal (authenticated mode) or anonymously (local-only mode) and
 * subscribe to every site topic. `cfg` is /api/console/config's `mqtt` part.
 */
export function connect(cfg, adminToken, bridge = false) {
  if (bridge) {
    setState('bridge', "bridge mode: MQTT is the external broker's, which this page does not reach; pages read over REST");
    return;
  }
  if (!cfg.ws_port) {
    setState('unavailable', 'this box has no MQTT WebSocket listener (server.ws_port)');
    return;
  }
  const url = `${cfg.ws_scheme}://${location.hostname}:${cfg.ws_port}${cfg.ws_path}`;
  const suffix = Math.random().toString(36).slice(2, 10);
  const options = { protocolVersion: 4, clean: true, keepalive: 30, reconnectPeriod: 3000, connectTimeout: 10000 };
  if (adminToken) {
    Object.assign(options, { username: 'admin', password: adminToken,
                             clientId: cfg.client_id_suffixes ? `admin/console-${suffix}` : 'admin' });
  } else {
    options.clientId = `console-${suffix}`;
  }
  client = mqtt.connect(url, options);
  setState('connecting');
  client.on('connect', () => {
    setState('online');
    client.subscribe('#', { qos: 1 });
  });
  client.on('reconnect', () => setState('connecting'));
  client.on('offline', () => setState('offline'));
  client.on('error', (err) => {
    // A refused login would only be refused again (and count as failed attempts): stop.
    if (err?.code === 4 || err?.code === 5) {
      client.end(true);
      setState('refused', err.message);
    }
  });
  client.on('message', (topic, payload, packet) => {
    const message = { dir: 'in', topic, ...decode(payload), retain: Boolean(packet.retain), at: new Date() };
    lastByTopic.set(topic, message);
    emit(message);
  });
}

export function disconnect() {
  client?.end(true);
  client = null;
  setState('offline');
}

/** Publish JSON at QoS 1 and tell the listeners (the simulator's log shows what went out). */
export function publish(topic, body) {
  const text = JSON.stringify(body);
  if (!client || state !== 'online') throw new Error('MQTT is not connected');
  client.publish(topic, text, { qos: 1 });
  emit({ dir: 'out', topic, body, text, retain: false, at: new Date() });
}

/** The last message received on `topic` (e.g. a retained counter delivered before a page was opened). */
export function last(topic) {
  return lastByTopic.get(topic);
}

export function listen(fn) {
  listeners.add(fn);
  return () => listeners.delete(fn);
}

export function onState(fn) {
  stateListeners.add(fn);
  fn(state, '');
  return () => stateListeners.delete(fn);
}

/** Topic match with MQTT wildcards: matches('devices/+/status', 'devices/1/status'). */
export function matches(filter, topic) {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i += 1) {
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}
