// Copies the one-file bundle (dist/melody.js) to melody/static/melody-client.js, the module
// the Python package ships and hubs serve (melody.browser). .ci/run rebuilds and fails when
// the committed copy differs, so it cannot go stale.
import { readFileSync, writeFileSync } from "node:fs";

const pkg = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"));
const bundle = readFileSync(new URL("../dist/melody.js", import.meta.url), "utf8");
const banner = `// ${pkg.name} ${pkg.version}: built from clients/js/src by \`npm run build\`; do not edit.\n`;
writeFileSync(new URL("../../../melody/static/melody-client.js", import.meta.url), banner + bundle);
