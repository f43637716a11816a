// The admin API client. The token lives in sessionStorage (this tab only, gone when it closes)
// and travels only in the Authorization header: never in a URL, never in localStorage.
const TOKEN_KEY = "voxmem.admin_token";

// "/console" or "/t/acme/console": the API lives under the same prefix.
export const BASE = location.pathname.replace(/\/console\/?$/, "");

export class ApiError extends Error {
  constructor(status, detail) {
    super(detail || `HTTP ${status}`);
    this.status = status;
  }
}

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export async function api(path, { method = "GET", body, auth = true } = {}) {
  const headers = { Accept: "application/json" };
  if (auth) headers.Authorization = `Bearer ${token()}`;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(BASE + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "omit",
    cache: "no-store",
  });
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = text;
  }
  // /health answers 503 with a JSON body when unhealthy: that is data, not a failure.
  if (!response.ok && !(path === "/health" && data && data.checks)) {
    const detail = data && typeof data === "object" ? JSON.stringify(data.detail ?? data) : text;
    throw new ApiError(response.status, detail);
  }
  return data;
}

export async function metricsText() {
  const response = await fetch(BASE + "/metrics", { credentials: "omit", cache: "no-store" });
  if (!response.ok) throw new ApiError(response.status, "metrics unavailable");
  return response.text();
}

export const enc = encodeURIComponent;
