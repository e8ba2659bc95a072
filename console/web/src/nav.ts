// Navigation helpers shared by the pages.

import { setCSRF } from "./api.js";

/** Page renders into main; it may keep running (streams) until signal aborts. */
export type Page = (main: HTMLElement, signal: AbortSignal, arg: string) => Promise<void>;

/** go navigates to a hash route. */
export function go(route: string): void {
  location.hash = "#" + route;
}

/** query returns a parameter of the hash route's query (#/login?next=...). */
export function query(name: string): string {
  const q = location.hash.split("?")[1] ?? "";
  return new URLSearchParams(q).get(name) ?? "";
}

/** focusHeading moves focus to the page's heading, for keyboard and screen reader users. */
export function focusHeading(main: HTMLElement): void {
  const h1 = main.querySelector("h1");
  if (h1) {
    h1.setAttribute("tabindex", "-1");
    h1.focus({ preventScroll: true });
  }
}

/** toLogin sends the user to the login page, back to the current page after. */
export function toLogin(): void {
  setCSRF("");
  const route = location.hash.replace(/^#/, "").split("?")[0] || "/";
  go("/login?next=" + encodeURIComponent(route));
}
