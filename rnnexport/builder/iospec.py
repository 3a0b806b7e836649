"""The I/O description of a user model (``io.json``), parsed and validated strictly.

The format::

    {
      "inputs": [
        {"name": "tokens", "dtype": "int64", "shape": ["batch", "seq"], "range": [0, 1000]},
        {"name": "lengths", "dtype": "int64", "shape": ["batch"], "role": "lengths"}
      ],
      "outputs": [{"name": "logits", "shape": ["batch", "seq", 9]}]
    }

Dims are positive integers or names; every name is a dynamic axis (``batch`` and ``seq`` are the
ones verification sweeps; an output may name its own, such as ``steps`` for ``max(lengths)``).
Input dtypes: ``float32``, ``int64``, and ``int32`` for an input with the lengths role. ``range`` is
``[low, high)``: the values an integer input holds at its valid steps, generated or given (``--inputs``,
shipped test data); steps past a row's length (the lengths input) are padding and not bound by it.
Output dtype defaults to ``float32``. Nothing here imports torch.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rnnexport.errors import UsageError
from rnnexport.feeds import OTHER_AXIS_SIZE
from rnnexport.limits import DEFAULT_LIMITS, INT64_RANGE
from rnnexport.safeio import loads_strict, read_bounded
from rnnexport.spec import BATCH, LENGTHS, ROLES, SEQ, Contract, Dim, TensorSpec

__all__ = ["check_signature", "parse_io", "read_io"]

# An I/O description lists a few tensors: a megabyte is far more than any needs.
IO_FILE_BYTES = 1 << 20
_INPUT_DTYPES = ("float32", "int64", "int32")
_OUTPUT_DTYPES = ("float32", "int64", "int32")
_KEYS = {
    "inputs": ("name", "dtype", "shape", "range", "role", "doc"),
    "outputs": ("name", "dtype", "shape", "doc"),
}
_DIM_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_EXAMPLE = (
    '{"inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", "seq", 10]}], '
    '"outputs": [{"name": "y", "shape": ["batch", "seq", 5]}]}'
)


def read_io(source: Mapping[str, Any] | str | Path) -> tuple[Contract, str]:
    """Parse an I/O description given as a mapping or as the path of a JSON file.

    Returns the contract and a short description of where it came from (for messages).
    Raises :class:`UsageError` on anything malformed, naming the entry and the fix.
    """
    if isinstance(source, Mapping):
        return parse_io(source, origin="the io description"), "the io description"
    path = Path(source)
    fix = f"Expected a JSON file such as {_EXAMPLE}."
    # A small regular file, strict JSON (no duplicate keys, NaN or deep nesting), as for --config.
    raw = read_bounded(path, limit=IO_FILE_BYTES, what="--io", fix=fix)
    data = loads_strict(raw, what=f"--io {path}", fix=fix)
    return parse_io(data, origin=f"--io {path.name}"), f"--io {path.name}"


def _fail(origin: str, where: str, problem: str, fix: str) -> UsageError:
    return UsageError(f"Invalid I/O description ({origin}): {where} {problem}. {fix}")


def _dims(raw: Any, origin: str, where: str) -> tuple[Dim, ...]:
    if not isinstance(raw, list) or not raw:
        raise _fail(
            origin,
            where,
            f"has shape {raw!r}",
            'Give "shape" as a non-empty list of positive integers and axis names, e.g. '
            '["batch", "seq", 10].',
        )
    dims: list[Dim] = []
    for axis, d in enumerate(raw):
        if isinstance(d, bool) or not (
            (isinstance(d, int) and d >= 1) or (isinstance(d, str) and _DIM_NAME.match(d))
        ):
            raise _fail(
                origin,
                where,
                f"has dim {d!r} on axis {axis}, which is neither a positive integer nor an axis name",
                'Use an integer size (10) or a name ("batch", "seq", or any identifier for another '
                "dynamic axis).",
            )
        if isinstance(d, int) and d > DEFAULT_LIMITS.io_dim:
            raise _fail(
                origin,
                where,
                f"has size {d:,} on axis {axis}, over the limit of {DEFAULT_LIMITS.io_dim:,} (Limits.io_dim)",
                "Give the real size of that axis (no tensor that large fits in memory).",
            )
        dims.append(d)
    if len(dims) > DEFAULT_LIMITS.io_rank:
        raise _fail(
            origin,
            where,
            f"has {len(dims)} axes, over the limit of {DEFAULT_LIMITS.io_rank} (Limits.io_rank)",
            "Give one entry per axis of the tensor.",
        )
    return tuple(dims)


# A batch or seq axis named again in one shape (["batch", "seq", "seq"]) counts at this size.
_REPEATED_AXIS_SIZE = 1024


def _step_elements(shape: tuple[Dim, ...]) -> int:
    """Elements one generated input holds per batch row and time step: fixed sizes, other named axes
    at their generated size, a second batch or seq axis at the longest sequence swept."""
    count, seen = 1, set()
    for d in shape:
        if isinstance(d, int):
            count *= d
        elif d in (BATCH, SEQ):
            count *= _REPEATED_AXIS_SIZE if d in seen else 1
            seen.add(d)
        else:
            count *= OTHER_AXIS_SIZE
    return count


def _check_input_sizes(inputs: tuple[TensorSpec, ...], origin: str) -> None:
    """Refuse, before anything is generated, inputs too large to generate for the shape sweep."""
    sizes = {t.name: _step_elements(t.shape) for t in inputs}
    limit = DEFAULT_LIMITS.io_step_elements
    if sum(sizes.values()) > limit:
        largest = max(sizes, key=lambda n: sizes[n])
        raise _fail(
            origin,
            "the inputs",
            f"hold {sum(sizes.values()):,} elements per batch row and time step ('{largest}' "
            f"{sizes[largest]:,}), over the limit of {limit:,} (Limits.io_step_elements; the shape sweep "
            "generates up to 16 rows of 257 steps)",
            "Check the fixed sizes in the inputs' shapes: they are the sizes of one step of one row, "
            "such as the feature count.",
        )


def _tensor(raw: Any, kind: str, index: int, origin: str) -> TensorSpec:
    where = f"{kind}[{index}]"
    if not isinstance(raw, Mapping):
        raise _fail(
            origin, where, f"is a JSON {type(raw).__name__}", "Each entry is an object with name, shape."
        )
    unknown = sorted(set(raw) - set(_KEYS[kind]))
    if unknown:
        raise _fail(
            origin,
            where,
            f"has unknown key(s) {', '.join(map(repr, unknown))}",
            f"The valid keys are {', '.join(_KEYS[kind])}.",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise _fail(origin, where, f"has name {name!r}", 'Give "name" as a non-empty string.')
    where = f"{kind[:-1]} '{name}'"
    dtypes = _INPUT_DTYPES if kind == "inputs" else _OUTPUT_DTYPES
    if kind == "inputs" and "dtype" not in raw:
        raise _fail(origin, where, 'has no "dtype"', f"Give one of {', '.join(dtypes)}.")
    if "shape" not in raw:
        raise _fail(origin, where, 'has no "shape"', 'Give "shape" as a list, e.g. ["batch", "seq", 10].')
    dtype = raw.get("dtype", "float32")
    if dtype not in dtypes:
        raise _fail(origin, where, f"has unknown dtype {dtype!r}", f"Use one of {', '.join(dtypes)}.")
    shape = _dims(raw["shape"], origin, where)
    role = raw.get("role")
    if role is not None and role not in ROLES:
        raise _fail(origin, where, f"has unknown role {role!r}", f"The roles are: {', '.join(ROLES)}.")
    if role == LENGTHS and (dtype not in ("int64", "int32") or shape != (BATCH,)):
        raise _fail(
            origin,
            where,
            f"has the lengths role with {dtype}{list(shape)}",
            'A lengths input is int64 (or int32) with shape ["batch"]: one valid-step count per row.',
        )
    if dtype == "int32" and role != LENGTHS:
        raise _fail(
            origin, where, "is int32 without the lengths role", 'Use int64, or add "role": "lengths".'
        )
    bounds = raw.get("range")
    if bounds is not None:
        valid = (
            isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, int) and not isinstance(b, bool) for b in bounds)
            and bounds[0] < bounds[1]
            and INT64_RANGE[0] <= bounds[0]
            and bounds[1] <= INT64_RANGE[1]
        )
        if not valid or dtype == "float32" or role is not None:
            raise _fail(
                origin,
                where,
                f"has range {bounds!r}",
                'A "range" is [low, high) with integers low < high, both within int64 '
                f"[{INT64_RANGE[0]}, {INT64_RANGE[1]}], on an integer input without a role: the values it "
                "holds at valid steps (for an Embedding(1000, ...) use [0, 1000]; padding past a row's "
                "length is not bound by it).",
            )
    return TensorSpec(
        name=name,
        dtype=dtype,
        shape=shape,
        doc=str(raw.get("doc", "")),
        role=role,
        range=None if bounds is None else (bounds[0], bounds[1]),
    )


def parse_io(data: Any, *, origin: str) -> Contract:
    """Validate a parsed ``io.json`` document and return its :class:`Contract` (see the module docstring)."""
    if not isinstance(data, Mapping):
        raise _fail(
            origin, "the document", f"is a JSON {type(data).__name__}", f"Expected an object: {_EXAMPLE}."
        )
    unknown = sorted(set(data) - {"inputs", "outputs"})
    if unknown:
        raise _fail(
            origin,
            "the document",
            f"has unknown key(s) {', '.join(map(repr, unknown))}",
            'Only "inputs" and "outputs".',
        )
    sections: dict[str, tuple[TensorSpec, ...]] = {}
    for kind in ("inputs", "outputs"):
        raw = data.get(kind)
        if not isinstance(raw, list) or not raw:
            raise _fail(
                origin, f'"{kind}"', f"is {raw!r}", f'Give "{kind}" as a non-empty list. Example: {_EXAMPLE}.'
            )
        sections[kind] = tuple(_tensor(t, kind, i, origin) for i, t in enumerate(raw))
    _check_input_sizes(sections["inputs"], origin)
    names = [t.name for t in sections["inputs"] + sections["outputs"]]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _fail(
            origin,
            "the names",
            f"{repeated} appear more than once",
            "Every input and output needs its own name.",
        )
    lengths = [t.name for t in sections["inputs"] if t.role == LENGTHS]
    if len(lengths) > 1:
        raise _fail(origin, "the inputs", f"{lengths} all have the lengths role", "Give it to one input.")
    if lengths and not any(SEQ in t.shape for t in sections["inputs"]):
        raise _fail(
            origin,
            f"input '{lengths[0]}'",
            'has the lengths role, but no input has a "seq" axis for it to count along',
            'Name the sequence axis "seq" in the padded inputs\' shapes.',
        )
    return Contract(sections["inputs"], sections["outputs"])


def check_signature(forward: Callable[..., Any], contract: Contract, *, what: str, origin: str) -> None:
    """Raise :class:`UsageError` unless ``forward`` takes the contract's inputs, by name, in order.

    ``forward`` is the bound method; parameters after the declared inputs must have defaults. A
    ``*args`` parameter accepts any names.
    """
    try:
        parameters = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in parameters):
        return
    positional = [
        p
        for p in parameters
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    ]
    declared = contract.input_names
    names = [p.name for p in positional]
    required_after = [p.name for p in positional[len(declared) :] if p.default is inspect.Parameter.empty]
    if names[: len(declared)] != declared or required_after:
        raise UsageError(
            f"The inputs in {origin} do not match {what}.forward: it takes ({', '.join(names)}), the I/O "
            f"description declares inputs {declared}. rnnexport calls forward with the declared inputs "
            "positionally, in order: name them after forward's parameters, in the same order"
            + (f" (and declare {required_after}, which have no default)" if required_after else "")
            + "."
        )
