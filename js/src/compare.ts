/**
 * The comparison rules of `rnnexport verify` (Python `rnnexport.runtime.compare` and `rnnexport.runtime.oracle`), ported
 * line by line so a report from JavaScript reads and decides like one from Python:
 *
 * - `tolerance`: every element satisfies `|actual - float32| <= atol + rtol*|float32|`, all finite;
 * - `oracle`: per output, case and time bucket (steps 1-10, 11-100, 101-1000, 1001+),
 *   `|actual - float64| <= max(factor * PyTorch float32's largest error against float64 there,
 *   atol + rtol*|float64|)`, all finite.
 */
import type { HostTensor } from "./proto.js";

export interface Tolerance { atol: number; rtol: number }
export interface Criterion { rule: "oracle" | "tolerance"; factor: number }
export const ORACLE_FACTOR = 4;

/** Python's `format(x, ".Ng")`. */
export function fmtG(x: number, precision = 6): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf";
  if (x === 0) return Object.is(x, -0) ? "-0" : "0";
  const p = Math.max(precision, 1);
  const exp = Number(x.toExponential(p - 1).split("e")[1]);
  if (exp >= -4 && exp < p) {
    let text = x.toFixed(Math.max(p - 1 - exp, 0));
    if (text.includes(".")) text = text.replace(/0+$/, "").replace(/\.$/, "");
    return text;
  }
  const [mantissa, e] = x.toExponential(p - 1).split("e") as [string, string];
  const m = mantissa.includes(".") ? mantissa.replace(/0+$/, "").replace(/\.$/, "") : mantissa;
  return `${m}e${e[0] === "-" ? "-" : "+"}${e.replace(/^[+-]/, "").padStart(2, "0")}`;
}

/** Python's `format(x, ".Ne")`. */
export function fmtE(x: number, digits: number): string {
  if (!Number.isFinite(x)) return Number.isNaN(x) ? "nan" : x > 0 ? "inf" : "-inf";
  const [mantissa, e] = x.toExponential(digits).split("e") as [string, string];
  return `${mantissa}e${e[0] === "-" ? "-" : "+"}${e.replace(/^[+-]/, "").padStart(2, "0")}`;
}

/** The time buckets a sequence of `length` steps reaches: [label, first index, end index (exclusive)]. */
export function stepBuckets(length: number): [string, number, number][] {
  const all: [number, number | null][] = [[1, 10], [11, 100], [101, 1000], [1001, null]];
  return all
    .filter(([first]) => first <= length)
    .map(([first, last]) => [last === null ? `${first}+` : `${first}-${last}`, first - 1, last ?? Infinity]);
}

export interface OracleErrors {
  artifact_vs_float64: number;
  pytorch_float32_vs_float64: number;
  oracle_ratio: number;
  by_steps: Record<string, { artifact: number; pytorch: number }>;
}

export interface OutputComparison {
  name: string;
  shape: number[];
  max_abs: number;
  max_rel: number;
  max_ratio: number;
  worst_index: number[] | null;
  mismatched: number;
  nonfinite: number;
  problem: string | null;
  oracle: OracleErrors | null;
}

function toFloat64(t: HostTensor): Float64Array {
  if (t.data instanceof Float64Array) return t.data;
  if (t.data instanceof BigInt64Array) return Float64Array.from(t.data, (v) => Number(v));
  return Float64Array.from(t.data);
}

function unravel(flat: number, dims: number[]): number[] {
  const out = new Array<number>(dims.length).fill(0);
  for (let i = dims.length - 1; i >= 0; i--) {
    out[i] = flat % dims[i]!;
    flat = Math.floor(flat / dims[i]!);
  }
  return out;
}

/** Index along `axis` of every element of a tensor of `dims` (row-major). */
function stepOf(dims: number[], axis: number): (flat: number) => number {
  const stride = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
  const size = dims[axis]!;
  return (flat) => Math.floor(flat / stride) % size;
}

const maxFinite = (values: Float64Array, keep?: (i: number) => boolean): { max: number; any: boolean } => {
  let max = -Infinity;
  let any = false;
  for (let i = 0; i < values.length; i++) {
    if ((keep === undefined || keep(i)) && Number.isFinite(values[i]!)) {
      any = true;
      if (values[i]! > max) max = values[i]!;
    }
  }
  return { max: any ? max : 0, any };
};

function oracleErrors(
  a: Float64Array, f32: Float64Array, exact: Float64Array, dims: number[], tol: Tolerance, factor: number, axis: number | null,
): [OracleErrors, string | null] {
  const n = a.length;
  const artifact = new Float64Array(n);
  const pytorch = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    artifact[i] = Math.abs(a[i]! - exact[i]!);
    pytorch[i] = Math.abs(f32[i]! - exact[i]!);
  }
  const step = axis === null ? null : stepOf(dims, axis);
  const groups: [string, number, number][] = axis === null ? [["all", 0, Infinity]] : stepBuckets(dims[axis]!);
  const bySteps: Record<string, { artifact: number; pytorch: number }> = {};
  let worst: { ratio: number; label: string; bad: number; count: number; err: number; own: number } | null = null;
  for (const [label, first, end] of groups) {
    const inGroup = step === null ? () => true : (i: number) => { const s = step(i); return s >= first && s < end; };
    const own = maxFinite(pytorch, inGroup);
    const scale = own.any ? factor * own.max : 0;
    let bad = 0;
    let count = 0;
    let groupRatio = 0;
    for (let i = 0; i < n; i++) {
      if (!inGroup(i)) continue;
      count++;
      const err = artifact[i]!;
      const allowed = Math.max(scale, tol.atol + tol.rtol * Math.abs(exact[i]!));
      const ratio = err === 0 ? 0 : Number.isFinite(err) ? err / allowed : Infinity;
      if (!(err <= allowed)) bad++;
      if (ratio > groupRatio || Number.isNaN(ratio)) groupRatio = ratio;
    }
    const groupMax = maxFinite(artifact, inGroup).max;
    if (axis !== null) bySteps[label] = { artifact: groupMax, pytorch: own.max };
    if (worst === null || groupRatio > worst.ratio) worst = { ratio: groupRatio, label, bad, count, err: groupMax, own: scale / factor };
  }
  const errors: OracleErrors = {
    artifact_vs_float64: maxFinite(artifact).max,
    pytorch_float32_vs_float64: maxFinite(pytorch).max,
    oracle_ratio: worst!.ratio,
    by_steps: bySteps,
  };
  const w = worst!;
  if (!w.bad) return [errors, null];
  const where = w.label === "all" ? "" : ` in steps ${w.label}`;
  return [
    errors,
    `${w.bad} of ${w.count} values${where} beyond max(${fmtG(factor)} x PyTorch float32's own error ` +
      `${fmtE(w.own, 2)}, atol ${fmtG(tol.atol)} + rtol ${fmtG(tol.rtol)}*|float64|): the largest error against ` +
      `float64 there is ${fmtE(w.err, 2)}, ${fmtG(w.ratio, 3)} times what the oracle rule allows`,
  ];
}

const sameDims = (a: number[], b: number[]): boolean => a.length === b.length && a.every((d, i) => d === b[i]);
const empty = (name: string, shape: number[], problem: string | null): OutputComparison => ({
  name, shape, max_abs: 0, max_rel: 0, max_ratio: 0, worst_index: null, mismatched: 0, nonfinite: 0, problem, oracle: null,
});

/** Compare one output with its float32 reference (and float64 one, when given), in the order shape, dtype, values. */
export function compareOne(
  name: string, actual: HostTensor, expected: HostTensor, tol: Tolerance,
  opts: { criterion: Criterion; float64: HostTensor | null; axis: number | null },
): OutputComparison {
  if (!sameDims(actual.dims, expected.dims)) {
    return empty(name, actual.dims, `shape [${actual.dims.join(", ")}], expected [${expected.dims.join(", ")}]`);
  }
  if (actual.dtype !== expected.dtype) return empty(name, actual.dims, `dtype ${actual.dtype}, expected ${expected.dtype}`);
  const n = actual.data.length;
  if (n === 0) return empty(name, actual.dims, null);
  const a = toFloat64(actual);
  const e = toFloat64(expected);
  let nonfinite = 0, mismatched = 0, maxAbs = 0, maxRel = -Infinity, maxRatio = 0;
  let worstAt = 0, worstExcess = -Infinity;
  for (let i = 0; i < n; i++) {
    const ai = a[i]!, ei = e[i]!;
    if (!Number.isFinite(ai)) nonfinite++;
    const diff = Math.abs(ai - ei);
    const allowed = tol.atol + tol.rtol * Math.abs(ei);
    if (!(diff <= allowed)) mismatched++;
    const rel = Math.abs(ei) > tol.atol ? diff / Math.abs(ei) : 0;
    if (rel > maxRel) maxRel = rel; // NaN never wins: numpy's nanmax
    if (Number.isFinite(diff) && diff > maxAbs) maxAbs = diff;
    const excess = Number.isFinite(diff) ? diff - allowed : Infinity;
    if (excess > worstExcess) { worstExcess = excess; worstAt = i; }
    const ratio = diff === 0 ? 0 : Number.isFinite(diff) ? diff / allowed : Infinity;
    if (ratio > maxRatio) maxRatio = ratio;
  }
  const worst = unravel(worstAt, actual.dims);
  let oracle: OracleErrors | null = null;
  let oracleProblem: string | null = null;
  if (opts.float64 !== null && sameDims(opts.float64.dims, actual.dims)) {
    [oracle, oracleProblem] = oracleErrors(a, e, toFloat64(opts.float64), actual.dims, tol, opts.criterion.factor, opts.axis);
  }
  let problem: string | null = null;
  if (nonfinite) problem = `${nonfinite} non-finite value(s) in the ONNX Runtime output`;
  else if (opts.criterion.rule === "oracle") {
    problem = oracle === null ? "no float64 reference for this case, which the oracle rule needs (rebuild the artifact)" : oracleProblem;
  } else if (mismatched) {
    problem =
      `${mismatched} of ${n} values outside atol ${fmtG(tol.atol)} + rtol ${fmtG(tol.rtol)}*|expected|, worst at ` +
      `[${worst.join(", ")}]: got ${fmtG(a[worstAt]!, 8)}, expected ${fmtG(e[worstAt]!, 8)}`;
  }
  return {
    name, shape: actual.dims, max_abs: maxAbs, max_rel: maxRel === -Infinity ? 0 : maxRel,
    max_ratio: opts.criterion.rule === "oracle" && oracle ? oracle.oracle_ratio : maxRatio,
    worst_index: worst, mismatched, nonfinite, problem, oracle,
  };
}

/** Compare every expected output with its actual counterpart; missing or extra names are problems. */
export function compareOutputs(
  actual: Record<string, HostTensor>, expected: Record<string, HostTensor>, tol: Tolerance,
  opts: { criterion: Criterion; float64: Record<string, HostTensor> | null; seqAxes: Record<string, number> },
): OutputComparison[] {
  const out = Object.entries(expected).map(([name, want]) =>
    name in actual
      ? compareOne(name, actual[name]!, want, tol, { criterion: opts.criterion, float64: opts.float64?.[name] ?? null, axis: opts.seqAxes[name] ?? null })
      : empty(name, want.dims, "output missing"),
  );
  for (const [name, got] of Object.entries(actual)) if (!(name in expected)) out.push(empty(name, got.dims, "unexpected output"));
  return out;
}

export interface ErrorStats { max: number; mean: number; p99: number }

function stats(parts: Float64Array[]): ErrorStats {
  const total = parts.reduce((s, p) => s + p.length, 0);
  if (total === 0) return { max: 0, mean: 0, p99: 0 };
  const all = new Float64Array(total);
  let at = 0;
  for (const p of parts) { all.set(p, at); at += p.length; }
  let sum = 0;
  for (let i = 0; i < total; i++) { if (!Number.isFinite(all[i]!)) all[i] = Infinity; sum += all[i]!; }
  all.sort();
  // numpy.quantile's default (linear) method.
  const pos = 0.99 * (total - 1);
  const lo = Math.floor(pos);
  const hi = Math.min(lo + 1, total - 1);
  const t = pos - lo;
  const x = all[lo]!, y = all[hi]!;
  const p99 = x === y ? x : t >= 0.5 ? y - (y - x) * (1 - t) : x + (y - x) * t;
  return { max: all[total - 1]!, mean: sum / total, p99 };
}

/** Absolute errors over many cases, summarised overall and per time bucket (Python's `ErrorAccumulator`). */
export class ErrorAccumulator {
  private readonly vsFloat32: Float64Array[] = [];
  private readonly artifact: Float64Array[] = [];
  private readonly pytorch: Float64Array[] = [];
  private readonly buckets = new Map<string, [Float64Array[], Float64Array[]]>();
  constructor(private readonly axes: Record<string, number>) {}

  add(actual: Record<string, HostTensor>, float32: Record<string, HostTensor>, float64: Record<string, HostTensor> | null): void {
    for (const [name, want] of Object.entries(float32)) {
      const got = actual[name];
      if (got === undefined || !sameDims(got.dims, want.dims)) continue;
      const a = toFloat64(got), w = toFloat64(want);
      this.vsFloat32.push(a.map((v, i) => Math.abs(v - w[i]!)));
      const ref = float64?.[name];
      if (ref === undefined) continue;
      const exact = toFloat64(ref);
      const artifact = a.map((v, i) => Math.abs(v - exact[i]!));
      const pytorch = w.map((v, i) => Math.abs(v - exact[i]!));
      this.artifact.push(artifact);
      this.pytorch.push(pytorch);
      const axis = this.axes[name];
      if (axis === undefined) continue;
      const step = stepOf(got.dims, axis);
      for (const [label, first, end] of stepBuckets(got.dims[axis]!)) {
        const keep = (_: number, i: number): boolean => { const s = step(i); return s >= first && s < end; };
        const lists = this.buckets.get(label) ?? [[], []];
        this.buckets.set(label, lists);
        lists[0].push(artifact.filter(keep));
        lists[1].push(pytorch.filter(keep));
      }
    }
  }

  summary(): Record<string, unknown> {
    const data: Record<string, unknown> = { artifact_vs_float32: stats(this.vsFloat32) };
    if (this.artifact.length) {
      data.artifact_vs_float64 = stats(this.artifact);
      data.pytorch_float32_vs_float64 = stats(this.pytorch);
    }
    data.by_steps = ["1-10", "11-100", "101-1000", "1001+"]
      .filter((label) => this.buckets.has(label))
      .map((label) => ({
        steps: label,
        artifact_vs_float64: stats(this.buckets.get(label)![0]),
        pytorch_float32_vs_float64: stats(this.buckets.get(label)![1]),
      }));
    return data;
  }
}
