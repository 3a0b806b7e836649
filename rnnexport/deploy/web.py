"""``rnnexport deploy web``: a static folder that verifies and streams an artifact in a browser.

The folder holds the artifact (its manifest and the files the manifest lists, read within bounds and
checked against their sha256 on the way), the JavaScript package built for the browser
(``js/dist``), ONNX Runtime Web's WebAssembly build (from ``js/node_modules/onnxruntime-web``) and a
page (``js/web``) that verifies the artifact on the device that opens it, shows the report as a
table and runs a streaming demo loop with the time per step. Nothing is fetched from elsewhere at run
time, so any static server will do (``python -m http.server`` in the folder).

The folder is assembled beside ``--out`` and renamed into place, so a failure leaves nothing behind;
``--force`` replaces only a folder this command wrote (it carries :data:`MARKER`).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rnnexport.artifact.files import read_listed
from rnnexport.artifact.manifest import EXTERNAL_DATA, MANIFEST
from rnnexport.artifact.untrusted import read_manifest
from rnnexport.deploy import publish_on_success, staging_beside
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.limits import DEFAULT_LIMITS
from rnnexport.safeio import check_path, read_bounded, write_file, writing

__all__ = ["MARKER", "ORT_WEB_FILES", "WebDeployment", "deploy_web", "find_js_package"]

# ONNX Runtime Web's WebAssembly-only build: the module the page imports, the loader it imports from
# ``wasmPaths`` and the binary (single-threaded use; the threaded binary also runs on one thread).
ORT_WEB_FILES = ("ort.wasm.min.mjs", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")
# The package modules a browser loads (node.js imports onnxruntime-node and is left out).
_BROWSER_MODULES = (
    "browser.js",
    "compare.js",
    "errors.js",
    "index.js",
    "manifest.js",
    "proto.js",
    "runtime.js",
    "sha256.js",
    "source.js",
    "stream.js",
    "verify.js",
)
_PAGE = ("index.html", "app.js")
MARKER = "rnnexport-web.json"
_JS_FIX = (
    "Build the JavaScript package first: 'cd js && ONNXRUNTIME_NODE_INSTALL=skip npm ci' in the rnnexport "
    "repository (it compiles js/dist and installs onnxruntime-web), or pass --js with the path of that "
    "js/ folder."
)


@dataclass(frozen=True)
class WebDeployment:
    """What :func:`deploy_web` wrote."""

    folder: Path
    arch: str
    streaming: bool
    files: int
    bytes: int
    ort_web_version: str


def find_js_package(js: Path | None = None) -> Path:
    """The ``js/`` folder of rnnexport's JavaScript package (``js`` or the one beside this source tree),
    checked to hold the built modules, the page and ONNX Runtime Web."""
    folder = js if js is not None else Path(__file__).resolve().parents[2] / "js"
    check_path(folder, what="--js")
    needed = [
        *(folder / "dist" / m for m in _BROWSER_MODULES),
        *(folder / "web" / p for p in _PAGE),
        *(folder / "node_modules" / "onnxruntime-web" / "dist" / f for f in ORT_WEB_FILES),
    ]
    missing = [str(p.relative_to(folder)) for p in needed if not p.is_file()]
    if missing:
        raise UsageError(
            f"{folder} does not hold the JavaScript package built for the browser: "
            f"{', '.join(missing[:4])}{' and more' if len(missing) > 4 else ''} missing. {_JS_FIX}"
        )
    return folder


def _ort_web_version(js: Path) -> str:
    data = read_bounded(
        js / "node_modules" / "onnxruntime-web" / "package.json",
        limit=1 << 20,
        what="onnxruntime-web's package.json",
    )
    version = json.loads(data).get("version")
    return str(version) if isinstance(version, str) else "unknown"


def _prepare(out: Path, *, force: bool) -> None:
    """Refuse an ``out`` that exists, unless ``force`` and it is a folder this command wrote."""
    check_path(out, what="--out")
    if out.is_symlink():
        raise UsageError(f"{out} is a symbolic link; refusing to write through it. Choose another --out.")
    if not os.path.lexists(out):
        return
    if not force:
        raise UsageError(
            f"{out} already exists. rnnexport never overwrites silently: pass --force to replace a folder "
            "'rnnexport deploy web' wrote, or choose another --out."
        )
    if not (out.is_dir() and (out / MARKER).is_file()):
        raise UsageError(
            f"--force replaces only a folder 'rnnexport deploy web' wrote (it holds {MARKER}), and {out} is "
            "not one. Nothing was deleted. Move it away yourself, or choose another --out."
        )


def deploy_web(
    artifact: Path | str, out: Path | str, *, js: Path | None = None, force: bool = False
) -> WebDeployment:
    """Write the static folder ``out`` that verifies and streams ``artifact`` in a browser (see the module).

    The artifact's files are read once within the bounds ``verify`` applies, checked against the
    manifest (sha256, no extra, missing or linked files) and written from those same bytes.
    """
    artifact, out = Path(artifact), Path(out)
    check_path(artifact, what="The artifact folder")
    if not artifact.is_dir():
        raise UsageError(
            f"{artifact} is not a folder. Pass the artifact folder that 'rnnexport build' wrote."
        )
    package = find_js_package(js)
    _prepare(out, force=force)
    manifest, manifest_bytes = read_manifest(artifact, DEFAULT_LIMITS)
    if EXTERNAL_DATA in manifest.files:
        raise UsageError(
            f"{artifact} keeps its weights in {EXTERNAL_DATA} (ONNX external data), which the JavaScript "
            "package does not load yet; a browser could not hold such a model anyway. Deploy a model whose "
            "weights fit in model.onnx."
        )
    contents, problems, _unlisted = read_listed(artifact, manifest.files, DEFAULT_LIMITS)
    if problems:
        raise ArtifactError(
            f"The artifact in {artifact} does not match its manifest: {'; '.join(problems)}. "
            "Rebuild the artifact, or copy it again from the build machine."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    version = _ort_web_version(package)
    with writing(out.parent):
        staging = staging_beside(out)
    # writing() outside: an OSError while publishing is reported like one while writing.
    with writing(staging), publish_on_success(staging, out, replace=True):
        staging.chmod(0o755)
        copied = _write_folder(staging, package, manifest_bytes, contents)
        record = {
            "arch": manifest.arch,
            "onnxruntime_web": version,
            "streaming": manifest.streaming is not None,
        }
        write_file(staging / MARKER, (json.dumps(record, indent=2) + "\n").encode())
    return WebDeployment(
        out, manifest.arch, manifest.streaming is not None, len(contents) + 1, copied, version
    )


def _write_folder(staging: Path, package: Path, manifest_bytes: bytes, contents: dict[str, bytes]) -> int:
    """Write the page, the package, ONNX Runtime Web and the artifact into ``staging``; return the bytes."""
    total = 0
    for name in _PAGE:
        shutil.copyfile(package / "web" / name, staging / name)
    (staging / "rnnexport").mkdir()
    for name in _BROWSER_MODULES:
        shutil.copyfile(package / "dist" / name, staging / "rnnexport" / name)
    (staging / "ort").mkdir()
    for name in ORT_WEB_FILES:
        shutil.copyfile(package / "node_modules" / "onnxruntime-web" / "dist" / name, staging / "ort" / name)
        total += (staging / "ort" / name).stat().st_size
    target = staging / "artifact"
    target.mkdir()
    write_file(target / MANIFEST, manifest_bytes)
    for name, data in sorted(contents.items()):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        write_file(target / name, data)
        total += len(data)
    return total
