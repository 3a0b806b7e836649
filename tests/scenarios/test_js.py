"""The JavaScript package (js/) in Node and in headless Chromium, and `rnnexport deploy web`.

Every architecture, a streaming artifact (its chains, and a 1,000-step stream one step per call
against the whole sequence) and an artifact with fp16/int8 variants are verified by the package in
Node (onnxruntime-node) and in Chromium (onnxruntime-web, WebAssembly, on a page `deploy web` wrote,
served from 127.0.0.1), and must agree with `rnnexport verify` in verdict and report shape; a
tampered artifact fails there as it does in Python.

Needs node, npm packages installed by `scripts/setup_js.sh` (`npm ci` in js/) and /usr/bin/chromium;
where they are missing the tests skip with the reason, unless RNNEXPORT_REQUIRE_JS is set (CI sets
it), where they fail.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rnnexport.artifact import verify_artifact
from rnnexport.builder.pipeline import build
from rnnexport.deploy.web import MARKER, deploy_web
from rnnexport.errors import ArtifactError

from ..helpers import ARCH_NAMES, REPO, run_cli

JS = REPO / "js"
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
STREAMING = "stream-many-to-many-masked"
VARIANTS = "variants-parallel-gru"
ARTIFACTS = [*ARCH_NAMES, STREAMING, VARIANTS]


def _missing_js() -> str | None:
    """Why the JavaScript tests cannot run here, or None."""
    if shutil.which("node") is None:
        return "node is not installed (scripts/setup_js.sh installs it)"
    for path in ("dist/node.js", "node_modules/onnxruntime-node", "node_modules/onnxruntime-web/dist"):
        if not (JS / path).exists():
            return f"js/{path} is missing: run scripts/setup_js.sh (npm ci in js/)"
    return None


def _require(reason: str | None) -> None:
    if reason is None:
        return
    if os.environ.get("RNNEXPORT_REQUIRE_JS"):
        pytest.fail(f"RNNEXPORT_REQUIRE_JS is set, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node_ready() -> None:
    _require(_missing_js())


@pytest.fixture(scope="module")
def chromium_ready(node_ready: None) -> None:
    _require(None if CHROMIUM.is_file() else f"{CHROMIUM} is missing (apt-get install chromium)")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every architecture, a streaming artifact, and one with every variant, built once."""
    out = tmp_path_factory.mktemp("js-artifacts")
    for name in ARCH_NAMES:
        build(name, out=out, device="cpu")
    build("many-to-many-masked", out=out / "s", device="cpu", streaming=True)
    (out / "s" / "many-to-many-masked").rename(out / STREAMING)
    build("parallel-gru", out=out / "v", device="cpu", precisions="fp32,fp16,int8", formats="onnx,ort")
    (out / "v" / "parallel-gru").rename(out / VARIANTS)
    return out


def _node(
    *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["node", *args],
        cwd=JS,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def _verify_in_node(folder: Path) -> tuple[int, dict[str, Any]]:
    done = _node("bin/rnnexport-verify.mjs", str(folder))
    assert "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "" or done.stderr.startswith("error: "), done.stderr
    return done.returncode, json.loads(done.stdout)


def _same_shape(js: dict[str, Any], python: dict[str, Any]) -> None:
    """The JavaScript report reads like `rnnexport verify --json`: same keys, same verdicts, same cases."""
    assert set(js) - {"runtime"} == set(python)
    assert js["passed"] == python["passed"]
    assert js["manifest_sha256"] == python["manifest_sha256"]
    [(_, mine)] = js["providers"].items()
    [(_, theirs)] = python["providers"].items()
    assert set(mine) == set(theirs)
    assert mine["status"] == theirs["status"]
    assert mine["rule"] == theirs["rule"]
    assert [c["case"] for c in mine["per_case"]] == [c["case"] for c in theirs["per_case"]]
    assert [c["passed"] for c in mine["per_case"]] == [c["passed"] for c in theirs["per_case"]]
    assert set(js["variants"]) == set(python["variants"])
    for name, variant in js["variants"].items():
        assert variant["status"] == python["variants"][name]["status"], name


@pytest.mark.parametrize("name", ARTIFACTS)
def test_node_verifies_like_python(artifacts: Path, node_ready: None, name: str) -> None:
    code, report = _verify_in_node(artifacts / name)
    assert code == 0, report
    assert report["passed"] is True
    assert report["runtime"]["package"] == "onnxruntime-node"
    [result] = report["providers"].values()
    assert result["status"] == "passed"
    assert 0 < result["max_error_ratio"] <= 1
    _same_shape(report, verify_artifact(artifacts / name, device="cpu").to_json())


def test_node_replays_chains_and_streams_1000_steps(artifacts: Path, node_ready: None) -> None:
    manifest = json.loads((artifacts / STREAMING / "manifest.json").read_text())
    assert manifest["streaming"]["chains"], "the streaming artifact should carry chains to replay"
    done = _node("--test", "test/node.test.mjs", env={"RNNEXPORT_JS_STREAMING": str(artifacts / STREAMING)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "# skipped 0" in done.stdout, done.stdout
    assert "# fail 0" in done.stdout, done.stdout
    streamed = json.loads(next(line[2:] for line in done.stdout.splitlines() if line.startswith('# {"case"')))
    assert streamed["steps"] >= 1000


def _tamper(folder: Path) -> None:
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))


def test_tampered_artifact_fails_in_node_as_in_python(
    artifacts: Path, node_ready: None, tmp_path: Path
) -> None:
    copy = tmp_path / "tampered"
    shutil.copytree(artifacts / "attention", copy)
    _tamper(copy)
    with pytest.raises(ArtifactError, match=r"'model\.onnx' was modified") as python:
        verify_artifact(copy, device="cpu")
    code, report = _verify_in_node(copy)
    assert code == python.value.exit_code == 1
    assert report["passed"] is False
    assert report["error"]["type"] == "ArtifactError"
    assert "'model.onnx' was modified: its sha256 does not match the manifest" in report["error"]["message"]


def test_unlisted_files_are_judged_in_node_as_in_python(
    artifacts: Path, node_ready: None, tmp_path: Path
) -> None:
    """A stray .DS_Store passes with a warning; an unlisted test tensor, or a listed model file that no
    variant entry accounts for, is refused: the same verdicts as rnnexport verify."""
    stray = tmp_path / "stray"
    shutil.copytree(artifacts / "many-to-many", stray)
    (stray / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    assert verify_artifact(stray, device="cpu").unlisted == [".DS_Store"]
    code, report = _verify_in_node(stray)
    assert code == 0
    assert report["passed"] is True
    assert report["unlisted"] == [".DS_Store"]

    tensor = tmp_path / "tensor"
    shutil.copytree(artifacts / "many-to-many", tensor)
    (tensor / "test_data_set_0" / "input_9.pb").write_bytes(b"")
    expected = "'test_data_set_0/input_9.pb' is a test-data tensor the manifest does not list"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        verify_artifact(tensor, device="cpu")
    code, report = _verify_in_node(tensor)
    assert code == 1
    assert expected in report["error"]["message"]

    extra = tmp_path / "extra"
    shutil.copytree(artifacts / "many-to-many", extra)
    shutil.copy(extra / "model.onnx", extra / "extra.onnx")
    manifest = json.loads((extra / "manifest.json").read_text())
    manifest["files"]["extra.onnx"] = hashlib.sha256((extra / "extra.onnx").read_bytes()).hexdigest()
    (extra / "manifest.json").write_text(json.dumps(manifest, indent=2))
    expected = "lists 'extra.onnx', which no shipped variant entry or other part of an rnnexport artifact"
    with pytest.raises(ArtifactError, match=re.escape(expected)):
        verify_artifact(extra, device="cpu")
    code, report = _verify_in_node(extra)
    assert code == 1
    assert expected in report["error"]["message"]


# -- the browser -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _served(folder: Path) -> Iterator[str]:
    """A static server for ``folder`` on 127.0.0.1 (a free port), stopped on exit."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.1):
                break
            if server.poll() is not None:
                raise RuntimeError("the static server did not start")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def _in_browser(urls: list[str], *extra: str) -> list[dict[str, Any]]:
    done = _node("test/browser.mjs", "--steps", "50", *extra, *urls, timeout=500)
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


@pytest.fixture(scope="module")
def deployed(artifacts: Path, chromium_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    site = tmp_path_factory.mktemp("site")
    for name in ARTIFACTS:
        deploy_web(artifacts / name, site / name)
    return site


def test_browser_verifies_every_artifact_like_python(artifacts: Path, deployed: Path) -> None:
    with _served(deployed) as base:
        pages = _in_browser([f"{base}/{name}/index.html" for name in ARTIFACTS], "--stream")
    for name, page in zip(ARTIFACTS, pages, strict=True):
        assert page["error"] is None, (name, page["error"], page["console"])
        assert page["external_requests"] == [], name
        report = page["report"]
        assert report["passed"] is True, (name, report)
        assert report["runtime"] == {
            "package": "onnxruntime-web",
            "version": report["runtime"]["version"],
            "provider": "wasm",
        }
        python = verify_artifact(artifacts / name, device="cpu").to_json()
        _same_shape(report, python)
        if name == STREAMING:
            assert page["stream"]["steps"] == 50
            assert page["stream"]["ms_per_step"] > 0
            assert "error" not in page["long_stream"], page["long_stream"]
            assert page["long_stream"]["steps"] >= 1000
        else:
            assert page["stream"] is None


def test_tampered_artifact_fails_in_the_browser(
    artifacts: Path, chromium_ready: None, tmp_path: Path
) -> None:
    site = tmp_path / "site"
    deploy_web(artifacts / "attention", site / "page")
    _tamper(site / "page" / "artifact")
    with _served(site) as base:
        [page] = _in_browser([f"{base}/page/index.html"])
    assert page["report"] is None
    assert page["error"]["type"] == "ArtifactError"
    assert "'model.onnx' was modified: its sha256 does not match the manifest" in page["error"]["message"]


# -- rnnexport deploy web ---------------------------------------------------------------------------


def test_deploy_web_writes_a_self_contained_folder(artifacts: Path, node_ready: None, tmp_path: Path) -> None:
    out = tmp_path / "web"
    result = run_cli("deploy", "web", str(artifacts / STREAMING), "--out", str(out))
    assert result.exit_code == 0, result.output
    assert (out / MARKER).is_file()
    listed = json.loads((artifacts / STREAMING / "manifest.json").read_text())["files"]
    copied = {
        p.relative_to(out / "artifact").as_posix() for p in (out / "artifact").rglob("*") if p.is_file()
    }
    assert copied == {*listed, "manifest.json"}
    assert {p.name for p in (out / "ort").iterdir()} == {
        "ort.wasm.min.mjs",
        "ort-wasm-simd-threaded.mjs",
        "ort-wasm-simd-threaded.wasm",
    }
    page = (out / "index.html").read_text() + (out / "app.js").read_text()
    assert "http://" not in page
    assert "https://" not in page
    again = run_cli("deploy", "web", str(artifacts / STREAMING), "--out", str(out))
    assert again.exit_code == 2
    assert "already exists" in again.output
    forced = run_cli("deploy", "web", str(artifacts / "attention"), "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert json.loads((out / MARKER).read_text())["arch"] == "attention"


def test_deploy_web_refuses_what_it_must_not_touch(artifacts: Path, node_ready: None, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    result = run_cli("deploy", "web", str(artifacts / "attention"), "--out", str(mine), "--force")
    assert result.exit_code == 2
    assert "Nothing was deleted" in result.output
    assert (mine / "notes.txt").read_text() == "keep me"
    tampered = tmp_path / "tampered"
    shutil.copytree(artifacts / "attention", tampered)
    _tamper(tampered)
    result = run_cli("deploy", "web", str(tampered), "--out", str(tmp_path / "web"))
    assert result.exit_code == 1
    assert "'model.onnx' was modified" in result.output
    assert not (tmp_path / "web").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".web")] == []


def test_deploy_web_without_the_js_package_says_how_to_build_it(artifacts: Path, tmp_path: Path) -> None:
    result = run_cli(
        "deploy", "web", str(artifacts / "attention"), "--out", str(tmp_path / "w"), "--js", str(tmp_path)
    )
    assert result.exit_code == 2
    assert "npm ci" in result.output
    assert "dist/browser.js" in result.output
    assert not (tmp_path / "w").exists()
