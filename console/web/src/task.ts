// A task: live progress from the WatchTask stream, counts by status and
// stage, failures grouped by reason, the radio cells that pace it, its
// devices; stop and retry.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { aborted, message, needsLogin, tasks } from "./api.js";
import { announce, fmtTime, h, link, replace, table } from "./dom.js";
import { SubtaskStatus, TaskStatus } from "./gen/otafleet/v1/common_pb.js";
import type { Task, TaskDevice } from "./gen/otafleet/v1/task_pb.js";
import { finished, statusClass, subtaskStatusName, taskStatusName, taskTypeName } from "./labels.js";
import { focusHeading, toLogin } from "./nav.js";
import { cellsSection } from "./cells.js";

/** maxDevices bounds the devices the page loads (a task has at most 30,000). */
const maxDevices = 30_000;
/** shownDevices bounds the rows of the device table (failed ones first). */
const shownDevices = 200;
/** refreshEvery spaces the device and cell reloads while the task runs:
 * 2 s, and 1 s more per 1,000 devices (a reload reads them all). */
const refreshEvery = (devices: number) => 2000 + devices;

const counts: [keyof NonNullable<Task["progress"]>, string][] = [
  ["total", "total"], ["waiting", "waiting"], ["processing", "processing"], ["success", "success"],
  ["fail", "fail"], ["failWaitRetry", "fail, retry due"], ["stopped", "stopped"],
];

export async function taskPage(main: HTMLElement, signal: AbortSignal, id: string): Promise<void> {
  const opt = { signal };
  const first = (await tasks.getTask({ taskId: id }, opt)).task;
  if (!first) throw new Error("the API returned no task");

  const status = h("span", { id: "task-status" });
  const live = h("span", { id: "live", class: "muted" });
  const bar = h("progress", { id: "task-progress", max: 1, value: 0, "aria-labelledby": "h-progress" });
  const countList = h("dl", { class: "counts", id: "counts" });
  const note = h("p", { class: "muted", role: "status" });
  const stopBtn = h("button", { type: "button", id: "stop", class: "danger" }, "Stop task");
  const retryBtn = h("button", { type: "button", id: "retry" }, "Retry failed devices");
  const stages = h("div", { id: "stages" });
  const failures = h("div", { id: "failures" });
  const cells = h("div", { id: "cells" });
  const devs = h("div", { id: "devices" });
  let task = first;

  const show = (t: Task) => {
    task = t;
    const name = taskStatusName[t.status];
    status.className = statusClass(name);
    status.dataset.status = name;
    status.textContent = name;
    const p = t.progress;
    const done = p ? p.success + p.fail + p.stopped : 0;
    bar.max = Math.max(p?.total ?? 0, 1);
    bar.value = done;
    bar.textContent = `${done} of ${p?.total ?? 0}`;
    countList.replaceChildren(...counts.map(([k, label]) => h("div", {}, h("dt", {}, label), h("dd", { "data-count": k }, p ? String(p[k] ?? 0) : "0"))));
    stopBtn.disabled = finished(t.status) || t.status === TaskStatus.STOPPING;
    retryBtn.disabled = !(t.status === TaskStatus.PROCESSING || t.status === TaskStatus.FAIL || t.status === TaskStatus.PARTIAL_SUCCESS) ||
      !p || p.fail + p.failWaitRetry + p.stopped === 0;
  };

  let refreshing = false;
  let lastRefresh = 0;
  let loaded = 0;
  let pending: ReturnType<typeof setTimeout> | undefined;
  const refresh = async () => {
    if (refreshing || signal.aborted) return;
    refreshing = true;
    lastRefresh = Date.now();
    const shown = (err: unknown, el: HTMLElement, what: string) => {
      if (aborted(err)) return;
      if (needsLogin(err)) toLogin();
      else replace(el, h("p", { class: "error", role: "alert" }, `Could not load the ${what}: ${message(err)}`));
    };
    try {
      const list = await taskDevices(id, signal);
      loaded = list.length;
      renderDevices(list, stages, failures, devs);
    } catch (err) {
      shown(err, devs, "devices");
    }
    try {
      await cellsSection(cells, id, signal);
    } catch (err) {
      shown(err, cells, "cells");
    } finally {
      refreshing = false;
    }
  };
  const scheduleRefresh = () => {
    if (pending !== undefined) return;
    const wait = Math.max(0, lastRefresh + refreshEvery(loaded) - Date.now());
    pending = setTimeout(() => { pending = undefined; void refresh(); }, wait);
  };
  signal.addEventListener("abort", () => clearTimeout(pending));

  let restart: () => void = () => {};
  const act = async (btn: HTMLButtonElement, what: string, call: () => Promise<{ task?: Task }>) => {
    btn.disabled = true;
    try {
      const r = await call();
      if (r.task) show(r.task);
      note.textContent = what;
      announce(what);
      restart();
      void refresh();
    } catch (err) {
      if (needsLogin(err)) {
        toLogin();
        return;
      }
      note.textContent = "Failed: " + message(err);
      announce(note.textContent);
      show(task);
    }
  };
  stopBtn.addEventListener("click", () => void act(stopBtn, "Stop requested", () => tasks.stopTask({ taskId: id }, opt)));
  retryBtn.addEventListener("click", () => void act(retryBtn, "Retry requested", () => tasks.retryTask({ taskId: id }, opt)));

  const created = first.createTime ? fmtTime(timestampDate(first.createTime)) : "";
  replace(main,
    h("h1", {}, "Task ", first.name || first.taskId, " ", status),
    h("p", { class: "muted" }, h("code", {}, first.taskId), ` · ${taskTypeName[first.taskType]} · package `, h("code", {}, first.packageId), created ? ` · created ${created}` : ""),
    h("section", { "aria-labelledby": "h-progress" },
      h("h2", { id: "h-progress" }, "Progress ", live),
      bar, countList,
      h("div", { class: "actions" }, stopBtn, retryBtn), note),
    h("section", { "aria-labelledby": "h-cells" }, h("h2", { id: "h-cells" }, "Cells"), cells),
    h("section", { "aria-labelledby": "h-stages" }, h("h2", { id: "h-stages" }, "By status and stage"), stages),
    h("section", { "aria-labelledby": "h-failures" }, h("h2", { id: "h-failures" }, "Failures by reason"), failures),
    h("section", { "aria-labelledby": "h-devices" }, h("h2", { id: "h-devices" }, "Devices"), devs),
  );
  show(first);
  focusHeading(main);
  void refresh();

  // Watch until the task ends; a retry starts a new watch. A broken stream
  // is reopened after a pause that grows to 10 s.
  let backoff = 500;
  for (;;) {
    if (signal.aborted) return;
    live.textContent = "· live";
    live.dataset.live = "true";
    try {
      for await (const r of tasks.watchTask({ taskId: id }, opt)) {
        backoff = 500;
        if (r.task) show(r.task);
        scheduleRefresh();
      }
    } catch (err) {
      if (aborted(err) || signal.aborted) return;
      if (needsLogin(err)) throw err;
      live.textContent = "· reconnecting (" + message(err) + ")";
      await pause(backoff, signal);
      backoff = Math.min(backoff * 2, 10_000);
      continue;
    }
    if (!finished(task.status)) continue;
    live.textContent = "· finished";
    live.dataset.live = "false";
    announce("Task " + taskStatusName[task.status]);
    await refresh();
    await new Promise<void>((resolve) => {
      restart = resolve;
      signal.addEventListener("abort", () => resolve());
    });
    restart = () => {};
  }
}

function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(t); resolve(); });
  });
}

async function taskDevices(id: string, signal: AbortSignal): Promise<TaskDevice[]> {
  const out: TaskDevice[] = [];
  let token = "";
  do {
    const r = await tasks.listTaskDevices({ taskId: id, pageSize: 1000, pageToken: token }, { signal });
    out.push(...r.devices);
    token = r.nextPageToken;
  } while (token !== "" && out.length < maxDevices);
  return out;
}

const order: Record<SubtaskStatus, number> = {
  [SubtaskStatus.FAIL]: 0, [SubtaskStatus.FAIL_WAIT_RETRY]: 1, [SubtaskStatus.STOPPED]: 2, [SubtaskStatus.PROCESSING]: 3,
  [SubtaskStatus.WAITING]: 4, [SubtaskStatus.SUCCESS]: 5, [SubtaskStatus.UNSPECIFIED]: 6,
};

function renderDevices(list: TaskDevice[], stages: HTMLElement, failures: HTMLElement, devs: HTMLElement): void {
  const byStage = new Map<string, number>();
  const byReason = new Map<string, string[]>();
  for (const d of list) {
    const key = subtaskStatusName[d.status] + "\u0000" + (d.stage || "—");
    byStage.set(key, (byStage.get(key) ?? 0) + 1);
    if (d.status === SubtaskStatus.FAIL || d.status === SubtaskStatus.FAIL_WAIT_RETRY) {
      const r = d.failureReason || d.statusDesc || "no reason given";
      byReason.set(r, [...(byReason.get(r) ?? []), d.deviceId]);
    }
  }
  const devLink = (id: string) => link("/device/" + encodeURIComponent(id), id);
  replace(stages, table("Devices by status and stage", ["Status", "Stage", "Devices"],
    [...byStage.entries()].sort().map(([k, n]) => { const [s, st] = k.split("\u0000"); return [h("span", { class: statusClass(s) }, s), st, n]; })));
  replace(failures, table("Failures by reason, most frequent first", ["Reason", "Devices", "For example"],
    [...byReason.entries()].sort((a, b) => b[1].length - a[1].length).map(([r, ids]) =>
      [r, ids.length, h("span", { class: "examples" }, ids.slice(0, 3).flatMap((id, i) => (i ? [", ", devLink(id)] : [devLink(id)])))]), "failures"));
  const sorted = [...list].sort((a, b) => order[a.status] - order[b.status] || (a.deviceId < b.deviceId ? -1 : 1));
  replace(devs, table(list.length > shownDevices ? `The first ${shownDevices} of ${list.length} devices, failed first` : "Devices, failed first",
    ["Device", "Status", "Stage", "Attempts", "Detail"],
    sorted.slice(0, shownDevices).map((d) => [devLink(d.deviceId), h("span", { class: statusClass(subtaskStatusName[d.status]) }, subtaskStatusName[d.status]),
      d.stage, d.attempts, d.failureReason || d.statusDesc]), "devices"));
}
