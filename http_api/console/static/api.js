// REST client for the box's API: the {code, message, data} envelope, and the admin token (session storage only).

const KEY = 'intercom.adminToken';

/** Where the box's API is, as seen from this page: '' at `/`, `/sites/A` behind a proxy routing sites by path. */
export const BASE = new URL('..', import.meta.url).pathname.replace(/\/$/, '');

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

function headers(contentType) {
  const out = contentType ? { 'Content-Type': contentType } : {};
  const t = token.get();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** Send a request as-is and return {status, text, ms}: the API explorer shows exactly what came back. */
export async function raw(method, path, bodyText) {
  const started = performance.now();
  const res = await fetch(BASE + path, { method, headers: headers(bodyText !== undefined && 'application/json'),
                                  body: bodyText });
  return { status: res.status, text: await res.text(), ms: Math.round(performance.now() - started) };
}

async function send(method, path, body, contentType) {
  try {
    return await fetch(BASE + path, { method, headers: headers(body !== undefined && contentType), body });
  } catch (err) {
    throw new ApiError(0, `cannot reach the box: ${err.message}`);
  }
}

async function unwrap(res) {
  let envelope = null;
  try {
    envelope = await res.json();
  } catch {
    // not JSON: reported below with the HTTP status
  }
  if (!res.ok || !envelope || envelope.code !== 0) {
    throw new ApiError(res.status, envelope?.message || `${res.status} ${res.statusText}`);
  }
  return envelope.data;
}

/** Call an endpoint and return its `data`; a failure throws ApiError carrying the envelope's message. */
export async function request(method, path, body) {
  return unwrap(await send(method, path, body === undefined ? undefined : JSON.stringify(body), 'application/json'));
}

/** Fetch a binary resource (a snapshot) with the admin token: an <img src> could not send the header. */
async function blob(path) {
  const res = await send('GET', path);
  if (!res.ok) await unwrap(res);
  return res.blob();
}

/** One page of a paged listing: its `data` and the cursor of the next page (null on the last). */
async function page(path) {
  const res = await send('GET', path);
  return { data: await unwrap(res), next: res.headers.get('X-Next-Cursor') };
}

export const api = {
  get: (path) => request('GET', path),
  page,
  post: (path, body = {}) => request('POST', path, body),
  patch: (path, body) => request('PATCH', path, body),
  put: (path, body) => request('PUT', path, body),
  del: (path) => request('DELETE', path),
  blob,
  /** POST raw bytes (a snapshot's JPEG) and return the envelope's `data`. */
  upload: async (path, data, type) => unwrap(await send('POST', path, data, type)),
};

/** Path segment encoding for ids (which may hold any character). */
export const seg = (value) => encodeURIComponent(value);
