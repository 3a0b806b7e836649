/**
 * `verifyArtifact`: `rnnexport verify` in JavaScript, on the runtime it is in. The same checks in the same
 * order as Python (`rnnexport.artifact.verify_artifact`): the manifest, every file against its sha256,
 * the model's metadata and I/O contract, every test-data set (streaming chains replayed from the
 * runtime's own state outputs) under the artifact's own rule, and every shipped variant. The folder is
 * wrong: {@link ArtifactError}. The outputs are wrong: a report with `passed: false`.
 */
import { ErrorAccumulator, compareOutputs, type Criterion, type OutputComparison, type Tolerance } from "./compare.js";
import { ArtifactError, REBUILD, visible } from "./errors.js";
import { isTestFile, isTestSet, listedNameProblem, parseManifest, type Manifest, type Streaming, type TensorSpec } from "./manifest.js";
import { decodeTensor, readModelMetadata, type HostTensor } from "./proto.js";
import { createSession, fromOrt, runtimeVersion, toOrt, type InferenceSession, type Runtime } from "./runtime.js";
import { sha256 } from "./sha256.js";
import { LIMITS, type ArtifactSource } from "./source.js";

export const MANIFEST = "manifest.json";
export const MODEL = "model.onnx";
export const EXTERNAL_DATA = "model.onnx.data";
const VARIANT_TOLERANCES: Record<string, Tolerance | null> = {
  fp32: null,
  fp16: { atol: 5e-3, rtol: 1e-2 },
  int8: { atol: 5e-2, rtol: 5e-2 },
};

export interface VerifyOptions {
  /** Pin the artifact: the sha256 of its manifest.json, as published by whoever built it. */
  expectSha256?: string;
  /** Called after each test-data set has run, for progress displays. */
  onCase?: (done: number, total: number) => void;
}

interface Case { name: string; inputs: Record<string, HostTensor>; outputs: Record<string, HostTensor> }
interface CaseResult { case: string; shapes: Record<string, number[]>; outputs: OutputComparison[]; error: string | null }

/** One model on the runtime's provider: Python's `ProviderResult.to_json()`, field for field. */
export type ProviderReport = Record<string, unknown> & { status: "passed" | "failed"; device: string };

/** The report: `rnnexport verify --json`'s shape, plus `runtime` (which JavaScript runtime ran it). */
export interface VerifyReport {
  artifact: string;
  arch: string;
  passed: boolean;
  files: "ok";
  /** Regular files the manifest does not list and nothing loads: not verified, reported (the first 20). */
  unlisted: string[];
  unlisted_more: number;
  manifest_sha256: string;
  notes: string[];
  tolerance: Record<string, Tolerance>;
  providers: Record<string, ProviderReport>;
  variants: Record<string, Record<string, unknown>>;
  external_data: null;
  runtime: { package: string; version: string; provider: string };
}

/**
 * `{axis: [smallest, largest]}` of every dynamic input axis over the cases' input shapes, read where the
 * contract puts each axis (Python's `feeds.axis_ranges`): `batch` and `seq` first, then the others.
 */
function axisRanges(inputs: TensorSpec[], shapes: Record<string, number[]>[]): Record<string, number[]> {
  const sizes = new Map<string, number[]>([["batch", []], ["seq", []]]);
  for (const shape of shapes) {
    for (const spec of inputs) {
      const dims = shape[spec.name];
      if (dims === undefined || dims.length !== spec.shape.length) continue;
      spec.shape.forEach((dim, axis) => {
        if (typeof dim !== "string") return;
        if (!sizes.has(dim)) sizes.set(dim, []);
        sizes.get(dim)!.push(dims[axis]!);
      });
    }
  }
  return Object.fromEntries([...sizes].filter(([, found]) => found.length).map(([name, found]) => [name, [Math.min(...found), Math.max(...found)]]));
}

/** How many unlisted files a report names before it counts the rest (Python's UNLISTED_SHOWN). */
const UNLISTED_SHOWN = 20;
const MODEL_SUFFIXES = [".onnx", ".ort", ".onnx.data"];

/**
 * Why a file the manifest does not list must be refused, or null when it is harmless (Python's
 * `_unlisted_problem`): a model file or a test-data tensor would be loaded by a runtime or a test
 * runner, so it is verified or refused; anything else (`.DS_Store`, an editor backup) is reported only.
 */
function unlistedProblem(name: string): string | null {
  const cut = name.lastIndexOf("/");
  const [head, tail] = cut < 0 ? ["", name] : [name.slice(0, cut), name.slice(cut + 1)];
  if (MODEL_SUFFIXES.some((suffix) => name.toLowerCase().endsWith(suffix))) {
    return `'${visible(name)}' is a model file the manifest does not list (refused: every model file in an artifact is verified or refused, and nothing verified this one; remove it, or build the variant with --precision/--format so that it is listed and verified)`;
  }
  if (isTestSet(head) && isTestFile(`${head}/${tail}`)) {
    return `'${visible(name)}' is a test-data tensor the manifest does not list (refused: a test runner reads every tensor of a test-data set, and nothing verified this one)`;
  }
  return null;
}

/** Read every listed file once, within bounds, and hash those bytes; every way the artifact departs from the list, and the harmless unlisted files. */
async function readListed(source: ArtifactSource, listed: Record<string, string>): Promise<[Map<string, Uint8Array>, string[], string[]]> {
  const problems = Object.keys(listed).map(listedNameProblem).filter((p): p is string => p !== null);
  const unlisted: string[] = [];
  if (problems.length) return [new Map(), problems, unlisted];
  const listing = await source.list();
  if (listing !== null) {
    problems.push(...listing.problems);
    const present = new Set(listing.files.keys());
    for (const name of [...present].sort()) {
      if (name in listed) continue;
      const problem = unlistedProblem(name);
      if (problem === null) unlisted.push(name);
      else problems.push(problem);
    }
    for (const name of Object.keys(listed).sort()) {
      if (!present.has(name) && !listing.dirs.has(name) && !listing.refused.has(name)) problems.push(`'${visible(name)}' is listed in the manifest but missing`);
    }
    const needed = new Set<string>();
    for (const name of Object.keys(listed)) {
      const parts = name.split("/");
      for (let i = 1; i < parts.length; i++) needed.add(parts.slice(0, i).join("/"));
    }
    for (const dir of [...listing.dirs].sort()) if (!needed.has(dir)) problems.push(`'${visible(dir)}/' is a folder the manifest does not account for (empty or unexpected)`);
    for (const name of Object.keys(listed).sort()) {
      const size = listing.files.get(name);
      const limit = sizeLimit(name);
      if (size !== undefined && size > limit) problems.push(`'${visible(name)}' is ${size.toLocaleString("en")} bytes, over the limit of ${limit.toLocaleString("en")} bytes (refused)`);
    }
    if (problems.length) return [new Map(), problems, unlisted];
  }
  const contents = new Map<string, Uint8Array>();
  for (const name of Object.keys(listed).sort()) {
    if (name === EXTERNAL_DATA) continue; // refused below, with the reason
    let data: Uint8Array;
    try {
      data = await source.read(name, sizeLimit(name));
    } catch (exc) {
      problems.push(exc instanceof ArtifactError ? exc.message.replace(` ${REBUILD}`, "").replace(/\.$/, "") : String(exc));
      continue;
    }
    if ((await sha256(data)) !== listed[name]) problems.push(`'${visible(name)}' was modified: its sha256 does not match the manifest`);
    else contents.set(name, data);
  }
  return [contents, problems, unlisted];
}

const sizeLimit = (name: string): number => (name === MODEL || name.endsWith(".onnx") || name.endsWith(".ort") ? LIMITS.modelBytes : LIMITS.testDataBytes);

function deepEqual(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== "object" || typeof b !== "object" || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  const ka = Object.keys(a), kb = Object.keys(b);
  return ka.length === kb.length && ka.every((k) => deepEqual((a as Record<string, unknown>)[k], (b as Record<string, unknown>)[k]));
}

const specJson = (t: TensorSpec): Record<string, unknown> => ({
  name: t.name, dtype: t.dtype, shape: t.shape, ...(t.role != null ? { role: t.role } : {}), ...(t.range != null ? { range: t.range } : {}),
});
const contractJson = (m: Manifest): Record<string, unknown> => ({ inputs: m.inputs.map(specJson), outputs: m.outputs.map(specJson) });

/** Every way the model's own metadata and the manifest disagree (Python's `_metadata_problems`, less the catalog check). */
function metadataProblems(model: Uint8Array, manifest: Manifest): string[] {
  const problems: string[] = [];
  let entries: [string, string][];
  try {
    entries = readModelMetadata(model);
  } catch (exc) {
    return [`${MODEL} is not a readable ONNX model (${(exc as Error).message})`];
  }
  const props = new Map<string, string>();
  for (const [key, value] of entries) {
    if (props.has(key)) problems.push(`metadata key '${visible(key)}' appears twice`);
    props.set(key, value);
  }
  const expected: Record<string, unknown> = {
    "rnnexport.arch": manifest.arch,
    "rnnexport.version": manifest.versions.rnnexport,
    "rnnexport.config": manifest.config,
    "rnnexport.contract": contractJson(manifest),
  };
  if (manifest.streaming !== null) {
    const { chains: _, ...rest } = manifest.raw.streaming as Record<string, unknown>;
    expected["rnnexport.streaming"] = rest;
  } else if (props.has("rnnexport.streaming")) {
    problems.push("the model carries 'rnnexport.streaming' metadata, but the manifest has no streaming section");
  }
  for (const [key, want] of Object.entries(expected)) {
    const raw = props.get(key);
    if (raw === undefined) { problems.push(`the model has no '${key}' metadata`); continue; }
    let got: unknown = raw;
    if (typeof want === "object" && want !== null) {
      try { got = JSON.parse(raw); } catch { problems.push(`metadata '${key}' is not valid JSON`); continue; }
    }
    if (!deepEqual(got, want)) problems.push(`metadata '${key}' is ${visible(JSON.stringify(got))}, the manifest says ${visible(JSON.stringify(want))}`);
  }
  return problems;
}

/** How the session's inputs and outputs depart from the manifest's contract (names, dtypes, dynamic axes). */
export function sessionContractProblems(session: InferenceSession, manifest: Pick<Manifest, "inputs" | "outputs">, where: string): string[] {
  const problems: string[] = [];
  const meta = session as unknown as { inputMetadata?: readonly { name: string; type?: string; shape?: readonly (number | string)[] }[]; outputMetadata?: readonly { name: string; type?: string; shape?: readonly (number | string)[] }[] };
  for (const [kind, declared, names, metadata] of [
    ["input", manifest.inputs, session.inputNames, meta.inputMetadata],
    ["output", manifest.outputs, session.outputNames, meta.outputMetadata],
  ] as const) {
    if (JSON.stringify([...names]) !== JSON.stringify(declared.map((t) => t.name))) {
      problems.push(`${where}: ${kind} names are ${JSON.stringify(names)}, expected ${JSON.stringify(declared.map((t) => t.name))}`);
      continue;
    }
    if (metadata === undefined) continue; // runtimes before 1.22 do not describe their inputs
    declared.forEach((want, i) => {
      const got = metadata[i]!;
      if (got.type !== undefined && got.type !== want.dtype) problems.push(`${where}: ${kind} '${want.name}' has dtype ${got.type}, expected ${want.dtype}`);
      const shape = got.shape ?? [];
      if (shape.length !== want.shape.length) { problems.push(`${where}: ${kind} '${want.name}' has shape ${JSON.stringify(shape)}, expected ${JSON.stringify(want.shape)}`); return; }
      want.shape.forEach((w, axis) => {
        if (shape[axis] !== w) problems.push(`${where}: ${kind} '${want.name}' axis ${axis} should be ${typeof w === "string" ? `the dynamic axis '${w}'` : w} but is ${JSON.stringify(shape[axis])}`);
      });
    });
  }
  return problems;
}

function casesFrom(contents: Map<string, Uint8Array>, dirs: string[], m: Manifest, where: string): [Case[], Record<string, Record<string, HostTensor>>] {
  const cases: Case[] = [];
  const float64: Record<string, Record<string, HostTensor>> = {};
  for (const dir of dirs) {
    const tensors: Record<"input" | "output", Record<string, HostTensor>> = { input: {}, output: {} };
    for (const [kind, specs] of [["input", m.inputs], ["output", m.outputs]] as const) {
      specs.forEach((spec, k) => {
        const name = `${dir}/${kind}_${k}.pb`;
        const data = contents.get(name);
        if (data === undefined) throw new ArtifactError(`The test-data set ${where}${dir} has no ${kind}_${k}.pb. ${REBUILD}`);
        const t = decodeTensor(data, { origin: `${where}${name}`, name: spec.name, dtype: spec.dtype });
        if (t.dims.length !== spec.shape.length) {
          throw new ArtifactError(`${where}${dir}: ${kind} '${spec.name}' has shape ${JSON.stringify(t.dims)}, expected rank ${spec.shape.length}. ${REBUILD}`);
        }
        tensors[kind][spec.name] = t;
      });
    }
    const names = m.outputs.map((_, k) => `${dir}/float64_output_${k}.pb`);
    if (names.every((n) => contents.has(n))) {
      float64[dir] = Object.fromEntries(m.outputs.map((spec, k) => [spec.name, decodeTensor(contents.get(names[k]!)!, { origin: `${where}${names[k]}`, name: spec.name, dtype: "float64" })]));
    }
    cases.push({ name: dir, inputs: tensors.input, outputs: tensors.output });
  }
  return [cases, float64];
}

/** The state inputs of `batch` new streams: zeros, or the shipped initial value repeated over the batch. */
export function startStates(streaming: Streaming, batch: number, shipped: Record<string, HostTensor>): Record<string, HostTensor> {
  const start: Record<string, HostTensor> = {};
  for (const s of streaming.states) {
    const sizes = s.shape.slice(1) as number[];
    const per = sizes.reduce((a, b) => a * b, 1);
    const data = new Float32Array(batch * per);
    const initial = shipped[s.input];
    if (s.initial !== "zeros" && initial !== undefined) for (let b = 0; b < batch; b++) data.set(initial.data as Float32Array, b * per);
    start[s.input] = { dtype: "float32", dims: [batch, ...sizes], data };
  }
  return start;
}

/** The shipped initial states (state input -> `[1, sizes...]`), from bytes already read and hashed. */
export function initialStates(contents: Map<string, Uint8Array>, streaming: Streaming, where: string): Record<string, HostTensor> {
  const found: Record<string, HostTensor> = {};
  for (const s of streaming.states) {
    if (s.initial === "zeros") continue;
    const data = contents.get(s.initial.file);
    if (data === undefined) throw new ArtifactError(`${where}${s.initial.file}, the initial state of '${s.input}', is missing. ${REBUILD}`);
    const t = decodeTensor(data, { origin: `${where}${s.initial.file}`, name: s.input, dtype: "float32" });
    if (JSON.stringify(t.dims) !== JSON.stringify(s.initial.shape)) throw new ArtifactError(`${where}${s.initial.file} has shape ${JSON.stringify(t.dims)}, the manifest says ${JSON.stringify(s.initial.shape)}. ${REBUILD}`);
    if (!(t.data as Float32Array).every(Number.isFinite)) throw new ArtifactError(`${where}${s.initial.file} holds values that are not finite. ${REBUILD}`);
    found[s.input] = t;
  }
  return found;
}

function startProblems(cases: Case[], streaming: Streaming, initial: Record<string, HostTensor>): string[] {
  const later = new Set(streaming.chains.flatMap((c) => c.slice(1)));
  const problems: string[] = [];
  for (const c of cases) {
    if (later.has(c.name)) continue;
    const batch = c.inputs[streaming.states[0]!.input]!.dims[0]!;
    const start = startStates(streaming, batch, initial);
    const wrong = Object.entries(start).filter(([n, v]) => {
      const got = c.inputs[n]!;
      return JSON.stringify(got.dims) !== JSON.stringify(v.dims) || !got.data.every((x, i) => x === v.data[i]);
    }).map(([n]) => n);
    if (wrong.length) problems.push(`${c.name} starts a stream, but its ${wrong.join(", ")} are not the initial state`);
  }
  return problems;
}

interface RunOptions {
  tolerance: Tolerance;
  criterion: Criterion;
  float64: Record<string, Record<string, HostTensor>>;
  seqAxes: Record<string, number>;
  chains?: string[][];
  pairs?: Record<string, string>;
  onCase?: (done: number, total: number) => void;
}

/** Run every case on the runtime's provider and compare (Python's `verify_on_device`); never throws for an outcome. */
export async function verifyOnRuntime(runtime: Runtime, opened: Opened, cases: Case[], opts: RunOptions): Promise<ProviderReport> {
  if ("error" in opened) return { status: "failed", device: "cpu", reason: `session creation failed: ${opened.error}` };
  const session = opened.session;
  const results: CaseResult[] = [];
  const accumulator = new ErrorAccumulator(opts.seqAxes);
  const previous = new Map<string, string>();
  for (const chain of opts.chains ?? []) chain.slice(1).forEach((later, i) => previous.set(later, chain[i]!));
  const returned = new Map<string, Record<string, HostTensor>>();
  try {
    for (const c of cases) {
      const shapes = Object.fromEntries(Object.entries(c.inputs).map(([k, v]) => [k, v.dims]));
      try {
        let feeds = c.inputs;
        const earlier = previous.get(c.name);
        if (earlier !== undefined) {
          const before = returned.get(earlier);
          if (before === undefined) throw new Error(`the call before it in its chain (${earlier}) did not run`);
          feeds = { ...feeds };
          for (const [o, i] of Object.entries(opts.pairs ?? {})) feeds[i] = before[o]!;
        }
        const out = await session.run(Object.fromEntries(Object.entries(feeds).map(([k, v]) => [k, toOrt(runtime, v)])));
        const actual = Object.fromEntries(Object.entries(out).map(([k, v]) => [k, fromOrt(v)]));
        returned.set(c.name, actual);
        const exact = opts.float64[c.name] ?? null;
        const outputs = compareOutputs(actual, c.outputs, opts.tolerance, { criterion: opts.criterion, float64: exact, seqAxes: opts.seqAxes });
        accumulator.add(actual, c.outputs, exact);
        results.push({ case: c.name, shapes, outputs, error: null });
      } catch (exc) {
        results.push({ case: c.name, shapes, outputs: [], error: `${(exc as Error).name}: ${(exc as Error).message}` });
      }
      opts.onCase?.(results.length, cases.length);
    }
  } finally {
    await session.release();
  }
  const passed = results.length > 0 && results.every((r) => r.error === null && r.outputs.every((o) => o.problem === null));
  return providerJson(passed ? "passed" : "failed", results, opts, accumulator.summary());
}

function providerJson(status: "passed" | "failed", cases: CaseResult[], opts: RunOptions, errors: Record<string, unknown>): ProviderReport {
  const outputs = cases.flatMap((c) => c.outputs.map((o) => [c, o] as const));
  const max = (f: (o: OutputComparison) => number, list = outputs.map(([, o]) => o)): number => list.reduce((m, o) => Math.max(m, f(o)), 0);
  let worst: Record<string, unknown> | null = null;
  let worstAbs = -Infinity;
  for (const [c, o] of outputs) {
    if (o.worst_index !== null && o.max_abs > worstAbs) { worstAbs = o.max_abs; worst = { case: c.case, shapes: c.shapes, output: o.name, index: o.worst_index }; }
  }
  const failures: string[] = [];
  for (const c of cases) {
    const shapes = `{${Object.entries(c.shapes).map(([k, v]) => `'${k}': [${v.join(", ")}]`).join(", ")}}`;
    if (c.error) failures.push(`${c.case} ${shapes}: ${c.error}`);
    for (const o of c.outputs) if (o.problem) failures.push(`${c.case} ${shapes}, output '${o.name}': ${o.problem}`);
  }
  return {
    status,
    device: "cpu",
    max_abs_error: max((o) => o.max_abs),
    max_rel_error: max((o) => o.max_rel),
    max_error_ratio: max((o) => o.max_ratio),
    tolerance: opts.tolerance,
    worst,
    cases: cases.length,
    shapes: cases.map((c) => c.shapes),
    rule: opts.criterion.rule,
    ...(opts.criterion.rule === "oracle" ? { oracle_factor: opts.criterion.factor } : {}),
    errors,
    per_case: cases.map((c) => {
      const measured = c.outputs.flatMap((o) => (o.oracle ? [o.oracle] : []));
      return {
        case: c.case,
        passed: c.error === null && c.outputs.every((o) => o.problem === null),
        artifact_vs_float32: max((o) => o.max_abs, c.outputs),
        err_allowed: max((o) => o.max_ratio, c.outputs),
        ...(measured.length
          ? {
              artifact_vs_float64: measured.reduce((m, x) => Math.max(m, x.artifact_vs_float64), 0),
              pytorch_float32_vs_float64: measured.reduce((m, x) => Math.max(m, x.pytorch_float32_vs_float64), 0),
            }
          : {}),
      };
    }),
    ...(status === "failed" ? { failures: failures.slice(0, 20) } : {}),
  };
}

/** The tolerance a variant is held to: what a build gives it, or the manifest's when it is not looser. */
function variantTolerance(entry: Record<string, unknown>, own: Tolerance, where: string): Tolerance {
  const precision = entry.precision as string;
  const fallback = VARIANT_TOLERANCES[precision] ?? own;
  const recorded = (entry.tolerance as Record<string, Record<string, unknown>> | undefined)?.cpu;
  if (recorded === undefined) return fallback;
  const { atol, rtol } = recorded;
  if (typeof atol !== "number" || typeof rtol !== "number" || !(atol >= 0 && atol < 1 && rtol >= 0 && rtol < 1)) {
    throw new ArtifactError(`The manifest in ${where} has a malformed 'variants' entry (the tolerance of '${visible(entry.file)}' must hold numbers in [0, 1)). ${REBUILD}`);
  }
  if (atol > fallback.atol || rtol > fallback.rtol) {
    throw new ArtifactError(`The manifest in ${where} has a malformed 'variants' entry (the tolerance of '${visible(entry.file)}' is looser than a build gives that variant). ${REBUILD}`);
  }
  return { atol, rtol };
}

function variantFile(precision: string, format: string): string {
  return `model${precision === "fp32" ? "" : `.${precision}`}.${format}`;
}

/**
 * Re-check a shipped artifact on this runtime. Throws {@link ArtifactError} when the artifact itself is
 * wrong; returns the report otherwise (`passed` says whether every output met the artifact's rule).
 */
export async function verifyArtifact(source: ArtifactSource, runtime: Runtime, options: VerifyOptions = {}): Promise<VerifyReport> {
  const where = source.location.endsWith("/") ? source.location : `${source.location}/`;
  const notes: string[] = [];
  const manifestBytes = await source.read(MANIFEST, LIMITS.manifestBytes).catch((exc: unknown) => {
    throw new ArtifactError(`${source.location} is not an rnnexport artifact: ${exc instanceof Error ? exc.message.replace(` ${REBUILD}`, "") : String(exc)} Pass the folder that 'rnnexport build' wrote.`);
  });
  const manifest = parseManifest(manifestBytes, `${where}${MANIFEST}`);
  const digest = await sha256(manifestBytes);
  const pinned = options.expectSha256?.trim().toLowerCase();
  if (pinned !== undefined && digest !== pinned) {
    throw new ArtifactError(`${where}${MANIFEST} has sha256 ${digest}, expected ${pinned}: this is not the artifact you pinned. Get it again from where it was built.`);
  }
  if (EXTERNAL_DATA in manifest.files || manifest.export.external_data != null) {
    throw new ArtifactError(
      `${source.location} keeps its weights in ${EXTERNAL_DATA} (ONNX external data), which this JavaScript package does not load yet. Verify it with 'rnnexport verify', or build a model small enough to keep its weights inline.`,
    );
  }
  const [contents, problems, unlisted] = await readListed(source, manifest.files);
  if (problems.length) throw new ArtifactError(`The artifact in ${source.location} does not match its manifest: ${problems.join("; ")}. ${REBUILD}`);
  if (await source.list() === null) notes.push("served over HTTP, where a folder cannot be listed: files the manifest does not list were not looked for");
  const model = contents.get(MODEL);
  if (model === undefined) throw new ArtifactError(`The manifest in ${source.location} does not list ${MODEL}. ${REBUILD}`);
  const claims = metadataProblems(model, manifest);
  if (claims.length) throw new ArtifactError(`The manifest of ${source.location} does not describe its model: ${claims.join("; ")}. ${REBUILD}`);
  const listedSets = [...new Set(Object.keys(manifest.files).filter((n) => n.startsWith("test_data_set_")).map((n) => n.split("/")[0]!))].sort();
  const declared = manifest.test_data.map((e) => e.dir);
  if (JSON.stringify([...declared].sort()) !== JSON.stringify(listedSets)) {
    throw new ArtifactError(`The manifest of ${source.location} declares the test-data sets ${JSON.stringify([...declared].sort())} but lists files for ${JSON.stringify(listedSets)}. ${REBUILD}`);
  }
  for (const name of Object.keys(manifest.files)) {
    if (isTestSet(name.split("/")[0]!) && !isTestFile(name)) throw new ArtifactError(`The manifest of ${source.location} lists '${visible(name)}', which no test-data set holds. ${REBUILD}`);
  }
  // Every listed file is verified or refused (Python's _unaccounted): a model under another name, or a
  // variant whose entry was removed, would otherwise ride along in a verified artifact unverified.
  const shippedFiles = manifest.variants.filter((e) => e.shipped === true && typeof e.file === "string").map((e) => e.file as string);
  const initialFiles = (manifest.streaming?.states ?? []).flatMap((st) => (st.initial === "zeros" ? [] : [st.initial.file]));
  const known = new Set([MODEL, "required_operators.config", "bench.json", ...shippedFiles, ...initialFiles]);
  const unaccounted = Object.keys(manifest.files).filter((n) => !known.has(n) && !isTestSet(n.split("/")[0]!)).sort();
  if (unaccounted.length) {
    throw new ArtifactError(
      `The manifest of ${source.location} lists ${unaccounted.slice(0, 10).map((n) => `'${visible(n)}'`).join(", ")}${unaccounted.length > 10 ? ` and ${unaccounted.length - 10} more` : ""}, which no shipped variant entry or other part of an rnnexport artifact accounts for: nothing would verify ${unaccounted.length === 1 ? "it" : "them"}. ${REBUILD}`,
    );
  }
  const [cases, float64] = casesFrom(contents, declared, manifest, where);
  if (!cases.length) throw new ArtifactError(`${source.location} has no test_data_set_N folders to verify against. ${REBUILD}`);
  const seqAxes = Object.fromEntries(manifest.outputs.filter((t) => t.shape.includes("seq")).map((t) => [t.name, t.shape.indexOf("seq")]));
  const tolerance = manifest.tolerance.cpu!;
  let chained: Pick<RunOptions, "chains" | "pairs"> = {};
  if (manifest.streaming !== null) {
    const starts = startProblems(cases, manifest.streaming, initialStates(contents, manifest.streaming, where));
    if (starts.length) {
      throw new ArtifactError(`The test data of ${source.location} does not start its streams where the manifest says a stream starts: ${starts.slice(0, 3).join("; ")}. ${REBUILD}`);
    }
    chained = { chains: manifest.streaming.chains, pairs: Object.fromEntries(manifest.streaming.states.map((s) => [s.output, s.input])) };
  }
  const opened = await open(runtime, model);
  const contract = "session" in opened ? sessionContractProblems(opened.session, manifest, MODEL) : [];
  if (contract.length) {
    if ("session" in opened) await opened.session.release();
    throw new ArtifactError(`The model in ${source.location} does not carry the manifest's contract: ${contract.join("; ")}. ${REBUILD}`);
  }
  const run = { tolerance, criterion: manifest.criterion, float64, seqAxes, ...(options.onCase ? { onCase: options.onCase } : {}) };
  const provider = await verifyOnRuntime(runtime, opened, cases, { ...run, ...chained });
  provider.axes = axisRanges(manifest.inputs, provider.shapes as Record<string, number[]>[]);
  const variants: Record<string, Record<string, unknown>> = {};
  for (const entry of manifest.variants) {
    const file = entry.file as string;
    if (typeof file !== "string" || typeof entry.precision !== "string" || typeof entry.format !== "string" || !(entry.precision in VARIANT_TOLERANCES) || !["onnx", "ort"].includes(entry.format)) {
      throw new ArtifactError(`The manifest in ${source.location} has a malformed 'variants' entry (${visible(JSON.stringify(entry))}). ${REBUILD}`);
    }
    if (file === MODEL) continue;
    if (entry.shipped !== true) {
      if (contents.has(file)) throw new ArtifactError(`The manifest in ${source.location} has a malformed 'variants' entry (variant '${visible(file)}' is marked as not shipped, yet the artifact lists it). ${REBUILD}`);
      continue;
    }
    if (file !== variantFile(entry.precision, entry.format) || !contents.has(file)) {
      throw new ArtifactError(`The manifest in ${source.location} has a malformed 'variants' entry (variant '${visible(file)}' is not one of the artifact's listed model files). ${REBUILD}`);
    }
    const own = variantTolerance(entry, tolerance, source.location);
    const variant = await open(runtime, contents.get(file)!);
    const problemsOf = "session" in variant
      ? sessionContractProblems(variant.session, manifest, file)
      : [`${file} cannot be read as an ${entry.format.toUpperCase()} model: ${variant.error}`];
    if (problemsOf.length && "session" in variant) await variant.session.release();
    const result = problemsOf.length ? null : await verifyOnRuntime(runtime, variant, cases, { ...run, tolerance: own });
    const passed = result !== null && result.status === "passed";
    variants[file] = {
      file, precision: entry.precision, format: entry.format, status: passed ? "passed" : "failed", shipped: passed,
      tolerance: { rule: manifest.criterion.rule, ...(manifest.criterion.rule === "oracle" ? { factor: manifest.criterion.factor } : {}), cpu: own },
      ...(problemsOf.length ? { reason: problemsOf.join("; ") } : {}),
      verification: result === null ? {} : { [runtime.provider]: result },
    };
  }
  const passed = provider.status === "passed" && Object.values(variants).every((v) => v.status === "passed");
  return {
    artifact: source.location,
    arch: manifest.arch,
    passed,
    files: "ok",
    unlisted: unlisted.slice(0, UNLISTED_SHOWN),
    unlisted_more: Math.max(0, unlisted.length - UNLISTED_SHOWN),
    manifest_sha256: digest,
    notes,
    tolerance: { cpu: tolerance },
    providers: { [runtime.provider]: provider },
    variants,
    external_data: null,
    runtime: { package: runtime.package, version: runtimeVersion(runtime), provider: runtime.provider },
  };
}

/** A session, or why the runtime refused the model (a verification failure, not an artifact error). */
export type Opened = { session: InferenceSession } | { error: string };

async function open(runtime: Runtime, model: Uint8Array): Promise<Opened> {
  try {
    return { session: await createSession(runtime, model) };
  } catch (exc) {
    return { error: visible((exc as Error).message) };
  }
}
