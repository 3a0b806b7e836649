/** The ONNX Runtime this package runs on, and conversions between its tensors and decoded ones. */
import type * as OrtCommon from "onnxruntime-common";
import type { DType, HostTensor, TypedArray } from "./proto.js";

export type Ort = typeof OrtCommon;
export type OrtTensor = OrtCommon.Tensor;
export type InferenceSession = OrtCommon.InferenceSession;

/** ONNX Runtime as loaded by the entry point: `onnxruntime-web` in a browser, `onnxruntime-node` in Node. */
export interface Runtime {
  ort: Ort;
  package: "onnxruntime-web" | "onnxruntime-node";
  /** The execution provider every session uses: `wasm` (web) or `cpu` (Node). */
  provider: string;
  /** Further session options for every session this package creates (e.g. `{ intraOpNumThreads: 1 }`). */
  sessionOptions?: Record<string, unknown>;
}

/** A session on the runtime's provider, quiet, with every graph optimisation (as Python's verify). */
export function createSession(runtime: Runtime, model: Uint8Array): Promise<InferenceSession> {
  return runtime.ort.InferenceSession.create(model, {
    ...runtime.sessionOptions,
    executionProviders: [runtime.provider],
    graphOptimizationLevel: "all",
    logSeverityLevel: 3,
  });
}

export function toOrt(runtime: Runtime, t: HostTensor): OrtTensor {
  return new runtime.ort.Tensor(t.dtype, t.data as Float32Array, t.dims);
}

export function fromOrt(t: OrtTensor): HostTensor {
  return { dtype: t.type as DType, dims: [...t.dims], data: t.data as TypedArray };
}

/** The runtime's version, as it reports itself. */
export function runtimeVersion(runtime: Runtime): string {
  const versions = runtime.ort.env.versions as Record<string, string | undefined>;
  return versions.web ?? versions.node ?? versions.common ?? "unknown";
}
