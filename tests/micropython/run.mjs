// Run a Python script under the MicroPython WebAssembly port.
//
//   node run.mjs SCRIPT.py [MODULE.py | PACKAGE_DIR ...]
//
// Each MODULE.py is copied unchanged into MicroPython's in-memory filesystem
// under /lib (on sys.path); a PACKAGE_DIR is copied there as a tree (e.g. the
// `edgistry` package `edgistry device export` writes for a board), so the
// script can `import` exactly as firmware would. The script's stdout and stderr are passed through; the exit status is
// 1 when the script raised (the traceback goes to stderr), 0 otherwise.
import { readFileSync, readdirSync, statSync } from "node:fs";
import { basename, join } from "node:path";
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
function copyIn(path, dest) {
  if (statSync(path).isDirectory()) {
    try { mp.FS.mkdir(dest); } catch (e) { /* already there */ }
    for (const name of readdirSync(path)) copyIn(join(path, name), dest + "/" + name);
  } else {
    mp.FS.writeFile(dest, readFileSync(path));
  }
}
for (const path of modules) {
  copyIn(path, "/lib/" + basename(path));
}
try {
  mp.runPython("import sys\nif '/lib' not in sys.path: sys.path.append('/lib')\n");
  mp.runPython(readFileSync(script, "utf8"));
} catch (err) {
  process.stderr.write(String(err && err.message ? err.message : err) + "\n");
  process.exit(1);
}
