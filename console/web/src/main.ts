// The console's entry point: a hash router (#/, #/task/ID, #/device/ID,
// #/tasks/new, #/upload, #/login) that renders one page at a time into
// <main>. Leaving a page aborts its calls and streams.

import { needsLogin, aborted, message } from "./api.js";
import { h, replace, announce } from "./dom.js";
import { overviewPage } from "./overview.js";
import { taskPage } from "./task.js";
import { devicePage } from "./device.js";
import { newTaskPage, uploadPage } from "./forms.js";
import { loginPage, logout, haveSession } from "./login.js";
import { go, toLogin, type Page } from "./nav.js";

const routes: [RegExp, Page][] = [
  [/^\/$/, overviewPage],
  [/^\/task\/([^/]+)$/, taskPage],
  [/^\/device\/([^/]+)$/, devicePage],
  [/^\/tasks\/new$/, newTaskPage],
  [/^\/upload$/, uploadPage],
  [/^\/login$/, loginPage],
];

let current: AbortController | undefined;

async function render(): Promise<void> {
  current?.abort();
  const ctl = new AbortController();
  current = ctl;
  const main = document.getElementById("main")!;
  const route = decodeURIComponent(location.hash.replace(/^#/, "").split("?")[0] || "/");
  const logoutBtn = document.getElementById("logout")!;
  logoutBtn.hidden = !haveSession();
  if (route !== "/login" && !haveSession()) {
    go("/login?next=" + encodeURIComponent(route));
    return;
  }
  for (const [re, page] of routes) {
    const m = re.exec(route);
    if (!m) continue;
    replace(main, h("p", { class: "muted loading" }, "Loading…"));
    try {
      await page(main, ctl.signal, m[1] ?? "");
    } catch (err) {
      if (aborted(err) || ctl.signal.aborted) return;
      if (needsLogin(err)) {
        toLogin();
        return;
      }
      main.querySelector(".loading")?.remove();
      main.append(h("p", { class: "error", role: "alert" }, "Error: " + message(err)));
      announce("Error: " + message(err));
    }
    return;
  }
  replace(main, h("h1", {}, "Not found"), h("p", {}, "No page at ", h("code", {}, route), ". ", h("a", { href: "#/" }, "Back to the fleet")));
}

window.addEventListener("hashchange", () => void render());
document.getElementById("logout")!.addEventListener("click", () => void logout());
void render();
