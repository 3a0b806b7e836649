/** Where an artifact's files come from: a folder (Node) or a URL (browser and Node), read within size bounds. */
import { ArtifactError, REBUILD, visible } from "./errors.js";

const MiB = 1024 * 1024;
/** The size bounds of rnnexport's `Limits` that verification applies here. */
export const LIMITS = {
  manifestBytes: 16 * MiB,
  modelBytes: 2 * 1024 * MiB - 1,
  testDataBytes: 256 * MiB,
  artifactEntries: 10_000,
};

/** What a folder holds, from a listing that follows no links. */
export interface Listing {
  files: Map<string, number>;
  dirs: Set<string>;
  refused: Set<string>;
  problems: string[];
}

/** An artifact's files: `read` returns one file's bytes (at most `limit`), `list` the whole folder or null where it cannot be listed. */
export interface ArtifactSource {
  readonly location: string;
  list(): Promise<Listing | null>;
  read(name: string, limit: number): Promise<Uint8Array>;
}

/** Files served over HTTP(S) under `base` (a folder URL). A web server cannot list a folder, so extra files go unnoticed. */
export class UrlSource implements ArtifactSource {
  readonly location: string;
  private readonly base: URL;
  constructor(base: string | URL) {
    const url = new URL(String(base), (globalThis as { location?: { href: string } }).location?.href);
    if (!url.pathname.endsWith("/")) url.pathname += "/";
    this.base = url;
    this.location = url.href;
  }
  async list(): Promise<Listing | null> {
    return null;
  }
  async read(name: string, limit: number): Promise<Uint8Array> {
    const url = new URL(name.split("/").map(encodeURIComponent).join("/"), this.base);
    let response: Response;
    try {
      response = await fetch(url, { cache: "no-store", redirect: "error" });
    } catch (exc) {
      throw new ArtifactError(`${url.href} cannot be fetched (${visible((exc as Error).message)}). Check that the artifact is served there.`);
    }
    if (!response.ok) {
      throw new ArtifactError(`'${visible(name)}' is listed in the manifest but missing: ${url.href} answered HTTP ${response.status}. ${REBUILD}`);
    }
    const declared = Number(response.headers.get("content-length") ?? "0");
    if (declared > limit) throw new ArtifactError(`'${visible(name)}' is ${declared.toLocaleString("en")} bytes, over the limit of ${limit.toLocaleString("en")} bytes (refused). ${REBUILD}`);
    // Read as it arrives, so a server that lies about the length still cannot make us hold more than `limit`.
    const reader = response.body!.getReader();
    const chunks: Uint8Array[] = [];
    let total = 0;
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      total += value.length;
      if (total > limit) {
        await reader.cancel();
        throw new ArtifactError(`'${visible(name)}' is over the limit of ${limit.toLocaleString("en")} bytes (refused). ${REBUILD}`);
      }
      chunks.push(value);
    }
    const out = new Uint8Array(total);
    let at = 0;
    for (const c of chunks) { out.set(c, at); at += c.length; }
    return out;
  }
}
