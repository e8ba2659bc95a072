// The forms: create a task.

import { groups, listAll, message, packages, tasks } from "./api.js";
import { announce, h, replace } from "./dom.js";
import { PackageType, TaskType } from "./gen/otafleet/v1/common_pb.js";
import { packageTypeName } from "./labels.js";
import { focusHeading, go } from "./nav.js";

/** field is a labelled form control with an optional hint. */
function field(id: string, label: string, control: HTMLElement, hint = ""): HTMLElement {
  control.id = id;
  if (hint) control.setAttribute("aria-describedby", id + "-hint");
  return h("div", { class: "field" }, h("label", { for: id }, label), hint ? h("p", { class: "hint", id: id + "-hint" }, hint) : null, control);
}

/** words splits a list typed by people (commas, spaces, new lines). */
function words(s: string): string[] {
  return s.split(/[\s,]+/).filter((w) => w !== "");
}

export async function newTaskPage(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const opt = { signal };
  const [pkgs, grps] = await Promise.all([
    listAll(async (t) => { const r = await packages.listPackages({ pageSize: 1000, pageToken: t }, opt); return { items: r.packages, next: r.nextPageToken }; }),
    listAll(async (t) => { const r = await groups.listGroups({ pageSize: 1000, pageToken: t }, opt); return { items: r.groups, next: r.nextPageToken }; }),
  ]);
  const name = h("input", { name: "name", required: true, maxlength: 128, autocomplete: "off" });
  const pkg = h("select", { name: "package", required: true },
    h("option", { value: "" }, "Choose a package"),
    pkgs.items.map((p) => h("option", { value: p.packageId }, `${p.version} (${packageTypeName[p.packageType]}, ${p.fileName}, ${p.productId})`)));
  const ids = h("textarea", { name: "devices", rows: 4, spellcheck: "false" });
  const grpBoxes = grps.items.map((g) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "group", value: g.groupId }), ` ${g.name} (${g.deviceIds.length} devices)`));
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit" }, "Create task");
  const form = h("form", { class: "card" },
    field("task-name", "Name", name),
    field("task-package", "Package", pkg, "The task type (firmware or software) follows the package."),
    field("task-devices", "Devices", ids, "Device IDs, separated by spaces, commas or new lines."),
    grps.items.length ? h("fieldset", {}, h("legend", {}, "Groups"), grpBoxes) : null,
    err, submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    const p = pkgs.items.find((x) => x.packageId === pkg.value);
    const groupIds = grpBoxes.map((l) => l.querySelector("input")!).filter((c) => c.checked).map((c) => c.value);
    const deviceIds = words(ids.value);
    if (deviceIds.length === 0 && groupIds.length === 0) {
      err.textContent = "Name at least one device or group.";
      err.hidden = false;
      ids.focus();
      return;
    }
    submit.disabled = true;
    try {
      const r = await tasks.createTask({
        name: name.value.trim(), packageId: pkg.value, deviceIds, groupIds,
        taskType: p?.packageType === PackageType.SOFTWARE ? TaskType.SOFTWARE_UPGRADE : TaskType.FIRMWARE_UPGRADE,
      }, opt);
      announce("Task created");
      go("/task/" + encodeURIComponent(r.task?.taskId ?? ""));
    } catch (e) {
      if (signal.aborted) return;
      err.textContent = "Could not create the task: " + message(e);
      err.hidden = false;
      submit.disabled = false;
    }
  });
  replace(main, h("h1", {}, "New task"), form);
  focusHeading(main);
}
