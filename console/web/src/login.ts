// Login: the API token is asked once and traded for a session (an HttpOnly
// cookie the browser keeps, and a CSRF token this tab keeps and sends with
// every call). The token itself is not stored.

import { csrf, setCSRF } from "./api.js";
import { h, replace, announce } from "./dom.js";
import { focusHeading, go, query } from "./nav.js";

/** haveSession reports whether this tab holds a session's CSRF token. */
export function haveSession(): boolean {
  return csrf() !== "";
}

/** csrfOf reads the CSRF token from a login or session answer. */
async function csrfOf(res: Response): Promise<string> {
  const body = (await res.json()) as Record<string, unknown>;
  const t = body["csrfToken"];
  return typeof t === "string" ? t : "";
}

/** resumeSession asks the server for the CSRF token of the session cookie
 * the browser may already hold (after the one-time login URL, or in a new
 * tab); true when there is one. */
export async function resumeSession(): Promise<boolean> {
  const res = await fetch("/ui/session", { credentials: "same-origin", headers: { Accept: "application/json" } });
  if (!res.ok) return false;
  const t = await csrfOf(res);
  setCSRF(t);
  return t !== "";
}

export async function loginPage(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const next = query("next") || "/";
  if (!haveSession() && (await resumeSession())) {
    go(next);
    return;
  }
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "current-password", required: true, spellcheck: "false" });
  const submit = h("button", { type: "submit" }, "Log in");
  const form = h("form", { class: "card narrow" },
    h("label", { for: "token" }, "API token"),
    h("p", { class: "hint", id: "token-hint" }, "The token is in the data folder's api-token file (or use the login URL that serve logs)."),
    input, err, submit);
  input.setAttribute("aria-describedby", "token-hint");
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    submit.disabled = true;
    err.hidden = true;
    try {
      const res = await fetch("/ui/login", {
        method: "POST", credentials: "same-origin", signal,
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ token: input.value.trim() }),
      });
      if (!res.ok) {
        throw new Error(res.status === 401 || res.status === 403 ? "That token is not valid." : `Login failed (${res.status}): ${(await res.text()).slice(0, 200)}`);
      }
      setCSRF(await csrfOf(res));
      input.value = "";
      announce("Logged in");
      go(next);
    } catch (e) {
      if (signal.aborted) return;
      err.textContent = e instanceof Error ? e.message : String(e);
      err.hidden = false;
      input.focus();
    } finally {
      submit.disabled = false;
    }
  });
  replace(main, h("h1", {}, "Log in"), form);
  focusHeading(main);
  input.focus();
}

/** logout ends the session on the server and in this tab. */
export async function logout(): Promise<void> {
  try {
    await fetch("/ui/logout", { method: "POST", credentials: "same-origin", headers: { "X-CSRF-Token": csrf() } });
  } finally {
    setCSRF("");
    go("/login");
  }
}
