/** The package in a browser, on `onnxruntime-web` (WebAssembly, CPU): artifacts from a URL. */
import * as ort from "onnxruntime-web";
import type { Runtime } from "./runtime.js";
import { UrlSource } from "./source.js";
import { Stream as CoreStream } from "./stream.js";
import { verifyArtifact as verifyWith, type VerifyOptions, type VerifyReport } from "./verify.js";

export * from "./index.js";

export const runtime: Runtime = { ort: ort as unknown as Runtime["ort"], package: "onnxruntime-web", provider: "wasm" };

/**
 * Where ONNX Runtime Web finds its `.wasm`/`.mjs` files, and how many threads it uses (default 1, the only
 * choice on a page that is not cross-origin isolated). `wasmPaths` is made absolute against the page here:
 * ONNX Runtime resolves a relative one against its own script's URL, and then finds no backend.
 */
export function configureWasm(options: { wasmPaths?: string; numThreads?: number } = {}): void {
  const page = (globalThis as { location?: { href: string } }).location?.href;
  if (options.wasmPaths !== undefined) ort.env.wasm.wasmPaths = new URL(options.wasmPaths, page).href;
  ort.env.wasm.numThreads = options.numThreads ?? 1;
}

/** Verify the artifact served at `url` (relative to the page) on onnxruntime-web. */
export function verifyArtifact(url: string | URL, options?: VerifyOptions): Promise<VerifyReport> {
  return verifyWith(new UrlSource(url), runtime, options);
}

/** A streaming artifact, one chunk per call, on onnxruntime-web. */
export class Stream extends CoreStream {
  /** Open the streaming artifact served at `url` (relative to the page). */
  static async open(url: string | URL): Promise<CoreStream> {
    return CoreStream.openSource(new UrlSource(url), runtime);
  }
}
