// REST client for the box's API: the {code, message, data} envelope, and the admin token (session storage only).

const KEY = 'intercom.adminToken';

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

function headers(json) {
  const out = json ? { 'Content-Type': 'application/json' } : {};
  const t = token.get();
  if (t) out.Authorization = `Bearer ${t}`;
  return out;
}

/** Send a request as-is and return {status, text, ms}: the API explorer shows exactly what came back. */
export async function raw(method, path, bodyText) {
  const started = performance.now();
  const res = await fetch(path, { method, headers: headers(bodyText !== undefined), body: bodyText });
  return { status: res.status, text: await res.text(), ms: Math.round(performance.now() - started) };
}

/** Call an endpoint and return its `data`; a failure throws ApiError carrying the envelope's message. */
export async function request(method, path, body) {
  let res;
  try {
    res = await fetch(path, { method, headers: headers(body !== undefined),
                              body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (err) {
    throw new ApiError(0, `cannot reach the box: ${err.message}`);
  }
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

export const api = {
  get: (path) => request('GET', path),
  post: (path, body = {}) => request('POST', path, body),
  patch: (path, body) => request('PATCH', path, body),
  del: (path) => request('DELETE', path),
};

/** Path segment encoding for ids (which may hold any character). */
export const seg = (value) => encodeURIComponent(value);
