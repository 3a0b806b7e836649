/**
 * `Stream`: run a streaming artifact one chunk at a time from its manifest alone. A new stream starts
 * from each state's initial value (zeros, or the learned `initial_state/*.pb` repeated over the batch);
 * every call feeds the previous call's `state_out.*` tensors back as `state_in.*` as they came out of
 * the runtime, without copying them in JavaScript. Inputs with the role `lengths` (masked models) are
 * filled with the chunk's length per row unless given.
 */
import { ArtifactError, REBUILD, UsageError, visible } from "./errors.js";
import { parseManifest, type Manifest, type Streaming, type TensorSpec } from "./manifest.js";
import type { HostTensor, TypedArray } from "./proto.js";
import { createSession, toOrt, type InferenceSession, type OrtTensor, type Runtime } from "./runtime.js";
import { sha256 } from "./sha256.js";
import { LIMITS, type ArtifactSource } from "./source.js";
import { initialStates, MANIFEST, MODEL, sessionContractProblems, startStates } from "./verify.js";

/** A chunk's input: an ONNX Runtime tensor, or its values with dims (float32 unless `dtype` says otherwise). */
export type ChunkInput = OrtTensor | { data: TypedArray | number[]; dims: number[]; dtype?: HostTensor["dtype"] };

export interface StepOptions {
  /** Valid steps of this chunk per row, for inputs with the role `lengths`; default: the whole chunk. */
  lengths?: number[];
}

export class Stream {
  /** The model's own inputs (the chunk), without the carried states. */
  readonly inputs: TensorSpec[];
  /** The model's own outputs, without the carried states. */
  readonly outputs: TensorSpec[];
  private state: Record<string, OrtTensor> | null = null;
  private batch = 0;

  protected constructor(
    private readonly runtime: Runtime,
    private readonly session: InferenceSession,
    readonly manifest: Manifest,
    private readonly streaming: Streaming,
    private readonly initial: Record<string, HostTensor>,
  ) {
    const carried = new Set(streaming.states.flatMap((s) => [s.input, s.output]));
    this.inputs = manifest.inputs.filter((t) => !carried.has(t.name));
    this.outputs = manifest.outputs.filter((t) => !carried.has(t.name));
  }

  /**
   * Open a streaming artifact: its manifest, model and initial states, each file checked against the
   * sha256 the manifest lists (run `verifyArtifact` first for the whole proof).
   */
  static async openSource(source: ArtifactSource, runtime: Runtime): Promise<Stream> {
    const where = source.location.endsWith("/") ? source.location : `${source.location}/`;
    const manifest = parseManifest(await source.read(MANIFEST, LIMITS.manifestBytes), `${where}${MANIFEST}`);
    if (manifest.streaming === null) {
      throw new UsageError(`${source.location} is not a streaming artifact (its manifest has no 'streaming' section). Build it with 'rnnexport build ... --streaming'.`);
    }
    const contents = new Map<string, Uint8Array>();
    const wanted = [MODEL, ...manifest.streaming.states.flatMap((s) => (s.initial === "zeros" ? [] : [s.initial.file]))];
    for (const name of wanted) {
      const data = await source.read(name, name === MODEL ? LIMITS.modelBytes : LIMITS.testDataBytes);
      if ((await sha256(data)) !== manifest.files[name]) throw new ArtifactError(`'${visible(name)}' was modified: its sha256 does not match the manifest. ${REBUILD}`);
      contents.set(name, data);
    }
    const initial = initialStates(contents, manifest.streaming, where);
    const session = await createSession(runtime, contents.get(MODEL)!);
    const problems = sessionContractProblems(session, manifest, MODEL);
    if (problems.length) {
      await session.release();
      throw new ArtifactError(`The model in ${source.location} does not carry the manifest's contract: ${problems.join("; ")}. ${REBUILD}`);
    }
    return new Stream(runtime, session, manifest, manifest.streaming, initial);
  }

  /** The carried state after the last call (state input name -> tensor); null before the first call. */
  get states(): Readonly<Record<string, OrtTensor>> | null {
    return this.state;
  }

  /** Forget the carried state: the next call starts new streams. */
  reset(): void {
    this.state = null;
    this.batch = 0;
  }

  /** Run one chunk (`[batch, steps, ...]` per input) and return the model's own outputs for it. */
  async step(chunk: Record<string, ChunkInput>, options: StepOptions = {}): Promise<Record<string, OrtTensor>> {
    const feeds: Record<string, OrtTensor> = {};
    let batch = 0;
    let steps = 0;
    for (const spec of this.inputs) {
      const given = chunk[spec.name];
      if (given === undefined) {
        if (spec.role === "lengths") continue;
        throw new UsageError(`The chunk has no input '${spec.name}'; this stream takes ${this.inputs.map((t) => `'${t.name}'`).join(", ")}.`);
      }
      const tensor = given instanceof this.runtime.ort.Tensor ? (given as OrtTensor) : this.tensorOf(spec, given as Exclude<ChunkInput, OrtTensor>);
      if (tensor.type !== spec.dtype || tensor.dims.length !== spec.shape.length) {
        throw new UsageError(`Input '${spec.name}' is ${tensor.type}[${tensor.dims.join(", ")}]; this stream takes ${spec.dtype}[${spec.shape.join(", ")}].`);
      }
      batch ||= tensor.dims[0]!;
      const seq = spec.shape.indexOf("seq");
      if (seq >= 0) steps ||= tensor.dims[seq]!;
      feeds[spec.name] = tensor;
    }
    for (const spec of this.inputs.filter((t) => t.role === "lengths" && !(t.name in feeds))) {
      const lengths = options.lengths ?? new Array<number>(batch).fill(steps);
      if (lengths.length !== batch || lengths.some((n) => !Number.isInteger(n) || n < 0 || n > steps)) {
        throw new UsageError(`lengths must hold ${batch} whole numbers from 0 to ${steps} (one per row of this chunk), got [${lengths.join(", ")}].`);
      }
      feeds[spec.name] = this.tensorOf(spec, { data: lengths, dims: [batch] });
    }
    if (this.state === null) {
      const start = startStates(this.streaming, batch, this.initial);
      this.state = Object.fromEntries(Object.entries(start).map(([k, v]) => [k, toOrt(this.runtime, v)]));
      this.batch = batch;
    } else if (batch !== this.batch) {
      throw new UsageError(`This stream carries ${this.batch} rows, the chunk has ${batch}. Call reset() to start streams of another batch size.`);
    }
    const out = await this.session.run({ ...feeds, ...this.state });
    // The state outputs become the next call's inputs as they are: no copy on the JavaScript side.
    this.state = Object.fromEntries(this.streaming.states.map((s) => [s.input, out[s.output]!]));
    return Object.fromEntries(this.outputs.map((t) => [t.name, out[t.name]!]));
  }

  /** Release the session. */
  async release(): Promise<void> {
    await this.session.release();
  }

  private tensorOf(spec: TensorSpec, given: Exclude<ChunkInput, OrtTensor>): OrtTensor {
    const dtype = given.dtype ?? spec.dtype;
    const values = given.data;
    let data: TypedArray;
    if (Array.isArray(values)) {
      data = dtype === "int64" ? BigInt64Array.from(values, (v) => BigInt(v)) : dtype === "int32" ? Int32Array.from(values) : dtype === "float64" ? Float64Array.from(values) : Float32Array.from(values);
    } else data = values;
    return toOrt(this.runtime, { dtype, dims: given.dims, data });
  }
}
