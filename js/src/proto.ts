/**
 * The two protobuf messages verification reads, decoded by hand: ONNX `TensorProto` (test data and
 * initial states) and the `metadata_props` of a `ModelProto`. No protobuf library: the wire format is
 * small, and the decoder checks the bytes as strictly as rnnexport's Python side does.
 */
import { ArtifactError, REBUILD } from "./errors.js";

export type DType = "float32" | "float64" | "int64" | "int32";
export type TypedArray = Float32Array | Float64Array | BigInt64Array | Int32Array;

/** A decoded tensor: its dims and values (a fresh, aligned typed array). */
export interface HostTensor {
  dtype: DType;
  dims: number[];
  data: TypedArray;
}

const CODES: Record<DType, number> = { float32: 1, int32: 6, int64: 7, float64: 11 };
const CODE_NAMES: Record<number, string> = {
  1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32", 7: "INT64", 8: "STRING",
  9: "BOOL", 10: "FLOAT16", 11: "DOUBLE", 12: "UINT32", 13: "UINT64", 16: "BFLOAT16",
};
const ITEM: Record<DType, number> = { float32: 4, float64: 8, int64: 8, int32: 4 };
// The TensorProto field that holds each dtype's values when they are not in raw_data.
const TYPED_FIELD: Record<DType, number> = { float32: 4, int32: 5, int64: 7, float64: 10 };
const DATA_FIELDS: Record<number, string> = {
  4: "float_data", 5: "int32_data", 6: "string_data", 7: "int64_data", 10: "double_data", 11: "uint64_data",
};

class Reader {
  pos = 0;
  constructor(readonly bytes: Uint8Array, readonly end = bytes.length) {}
  varint(): bigint {
    let result = 0n;
    for (let shift = 0n; shift < 70n; shift += 7n) {
      if (this.pos >= this.end) throw new Error("truncated varint");
      const b = this.bytes[this.pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if (b < 0x80) return BigInt.asIntN(64, result);
    }
    throw new Error("varint longer than 10 bytes");
  }
  int(): number {
    const v = this.varint();
    if (v > BigInt(Number.MAX_SAFE_INTEGER) || v < -BigInt(Number.MAX_SAFE_INTEGER)) throw new Error("integer too large");
    return Number(v);
  }
  take(n: number): Uint8Array {
    if (n < 0 || this.pos + n > this.end) throw new Error("truncated field");
    const out = this.bytes.subarray(this.pos, this.pos + n);
    this.pos += n;
    return out;
  }
  /** The next length-delimited field as a reader of its own; this one moves past it. */
  sub(): Reader {
    const n = this.int();
    if (n < 0 || this.pos + n > this.end) throw new Error("truncated field");
    const inner = new Reader(this.bytes, this.pos + n);
    inner.pos = this.pos;
    this.pos += n;
    return inner;
  }
  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.take(8);
    else if (wire === 2) this.take(this.int());
    else if (wire === 5) this.take(4);
    else throw new Error(`unsupported wire type ${wire}`);
  }
  /** Every field's number and wire type; the caller reads or skips its payload. */
  *fields(): Generator<[number, number]> {
    while (this.pos < this.end) {
      const key = this.int();
      const field = Math.floor(key / 8);
      if (field < 1) throw new Error("field number 0");
      yield [field, key & 7];
    }
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

/** A copy of `bytes` in a fresh buffer: protobuf hands back unaligned views, typed arrays need alignment. */
function aligned(bytes: Uint8Array): ArrayBuffer {
  const copy = new Uint8Array(bytes.length);
  copy.set(bytes);
  return copy.buffer;
}

function littleEndian(buffer: ArrayBuffer, dtype: DType): TypedArray {
  // Every platform ONNX Runtime's JavaScript packages run on is little-endian, as TensorProto is.
  if (dtype === "float32") return new Float32Array(buffer);
  if (dtype === "float64") return new Float64Array(buffer);
  if (dtype === "int64") return new BigInt64Array(buffer);
  return new Int32Array(buffer);
}

/** Packed or unpacked repeated values of one typed field, appended to `out`. */
function readRepeated(r: Reader, wire: number, field: number, out: (number | bigint)[]): void {
  const one = (rr: Reader, w: number): void => {
    if (field === 4 && w === 5) out.push(new DataView(aligned(rr.take(4))).getFloat32(0, true));
    else if (field === 10 && w === 1) out.push(new DataView(aligned(rr.take(8))).getFloat64(0, true));
    else if ((field === 5 || field === 7 || field === 11) && w === 0) out.push(field === 5 ? Number(BigInt.asIntN(32, rr.varint())) : rr.varint());
    else rr.skip(w);
  };
  if (wire === 2 && field !== 6) {
    const inner = r.sub();
    const w = field === 4 ? 5 : field === 10 ? 1 : 0;
    while (inner.pos < inner.end) one(inner, w);
  } else {
    one(r, wire);
  }
}

/**
 * Decode a `TensorProto` from untrusted bytes, checked as rnnexport's `verify` checks it: the dtype and
 * name the contract says, no external data, no segments, dims that agree with the amount of data, and
 * values only in the field the dtype uses. Throws {@link ArtifactError} otherwise.
 */
export function decodeTensor(bytes: Uint8Array, opts: { origin: string; name: string; dtype: DType }): HostTensor {
  const { origin, name, dtype } = opts;
  const fail = (what: string): never => {
    throw new ArtifactError(`${origin} ${what}. ${REBUILD}`);
  };
  const dims: number[] = [];
  let dataType = 0;
  let tensorName = "";
  let raw: Uint8Array | null = null;
  let segment = false;
  let external = false;
  let location = "?";
  const typed: (number | bigint)[] = [];
  const seen = new Set<number>();
  try {
    const r = new Reader(bytes);
    for (const [field, wire] of r.fields()) {
      if (field === 1) {
        if (wire === 2) {
          const inner = r.sub();
          while (inner.pos < inner.end) dims.push(inner.int());
        } else if (wire === 0) dims.push(r.int());
        else r.skip(wire);
      } else if (field === 2 && wire === 0) dataType = r.int();
      else if (field === 3) { segment = true; r.skip(wire); }
      else if (field === 8 && wire === 2) tensorName = utf8.decode(r.take(r.int()));
      else if (field === 9 && wire === 2) raw = r.take(r.int());
      else if (field === 13 && wire === 2) {
        external = true;
        const entry = r.sub();
        let key = "";
        let value = "";
        for (const [f, w] of entry.fields()) {
          if (f === 1 && w === 2) key = utf8.decode(entry.take(entry.int()));
          else if (f === 2 && w === 2) value = utf8.decode(entry.take(entry.int()));
          else entry.skip(w);
        }
        if (key === "location") location = value;
      } else if (field === 14 && wire === 0) { if (r.int() === 1) external = true; }
      else if (field in DATA_FIELDS) {
        seen.add(field);
        if (field === TYPED_FIELD[dtype]) readRepeated(r, wire, field, typed);
        else r.skip(wire);
      } else r.skip(wire);
    }
  } catch (exc) {
    fail(`is not a TensorProto (${(exc as Error).message})`);
  }
  if (external) {
    fail(`refers to external data '${location}' instead of holding its values; test data must be self-contained, and the reference was not followed`);
  }
  if (dataType !== CODES[dtype]) {
    fail(`holds a tensor of type ${CODE_NAMES[dataType] ?? dataType}; the contract says '${name}' is ${dtype} (${CODE_NAMES[CODES[dtype]]})`);
  }
  if (tensorName !== name) fail(`holds the tensor '${tensorName}', expected '${name}'`);
  if (segment) fail("is a segmented tensor, which rnnexport never writes");
  if (dims.some((d) => d < 0)) fail(`has negative dims [${dims.join(", ")}]`);
  const count = dims.reduce((a, b) => a * b, 1);
  const others = [...seen].filter((f) => f !== TYPED_FIELD[dtype]).map((f) => DATA_FIELDS[f]);
  if (others.length) fail(`carries values in ${others.join(", ")}, which a ${dtype} tensor does not use`);
  let data: TypedArray;
  if (raw !== null) {
    if (typed.length || raw.length !== count * ITEM[dtype]) {
      fail(`declares dims [${dims.join(", ")}] (${count} values, ${count * ITEM[dtype]} bytes) but holds ${raw.length} bytes of data`);
    }
    data = littleEndian(aligned(raw), dtype);
  } else {
    if (typed.length !== count) fail(`declares dims [${dims.join(", ")}] (${count} values) but holds ${typed.length} values`);
    if (dtype === "int64") data = BigInt64Array.from(typed as bigint[]);
    else if (dtype === "float32") data = Float32Array.from(typed as number[]);
    else if (dtype === "float64") data = Float64Array.from(typed as number[]);
    else data = Int32Array.from(typed as number[]);
  }
  return { dtype, dims, data: data! };
}

/** A `ModelProto`'s `metadata_props`, in order (duplicates kept, so the caller can refuse them). */
export function readModelMetadata(bytes: Uint8Array): [string, string][] {
  const props: [string, string][] = [];
  const r = new Reader(bytes);
  for (const [field, wire] of r.fields()) {
    if (field === 14 && wire === 2) {
      const entry = r.sub();
      let key = "";
      let value = "";
      for (const [f, w] of entry.fields()) {
        if (f === 1 && w === 2) key = utf8.decode(entry.take(entry.int()));
        else if (f === 2 && w === 2) value = utf8.decode(entry.take(entry.int()));
        else entry.skip(w);
      }
      props.push([key, value]);
    } else r.skip(wire);
  }
  return props;
}
