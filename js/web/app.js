// The deployed page: verify ./artifact/ with ONNX Runtime Web on this device, show the report as a table,
// then run the streaming demo loop and show the measured time per step. Nothing is fetched from elsewhere.
import { Stream, configureWasm, verifyArtifact } from "./rnnexport/browser.js";

const $ = (id) => document.getElementById(id);
const fmt = (x) => (typeof x === "number" ? (x === 0 ? "0" : Math.abs(x) < 1e-3 || Math.abs(x) >= 1e4 ? x.toExponential(2) : x.toPrecision(3)) : String(x ?? ""));
const state = (window.rnnexport = { report: null, error: null, stream: null, done: false });

function cell(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) el.className = cls;
  return el;
}

function table(headers, rows) {
  const t = document.createElement("table");
  const head = t.insertRow();
  headers.forEach((h) => head.appendChild(cell("th", h)));
  for (const row of rows) {
    const r = t.insertRow();
    row.forEach((v) => r.appendChild(v instanceof Node ? v : cell("td", fmt(v))));
  }
  return t;
}

const verdict = (ok) => cell("td", ok ? "passed" : "failed", ok ? "passed" : "failed");

function show(report) {
  $("arch").textContent = report.arch;
  const [provider, result] = Object.entries(report.providers)[0];
  $("status").replaceChildren(
    cell("span", report.passed ? "PASSED" : "FAILED", report.passed ? "passed" : "failed"),
    document.createTextNode(` on ${report.runtime.package} ${report.runtime.version} (${provider}, 1 thread), rule '${result.rule}'.`),
  );
  const rows = [
    [cell("td", "files"), cell("td", "passed", "passed"), cell("td", "sha256 of every file matches the manifest")],
    [cell("td", "contract"), cell("td", "passed", "passed"), cell("td", "names, dtypes and dynamic axes match the manifest")],
    [cell("td", `outputs (${provider})`), verdict(result.status === "passed"),
      cell("td", `${result.cases} test-data sets, worst error ${fmt(result.max_error_ratio)} of what the rule allows, max |error| ${fmt(result.max_abs_error)}`)],
    ...Object.entries(report.variants).map(([file, v]) => [cell("td", `variant ${file}`), verdict(v.status === "passed"), cell("td", v.reason ?? "")]),
  ];
  const cases = (result.per_case ?? []).map((c) => [c.case, verdict(c.passed), c.artifact_vs_float32, c.artifact_vs_float64 ?? "", c.err_allowed]);
  $("report").replaceChildren(
    table(["check", "result", "details"], rows),
    table(["test-data set", "result", "|ort - float32|", "|ort - float64|", "error / allowed"], cases),
    ...(report.notes.length ? [cell("p", `Notes: ${report.notes.join("; ")}`)] : []),
    ...(result.failures ? [cell("pre", result.failures.join("\n"), "failed")] : []),
  );
}

async function demo(report) {
  let stream;
  try {
    stream = await Stream.open("./artifact/");
  } catch (exc) {
    $("stream").textContent = exc.name === "UsageError" ? "Not a streaming artifact: build it with 'rnnexport build ... --streaming' for the demo." : `error: ${exc.message}`;
    return;
  }
  const steps = Number(new URLSearchParams(location.search).get("steps") ?? 500);
  const chunk = {};
  for (const spec of stream.inputs) {
    if (spec.role === "lengths") continue;
    const dims = spec.shape.map((d) => (d === "batch" || d === "seq" ? 1 : d));
    const count = dims.reduce((a, b) => a * b, 1);
    const data = spec.dtype === "int64" ? new BigInt64Array(count) : Float32Array.from({ length: count }, (_, i) => Math.sin(i));
    chunk[spec.name] = { data, dims, dtype: spec.dtype };
  }
  for (let i = 0; i < 20; i++) await stream.step(chunk); // warm-up
  stream.reset();
  // Browsers coarsen performance.now() (to 0.1 ms without cross-origin isolation): time the loop as a whole.
  const t0 = performance.now();
  for (let i = 0; i < steps; i++) await stream.step(chunk);
  const total = performance.now() - t0;
  const result = { steps, batch: 1, total_ms: total, ms_per_step: total / steps, steps_per_second: (1000 * steps) / total };
  state.stream = result;
  $("stream").replaceChildren(table(["steps (batch 1, one per call)", "total ms", "ms per step", "steps per second"], [[steps, total, result.ms_per_step, result.steps_per_second]]));
  await stream.release();
}

try {
  configureWasm({ wasmPaths: "./ort/", numThreads: 1 });
  state.report = await verifyArtifact("./artifact/");
  show(state.report);
  await demo(state.report);
} catch (exc) {
  state.error = { type: exc.name, message: exc.message };
  $("status").replaceChildren(cell("span", `error: ${exc.message}`, "error"));
  $("stream").textContent = "";
} finally {
  state.done = true;
  document.body.dataset.done = "true";
}
