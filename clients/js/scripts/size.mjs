// Measures what a page downloads: the bundle (dist/melody.js) minified by esbuild, then
// gzipped (level 9). Prints the figure the README states; `--check` fails when the README's
// figure is off by more than 5 %.
import { buildSync } from "esbuild";
import { readFileSync } from "node:fs";
import { gzipSync } from "node:zlib";

const out = buildSync({
  entryPoints: ["src/index.ts"], bundle: true, minify: true, format: "esm",
  target: "es2022", write: false,
});
const min = out.outputFiles[0].contents;
const gz = gzipSync(min, { level: 9 }).length;
console.log(`size: ${min.length} B minified, ${gz} B minified+gzipped`);
if (process.argv.includes("--check")) {
  const readme = readFileSync(new URL("../README.md", import.meta.url), "utf8");
  const stated = Number(/minified\+gzipped: \*\*([\d.]+) kB\*\*/.exec(readme)?.[1]) * 1000;
  if (!(Math.abs(stated - gz) <= 0.05 * gz)) {
    console.error(`README states ${stated} B, measured ${gz} B: update README.md`);
    process.exit(1);
  }
}
