// Checks shared by the Node and browser tests: `api` is the package as imported in that environment,
// `source` an ArtifactSource of a streaming artifact. Expected values come from the artifact's own
// test data (PyTorch float32, whole sequence in one call), never from the package under test.
const ATOL = 1e-5;
const RTOL = 1e-4;

function slice(t, start, end) {
  // [batch, seq, ...] -> [batch, end - start, ...]
  const [batch, seq, ...rest] = t.dims;
  const per = rest.reduce((a, b) => a * b, 1);
  const out = new t.data.constructor(batch * (end - start) * per);
  for (let b = 0; b < batch; b++) out.set(t.data.subarray((b * seq + start) * per, (b * seq + end) * per), b * (end - start) * per);
  return { data: out, dims: [batch, end - start, ...rest], dtype: t.dtype };
}

/** Stream the artifact's longest sweep case one step per call and compare with the whole-sequence reference. */
export async function checkLongStream(api, source) {
  const manifest = JSON.parse(new TextDecoder().decode(await source.read("manifest.json", 1 << 24)));
  const chained = new Set(manifest.streaming.chains.flat());
  const seqOf = (entry) => Math.max(...Object.values(entry.shapes).map((s) => (s.length > 1 ? s[1] : 0)));
  const entry = manifest.test_data.filter((e) => !chained.has(e.dir)).sort((a, b) => seqOf(b) - seqOf(a))[0];
  const read = async (kind, k, spec) =>
    api.decodeTensor(await source.read(`${entry.dir}/${kind}_${k}.pb`, 1 << 28), { origin: entry.dir, name: spec.name, dtype: spec.dtype });
  const inputs = {};
  for (const [k, spec] of manifest.inputs.entries()) inputs[spec.name] = await read("input", k, spec);
  const expected = {};
  for (const [k, spec] of manifest.outputs.entries()) expected[spec.name] = await read("output", k, spec);
  const stream = await api.Stream.open(source.location);
  const own = stream.inputs;
  const lengthsSpec = own.find((t) => t.role === "lengths");
  const steps = Math.max(...own.filter((t) => t.shape.includes("seq")).map((t) => inputs[t.name].dims[1]));
  const full = lengthsSpec ? Array.from(inputs[lengthsSpec.name].data, Number) : null;
  const got = Object.fromEntries(stream.outputs.map((t) => [t.name, []]));
  const started = performance.now();
  for (let t = 0; t < steps; t++) {
    const chunk = {};
    for (const spec of own) if (spec.shape.includes("seq")) chunk[spec.name] = slice(inputs[spec.name], t, t + 1);
    const options = full ? { lengths: full.map((n) => (t < n ? 1 : 0)) } : {};
    const out = await stream.step(chunk, options);
    for (const spec of stream.outputs) got[spec.name].push(out[spec.name]);
  }
  const elapsed = performance.now() - started;
  let worst = 0;
  const check = (name, want, have, where) => {
    const diff = Math.abs(have - want);
    if (!(diff <= ATOL + RTOL * Math.abs(want))) throw new Error(`${name}${where}: streamed ${have}, whole sequence ${want}`);
    worst = Math.max(worst, diff);
  };
  for (const spec of stream.outputs) {
    const want = expected[spec.name];
    const [batch, seq] = want.dims;
    const per = want.data.length / (batch * seq);
    for (let t = 0; t < seq; t++) {
      const have = got[spec.name][t].data;
      for (let b = 0; b < batch; b++) {
        if (full && t >= full[b]) continue; // past this row's length the output is padding
        for (let i = 0; i < per; i++) check(spec.name, want.data[(b * seq + t) * per + i], have[b * per + i], ` [${b}, ${t}, ${i}]`);
      }
    }
  }
  for (const s of manifest.streaming.states) {
    const want = expected[s.output];
    const have = stream.states[s.input];
    want.data.forEach((w, i) => check(s.output, w, have.data[i], ` [${i}]`));
  }
  await stream.release();
  return { case: entry.dir, steps, batch: inputs[own[0].name].dims[0], max_abs: worst, ms_per_step: elapsed / steps };
}
