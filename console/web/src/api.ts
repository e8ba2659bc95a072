// The console's link to the Connect API: one transport (Connect protocol,
// binary, over fetch with the session cookie) and a typed client per
// service. Every call carries the CSRF token issued at login in the
// X-CSRF-Token header; the session cookie itself is HttpOnly.

import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-web";
import { DeviceService } from "./gen/otafleet/v1/device_pb.js";
import { GroupService } from "./gen/otafleet/v1/group_pb.js";
import { PackageService } from "./gen/otafleet/v1/package_pb.js";
import { ProductService } from "./gen/otafleet/v1/product_pb.js";
import { TaskService } from "./gen/otafleet/v1/task_pb.js";

const csrfKey = "otafleet.csrf";

/** csrf is the CSRF token of this tab's session, or "" when logged out. */
export function csrf(): string {
  return sessionStorage.getItem(csrfKey) ?? "";
}

export function setCSRF(token: string): void {
  if (token) sessionStorage.setItem(csrfKey, token);
  else sessionStorage.removeItem(csrfKey);
}

const withCSRF: Interceptor = (next) => async (req) => {
  req.header.set("X-CSRF-Token", csrf());
  return next(req);
};

const transport = createConnectTransport({
  baseUrl: new URL("/", location.href).href,
  useBinaryFormat: true,
  interceptors: [withCSRF],
  fetch: (input, init) => fetch(input, { ...init, credentials: "same-origin" }),
});

export const products = createClient(ProductService, transport);
export const devices = createClient(DeviceService, transport);
export const groups = createClient(GroupService, transport);
export const packages = createClient(PackageService, transport);
export const tasks = createClient(TaskService, transport);

/** needsLogin reports whether err means the session is missing or over. */
export function needsLogin(err: unknown): boolean {
  return err instanceof ConnectError && err.code === Code.Unauthenticated;
}

/** message is err for people: the API's message without the code prefix. */
export function message(err: unknown): string {
  if (err instanceof ConnectError) return err.rawMessage || Code[err.code];
  if (err instanceof Error) return err.message;
  return String(err);
}

/** aborted reports whether err comes from leaving the page (an abort). */
export function aborted(err: unknown): boolean {
  return (err instanceof ConnectError && err.code === Code.Canceled) || (err instanceof DOMException && err.name === "AbortError");
}

/** listAll pages through a List method (at most max items). */
export async function listAll<T>(page: (token: string) => Promise<{ items: T[]; next: string }>, max = 100_000): Promise<{ items: T[]; truncated: boolean }> {
  const items: T[] = [];
  let token = "";
  do {
    const p = await page(token);
    items.push(...p.items);
    token = p.next;
  } while (token !== "" && items.length < max);
  return { items, truncated: token !== "" };
}
