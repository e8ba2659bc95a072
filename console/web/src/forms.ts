// The forms: create a task; upload a package in chunks with a progress bar.

import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { sha256 } from "@noble/hashes/sha2.js";
import { bytesToHex } from "@noble/hashes/utils.js";
import { groups, listAll, message, needsLogin, packages, products, tasks } from "./api.js";
import { announce, bytes, h, link, replace } from "./dom.js";
import { PackageType, TaskType } from "./gen/otafleet/v1/common_pb.js";
import type { Package, UploadPackageMetadataSchema } from "./gen/otafleet/v1/package_pb.js";
import { packageTypeName } from "./labels.js";
import { focusHeading, go, toLogin } from "./nav.js";

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
  const name = h("input", { name: "name", required: true, maxlength: 128, autocomplete: "off", pattern: "[A-Za-z0-9_]+", spellcheck: "false" });
  const pkg = h("select", { name: "package", required: true },
    h("option", { value: "" }, "Choose a package"),
    pkgs.items.map((p) => h("option", { value: p.packageId }, `${p.version} (${packageTypeName[p.packageType]}, ${p.fileName}, ${p.productId})`)));
  const ids = h("textarea", { name: "devices", rows: 4, spellcheck: "false" });
  const grpBoxes = grps.items.map((g) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "group", value: g.groupId }), ` ${g.name} (${g.deviceIds.length} devices)`));
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit" }, "Create task");
  const form = h("form", { class: "card" },
    field("task-name", "Name", name, "Letters, digits and _ only."),
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
      if (needsLogin(e)) {
        toLogin();
        return;
      }
      err.textContent = "Could not create the task: " + message(e);
      err.hidden = false;
      submit.disabled = false;
    }
  });
  replace(main, h("h1", {}, "New task"), form);
  focusHeading(main);
}

/** chunkSize is the data of one UploadPackageChunk call (the API's maximum). */
const chunkSize = 1 << 20;
/** attempts bounds the tries of one chunk before the upload gives up. */
const attempts = 4;

export async function uploadPage(main: HTMLElement, signal: AbortSignal): Promise<void> {
  const opt = { signal };
  const prods = await listAll(async (t) => { const r = await products.listProducts({ pageSize: 1000, pageToken: t }, opt); return { items: r.products, next: r.nextPageToken }; });
  const product = h("select", { name: "product", required: true },
    h("option", { value: "" }, "Choose a product"),
    prods.items.map((p) => h("option", { value: p.productId }, `${p.name} (${p.productId})`)));
  const type = h("select", { name: "type" },
    h("option", { value: String(PackageType.FIRMWARE) }, "firmware"),
    h("option", { value: String(PackageType.SOFTWARE) }, "software"));
  const version = h("input", { name: "version", required: true, autocomplete: "off", spellcheck: "false" });
  const sources = h("input", { name: "sources", autocomplete: "off", spellcheck: "false" });
  const description = h("input", { name: "description", autocomplete: "off" });
  const file = h("input", { name: "file", type: "file", required: true });
  const bar = h("progress", { id: "upload-progress", max: 1, value: 0, hidden: true, "aria-label": "Upload progress" });
  const progressText = h("p", { id: "upload-status", role: "status", class: "muted" });
  const err = h("p", { class: "error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit" }, "Upload");
  const form = h("form", { class: "card" },
    field("pkg-product", "Product", product),
    field("pkg-type", "Type", type),
    field("pkg-version", "Version", version, "The version devices report once they run the package."),
    field("pkg-sources", "Upgrades from", sources, "Versions a device may upgrade from, separated by spaces or commas; empty: any."),
    field("pkg-description", "Description", description),
    field("pkg-file", "File", file),
    bar, progressText, err, submit);
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const f = file.files?.[0];
    if (!f) return;
    err.hidden = true;
    submit.disabled = true;
    bar.hidden = false;
    bar.max = f.size;
    bar.value = 0;
    try {
      const pkg = await uploadChunked(f, {
        productId: product.value, packageType: Number(type.value) as PackageType, version: version.value.trim(),
        sourceVersions: words(sources.value), fileName: f.name, description: description.value.trim(),
      }, signal, (done) => {
        bar.value = done;
        progressText.textContent = `${bytes(done)} of ${bytes(f.size)} sent (${Math.floor((done / f.size) * 100)}%)`;
      });
      progressText.textContent = `Uploaded: package ${pkg.packageId}, version ${pkg.version}, ${bytes(Number(pkg.size))}, SHA-256 ${pkg.sha256}`;
      progressText.dataset.packageId = pkg.packageId;
      announce("Package uploaded");
      replace(main.querySelector(".after-upload")!, "Next: ", link("/tasks/new", "create a task with it"), " or ", link("/", "back to the fleet"), ".");
    } catch (e) {
      if (signal.aborted) return;
      if (needsLogin(e)) {
        toLogin();
        return;
      }
      err.textContent = "Upload failed: " + message(e);
      err.hidden = false;
    } finally {
      submit.disabled = false;
    }
  });
  replace(main, h("h1", {}, "Upload a package"), form, h("p", { class: "after-upload" }));
  focusHeading(main);
}

/** uploadChunked sends f in chunks of at most chunkSize, hashing it on the
 * way (the file is never read whole), and retries a chunk whose answer was
 * lost from the offset the server reports. */
async function uploadChunked(f: File, metadata: MessageInitShape<typeof UploadPackageMetadataSchema>, signal: AbortSignal,
  progress: (done: number) => void): Promise<Package> {
  const hash = sha256.create();
  let uploadId = "";
  let offset = 0;
  progress(0);
  for (;;) {
    const end = Math.min(offset + chunkSize, f.size);
    const data = new Uint8Array(await f.slice(offset, end).arrayBuffer());
    hash.update(data);
    const last = end === f.size;
    const req = {
      uploadId, offset: BigInt(offset), data,
      ...(uploadId === "" ? { metadata, totalSize: BigInt(f.size) } : {}),
      ...(last ? { sha256: bytesToHex(hash.digest()) } : {}),
    };
    let res;
    for (let i = 1; ; i++) {
      try {
        res = await packages.uploadPackageChunk(req, { signal });
        break;
      } catch (e) {
        if (signal.aborted || i >= attempts || !(e instanceof ConnectError) || !retryable(e.code) || uploadId === "") throw e;
        // Ask where the upload stands: the answer to our call may be lost.
        const at = await packages.uploadPackageChunk({ uploadId, offset: BigInt(offset) }, { signal }).catch(() => undefined);
        if (at && at.nextOffset === BigInt(end)) {
          res = at;
          break;
        }
      }
    }
    uploadId = res.uploadId;
    offset = Number(res.nextOffset);
    progress(offset);
    if (res.package) return res.package;
    if (offset !== end) throw new Error(`the server is at byte ${offset}, the console sent up to ${end}`);
    if (last) throw new Error("the server has the whole file but its answer to the last call was lost: look for the package on the fleet page");
  }
}

function retryable(c: Code): boolean {
  return c === Code.Unavailable || c === Code.DeadlineExceeded || c === Code.Aborted || c === Code.Unknown || c === Code.Internal;
}
