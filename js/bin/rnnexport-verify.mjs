#!/usr/bin/env node
// rnnexport-verify ARTIFACT [--expect-sha256 HEX]: `rnnexport verify --json` on onnxruntime-node.
// Prints the report as JSON on stdout; exit 0 passed, 1 the artifact or its outputs failed, 2 usage.
import { RnnExportError, verifyArtifact } from "rnnexport";

const args = process.argv.slice(2);
const pin = args.indexOf("--expect-sha256");
const expectSha256 = pin >= 0 ? args.splice(pin, 2)[1] : undefined;
if (args.length !== 1 || args[0].startsWith("-")) {
  process.stderr.write("usage: rnnexport-verify ARTIFACT_FOLDER_OR_URL [--expect-sha256 HEX]\n");
  process.exit(2);
}
try {
  const report = await verifyArtifact(args[0], { expectSha256 });
  process.stdout.write(JSON.stringify(report, null, 2) + "\n");
  process.exit(report.passed ? 0 : 1);
} catch (exc) {
  if (!(exc instanceof RnnExportError)) throw exc;
  process.stderr.write(`error: ${exc.message}\n`);
  process.stdout.write(JSON.stringify({ passed: false, error: exc.toJSON() }, null, 2) + "\n");
  process.exit(exc.exitCode);
}
