// A device: what the server last heard from it and its timeline, a page at
// a time, oldest first.

import { timestampDate } from "@bufbuild/protobuf/wkt";
import { devices, message, needsLogin } from "./api.js";
import { fmtTime, h, link, replace, table } from "./dom.js";
import type { TimelineEntry } from "./gen/otafleet/v1/device_pb.js";
import { focusHeading, toLogin } from "./nav.js";

export async function devicePage(main: HTMLElement, signal: AbortSignal, id: string): Promise<void> {
  const opt = { signal };
  const [{ device: d }, first] = await Promise.all([
    devices.getDevice({ deviceId: id }, opt),
    devices.getDeviceTimeline({ deviceId: id, pageSize: 200 }, opt),
  ]);
  if (!d) throw new Error("the API returned no device");
  const ts = (t?: Parameters<typeof timestampDate>[0]) => fmtTime(t ? timestampDate(t) : undefined);
  const facts: [string, string][] = [
    ["Product", d.productId],
    ["State", d.online ? "online" : "offline"],
    ["Firmware", d.fwVersion || "not reported"],
    ["Software", d.swVersion || "not reported"],
    ["Cell", d.cellId || "not reported"],
    ["RSRP", d.rsrp !== undefined ? `${d.rsrp} dBm` : "not reported"],
    ["SINR", d.sinr !== undefined ? `${d.sinr} dB` : "not reported"],
    ["Last seen", ts(d.lastSeenTime) || "never"],
    ["Registered", ts(d.createTime)],
  ];
  const row = (e: TimelineEntry) => [ts(e.time), e.taskId ? link("/task/" + encodeURIComponent(e.taskId), e.taskId) : "", h("span", { class: "kind k-" + e.kind }, e.kind), e.detail];
  const tl = table("Timeline, oldest first", ["Time", "Task", "Kind", "Detail"], first.entries.map(row), "timeline");
  const tbody = tl.querySelector("tbody")!;
  let next = first.nextPageToken;
  const moreBtn = h("button", { type: "button", hidden: next === "" }, "Load more");
  const moreErr = h("p", { class: "error", role: "alert", hidden: true });
  moreBtn.addEventListener("click", async () => {
    moreBtn.disabled = true;
    moreErr.hidden = true;
    try {
      const r = await devices.getDeviceTimeline({ deviceId: id, pageSize: 200, pageToken: next }, opt);
      for (const e of r.entries) tbody.append(h("tr", {}, row(e).map((c) => h("td", {}, c))));
      next = r.nextPageToken;
      moreBtn.hidden = next === "";
    } catch (err) {
      if (signal.aborted) return;
      if (needsLogin(err)) {
        toLogin();
        return;
      }
      moreErr.textContent = "Could not load more: " + message(err);
      moreErr.hidden = false;
    } finally {
      moreBtn.disabled = false;
    }
  });
  replace(main,
    h("h1", {}, "Device ", h("code", {}, d.deviceId)),
    h("dl", { class: "facts" }, facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)])),
    h("section", { "aria-labelledby": "h-timeline" }, h("h2", { id: "h-timeline" }, "Timeline"), tl, moreErr, moreBtn));
  focusHeading(main);
}
