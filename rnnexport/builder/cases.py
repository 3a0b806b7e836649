"""The build's verification cases: the user's (``--inputs``), the seeded shape sweep, and which
of them ship as test data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rnnexport.builder.options import SWEEP_SEED, TEST_DATA_SHAPES
from rnnexport.errors import InputError
from rnnexport.feeds import Case, Feeds, in_order, make_feeds, validate_feeds
from rnnexport.limits import DEFAULT_LIMITS, Limits
from rnnexport.safeio import load_npz, read_bounded
from rnnexport.spec import Contract

__all__ = ["read_user_cases", "shipped_cases", "sweep_inputs", "sweep_name"]


# File signatures of the formats --inputs reads: an .npz is a zip archive; safetensors starts with
# the little-endian length of its JSON header, whose first byte is '{'.
_ZIP_MAGIC = b"PK\x03\x04"


def _inputs_format(path: Path, head: bytes) -> str:
    """``npz`` or ``safetensors``, from the file's first bytes (never from its name alone)."""
    if head.startswith(_ZIP_MAGIC):
        return "npz"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    raise InputError(
        f"--inputs {path} is neither an .npz archive (np.savez) nor a safetensors file: its first bytes "
        f"are {head[:8]!r}. Save the inputs with np.savez(path, **{{name: array}}), or pass a folder of "
        "test_data_set_N/input_K.pb files."
    )


def _read_inputs_file(path: Path, contract: Contract, *, limits: Limits = DEFAULT_LIMITS) -> Feeds:
    """One case from an ``.npz`` (no pickles) or ``.safetensors`` file, keyed by input name.

    Bounded: the file is read once within a size limit, its format is told by its first bytes, and
    what it decompresses to is capped by the sizes its entries declare, before anything is
    decompressed.
    """
    fix = (
        "Expected an .npz (np.savez, no object arrays) or a .safetensors file with one tensor per model "
        f"input ({contract.input_names})."
    )
    data = read_bounded(path, limit=limits.inputs_file_bytes, what="--inputs", error=InputError, fix=fix)
    if _inputs_format(path, data[:9]) == "npz":
        return load_npz(data, origin=str(path), limit=limits.inputs_bytes, error=InputError)
    # safetensors is not compressed: its size on disk is what it holds.
    if len(data) > limits.inputs_bytes:
        raise InputError(
            f"--inputs {path} is {len(data):,} bytes; the limit is {limits.inputs_bytes:,} bytes of "
            "tensors. Pass fewer or smaller cases."
        )
    try:
        from safetensors.numpy import load

        return dict(load(data))
    except Exception as exc:  # SafetensorError and friends: the bytes are not a safetensors file
        raise InputError(f"Cannot read --inputs {path}: {exc}. {fix}") from None


def _read_inputs_folder(folder: Path, contract: Contract) -> list[tuple[str, Feeds]]:
    """Cases from ``test_data_set_N/input_K.pb`` folders (the ONNX test-data layout), inputs only."""
    from onnx import TensorProto, numpy_helper

    sets = sorted(
        (p for p in folder.iterdir() if p.name.startswith("test_data_set_") and p.is_dir()),
        key=lambda p: p.name,
    )
    if not sets:
        raise InputError(
            f"--inputs {folder} is a folder without test_data_set_N/ folders. Expected the ONNX test-data "
            "layout (test_data_set_0/input_0.pb, ...), or pass an .npz / .safetensors file instead."
        )
    cases = []
    for directory in sets:
        feeds: Feeds = {}
        for k, spec in enumerate(contract.inputs):
            tensor_path = directory / f"input_{k}.pb"
            tensor = TensorProto()
            data = read_bounded(
                tensor_path,
                limit=DEFAULT_LIMITS.inputs_bytes,
                what="--inputs",
                error=InputError,
                fix=f"Expected a TensorProto for input '{spec.name}' ({spec.shape_str()}).",
            )
            try:
                tensor.ParseFromString(data)
                if tensor.data_location == TensorProto.EXTERNAL:
                    raise ValueError("it refers to external data, which --inputs does not follow")
                feeds[tensor.name or spec.name] = numpy_helper.to_array(tensor).copy()  # writable
            except Exception as exc:  # OSError, DecodeError, ValueError: unreadable tensor file
                raise InputError(
                    f"Cannot read --inputs {tensor_path}: {exc}. Expected a TensorProto for input "
                    f"'{spec.name}' ({spec.shape_str()})."
                ) from exc
        cases.append((f"{folder.name}/{directory.name}", feeds))
    return cases


def read_user_cases(paths: Sequence[Path], contract: Contract) -> list[tuple[str, Feeds]]:
    """Verification inputs the user supplied: one case per ``.npz`` / ``.safetensors`` file, and one per
    ``test_data_set_N`` folder under a folder. Each is validated against ``contract``."""
    cases: list[tuple[str, Feeds]] = []
    for path in paths:
        if path.is_dir():
            found = _read_inputs_folder(path, contract)
        else:  # the bounded reader refuses a missing path, a link, a pipe or a device, with the reason
            found = [(path.name, _read_inputs_file(path, contract))]
        for name, feeds in found:
            validate_feeds(contract, feeds, origin=f"--inputs {name}")
            cases.append((name, in_order(contract.input_names, feeds)))
    return cases


def sweep_name(batch: int, seq: int) -> str:
    """The name of the sweep case at ``batch`` x ``seq``."""
    return f"sweep:b{batch}s{seq}"


def sweep_inputs(contract: Contract, shapes: Sequence[tuple[int, int]]) -> list[tuple[str, Feeds]]:
    """The build-time shape sweep's inputs at ``shapes`` (batch, seq), seeded, with their names."""
    rng = np.random.default_rng(SWEEP_SEED)
    return [
        (sweep_name(batch, seq), make_feeds(contract, batch=batch, seq=seq, rng=rng)) for batch, seq in shapes
    ]


def shipped_cases(cases: Sequence[Case], chains: Sequence[Sequence[str]]) -> list[Case]:
    """The cases that ship as test data: the user's, a few sweep shapes, and every chained call."""
    names = [sweep_name(batch, seq) for batch, seq in TEST_DATA_SHAPES]
    shipped = [c for c in cases if c.name.startswith("user:")]
    shipped += sorted((c for c in cases if c.name in names), key=lambda c: names.index(c.name))
    shipped += [c for c in cases if any(c.name in chain for chain in chains)]
    return shipped
