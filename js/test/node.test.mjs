// Node tests, run by tests/test_js.py with RNNEXPORT_JS_STREAMING set to a streaming artifact folder.
import assert from "node:assert/strict";
import { test } from "node:test";
import * as api from "rnnexport";
import { checkLongStream } from "./checks.mjs";

const streaming = process.env.RNNEXPORT_JS_STREAMING;

test("a 1,000-step stream, one step per call, equals the whole sequence", { skip: !streaming && "RNNEXPORT_JS_STREAMING is not set" }, async () => {
  const result = await checkLongStream(api, api.sourceOf(streaming));
  assert.ok(result.steps >= 1000, `streamed only ${result.steps} steps`);
  console.log(JSON.stringify(result));
});

test("the plain SHA-256 agrees with node:crypto", async () => {
  const { createHash } = await import("node:crypto");
  for (const size of [0, 1, 55, 56, 63, 64, 65, 1000, 100_003]) {
    const bytes = new Uint8Array(size).map((_, i) => (i * 7919 + size) & 0xff);
    assert.equal(api.sha256Plain(bytes), createHash("sha256").update(bytes).digest("hex"), `size ${size}`);
  }
});

test("a TensorProto with float_data and unaligned raw_data decodes", () => {
  // name "x", dims [2], FLOAT, float_data [1.5, -2] (packed)
  const packed = new Uint8Array([0x08, 0x02, 0x10, 0x01, 0x42, 0x01, 0x78, 0x22, 0x08, 0, 0, 0xc0, 0x3f, 0, 0, 0, 0xc0]);
  assert.deepEqual(Array.from(api.decodeTensor(packed, { origin: "t", name: "x", dtype: "float32" }).data), [1.5, -2]);
  // int64 raw_data at an odd offset inside the message: [3, -1]
  const raw = new Uint8Array([0x08, 0x02, 0x10, 0x07, 0x42, 0x01, 0x78, 0x4a, 0x10, 3, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
  assert.deepEqual(Array.from(api.decodeTensor(raw, { origin: "t", name: "x", dtype: "int64" }).data), [3n, -1n]);
  assert.throws(() => api.decodeTensor(raw, { origin: "t", name: "x", dtype: "float32" }), /type INT64; the contract says 'x' is float32/);
  assert.throws(() => api.decodeTensor(raw.subarray(0, 20), { origin: "t", name: "x", dtype: "int64" }), /not a TensorProto/);
});
