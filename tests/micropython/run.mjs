// Run a Python script under the MicroPython WebAssembly port.
//
//   node run.mjs SCRIPT.py [MODULE.py ...]
//
// Each MODULE.py is copied unchanged into MicroPython's in-memory filesystem
// under /lib (on sys.path), so the script can `import` it exactly as firmware
// would. The script's stdout and stderr are passed through; the exit status is
// 1 when the script raised (the traceback goes to stderr), 0 otherwise.
import { readFileSync } from "node:fs";
import { basename } from "node:path";
import { loadMicroPython } from "@micropython/micropython-webassembly-pyscript";

const [script, ...modules] = process.argv.slice(2);
if (!script) {
  process.stderr.write("usage: node run.mjs SCRIPT.py [MODULE.py ...]\n");
  process.exit(2);
}
const mp = await loadMicroPython({
  heapsize: 8 * 1024 * 1024,
  stdout: (line) => process.stdout.write(line + "\n"),
  stderr: (line) => process.stderr.write(line + "\n"),
});
try { mp.FS.mkdir("/lib"); } catch (e) { /* already there */ }
for (const path of modules) {
  mp.FS.writeFile("/lib/" + basename(path), readFileSync(path));
}
try {
  mp.runPython("import sys\nif '/lib' not in sys.path: sys.path.append('/lib')\n");
  mp.runPython(readFileSync(script, "utf8"));
} catch (err) {
  process.stderr.write(String(err && err.message ? err.message : err) + "\n");
  process.exit(1);
}
