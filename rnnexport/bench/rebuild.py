"""The artifact's model rebuilt in PyTorch (for eager and the plain export), proven to be the artifact's.

A registered architecture is rebuilt from the manifest; a ``--model`` artifact from the source file
the user names, checked against the recorded sha256. Torch is imported only when a model is rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnexport.artifact import MANIFEST, Manifest, sha256_file
from rnnexport.bench.runtimes import _Unavailable
from rnnexport.errors import UsageError
from rnnexport.feeds import Case
from rnnexport.runtime import Device
from rnnexport.runtime.compare import compare_outputs
from rnnexport.streaming import STATE_IN, STATE_OUT
from rnnexport.text import capped
from rnnexport.text import visible as _safe


def _builtin_model(folder: Path, manifest: Manifest, weights: Path | None) -> tuple[Any, str]:
    """A registered architecture rebuilt from the manifest's sizes and weights' origin, and that origin."""
    import torch

    from rnnexport.builder.eager import build_model
    from rnnexport.registry import get_arch
    from rnnexport.spec import ArchConfig

    try:
        spec = get_arch(manifest.arch)
    except UsageError:
        raise _Unavailable(f"'{manifest.arch}' is not a built-in architecture of this rnnexport") from None
    config = ArchConfig.from_mapping(manifest.config, origin=str(folder / MANIFEST))
    origin = manifest.weights
    source = origin.get("source")
    if weights is not None and source != "user":
        raise UsageError(
            f"--weights was given, but {folder} was built from {source} weights, which rnnexport rebuilds "
            "by itself. Drop --weights."
        )
    if source == "golden":
        from rnnexport.builder.golden import load_golden

        golden = load_golden(spec)
        if golden.meta["weights"]["sha256"] != origin.get("sha256"):
            raise _Unavailable(
                "the golden weights in this rnnexport differ from those the artifact was built with"
            )
        state = {k: torch.from_numpy(v) for k, v in golden.weights.items()}
        return build_model(spec, config, state_dict=state), "golden"
    if source == "seeded":
        return build_model(spec, config, seed=int(origin.get("seed", 0))), "seeded"
    if source == "user":
        _check_weights_file(folder, manifest, weights)
        assert weights is not None
        from rnnexport.builder.weights import load_state_dict

        return build_model(spec, config, state_dict=load_state_dict(weights)), "user"
    raise _Unavailable(f"the manifest records weights of unknown origin {source!r}")


def _check_weights_file(folder: Path, manifest: Manifest, weights: Path | None) -> None:
    """``--weights`` must be given, and be the checkpoint the artifact was built from (its sha256)."""
    origin = manifest.weights
    if weights is None:
        raise _Unavailable(
            f"the artifact was built from the user's weights ({origin.get('file', 'a checkpoint')}); "
            "pass --weights FILE to include PyTorch eager and the plain export"
        )
    if not weights.is_file():
        raise UsageError(f"--weights {weights} does not exist (or is not a file). Pass the checkpoint.")
    if sha256_file(weights) != origin.get("sha256"):
        raise UsageError(
            f"--weights {weights} is not the checkpoint {folder} was built from: its sha256 differs "
            f"from the manifest's ({origin.get('file', '?')}). Pass that checkpoint."
        )


def _source_target(folder: Path, manifest: Manifest, model: str | None) -> str:
    """``--model`` checked against the manifest's ``source``: ``FILE.py:NAME`` (or ``module:NAME``) to load.

    ``--model`` may name the file alone (``models.py``) or the file and the class or factory
    (``models.py:Tagger``); a file must have the sha256 the manifest records for the one the
    artifact was built from. Nothing is ever imported unless the user names it: code found beside
    an artifact (which may come from anywhere) is not run.
    """
    source = manifest.source or {}
    name = source.get("class", source.get("factory"))
    recorded_file, module = source.get("file"), source.get("module")
    where_recorded = _safe(recorded_file if recorded_file is not None else module)
    if model is None:
        digest = f" (sha256 {source.get('file_sha256')})" if recorded_file is not None else ""
        raise _Unavailable(
            f"'{_safe(manifest.arch)}' was built from your model {where_recorded}:{_safe(name)}; pass "
            f"--model PATH/TO/{where_recorded}{digest} to rebuild it in PyTorch (rnnexport does not "
            "import code it was not pointed at)"
        )
    where, sep, given = model.rpartition(":")
    if not sep or not given.isidentifier():
        where, given = model, str(name)
    if given != name:
        raise UsageError(
            f"--model {_safe(model)} names {_safe(given)!r}, but {folder} was built from "
            f"{where_recorded}:{_safe(name)}. Pass --model {where_recorded} (the name is read from the "
            "manifest), or the artifact that was built from this model."
        )
    if recorded_file is None:
        if where != module:
            raise UsageError(
                f"--model {_safe(model)}: {folder} was built from the module {_safe(module)!r}, not "
                f"{_safe(where)!r}. Pass --model {_safe(module)}:{_safe(name)}."
            )
        return f"{where}:{name}"
    path = Path(where)
    if not path.is_file():
        raise UsageError(
            f"--model {_safe(model)}: no such file. Pass the model file {folder} was built from "
            f"({where_recorded}, sha256 {source.get('file_sha256')})."
        )
    digest = sha256_file(path)
    if digest != source.get("file_sha256"):
        raise UsageError(
            f"--model {_safe(where)} is not the file {folder} was built from: its sha256 is {digest}, the "
            f"manifest records {source.get('file_sha256')} for {where_recorded}. Pass that version of the "
            "file (timing another model against this artifact would compare different things), or "
            "rebuild the artifact from this one."
        )
    return f"{where}:{name}"


def _user_model(folder: Path, manifest: Manifest, weights: Path | None, model: str | None) -> tuple[Any, str]:
    """A ``--model`` artifact's module, rebuilt from its source file, config and weights."""
    from rnnexport.builder.usermodel import instantiate, load_factory, load_user_weights, state_sha256
    from rnnexport.builder.weights import read_checkpoint

    if model is None and weights is not None:
        source = manifest.source or {}
        where = _safe(source.get("file", source.get("module")))
        raise UsageError(
            f"--weights {weights} serves to rebuild {folder}'s model in PyTorch, which also needs the model "
            f"it was built from: add --model PATH/TO/{where} (a --model artifact is rebuilt from its source)."
        )
    target = _source_target(folder, manifest, model)
    if manifest.weights.get("source") == "user":
        _check_weights_file(folder, manifest, weights)
    factory, loaded = load_factory(target)
    source = manifest.source or {}
    if loaded.kind not in source:
        raise UsageError(
            f"--model {_safe(target)} is a {loaded.kind}, but {folder} was built from a "
            f"{'factory' if loaded.kind == 'class' else 'class'} of that name. Pass the file it was built "
            "from."
        )
    module = instantiate(factory, dict(source.get("config", manifest.config)), what=loaded.name)
    origin = manifest.weights
    if weights is not None:
        # Read as the build read it: the recorded entry and prefix (none recorded: keys as saved).
        checkpoint = read_checkpoint(
            weights,
            module=module,
            state_dict_key=origin.get("state_dict_key"),
            strip_prefix=origin.get("stripped_prefix", ""),
        )
        load_user_weights(module, checkpoint, ignore_unexpected=bool(origin.get("ignored_keys")))
    if origin.get("source") == "module" and state_sha256(module) != origin.get("state_sha256"):
        if weights is not None:
            raise UsageError(
                f"--weights {weights} does not hold the weights {folder} was built with (the digest of the "
                "loaded state differs from the manifest's state_sha256). Pass a checkpoint of those weights."
            )
        raise _Unavailable(
            f"{_safe(loaded.name)}(**config) does not come out with the weights the artifact was built with "
            "(its initialisation is random and not seeded?); pass --weights with a checkpoint of them "
            "(torch.save(model.state_dict(), 'weights.pt') before building)"
        )
    return module, str(origin.get("source"))


def _as_streaming(model: Any, folder: Path, manifest: Manifest) -> Any:
    """The streaming wrapper around ``model`` (states in and out, as the artifact takes them), checked to
    carry the states the manifest declares, with the same initial values."""
    from rnnexport.builder.stateful import make_streaming
    from rnnexport.registry import get_arch
    from rnnexport.spec import ArchConfig, Contract, TensorSpec

    contract = manifest.contract
    base = Contract(
        tuple(t for t in contract.inputs if not t.name.startswith(STATE_IN)),
        tuple(t for t in contract.outputs if not t.name.startswith(STATE_OUT)),
    )
    method: str = "forward"
    extra: tuple[TensorSpec, ...] = ()
    if manifest.source is None:
        spec = get_arch(manifest.arch)
        if spec.streaming is not None:
            config = ArchConfig.from_mapping(manifest.config, origin=str(folder / MANIFEST))
            method, extra = (
                spec.streaming.method,
                tuple(spec.resolve(t, config) for t in spec.streaming.states),
            )
    stream = make_streaming(model, base, method=method, extra=extra)
    declared = {k: v for k, v in (manifest.streaming or {}).items() if k != "chains"}
    if stream.streaming.to_json(chains=False) != declared:
        raise _Unavailable(
            "the rebuilt model streams with other states or initial values than the artifact declares"
        )
    return stream.module


def _rebuild_eager(
    folder: Path,
    manifest: Manifest,
    weights: Path | None,
    model: str | None,
    device: Device,
    cases: Sequence[Case],
    *,
    torch_here: bool = True,
) -> tuple[Any, dict[str, Any]]:
    """The artifact's model in PyTorch, proven to reproduce the artifact's test data.

    A registered architecture is rebuilt from the manifest; a ``--model`` artifact from the source
    file the user passes as ``model`` (see :func:`_source_target`). A streaming artifact's model is
    the streaming wrapper, which takes and returns the states as the artifact does. Raises
    :class:`_Unavailable` when it cannot be rebuilt here (no torch, an architecture this rnnexport
    does not know, no source or weights given), and :class:`UsageError` when ``weights`` or
    ``model`` is not what the artifact was built from. ``cases`` are the artifact's checked test
    data; ``torch_here`` False: the caller found no torch (the check runs in the caller's process).
    """
    try:
        if not torch_here:
            raise ImportError("torch")
        import torch
    except ImportError:
        if model is not None or weights is not None:
            raise UsageError(
                "--model and --weights rebuild the artifact's model in PyTorch, which is not installed "
                "here. Install it (pip install 'rnnexport[build,cpu]') or drop them."
            ) from None
        raise _Unavailable(
            "torch is not installed here (install the build extra: pip install 'rnnexport[build,cpu]')"
        ) from None
    from rnnexport.builder.eager import ModuleRunner

    if manifest.source is not None:
        module, source = _user_model(folder, manifest, weights, model)
    elif model is not None:
        raise UsageError(
            f"--model is for artifacts built from your own model; {folder} holds the built-in architecture "
            f"'{_safe(manifest.arch)}', which rnnexport rebuilds by itself. Drop --model."
        )
    else:
        module, source = _builtin_model(folder, manifest, weights)
    module = module.eval()
    if manifest.streaming is not None:
        module = _as_streaming(module, folder, manifest)
    # Prove the rebuilt model is the artifact's model before timing it against the artifact.
    runner = ModuleRunner(manifest.contract, module)
    for case in cases[:1]:
        with torch.inference_mode():
            got = runner.infer(case.inputs)
        comparisons = compare_outputs(got, case.outputs, manifest.tolerance("cpu"))
        if not all(c.passed for c in comparisons):
            raise _Unavailable(
                "the rebuilt PyTorch model does not reproduce the artifact's test data "
                f"({capped(str(c.problem) for c in comparisons if c.problem)})"
            )
    return module.to(device), {"weights": source}
