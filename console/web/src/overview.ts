// The fleet overview: products, devices online and offline, tasks by
// status, packages.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { devices, listAll, packages, products, tasks } from "./api.js";
import { bytes, fmtTime, h, link, replace, table } from "./dom.js";
import { TaskStatus } from "./gen/otafleet/v1/common_pb.js";
import { packageTypeName, protocolName, statusClass, taskStatusName } from "./labels.js";
import { focusHeading, go } from "./nav.js";

/** maxDevices bounds the devices the overview counts (10 pages). */
const maxDevices = 10_000;
/** maxLive bounds the devices whose live state (online) the overview asks
 * for, one GetDevice each: ListDevices returns registry records only. */
const maxLive = 500;
/** parallel bounds the GetDevice calls in flight. */
const parallel = 16;

/** liveOnline asks for the live state of ids and returns the online ones. */
async function liveOnline(ids: string[], signal: AbortSignal): Promise<Set<string>> {
  const online = new Set<string>();
  let next = 0;
  const worker = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      const r = await devices.getDevice({ deviceId: id }, { signal });
      if (r.device?.online) online.add(id);
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, ids.length) }, worker));
  return online;
}

export async function overviewPage(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const opt = { signal };
  const [prods, devs, tsk, pkgs] = await Promise.all([
    listAll(async (t) => { const r = await products.listProducts({ pageSize: 1000, pageToken: t }, opt); return { items: r.products, next: r.nextPageToken }; }),
    listAll(async (t) => { const r = await devices.listDevices({ pageSize: 1000, pageToken: t }, opt); return { items: r.devices, next: r.nextPageToken }; }, maxDevices),
    listAll(async (t) => { const r = await tasks.listTasks({ pageSize: 1000, pageToken: t }, opt); return { items: r.tasks, next: r.nextPageToken }; }),
    listAll(async (t) => { const r = await packages.listPackages({ pageSize: 1000, pageToken: t }, opt); return { items: r.packages, next: r.nextPageToken }; }),
  ]);
  const sampled = devs.items.slice(0, maxLive);
  const onlineIDs = await liveOnline(sampled.map((d) => d.deviceId), signal);
  const online = onlineIDs.size;
  const more = devs.truncated ? "+" : "";
  const liveNote = devs.items.length > maxLive ? `Online and offline counted among the first ${maxLive} devices.` : "";
  const byStatus = new Map<TaskStatus, number>();
  for (const t of tsk.items) byStatus.set(t.status, (byStatus.get(t.status) ?? 0) + 1);
  const perProduct = new Map<string, { on: number; all: number }>();
  for (const d of sampled) {
    const c = perProduct.get(d.productId) ?? { on: 0, all: 0 };
    c.all++;
    if (onlineIDs.has(d.deviceId)) c.on++;
    perProduct.set(d.productId, c);
  }
  const newest = [...tsk.items].sort((a, b) => Number((b.createTime?.seconds ?? 0n) - (a.createTime?.seconds ?? 0n)));

  const find = h("input", { id: "find-device", name: "device", required: true, autocomplete: "off", spellcheck: "false" });
  const findForm = h("form", { class: "inline" }, h("label", { for: "find-device" }, "Open device"), find, h("button", { type: "submit" }, "Open"));
  findForm.addEventListener("submit", (ev) => { ev.preventDefault(); go("/device/" + encodeURIComponent(find.value.trim())); });

  replace(main,
    h("h1", {}, "Fleet"),
    h("section", { "aria-labelledby": "h-devices" },
      h("h2", { id: "h-devices" }, "Devices"),
      h("ul", { class: "stats", id: "device-stats" },
        h("li", {}, h("strong", {}, `${devs.items.length}${more}`), " registered"),
        h("li", { class: "s-online" }, h("strong", {}, `${online}`), " online"),
        h("li", { class: "s-offline" }, h("strong", {}, `${sampled.length - online}`), " offline")),
      liveNote ? h("p", { class: "muted" }, liveNote) : null,
      findForm),
    h("section", { "aria-labelledby": "h-tasks" },
      h("h2", { id: "h-tasks" }, "Tasks"),
      h("ul", { class: "stats", id: "task-stats" },
        [...byStatus.entries()].sort((a, b) => a[0] - b[0]).map(([s, n]) =>
          h("li", { class: statusClass(taskStatusName[s]) }, h("strong", {}, n), " " + taskStatusName[s]))),
      h("p", {}, link("/tasks/new", "Create a task")),
      table("Tasks, newest first", ["Task", "Status", "Progress", "Created"], newest.map((t) => {
        const p = t.progress;
        return [link("/task/" + encodeURIComponent(t.taskId), t.name || t.taskId),
          h("span", { class: statusClass(taskStatusName[t.status]) }, taskStatusName[t.status]),
          p ? `${p.success} of ${p.total} upgraded, ${p.fail} failed` : "",
          fmtTime(t.createTime ? timestampDate(t.createTime) : undefined)];
      }), "tasks")),
    h("section", { "aria-labelledby": "h-products" },
      h("h2", { id: "h-products" }, "Products"),
      table("Products", ["Product", "ID", "Protocol", "Devices online"], prods.items.map((p) => {
        const c = perProduct.get(p.productId) ?? { on: 0, all: 0 };
        return [p.name, h("code", {}, p.productId), protocolName[p.protocol], `${c.on} of ${c.all}`];
      }))),
    h("section", { "aria-labelledby": "h-packages" },
      h("h2", { id: "h-packages" }, "Packages"),
      h("p", {}, link("/upload", "Upload a package")),
      table("Packages", ["Version", "Type", "File", "Size", "ID"], pkgs.items.map((p) =>
        [p.version, packageTypeName[p.packageType], p.fileName, bytes(Number(p.size)), h("code", {}, p.packageId)]))),
  );
  focusHeading(main);
}
