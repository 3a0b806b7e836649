// One streaming step per call (batch 1) on onnxruntime-node, timed: node test/bench-node.mjs ARTIFACT [CALLS]
// Prints {median_us, loop_us}: the median of single timed calls, and a whole loop's time per call.
import { Stream, runtime } from "rnnexport";

const [dir, callsText = "2000"] = process.argv.slice(2);
const calls = Number(callsText);
// One intra-op thread, as the Python and browser figures beside it.
runtime.sessionOptions = { intraOpNumThreads: 1, interOpNumThreads: 1 };
const stream = await Stream.open(dir);
const chunk = {};
for (const spec of stream.inputs) {
  if (spec.role === "lengths") continue;
  const dims = spec.shape.map((d) => (d === "batch" || d === "seq" ? 1 : d));
  chunk[spec.name] = { data: Float32Array.from({ length: dims.reduce((a, b) => a * b, 1) }, (_, i) => Math.sin(i)), dims };
}
for (let i = 0; i < 100; i++) await stream.step(chunk);
const times = [];
for (let i = 0; i < calls; i++) {
  const t0 = process.hrtime.bigint();
  await stream.step(chunk);
  times.push(Number(process.hrtime.bigint() - t0) / 1e3);
}
const t0 = process.hrtime.bigint();
for (let i = 0; i < calls; i++) await stream.step(chunk);
const loop = Number(process.hrtime.bigint() - t0) / 1e3 / calls;
times.sort((a, b) => a - b);
process.stdout.write(JSON.stringify({ median_us: times[calls >> 1], loop_us: loop }) + "\n");
await stream.release();
