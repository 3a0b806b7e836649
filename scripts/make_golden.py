#!/usr/bin/env python3
"""The one writer of ``golden/``: seeded weights, inputs and PyTorch-eager reference outputs.

    python scripts/make_golden.py --arch attention            # write a missing folder
    python scripts/make_golden.py --all --overwrite           # rewrite every folder
    python scripts/make_golden.py --all --check               # regenerate in memory, compare, write nothing

It refuses to replace an existing folder without ``--overwrite``. Everything is seeded, so a rerun
reproduces the weights and inputs byte for byte on any machine. The reference outputs are float
computations whose last bits depend on the CPU's kernels (AVX2 and AVX-512 builds of the same torch
sum in different orders), so ``--check`` compares them within ``OUTPUT_TOLERANCE``, which
``meta.json`` records, and never as bytes. The expected outputs come from the method each
architecture names as its reference (``ArchSpec.reference``): ``forward``, or an independent
formulation of the same function.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
from safetensors.numpy import load_file, save_file

from rnnexport.builder.eager import TorchRunner, build_model, state_dict_to_numpy
from rnnexport.builder.golden import GOLDEN_FORMAT, golden_root
from rnnexport.errors import RnnExportError
from rnnexport.feeds import make_feeds
from rnnexport.registry import get_arch, list_architectures
from rnnexport.spec import ArchConfig, ArchSpec

# (batch, seq) of the committed cases: batch 1 with seq 1, a short odd shape, a sequence above 100,
# and a wider batch. Masked architectures get lengths covering 1 and the full length (see make_feeds).
CASES: tuple[tuple[int, int], ...] = ((1, 1), (3, 7), (2, 130), (5, 20))
MAX_FOLDER_BYTES = 200_000
BASE_SEED = 20250130
# How far a rerun's reference outputs may drift from the committed ones: last-bit differences between
# CPUs measured 1.5e-8 to 9e-8 (float32, outputs of order 1); a changed model moves them far more.
OUTPUT_TOLERANCE = {"atol": 1e-6, "rtol": 0.0}


def arch_seed(name: str) -> int:
    """A seed per architecture that does not depend on registration order."""
    return BASE_SEED + zlib.crc32(name.encode()) % 10_000


def _json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


def write_golden(spec: ArchSpec, directory: Path) -> None:
    """Write ``spec``'s golden files into the (empty, existing) ``directory``."""
    config = ArchConfig()
    seed = arch_seed(spec.name)
    model = build_model(spec, config, seed=seed)
    runner = TorchRunner(spec, model)
    contract = spec.contract(config)
    rng = np.random.default_rng(seed)

    weights = state_dict_to_numpy(model)
    save_file(weights, str(directory / "weights.safetensors"))
    cases = []
    for k, (batch, seq) in enumerate(CASES):
        inputs = make_feeds(contract, batch=batch, seq=seq, rng=rng)
        outputs = runner.infer(inputs)
        tensors = {f"input.{n}": a for n, a in inputs.items()} | {
            f"output.{n}": a for n, a in outputs.items()
        }
        file = f"case_{k}.safetensors"
        save_file(tensors, str(directory / file))
        entry: dict[str, Any] = {"file": file, "batch": batch, "seq": seq}
        lengths = contract.lengths_input
        if lengths is not None:
            entry["lengths"] = inputs[lengths.name].tolist()
        cases.append(entry)

    meta = {
        "format": GOLDEN_FORMAT,
        "arch": spec.name,
        "seed": seed,
        "config": config.to_dict(),
        "contract": contract.to_json(),
        "reference": spec.reference + (" (pack_padded_sequence)" if spec.masked else ""),
        "weights": {
            "file": "weights.safetensors",
            "sha256": hashlib.sha256((directory / "weights.safetensors").read_bytes()).hexdigest(),
            "init": f"PyTorch default initialisation after torch.manual_seed({seed})",
        },
        "cases": cases,
        "output_tolerance": OUTPUT_TOLERANCE,
        "made_by": f"python scripts/make_golden.py --arch {spec.name}",
        "how": "inputs: numpy default_rng(seed), standard normal floats; outputs: eager PyTorch on CPU, "
        "float32, one thread",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "safetensors": safetensors.__version__,
        },
    }
    (directory / "meta.json").write_text(_json(meta), encoding="utf-8")
    size = sum(f.stat().st_size for f in directory.iterdir())
    if size > MAX_FOLDER_BYTES:
        raise SystemExit(f"golden data for {spec.name} is {size} bytes, over the {MAX_FOLDER_BYTES} cap")


def _tensor_differences(name: str, fresh: Path, committed: Path) -> list[str]:
    """Weights and inputs must match bit for bit; outputs (``output.*``) within ``OUTPUT_TOLERANCE``."""
    a, b = load_file(str(fresh)), load_file(str(committed))
    if sorted(a) != sorted(b):
        return [f"{name}: tensors {sorted(a)} instead of {sorted(b)}"]
    problems = []
    for key in sorted(a):
        x, y = a[key], b[key]
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{name}[{key}]: {x.dtype}{list(x.shape)} instead of {y.dtype}{list(y.shape)}")
        elif not key.startswith("output."):
            if x.tobytes() != y.tobytes():
                problems.append(f"{name}[{key}] differs (weights and inputs must match exactly)")
        else:
            error = float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)), initial=0.0))
            allowed = OUTPUT_TOLERANCE["atol"] + OUTPUT_TOLERANCE["rtol"] * float(
                np.max(np.abs(y), initial=0)
            )
            if not error <= allowed:  # NaN fails too
                problems.append(f"{name}[{key}] differs by {error:.3g} (allowed {allowed:.3g})")
    return problems


def differences(fresh: Path, committed: Path) -> list[str]:
    """How two golden folders differ (meta.json's library versions aside); empty when they agree."""
    problems = []
    names = sorted({p.name for p in fresh.iterdir()} | {p.name for p in committed.iterdir()})
    for name in names:
        a, b = fresh / name, committed / name
        if not a.exists() or not b.exists():
            problems.append(f"{name}: only in {'the fresh' if a.exists() else 'the committed'} folder")
        elif name == "meta.json":
            ma, mb = json.loads(a.read_text()), json.loads(b.read_text())
            ma.pop("versions"), mb.pop("versions", None)
            if ma != mb:
                problems.append("meta.json differs")
        elif name.endswith(".safetensors"):
            problems += _tensor_differences(name, a, b)
        elif a.read_bytes() != b.read_bytes():
            problems.append(f"{name} differs")
    return problems


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, then write or check each requested architecture's folder."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--arch", action="append", help="architecture name (repeatable)")
    which.add_argument("--all", action="store_true", help="every registered architecture")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--overwrite", action="store_true", help="replace existing folders")
    mode.add_argument("--check", action="store_true", help="regenerate in a temporary folder and compare")
    parser.add_argument(
        "--root", type=Path, default=None, help="golden root (default: the checkout's golden/)"
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # one summation order on this machine, whatever its core count
    root: Path = args.root or golden_root()
    try:
        specs = list_architectures() if args.all else [get_arch(name) for name in args.arch]
    except RnnExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    status = 0
    for spec in specs:
        target = root / spec.name
        if target.exists() and not (args.overwrite or args.check):
            print(
                f"error: {target} already exists; pass --overwrite to replace it, or --check to compare",
                file=sys.stderr,
            )
            status = 1
            continue
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{spec.name}-", dir=root))
        try:
            write_golden(spec, staging)
            if args.check:
                problems = differences(staging, target) if target.exists() else ["folder missing"]
                verdict = "reproduced (inputs exact, outputs within tolerance)"
                print(f"{spec.name}: {verdict if not problems else '; '.join(problems)}")
                status = status or (1 if problems else 0)
                continue
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            print(f"{spec.name}: wrote {target} ({sum(f.stat().st_size for f in target.iterdir())} bytes)")
        finally:
            if staging.exists():
                shutil.rmtree(staging)
    return status


if __name__ == "__main__":
    sys.exit(main())
