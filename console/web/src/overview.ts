// The fleet overview: products, devices online and offline, tasks by
// status, packages.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { devices, listAll, packages, products, tasks } from "./api.js";
import { bytes, fmtTime, h, link, replace, table } from "./dom.js";
import { TaskStatus } from "./gen/otafleet/v1/common_pb.js";
import { packageTypeName, protocolName, statusClass, taskStatusName } from "./labels.js";
import { focusHeading, go } from "./nav.js";

export async function overviewPage(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const opt = { signal };
  // The device counts come from GetFleetSummary, which reads counters the
  // server keeps: one call whatever the fleet's size, no device read.
  const [prods, summary, tsk, pkgs] = await Promise.all([
    listAll(async (t) => { const r = await products.listProducts({ pageSize: 1000, pageToken: t }, opt); return { items: r.products, next: r.nextPageToken }; }),
    devices.getFleetSummary({}, opt),
    listAll(async (t) => { const r = await tasks.listTasks({ pageSize: 1000, pageToken: t }, opt); return { items: r.tasks, next: r.nextPageToken }; }),
    listAll(async (t) => { const r = await packages.listPackages({ pageSize: 1000, pageToken: t }, opt); return { items: r.packages, next: r.nextPageToken }; }),
  ]);
  const total = summary.total;
  const byStatus = new Map<TaskStatus, number>();
  for (const t of tsk.items) byStatus.set(t.status, (byStatus.get(t.status) ?? 0) + 1);
  const perProduct = new Map<string, { online: bigint; registered: bigint }>();
  for (const p of summary.products) {
    perProduct.set(p.productId, { online: p.devices?.online ?? 0n, registered: p.devices?.registered ?? 0n });
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
        h("li", {}, h("strong", {}, `${total?.registered ?? 0n}`), " registered"),
        h("li", { class: "s-online" }, h("strong", {}, `${total?.online ?? 0n}`), " online"),
        h("li", { class: "s-offline" }, h("strong", {}, `${total?.offline ?? 0n}`), " offline")),
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
        const c = perProduct.get(p.productId) ?? { online: 0n, registered: 0n };
        return [p.name, h("code", {}, p.productId), protocolName[p.protocol], `${c.online} of ${c.registered}`];
      }))),
    h("section", { "aria-labelledby": "h-packages" },
      h("h2", { id: "h-packages" }, "Packages"),
      h("p", {}, link("/upload", "Upload a package")),
      table("Packages", ["Version", "Type", "File", "Size", "ID"], pkgs.items.map((p) =>
        [p.version, packageTypeName[p.packageType], p.fileName, bytes(Number(p.size)), h("code", {}, p.packageId)]))),
  );
  focusHeading(main);
}
