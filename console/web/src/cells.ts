// The cell view of a task: every radio cell where its devices hold or wait
// for upgrade slots, with the budget in use, the queue and the coverage mix.
// Saturated cells (devices queued and the head does not fit the budget
// left) pace the task: they come first, marked in words and in colour.

import { tasks } from "./api.js";
import { h, replace, table } from "./dom.js";
import type { CoverageMix, TaskCell } from "./gen/otafleet/v1/task_pb.js";

/** maxCells bounds the cells the page loads. */
const maxCells = 5000;

/** mix writes a coverage mix as "3 good · 1 poor" ("none" when empty). */
function mix(m: CoverageMix | undefined): string {
  if (!m) return "none";
  const parts = ([[m.good, "good"], [m.medium, "medium"], [m.poor, "poor"], [m.cellOnly, "cell ID only"]] as [number, string][])
    .filter(([n]) => n > 0).map(([n, w]) => `${n} ${w}`);
  return parts.length ? parts.join(" · ") : "none";
}

/** meter draws a share as a bar (its width set through the CSSOM, which
 * the page's Content-Security-Policy allows, unlike style attributes). */
function meter(share: number): HTMLElement {
  const fill = h("span");
  fill.style.width = `${Math.min(100, Math.round(share * 100))}%`;
  return h("span", { class: "meter", "aria-hidden": "true" }, fill);
}

export async function cellsSection(el: HTMLElement, taskId: string, signal: AbortSignal): Promise<void> {
  const cells: TaskCell[] = [];
  let token = "";
  do {
    const r = await tasks.listTaskCells({ taskId, pageSize: 1000, pageToken: token }, { signal });
    cells.push(...r.cells);
    token = r.nextPageToken;
  } while (token !== "" && cells.length < maxCells);
  const load = (c: TaskCell) => (c.budget ? c.unitsInUse / c.budget : 0);
  cells.sort((a, b) => Number(b.saturated) - Number(a.saturated) || b.taskWaiting - a.taskWaiting || load(b) - load(a) || (a.cellId < b.cellId ? -1 : 1));
  const saturated = cells.filter((c) => c.saturated).length;
  const t = table("Cells of the task, bottlenecks first (holders and queues count every task's devices)",
    ["Cell", "Budget in use", "Holding", "Queued", "Coverage holding", "Coverage queued"],
    cells.map((c) => [
      h("span", {}, h("code", {}, c.cellId), c.saturated ? h("span", { class: "badge s-fail" }, " at budget") : null),
      h("span", {}, meter(load(c)), `${c.unitsInUse} of ${c.budget}`),
      `${c.holders.length} (${c.taskHolding} of this task)`,
      c.waiting ? `${c.waiting} (${c.taskWaiting} of this task; head needs ${c.headUnits})` : "0",
      mix(c.holdingMix), mix(c.waitingMix),
    ]), "cells");
  t.querySelectorAll("tbody tr").forEach((tr, i) => {
    const c = cells[i];
    if (!c) return;
    tr.setAttribute("data-cell", c.cellId);
    if (c.saturated) tr.classList.add("bottleneck");
  });
  replace(el,
    h("p", { id: "cells-summary" }, cells.length === 0
      ? "No device of this task holds or waits for a slot now."
      : `${cells.length} cell${cells.length === 1 ? "" : "s"}; ${saturated} at ${saturated === 1 ? "its" : "their"} budget with devices queued.`),
    cells.length ? t : null);
}
