// Small DOM helpers: every text goes in as a text node (never as HTML), so
// device-reported strings cannot inject markup.

type Child = Node | string | number | null | undefined | false;
type Attrs = Record<string, string | number | boolean | null | undefined | EventListener>;

/** h creates an element: attributes (on* keys become listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(tag: K, attrs: Attrs = {}, ...children: (Child | Child[])[]): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") {
      el.addEventListener(k.slice(2), v);
    } else if (v === true) {
      el.setAttribute(k, "");
    } else {
      el.setAttribute(k, String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el: Node, children: (Child | Child[])[]): void {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else if (c !== null && c !== undefined && c !== false) el.appendChild(document.createTextNode(String(c)));
  }
}

/** replace puts children in place of el's content. */
export function replace(el: Element, ...children: (Child | Child[])[]): void {
  el.replaceChildren();
  append(el, children);
}

/** table builds a table with a caption, a header row and body rows. */
export function table(caption: string, head: string[], rows: Child[][], cls = ""): HTMLElement {
  return h("div", { class: "scroll" },
    h("table", { class: cls },
      h("caption", {}, caption),
      h("thead", {}, h("tr", {}, head.map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rows.length === 0
        ? h("tr", {}, h("td", { colspan: head.length, class: "empty" }, "none"))
        : rows.map((r) => h("tr", {}, r.map((c) => h("td", {}, c)))))));
}

/** announce tells screen readers (and tests) what just happened. */
export function announce(text: string): void {
  const el = document.getElementById("announce");
  if (el) el.textContent = text;
}

/** link is an in-app link to a hash route. */
export function link(route: string, text: string): HTMLAnchorElement {
  return h("a", { href: "#" + route }, text);
}

/** fmtTime formats a timestamp for people, in the browser's time zone. */
export function fmtTime(d: Date | undefined): string {
  if (!d) return "";
  return d.toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

/** bytes formats a byte count. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
