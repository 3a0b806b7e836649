"""Reading user checkpoints safely and fitting them to the model they load into, strictly.

The parts, each in its own module:

- :mod:`rnnexport.builder.checkpoint_files`: the file formats. safetensors (preferred: plain
  tensors, no code) is described from its header alone; PyTorch ``state_dict`` files, which are
  pickles, are read with ``torch.load(weights_only=True)`` and nothing else.
- :mod:`rnnexport.builder.checkpoint_keys`: which entry of a training checkpoint holds the state
  dict, and which key prefix (``module.``, ``model.``, ...) to strip, against the key names a
  model expects (a :class:`KeyTarget`).
- :mod:`rnnexport.builder.checkpoint`: :func:`read_checkpoint` finds the state dict and describes
  its tensors (a :class:`Checkpoint`) before any big data is read; :meth:`Checkpoint.load` reads,
  checks and casts it.
- this module: fitting a checkpoint to a registered architecture (:func:`fit_to_arch`,
  :func:`check_state_dict`): every missing, unexpected or wrongly shaped key named, and an RNN
  with more layers, directions or projections than the architecture's refused as such.

The names above are importable from here too.

Every key from a file is quoted with ``repr()`` in messages: a key may hold control characters,
and nothing raw from a file may reach the terminal.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping

import torch

from rnnexport.builder.checkpoint import Checkpoint, load_state_dict, read_checkpoint
from rnnexport.builder.checkpoint_files import MAX_SAFETENSORS_HEADER, TensorInfo, first_items, quoted
from rnnexport.builder.checkpoint_keys import KeyTarget, architectures_with_keys
from rnnexport.builder.eager import build_model
from rnnexport.errors import WeightsError
from rnnexport.spec import ArchConfig, ArchSpec

__all__ = [
    "MAX_SAFETENSORS_HEADER",
    "Checkpoint",
    "KeyTarget",
    "TensorInfo",
    "check_state_dict",
    "fit_to_arch",
    "key_mismatches",
    "load_state_dict",
    "read_checkpoint",
]

_RNN_KEY = re.compile(
    r"^(?P<module>.+)\.(?:weight|bias)_(?P<kind>ih|hh|hr)_l(?P<layer>\d+)(?P<rev>_reverse)?$"
)


def fit_to_arch(
    checkpoint: Checkpoint, spec: ArchSpec, config: ArchConfig, *, ignore_unexpected: bool = False
) -> Checkpoint:
    """``checkpoint`` fitted to ``spec`` at ``config`` (see :meth:`Checkpoint.fitted`) and checked
    by :func:`check_state_dict`; its data is not read yet."""
    with torch.device("meta"):  # dtypes only: no storage, whatever the sizes
        template = spec.build_model(config).state_dict()
    fitted = checkpoint.fitted(template, ignore_unexpected=ignore_unexpected)
    check_state_dict(
        spec,
        config,
        fitted.shapes,
        origin=fitted.origin,
        advice=functools.partial(fitted.advice, ignore_unexpected=ignore_unexpected),
    )
    return fitted


def key_mismatches(
    expected: Mapping[str, tuple[int, ...]], got: Mapping[str, tuple[int, ...]], *, limit: int | None = None
) -> tuple[list[str], list[str], list[str]]:
    """How a checkpoint's key shapes depart from a model's: ``(parts, missing, unexpected)``.

    ``parts`` is one ``"missing (N): 'key' [shape]; ..."`` line per kind (missing, unexpected,
    wrong shape), keys quoted with ``repr`` so nothing from the file reaches a terminal raw, at most
    ``limit`` keys each; empty when every key fits.
    """
    missing = [f"{k!r} {list(s)}" for k, s in expected.items() if k not in got]
    unexpected = [f"{k!r} {list(s)}" for k, s in got.items() if k not in expected]
    wrong = [
        f"{k!r}: expected {list(expected[k])}, got {list(s)}"
        for k, s in got.items()
        if k in expected and s != expected[k]
    ]
    parts = [
        f"{label} ({len(items)}): "
        + "; ".join(items[:limit])
        + (f"; and {len(items) - limit} more" if limit is not None and len(items) > limit else "")
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if items
    ]
    return parts, missing, unexpected


def check_state_dict(
    spec: ArchSpec,
    config: ArchConfig,
    state: Mapping[str, torch.Tensor] | Mapping[str, tuple[int, ...]],
    *,
    origin: str,
    advice: Callable[[], str] | None = None,
) -> None:
    """Raise :class:`WeightsError` listing every missing, unexpected and wrongly shaped key.

    ``state`` maps names to tensors or to shapes (so a safetensors header is checked before any
    data is read). An RNN with more layers, or more directions, than the architecture's gets a
    message saying exactly that: no size option can fix it. ``advice``, called on a mismatch (see
    :meth:`Checkpoint.advice`), names the options that would make the keys fit, when some would.
    """
    model = build_model(spec, config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    _check_rnn_structure(spec, model, got, origin=origin)
    parts, missing, unexpected = key_mismatches(expected, got)
    if parts:
        used = config.subset(spec.sizes)
        sizes = ", ".join(f"{k}={v}" for k, v in used.items())
        matching = architectures_with_keys(got)
        sizes_advice = (
            " Check that the checkpoint was trained with this architecture, and pass the sizes it was "
            "trained with (--config or --input-size/--hidden-size/--output-size/--branches)."
        )
        if spec.name in matching:  # the right architecture, other sizes (or shapes that disagree)
            read_sizes = spec.infer_sizes(got)
            read = ", ".join(f"{k}={v}" for k, v in read_sizes.items())
            if all(used.get(k) == v for k, v in read_sizes.items()) and not missing and not unexpected:
                hint = (
                    f" The key names fit '{spec.name}' and its sizes read off the checkpoint are {read}, "
                    "but the shapes listed disagree with those sizes: the file was not saved from this "
                    "architecture, or was edited after saving. No size option makes it fit; save the "
                    "trained model's state_dict again."
                )
                sizes_advice = ""
            else:
                hint = f" The key names fit '{spec.name}'; the checkpoint's shapes say {read}."
        elif matching:
            hint = (
                f" The keys look like weights of {', '.join(map(repr, matching))}: try --arch {matching[0]}."
            )
        else:
            hint = ""
        options = advice() if advice is not None else ""
        if options:  # options fit the key names: that is the fix, not another architecture
            hint = options
            if not any(part.startswith("wrong shape") for part in parts):
                sizes_advice = ""
        raise WeightsError(
            f"The weights in {origin} do not fit '{spec.name}' with {sizes}. "
            + ". ".join(parts)
            + "."
            + hint
            + sizes_advice
        )


def _check_rnn_structure(
    spec: ArchSpec, model: torch.nn.Module, got: Mapping[str, tuple[int, ...]], *, origin: str
) -> None:
    """Refuse stacked, bidirectional or projected RNN weights given to an architecture without them."""
    expected = {
        name: (m.mode, m.num_layers, m.bidirectional, getattr(m, "proj_size", 0) > 0)
        for name, m in model.named_modules()
        if isinstance(m, torch.nn.RNNBase)
    }
    if not expected:
        return
    kinds = set(expected.values())
    # Where module names differ (another architecture's checkpoint), compare with this one's RNNs
    # when they are all alike; the generic key listing covers the rest.
    typical = next(iter(kinds)) if len(kinds) == 1 else None
    found: dict[str, dict[str, int]] = {}  # module -> {key: layer}
    for key in got:
        match = _RNN_KEY.match(key)
        if match:
            found.setdefault(match["module"], {})[key] = int(match["layer"])
    problems = []
    for module, keys in found.items():
        want = expected.get(module, typical)
        if want is None:
            continue
        _, layers, bidirectional, projected = want
        deeper = [k for k, layer in keys.items() if layer >= layers]
        reverse = [k for k in keys if k.endswith("_reverse")]
        projections = [k for k in keys if "_hr_l" in k]
        facts = []
        if deeper:
            facts.append(f"has {1 + max(keys.values())} layers (keys {quoted(deeper, 4)})")
        if reverse and not bidirectional:
            facts.append(f"is bidirectional (keys {quoted(reverse, 4)})")
        if projections and not projected:
            facts.append(f"has output projections, proj_size > 0 (keys {quoted(projections, 4)})")
        if facts:
            problems.append(f"{module!r} " + " and ".join(facts))
    if problems:
        mode, layers, bidirectional, _ = typical or next(iter(kinds))
        rnns = (
            f"{'one' if layers == 1 else layers}-layer, "
            f"{'bidirectional' if bidirectional else 'unidirectional'} {mode}s"
        )
        raise WeightsError(
            f"The weights in {origin} come from a different kind of RNN than '{spec.name}' has: "
            + "; ".join(first_items(problems, 4))
            + f". '{spec.name}' is built from {rnns} (num_layers={layers}, bidirectional={bidirectional}), "
            "so no size option makes these weights fit. Export a model trained with "
            f"num_layers={layers} and bidirectional={bidirectional}."
        )
