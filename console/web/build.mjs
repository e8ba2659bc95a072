// Bundles the console into ../dist (embedded by the Go package console):
// one minified script and one stylesheet under content-hashed names, so
// they can be cached for good, and index.html naming them. `npm run bundle`.
import * as esbuild from "esbuild";
import { mkdir, readFile, rm, writeFile } from "node:fs/promises";
import path from "node:path";

const dist = path.resolve("../dist");
await rm(dist, { recursive: true, force: true });
await mkdir(path.join(dist, "assets"), { recursive: true });
const result = await esbuild.build({
  entryPoints: ["src/main.ts", "src/style.css"],
  bundle: true,
  minify: true,
  format: "esm",
  target: ["es2022"],
  outdir: path.join(dist, "assets"),
  entryNames: "[name]-[hash]",
  metafile: true,
  legalComments: "none",
  logLevel: "warning",
});
const outs = Object.keys(result.metafile.outputs).map((p) => path.basename(p));
const js = outs.find((f) => f.endsWith(".js"));
const css = outs.find((f) => f.endsWith(".css"));
const html = (await readFile("src/index.html", "utf8"))
  .replace("{{script}}", `assets/${js}`)
  .replace("{{style}}", `assets/${css}`);
await writeFile(path.join(dist, "index.html"), html);
for (const [f, o] of Object.entries(result.metafile.outputs)) {
  console.log(`${path.basename(f)}\t${o.bytes} bytes`);
}
