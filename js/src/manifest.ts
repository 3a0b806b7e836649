/** `manifest.json`, parsed and validated as rnnexport's `parse_manifest` does: it is not signed. */
import { ArtifactError, REBUILD, visible } from "./errors.js";
import { ORACLE_FACTOR, type Criterion, type Tolerance } from "./compare.js";
import type { DType } from "./proto.js";

export const MANIFEST_FORMAT = 1;
export const DTYPES: readonly DType[] = ["float32", "int64", "int32", "float64"];
const ROLES = ["lengths", "mask", "state"];
const TEST_SET = /^test_data_set_(0|[1-9][0-9]{0,5})$/;
const TEST_FILE = /^(input|output|float64_output)_(0|[1-9][0-9]{0,3})\.pb$/;
const SHA256 = /^[0-9a-f]{64}$/;
const AXIS = /^[A-Za-z_][A-Za-z0-9_]*$/;
const KEY = /^[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)*$/;
export const STATE_IN = "state_in.";
export const STATE_OUT = "state_out.";
export const INITIAL_FOLDER = "initial_state";

export interface TensorSpec { name: string; dtype: DType; shape: (number | string)[]; role?: string | null; range?: [number, number] | null; doc?: string }
export interface StateSpec { input: string; output: string; shape: (number | string)[]; dtype: "float32"; initial: "zeros" | { file: string; sha256: string; shape: number[] } }
export interface Streaming { states: StateSpec[]; chunk_axis: "seq"; chains: string[][] }

/** The parts of the manifest verification and streaming rely on; `raw` is the whole document. */
export interface Manifest {
  arch: string;
  config: Record<string, unknown>;
  inputs: TensorSpec[];
  outputs: TensorSpec[];
  versions: Record<string, string>;
  export: Record<string, unknown>;
  verification: Record<string, unknown>;
  tolerance: Record<string, Tolerance>;
  criterion: Criterion;
  test_data: { dir: string; case?: string; shapes?: Record<string, number[]> }[];
  files: Record<string, string>;
  variants: Record<string, unknown>[];
  source: Record<string, unknown> | null;
  streaming: Streaming | null;
  raw: Record<string, unknown>;
}

const isInt = (v: unknown): v is number => typeof v === "number" && Number.isInteger(v);
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Parse and validate `manifest.json` bytes; {@link ArtifactError} on anything malformed. */
export function parseManifest(bytes: Uint8Array, where: string): Manifest {
  const need = (condition: unknown, what: string): void => {
    if (!condition) throw new ArtifactError(`${where} is not a valid rnnexport manifest: ${what}. ${REBUILD}`);
  };
  let doc: unknown;
  try {
    doc = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (exc) {
    throw new ArtifactError(`${where} is not valid JSON (${visible((exc as Error).message)}). ${REBUILD}`);
  }
  need(isObject(doc), `expected a JSON object, got ${Array.isArray(doc) ? "list" : typeof doc}`);
  const d = doc as Record<string, unknown>;
  need(isInt(d.format), `'format' must be a whole number, got ${JSON.stringify(d.format)}`);
  if (d.format !== MANIFEST_FORMAT) {
    throw new ArtifactError(
      `${where} has manifest format ${d.format}; this package reads format ${MANIFEST_FORMAT}. Verify it with the rnnexport version that built it, or rebuild it.`,
    );
  }
  for (const key of ["config", "versions", "export", "simplification", "weights", "verification", "files"]) {
    need(isObject(d[key]), `'${key}' must be an object`);
  }
  need(typeof d.arch === "string" && d.arch, "'arch' must be a name");
  need(Array.isArray(d.test_data), "'test_data' must be a list");
  need(d.source === undefined || d.source === null || isObject(d.source), "'source' must be an object");
  for (const key of ["inputs", "outputs"] as const) tensorSpecs(d, key, need);
  const verification = d.verification as Record<string, unknown>;
  const tolerances = verification.tolerance;
  need(isObject(tolerances), "'verification.tolerance' must be an object");
  const tolerance: Record<string, Tolerance> = {};
  for (const device of ["cpu", "cuda"]) {
    const entry = (tolerances as Record<string, unknown>)[device];
    need(isObject(entry) && Object.keys(entry).sort().join() === "atol,rtol", `tolerance['${device}'] must be {atol, rtol}`);
    const t = entry as Record<string, unknown>;
    for (const name of ["atol", "rtol"]) {
      const v = t[name];
      // The bounds a build applies: an artifact can never claim a tolerance its build would have refused.
      need(typeof v === "number" && v >= 0 && v < 1, `${name} must be a number in [0, 1), got ${JSON.stringify(v)} (${device}, as build bounds it)`);
    }
    tolerance[device] = { atol: t.atol as number, rtol: t.rtol as number };
  }
  need(verification.tf32 === undefined || typeof verification.tf32 === "boolean", "'verification.tf32' must be true or false");
  const dirs: string[] = [];
  for (const entry of d.test_data as unknown[]) {
    need(isObject(entry) && typeof entry.dir === "string", "every 'test_data' entry needs a 'dir'");
    const dir = (entry as { dir: string }).dir;
    need(TEST_SET.test(dir), `'test_data' names the folder '${visible(dir)}'`);
    dirs.push(dir);
  }
  need(new Set(dirs).size === dirs.length, "'test_data' lists a folder twice");
  for (const [name, digest] of Object.entries(d.files as Record<string, unknown>)) {
    need(typeof digest === "string" && SHA256.test(digest), `the sha256 of '${visible(name)}' is not 64 hex digits`);
  }
  const criterion = parseCriterion(verification.rule, need);
  let streaming: Streaming | null = null;
  if (d.streaming !== undefined && d.streaming !== null) {
    streaming = parseStreaming(d.streaming, need);
    const problems = streamingProblems(streaming, d.inputs as TensorSpec[], d.outputs as TensorSpec[], dirs, d.files as Record<string, string>);
    need(!problems.length, problems.join("; "));
  }
  return {
    arch: d.arch as string,
    config: d.config as Record<string, unknown>,
    inputs: d.inputs as TensorSpec[],
    outputs: d.outputs as TensorSpec[],
    versions: d.versions as Record<string, string>,
    export: d.export as Record<string, unknown>,
    verification,
    tolerance,
    criterion,
    test_data: d.test_data as Manifest["test_data"],
    files: d.files as Record<string, string>,
    variants: Array.isArray(d.variants) ? (d.variants as Record<string, unknown>[]) : [],
    source: (d.source as Record<string, unknown> | undefined) ?? null,
    streaming,
    raw: d,
  };
}

type Need = (condition: unknown, what: string) => void;

function tensorSpecs(doc: Record<string, unknown>, key: "inputs" | "outputs", need: Need): void {
  const entries = doc[key];
  need(Array.isArray(entries) && entries.length, `'${key}' must be a non-empty list of tensors`);
  const names: string[] = [];
  for (const t of entries as unknown[]) {
    need(isObject(t), `every entry of '${key}' must be an object`);
    const { name, dtype, shape, role, range } = t as Record<string, unknown>;
    need(typeof name === "string" && name, `a tensor in '${key}' has no name`);
    need(DTYPES.includes(dtype as DType), `'${key}' tensor '${visible(name)}' has dtype ${JSON.stringify(dtype)}; expected one of ${DTYPES.join(", ")}`);
    need(Array.isArray(shape) && shape.length, `'${key}' tensor '${visible(name)}' has no shape`);
    for (const dim of shape as unknown[]) {
      need((isInt(dim) && dim >= 1) || (typeof dim === "string" && AXIS.test(dim)),
        `'${key}' tensor '${visible(name)}' has the dim ${JSON.stringify(dim)}; every dim must be a size >= 1 or the name of a dynamic axis`);
    }
    need(role === undefined || role === null || ROLES.includes(role as string), `'${key}' tensor '${visible(name)}' has the role ${JSON.stringify(role)}`);
    need(range === undefined || range === null || (Array.isArray(range) && range.length === 2 && range.every(isInt)),
      `'${key}' tensor '${visible(name)}' has the range ${JSON.stringify(range)}`);
    names.push(name as string);
  }
  need(new Set(names).size === names.length, `'${key}' names a tensor twice`);
}

function parseCriterion(data: unknown, need: Need): Criterion {
  if (typeof data === "string") return { rule: "tolerance", factor: ORACLE_FACTOR };
  need(isObject(data) && (data.name === "oracle" || data.name === "tolerance"), "'verification.rule' is not one rnnexport applies: rule must be one of oracle, tolerance");
  const rule = data as Record<string, unknown>;
  const factor = rule.factor ?? ORACLE_FACTOR;
  // Never looser than a build applies: a manifest is not signed, and a huge factor passes anything.
  need(typeof factor === "number" && factor >= 1 && factor <= ORACLE_FACTOR,
    `'verification.rule' is not one rnnexport applies: the oracle factor must be a number from 1 to ${ORACLE_FACTOR}, got ${JSON.stringify(factor)}`);
  return { rule: rule.name as Criterion["rule"], factor: factor as number };
}

function parseStreaming(data: unknown, need: Need): Streaming {
  need(isObject(data), "'streaming' must be an object");
  const s = data as Record<string, unknown>;
  const states = s.states;
  const chains = s.chains ?? [];
  need(Array.isArray(states) && states.length, "'streaming.states' must be a non-empty list");
  need(s.chunk_axis === "seq", "'streaming.chunk_axis' must be 'seq'");
  const parsed: StateSpec[] = [];
  for (const state of states as unknown[]) {
    need(isObject(state), "every 'streaming.states' entry must be an object");
    const st = state as Record<string, unknown>;
    const name = st.input;
    need(typeof name === "string" && name.startsWith(STATE_IN) && KEY.test(name.slice(STATE_IN.length)), `a state has the input ${JSON.stringify(name)}`);
    const key = (name as string).slice(STATE_IN.length);
    need(st.output === STATE_OUT + key, `state '${name}' has the output ${JSON.stringify(st.output)}`);
    need(st.dtype === "float32", `state '${name}' has the dtype ${JSON.stringify(st.dtype)}`);
    const shape = st.shape;
    need(Array.isArray(shape) && shape.length && shape[0] === "batch" && shape.slice(1).every((x) => isInt(x) && x >= 1),
      `state '${name}' has the shape ${JSON.stringify(shape)}; expected ['batch', sizes...]`);
    const initial = st.initial;
    const file = `${INITIAL_FOLDER}/${name}.pb`;
    if (initial !== "zeros") {
      need(isObject(initial) && Object.keys(initial).sort().join() === "file,sha256,shape", `state '${name}' has the initial value ${JSON.stringify(initial)}`);
      const i = initial as Record<string, unknown>;
      need(i.file === file, `state '${name}' has the initial file ${JSON.stringify(i.file)}`);
      need(typeof i.sha256 === "string" && SHA256.test(i.sha256), `state '${name}' has an initial sha256 that is not 64 hex digits`);
      need(JSON.stringify(i.shape) === JSON.stringify([1, ...(shape as unknown[]).slice(1)]), `state '${name}' has the initial shape ${JSON.stringify(i.shape)}`);
    }
    parsed.push({ input: name as string, output: st.output as string, shape: shape as (number | string)[], dtype: "float32", initial: initial as StateSpec["initial"] });
  }
  need(new Set(parsed.map((p) => p.input)).size === parsed.length, "'streaming.states' names a state twice");
  need(Array.isArray(chains), "'streaming.chains' must be a list");
  for (const chain of chains as unknown[]) {
    need(Array.isArray(chain) && chain.length >= 2 && chain.every((x) => typeof x === "string" && TEST_SET.test(x)),
      `'streaming.chains' holds ${JSON.stringify(chain)}; expected lists of test_data_set_N names`);
  }
  const flat = (chains as string[][]).flat();
  need(new Set(flat).size === flat.length, "'streaming.chains' names a test-data set twice");
  return { states: parsed, chunk_axis: "seq", chains: chains as string[][] };
}

function streamingProblems(streaming: Streaming, inputs: TensorSpec[], outputs: TensorSpec[], sets: string[], files: Record<string, string>): string[] {
  const problems: string[] = [];
  const shipped = streaming.states.flatMap((s) => (s.initial === "zeros" ? [] : [s.initial]));
  const named = new Set(shipped.map((i) => i.file));
  const stray = Object.keys(files).filter((f) => f.startsWith(`${INITIAL_FOLDER}/`) && !named.has(f)).sort();
  if (stray.length) problems.push(`'files' lists ${JSON.stringify(stray)}, initial states that no streaming state starts from`);
  for (const i of shipped) {
    if (!(i.file in files)) problems.push(`the initial state '${i.file}' is not listed in 'files'`);
    else if (files[i.file] !== i.sha256) problems.push(`'streaming' and 'files' record different sha256 for '${i.file}'`);
  }
  const ins = new Map(inputs.map((t) => [t.name, t]));
  const outs = new Map(outputs.map((t) => [t.name, t]));
  for (const s of streaming.states) {
    for (const [name, tensors, kind] of [[s.input, ins, "input"], [s.output, outs, "output"]] as const) {
      const t = tensors.get(name);
      if (t === undefined) problems.push(`the streaming state '${name}' is not a graph ${kind}`);
      else if (t.dtype !== s.dtype || JSON.stringify(t.shape) !== JSON.stringify(s.shape)) problems.push(`the streaming state '${name}' is ${s.dtype}${JSON.stringify(s.shape)}, the graph has ${t.dtype}${JSON.stringify(t.shape)}`);
    }
  }
  const declared = new Set(streaming.states.flatMap((s) => [s.input, s.output]));
  const strayStates = [...ins.keys(), ...outs.keys()].filter((n) => (n.startsWith(STATE_IN) || n.startsWith(STATE_OUT)) && !declared.has(n));
  if (strayStates.length) problems.push(`the graph has state tensors ${JSON.stringify(strayStates)} that the streaming section does not declare`);
  const missing = [...new Set(streaming.chains.flat())].filter((x) => !sets.includes(x)).sort();
  if (missing.length) problems.push(`'streaming.chains' names test-data sets ${JSON.stringify(missing)} that the manifest does not list`);
  return problems;
}

/** Why `name`, listed in the manifest, is not a plain relative path inside the artifact; null when it is. */
export function listedNameProblem(name: string): string | null {
  const parts = name.split("/");
  if (name.startsWith("/") || parts.includes("..") || name === "") return `the manifest lists '${visible(name)}', a path outside the artifact folder (refused)`;
  if (parts.some((p) => p === "" || p === ".") || name.includes("\\") || name === "manifest.json") {
    return `the manifest lists '${visible(name)}', which is not a plain relative file name (refused)`;
  }
  return null;
}

export function isTestFile(name: string): boolean {
  const [head, ...rest] = name.split("/");
  return TEST_SET.test(head ?? "") ? rest.length === 1 && TEST_FILE.test(rest[0]!) : true;
}
export const isTestSet = (name: string): boolean => TEST_SET.test(name);
