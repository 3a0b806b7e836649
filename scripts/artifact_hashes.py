"""Build a fixed set of artifacts and print the sha256 of every file they hold, one line a file.

A refactor that promises "no behaviour change" shows it by running this before and after the move
on the same machine and torch release and diffing the two listings:

    python scripts/artifact_hashes.py --out /tmp/before > before.txt
    # ... move code ...
    python scripts/artifact_hashes.py --out /tmp/after > after.txt
    diff before.txt after.txt && echo byte-identical

The set covers every code path that writes a file: the six built-in architectures with defaults,
the variant paths (fp16, int8, ORT format), streaming, the tolerance rule, both exporters, an older
opset, the OpenVINO runtime check, and the test zoo (user-style models through ``--model`` and the
API). Float bytes differ between machines and releases, so the listings compare only on one machine.

One exception: ONNX Runtime's ORT-format writer is not reproducible (two conversions of the same
``.onnx`` file in two processes differ in about a thousand bytes, and now and then in size), so a
``.ort`` file is listed by name only, and a manifest that lists one is hashed as its parsed JSON
(key order kept) with those files' digests and sizes masked.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from rnnexport.cli import app  # noqa: E402
from rnnexport.registry import list_architectures  # noqa: E402

# Each extra build: (folder name, build arguments beyond --out/--device).
EXTRA_BUILDS: tuple[tuple[str, list[str]], ...] = (
    ("variants", ["--arch", "attention", "--precision", "fp32,fp16,int8", "--format", "onnx,ort"]),
    ("streaming", ["--arch", "many-to-many", "--streaming"]),
    ("tolerance", ["--arch", "many-to-many-masked", "--rule", "tolerance", "--atol", "2e-5"]),
    ("torchscript", ["--arch", "parallel-gru", "--exporter", "torchscript", "--opset", "14"]),
    ("dynamo", ["--arch", "parallel-lstm-attention", "--exporter", "dynamo", "--opset", "18"]),
    ("openvino", ["--arch", "many-to-many", "--runtimes", "onnxruntime,openvino"]),
)


def _cli(args: list[str]) -> None:
    result = CliRunner().invoke(app, args)
    if result.exit_code != 0:
        raise SystemExit(f"rnnexport {' '.join(args)} failed ({result.exit_code}):\n{result.output}")


def build_all(out: Path) -> None:
    """Build every artifact of the set under ``out``."""
    _cli(["build", "--all", "--out", str(out / "archs"), "--device", "cpu", "--quiet"])
    for folder, args in EXTRA_BUILDS:
        _cli(["build", *args, "--out", str(out / folder), "--device", "cpu", "--quiet"])
    from tests.scenarios.test_zoo import ZOO, _build  # the zoo's own build code, so the two cannot drift

    work = out / "zoo-inputs"
    work.mkdir()
    for name, entry in ZOO.items():
        _build(entry, name, out / "zoo", work)


def _without_ort_bytes(data: bytes) -> bytes:
    """A manifest's JSON with the digest and size of every ORT-format file masked."""
    doc = json.loads(data)
    for name in [n for n in doc.get("files", {}) if n.endswith(".ort")]:
        doc["files"][name] = "(ort)"
    for variant in doc.get("variants", []):
        if variant.get("file", "").endswith(".ort"):
            variant["bytes"] = "(ort)"
    return json.dumps(doc).encode()


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".ort":
        return "ort-format (not reproducible: see above)"
    if path.name == "manifest.json" and b'.ort"' in data:
        data = _without_ort_bytes(data)
    return hashlib.sha256(data).hexdigest()


def listing(out: Path) -> list[str]:
    """``sha256  path`` for every file under ``out``, sorted by path."""
    return [f"{_digest(p)}  {p.relative_to(out)}" for p in sorted(out.rglob("*")) if p.is_file()]


def main() -> None:
    """Parse the arguments, build, and print the listing."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="an empty or missing folder")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        raise SystemExit(f"--out {args.out} is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    assert len(list_architectures()) == 6, "the set assumes the six built-in architectures"
    build_all(args.out)
    print("\n".join(listing(args.out)))


if __name__ == "__main__":
    main()
