/** The package in Node, on `onnxruntime-node` (CPU): artifacts from a folder or an http(s) URL. */
import { constants } from "node:fs";
import { lstat, open, readdir } from "node:fs/promises";
import { join } from "node:path";
import * as ort from "onnxruntime-node";
import { ArtifactError, REBUILD, visible } from "./errors.js";
import type { Runtime } from "./runtime.js";
import { LIMITS, UrlSource, type ArtifactSource, type Listing } from "./source.js";
import { Stream as CoreStream } from "./stream.js";
import { verifyArtifact as verifyWith, type VerifyOptions, type VerifyReport } from "./verify.js";

export * from "./index.js";

export const runtime: Runtime = { ort: ort as unknown as Runtime["ort"], package: "onnxruntime-node", provider: "cpu" };

const kind = (mode: number): string =>
  (mode & constants.S_IFMT) === constants.S_IFLNK ? "a symbolic link" : (mode & constants.S_IFMT) === constants.S_IFIFO ? "a named pipe" : "a special file";

/** An artifact folder on disk, listed without following links; every file opened without following one. */
export class FolderSource implements ArtifactSource {
  constructor(readonly location: string) {}

  async list(): Promise<Listing> {
    const listing: Listing = { files: new Map(), dirs: new Set(), refused: new Set(), problems: [] };
    const pending = [""];
    let entries = 0;
    while (pending.length) {
      const rel = pending.pop()!;
      let names: string[];
      try {
        names = (await readdir(join(this.location, rel))).sort();
      } catch (exc) {
        listing.problems.push(`'${visible(rel)}' cannot be listed (${(exc as Error).message})`);
        continue;
      }
      for (const name of names) {
        if (++entries > LIMITS.artifactEntries) {
          listing.problems.push(`more than ${LIMITS.artifactEntries} files and folders (refused)`);
          return listing;
        }
        const path = rel ? `${rel}/${name}` : name;
        const info = await lstat(join(this.location, path));
        if (info.isDirectory()) { listing.dirs.add(path); pending.push(path); }
        else if (info.isFile()) { if (path !== "manifest.json") listing.files.set(path, info.size); }
        else {
          listing.refused.add(path);
          listing.problems.push(`'${visible(path)}' is ${kind(info.mode)} (refused: artifacts hold plain files only; it was not opened)`);
        }
      }
    }
    return listing;
  }

  async read(name: string, limit: number): Promise<Uint8Array> {
    let handle;
    try {
      handle = await open(join(this.location, name), constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
    } catch (exc) {
      const code = (exc as NodeJS.ErrnoException).code;
      const why = code === "ENOENT" ? "it does not exist" : code === "ELOOP" ? "it is a symbolic link" : (exc as Error).message;
      throw new ArtifactError(`'${visible(name)}' cannot be read (${why}). ${REBUILD}`);
    }
    try {
      const info = await handle.stat();
      if (!info.isFile()) throw new ArtifactError(`'${visible(name)}' is not a plain file (refused). ${REBUILD}`);
      if (info.size > limit) throw new ArtifactError(`'${visible(name)}' is ${info.size.toLocaleString("en")} bytes, over the limit of ${limit.toLocaleString("en")} bytes (refused). ${REBUILD}`);
      const data = new Uint8Array(info.size);
      let at = 0;
      while (at < data.length) {
        const { bytesRead } = await handle.read(data, at, data.length - at, at);
        if (bytesRead === 0) break;
        at += bytesRead;
      }
      return data.subarray(0, at);
    } finally {
      await handle.close();
    }
  }
}

/** A folder path, or an http(s) URL, as a source. */
export function sourceOf(location: string | URL): ArtifactSource {
  const text = String(location);
  return /^https?:\/\//i.test(text) ? new UrlSource(text) : new FolderSource(text);
}

/** Verify an artifact (a folder or an http(s) URL) on onnxruntime-node; see the package README. */
export function verifyArtifact(location: string | URL, options?: VerifyOptions): Promise<VerifyReport> {
  return verifyWith(sourceOf(location), runtime, options);
}

/** A streaming artifact, one chunk per call, on onnxruntime-node. */
export class Stream extends CoreStream {
  /** Open the streaming artifact at `location` (a folder or an http(s) URL). */
  static async open(location: string | URL): Promise<CoreStream> {
    return CoreStream.openSource(sourceOf(location), runtime);
  }
}
