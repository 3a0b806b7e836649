"""ONNX Runtime sessions, and the session settings recommended per regime (measured, not guessed)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from rnnexport.bench.inputs import _feeds, _no_states
from rnnexport.bench.timing import _first_line, _interleaved
from rnnexport.errors import ArtifactError, UsageError
from rnnexport.feeds import Feeds
from rnnexport.runtime import PROVIDERS, Device, ProviderUnavailableError, probe_provider
from rnnexport.spec import Contract

# The workloads session settings are chosen for: (batch, seq). Latency is one request at a time;
# throughput is a full batch. The advice differs between them (one thread wins at batch 1 for
# small models, all cores win at batch 32), so each gets its own.
REGIMES: dict[str, tuple[int, int]] = {"latency": (1, 100), "throughput": (32, 100)}
# A setting is recommended over ONNX Runtime's defaults only when it beats them by more than this.
SIGNIFICANT_GAIN = 1.05
_EXECUTION_MODES = ("sequential", "parallel")
_OPTIMISATION_LEVELS = ("disabled", "basic", "extended", "all")


def session_options(settings: Mapping[str, Any] | None = None) -> Any:
    """An ``onnxruntime.SessionOptions`` with the settings ``rnnexport bench`` recommends (or records).

    ``settings`` keys (all optional; a missing key keeps ONNX Runtime's default):
    ``intra_op_num_threads`` and ``inter_op_num_threads`` (0 = ONNX Runtime's choice),
    ``execution_mode`` (``sequential`` or ``parallel``: independent branches on separate threads) and
    ``graph_optimization_level`` (``disabled``, ``basic``, ``extended`` or ``all``). Example, with
    the settings an artifact's ``bench.json`` recorded for batch-1 latency::

        import json, onnxruntime as ort
        from rnnexport.bench import session_options
        settings = json.load(open("dist/attention/bench.json"))["settings"]["latency"]["recommended"]
        session = ort.InferenceSession("dist/attention/model.onnx", session_options(settings))
    """
    import onnxruntime as ort

    settings = dict(settings or {})
    unknown = sorted(
        set(settings)
        - {"intra_op_num_threads", "inter_op_num_threads", "execution_mode", "graph_optimization_level"}
    )
    if unknown:
        raise UsageError(
            f"Unknown session setting(s) {unknown}: expected intra_op_num_threads, inter_op_num_threads, "
            "execution_mode, graph_optimization_level."
        )
    options = ort.SessionOptions()
    options.log_severity_level = 3
    for key in ("intra_op_num_threads", "inter_op_num_threads"):
        if key in settings:
            value = settings[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"Session setting {key} must be a whole number >= 0, got {value!r}.")
            setattr(options, key, value)
    if "execution_mode" in settings:
        mode = settings["execution_mode"]
        if mode not in _EXECUTION_MODES:
            raise UsageError(f"execution_mode must be one of {_EXECUTION_MODES}, got {mode!r}.")
        options.execution_mode = (
            ort.ExecutionMode.ORT_PARALLEL if mode == "parallel" else ort.ExecutionMode.ORT_SEQUENTIAL
        )
    if "graph_optimization_level" in settings:
        level = settings["graph_optimization_level"]
        if level not in _OPTIMISATION_LEVELS:
            raise UsageError(
                f"graph_optimization_level must be one of {_OPTIMISATION_LEVELS}, got {level!r}."
            )
        options.graph_optimization_level = getattr(
            ort.GraphOptimizationLevel,
            "ORT_DISABLE_ALL" if level == "disabled" else f"ORT_ENABLE_{level.upper()}",
        )
    return options


def _session(
    model: bytes | str,
    device: Device,
    settings: Mapping[str, Any] | None = None,
    *,
    ort_format: bool = False,
) -> Any:
    """A session on ``device``'s provider with ``settings``; refused if it fell back elsewhere.

    ``model`` is the model's bytes, or its path when its weights are external data beside it.

    ``ort_format``: ``model`` is in ONNX Runtime's own format (a ``.ort`` variant), which ONNX
    Runtime cannot tell from the bytes alone.
    """
    import onnxruntime as ort

    probe = probe_provider(device)
    if not probe.available:
        raise ProviderUnavailableError(probe.reason)
    provider: str | tuple[str, dict[str, str]] = PROVIDERS[device]
    if device == "cuda":
        provider = (PROVIDERS[device], {"use_tf32": "0"})
    options = session_options(settings)
    if ort_format:
        options.add_session_config_entry("session.load_model_format", "ORT")
    try:
        session = ort.InferenceSession(model, sess_options=options, providers=[provider])
    except Exception as exc:  # ORT raises its own Fail/InvalidGraph types
        raise ArtifactError(
            f"ONNX Runtime could not load the model on {PROVIDERS[device]}: {_first_line(exc)}."
        ) from None
    if session.get_providers()[0] != PROVIDERS[device]:
        raise ProviderUnavailableError(
            f"onnxruntime created the session on {session.get_providers()}, not {PROVIDERS[device]}"
        )
    return session


def _ort_call(session: Any, feeds: Feeds) -> Callable[[], object]:
    names = [o.name for o in session.get_outputs()]
    return lambda: session.run(names, feeds)


# -- session settings ------------------------------------------------------------------------------


def _candidates(recurrent_nodes: int) -> list[dict[str, Any]]:
    """Settings worth trying: threads 1 vs all cores, parallel execution for independent branches,
    and the graph optimisation levels; ``{}`` is ONNX Runtime's defaults (the reference)."""
    cores = os.cpu_count() or 1
    threads = sorted({1, cores})
    modes = ["sequential", "parallel"] if recurrent_nodes >= 2 else ["sequential"]
    found: list[dict[str, Any]] = [{}]
    for level in ("basic", "extended", "all"):
        for n in threads:
            for mode in modes:
                candidate: dict[str, Any] = {
                    "intra_op_num_threads": n,
                    "execution_mode": mode,
                    "graph_optimization_level": level,
                }
                if mode == "parallel":
                    candidate["inter_op_num_threads"] = cores
                found.append(candidate)
    return found


def _label(settings: Mapping[str, Any]) -> str:
    if not settings:
        return "onnxruntime defaults"
    text = f"threads {settings['intra_op_num_threads']}, {settings['execution_mode']}"
    if "inter_op_num_threads" in settings:
        text += f" (inter-op {settings['inter_op_num_threads']})"
    return f"{text}, optimisation {settings['graph_optimization_level']}"


def _settings_sweep(
    model: bytes | str,
    contract: Contract,
    recurrent_nodes: int,
    *,
    start: Callable[[int], Feeds] = _no_states,
    rounds: int,
    repeats: int,
    burst_seconds: float,
    bound: Callable[[int, int], Callable[[], None]] = lambda batch, seq: lambda: None,
) -> dict[str, Any]:
    """Measure each candidate in each regime; recommend the fastest where it beats the defaults.

    ``bound(batch, seq)`` is the ``tick`` of :func:`_interleaved` at that shape.
    """
    candidates = _candidates(recurrent_nodes)
    sessions = [_session(model, "cpu", c) for c in candidates]
    out: dict[str, Any] = {}
    for regime, (batch, seq) in REGIMES.items():
        feeds = _feeds(contract, start, batch=batch, seq=seq)
        calls = {str(k): _ort_call(s, feeds) for k, s in enumerate(sessions)}
        stats = _interleaved(
            calls,
            rounds=rounds,
            repeats=repeats,
            burst_seconds=burst_seconds,
            tick=bound(batch, seq),
            where=f"(session settings candidate, {regime} regime, batch {batch}, seq {seq})",
        )
        measured = [
            {"settings": c, "label": _label(c), **stats[str(k)].to_json()} for k, c in enumerate(candidates)
        ]
        key = "best_round_p50_ms"
        default = measured[0][key]
        fastest = min(measured, key=lambda m: m[key])
        # Both figures must agree: on a busy machine one unlucky set of rounds can make either alone
        # name a winner that is not faster.
        pooled = measured[0]["p50_ms"] / fastest["p50_ms"]
        chosen = fastest if min(default / fastest[key], pooled) > SIGNIFICANT_GAIN else measured[0]
        out[regime] = {
            "batch": batch,
            "seq": seq,
            "recommended": chosen["settings"],
            "label": chosen["label"],
            "p50_ms": chosen[key],
            "defaults_p50_ms": default,
            "gain_over_defaults": default / chosen[key],
            "candidates": measured,
        }
    out["rule"] = (
        f"per regime, the candidate with the lowest best-round median, if it beats onnxruntime's defaults "
        f"by more than {SIGNIFICANT_GAIN:.2f}x in both best-round and overall median; otherwise the defaults"
    )
    return out
