/** The errors this package throws on purpose, mirroring rnnexport's Python exception family. */

/** Base of every error thrown on purpose; `exitCode` is what the `rnnexport` CLI would exit with. */
export class RnnExportError extends Error {
  readonly exitCode: number = 1;
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
  /** The `error` object of `rnnexport verify --json` when verification stops on an error. */
  toJSON(): { type: string; message: string; exit_code: number } {
    return { type: this.name, message: this.message, exit_code: this.exitCode };
  }
}

/** The artifact itself is wrong: tampered, missing or extra files, a manifest that disagrees with its model. */
export class ArtifactError extends RnnExportError {}

/** The call is wrong: bad arguments, inputs that do not fit the contract. */
export class UsageError extends RnnExportError {
  override readonly exitCode: number = 2;
}

export const REBUILD = "Rebuild the artifact, or copy it again from the build machine.";

/** `text` with control characters made visible, for messages that quote untrusted names. */
export function visible(text: unknown): string {
  return String(text).replace(/[\u0000-\u001f\u007f-\u009f]/g, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`);
}
