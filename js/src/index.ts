/** What both entry points share: errors, report types, the comparison rules and the TensorProto decoder. */
export { ArtifactError, RnnExportError, UsageError } from "./errors.js";
export type { Criterion, OutputComparison, Tolerance } from "./compare.js";
export type { Manifest, StateSpec, Streaming, TensorSpec } from "./manifest.js";
export { decodeTensor, type DType, type HostTensor, type TypedArray } from "./proto.js";
export type { Runtime } from "./runtime.js";
export { sha256, sha256Plain } from "./sha256.js";
export { UrlSource, type ArtifactSource, type Listing } from "./source.js";
export type { ChunkInput, StepOptions } from "./stream.js";
export type { ProviderReport, VerifyOptions, VerifyReport } from "./verify.js";
