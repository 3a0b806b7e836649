"""User models: importing ``FILE.py:NAME`` or ``package.module:NAME``, building, loading weights,
and mapping and checking what the module returns against its I/O description.

Importing a model file runs the user's code (that is the point); checkpoints are still read safely
(:func:`rnnexport.builder.checkpoint.load_state_dict`: safetensors, or ``torch.load(weights_only=True)``).

Everything the user's code raises (at import, in ``__init__``, in ``forward`` whichever way it is
run) comes back as one of rnnexport's errors that names the line of the user's file it came from
(:class:`UserCode`); ``sys.exit()`` in that code included. Only Ctrl-C (``KeyboardInterrupt``) goes
through as it is, so the CLI handles it as an interruption.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import json
import linecache
import os
import re
import stat
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from rnnexport.builder.checkpoint import Checkpoint
from rnnexport.builder.patch import PackedLengths
from rnnexport.builder.weights import key_mismatches
from rnnexport.errors import RnnExportError, UsageError, WeightsError
from rnnexport.safeio import file_kind, loads_strict, read_bounded
from rnnexport.spec import BATCH, Contract
from rnnexport.text import first_line, visible

__all__ = [
    "ModelSource",
    "OutputForm",
    "UserCode",
    "check_outputs",
    "declared_outputs",
    "instantiate",
    "lengths_hint",
    "load_factory",
    "load_user_weights",
    "read_kwargs_file",
    "select_outputs",
    "state_sha256",
]

# Files that are never the user's, even inside a folder of theirs (a virtual environment in the
# project folder, or rnnexport itself checked out there).
_RNNEXPORT = str(Path(__file__).resolve().parents[1])  # rnnexport/, not only builder/
_SYSTEM = (sys.prefix, sys.base_prefix, sys.exec_prefix, Path(torch.__file__).parent)
_NOT_USER = (*sorted({str(Path(p).resolve()) for p in _SYSTEM}), _RNNEXPORT)


@dataclass(frozen=True)
class UserCode:
    """The folders that hold a user model's code, to report an error at the line of theirs it came from.

    A frame counts as the user's when its file lies under one of ``roots`` (the model file's folder,
    the folder of the module class's file) and not inside Python, torch or rnnexport.
    """

    roots: tuple[Path, ...]
    name: str = "model"  # the class (or factory) name, for messages

    @classmethod
    def of(cls, model: object, *files: Path | None) -> UserCode:
        """The roots for ``model`` (a module or a class) and any further ``files`` (the --model file)."""
        roots: list[Path] = []
        defined = model if isinstance(model, type) or inspect.isfunction(model) else type(model)
        candidates = [*files]
        with suppress(TypeError, OSError):  # a class defined in a notebook or by exec has no file
            candidates.append(Path(inspect.getfile(defined)))
        for file in candidates:
            if file is not None:
                folder = Path(file).resolve().parent
                if folder not in roots and not str(folder).startswith(_NOT_USER):
                    roots.append(folder)
        return cls(tuple(roots), getattr(defined, "__name__", "model"))

    def _is_user(self, filename: str) -> bool:
        try:
            path = Path(filename).resolve()
        except (OSError, RuntimeError):
            return False
        if str(path).startswith(_NOT_USER):
            return False
        return any(path.is_relative_to(root) for root in self.roots)

    def locate(self, exc: BaseException) -> str:
        """``at models.py:14 (`out = self.lstm(x, h0)`)``: the innermost frame of ``exc``'s traceback
        in the user's files, or, where none is, the innermost frame at all, said to be outside them."""
        frames = traceback.extract_tb(exc.__traceback__)
        own = [f for f in frames if self._is_user(f.filename)]
        if own:
            return f"at {_where(own[-1])}"
        outside = [f for f in frames if not f.filename.startswith(_RNNEXPORT)]
        return f"(in none of your files; innermost at {_where(outside[-1])})" if outside else ""

    def error(
        self, exc: BaseException, action: str, *, fix: str, error: type[RnnExportError] = UsageError
    ) -> RnnExportError:
        """``exc``, raised by the user's code while doing ``action``, as one of rnnexport's errors."""
        if isinstance(exc, SystemExit):
            what = f"called sys.exit({exc.code!r}) (SystemExit)"
            detail = (
                "rnnexport stops the build there instead of exiting with nothing built; remove the "
                "sys.exit() call from the code that runs on import or in forward (put a script's own "
                "work under if __name__ == '__main__':)."
            )
            return error(f"{action} {what} {self.locate(exc)}. {detail}")
        return error(f"{action} raised {self.describe(exc)}. {fix}")

    def describe(self, exc: BaseException) -> str:
        """``RuntimeError at models.py:14 (`code`): its message`` (the message's first line)."""
        text = first_line(exc, default="").rstrip(".")  # the sentence goes on after it
        return f"{type(exc).__name__} {self.locate(exc)}" + (f": {visible(text)}" if text else "")

    @contextmanager
    def running(self, action: str, *, fix: str, error: type[RnnExportError] = UsageError) -> Iterator[None]:
        """Inside the block, anything the user's code raises is :meth:`error` (rnnexport's own
        errors and Ctrl-C pass through unchanged)."""
        try:
            yield
        except (RnnExportError, KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # SystemExit included: user code must not end the build silently
            raise self.error(exc, action, fix=fix, error=error) from exc


def _where(frame: traceback.FrameSummary) -> str:
    """``path:line (`code`)``: the path relative to the working folder where it lies inside it."""
    path = frame.filename
    try:
        relative = os.path.relpath(path)
        path = path if relative.startswith("..") else relative
    except ValueError:  # another drive (Windows)
        pass
    code = (frame.line or linecache.getline(frame.filename, frame.lineno or 0)).strip()
    shown = f" (`{visible(code[:120])}`)" if code else ""
    return f"{visible(path)}:{frame.lineno}{shown}"


@dataclass(frozen=True)
class ModelSource:
    """Where a user model came from, as the manifest records it."""

    module: str
    name: str
    kind: str  # "class" or "factory"
    file: str | None = None
    file_sha256: str | None = None
    # The file itself, to report errors at its lines (the manifest records its name only).
    path: Path | None = field(default=None, compare=False, repr=False)

    def to_json(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The manifest's ``source`` section."""
        data: dict[str, Any] = {"module": self.module, self.kind: self.name, "config": dict(config)}
        if self.file is not None:
            data["file"] = self.file
            data["file_sha256"] = self.file_sha256
        return data


def _import_file(path: Path) -> Any:
    """Import ``path`` as ``python path`` would run it: its folder first on ``sys.path`` during the import.

    So ``from kws import KWSCRNN`` beside it works. ``sys.path`` is restored afterwards; the sibling
    modules it imported stay loaded (in ``sys.modules``), so the model keeps working.
    """
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = None
    if mode is None or not stat.S_ISREG(mode):
        got = "no such file" if mode is None else f"{file_kind(mode)}, not a Python file"
        raise UsageError(
            f"--model {visible(path)}: {got}. Pass FILE.py:NAME with the path of your model file."
        )
    digest = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    # A module name of its own (registered, so that classes and the export patches can find it).
    name = f"rnnexport_user_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--model {visible(path)}: cannot be imported as Python. Pass a .py file.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    saved = list(sys.path)
    folder = path.resolve().parent
    sys.path.insert(0, str(folder))
    _forget_shadowed_siblings(folder)
    try:
        with UserCode.of(object, path).running(
            f"Importing --model file {visible(path)}",
            fix="Fix the error in that file (it is imported as `python FILE.py` would run it, with its "
            "folder on sys.path, so modules beside it can be imported).",
        ):
            spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path[:] = saved
    return module


def _forget_shadowed_siblings(folder: Path) -> None:
    """Drop loaded modules that a module beside the model file shadows under ``python FILE.py``.

    ``from kws import KWSCRNN`` must import the ``kws.py`` beside this file, even when another model
    file's own ``kws`` was imported earlier in this process (an API user building two models). What
    rnnexport itself runs on (the standard library, torch, numpy, onnx) is never dropped.
    """
    for name, loaded in list(sys.modules.items()):
        top = name.partition(".")[0]
        if top in _NEVER_SHADOWED or top in sys.stdlib_module_names:
            continue
        if not ((folder / f"{top}.py").is_file() or (folder / top / "__init__.py").is_file()):
            continue
        origin = getattr(loaded, "__file__", None)
        if origin is None or not Path(origin).resolve().is_relative_to(folder):
            del sys.modules[name]


# The packages rnnexport's own code holds references into: a file of that name beside a model file
# cannot replace them mid-process.
_NEVER_SHADOWED = frozenset({"rnnexport", "torch", "numpy", "onnx", "onnxruntime", "onnxscript", "onnxsim"})


def load_factory(target: str) -> tuple[Callable[..., Any], ModelSource]:
    """Resolve ``FILE.py:NAME`` or ``package.module:NAME`` to the class or factory it names."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name.isidentifier():
        raise UsageError(
            f"--model {target!r} is not FILE.py:NAME or package.module:NAME. Name the file or module and "
            "the nn.Module class (or factory function) in it, e.g. --model models.py:Tagger."
        )
    file: Path | None = None
    if where.endswith(".py") or "/" in where or "\\" in where:
        file = Path(where)
        module = _import_file(file)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as exc:
            raise UsageError(
                f"--model {target}: cannot import module {where!r} ({exc}). Install or add it to PYTHONPATH, "
                "or pass the file path instead (FILE.py:NAME)."
            ) from exc
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, GeneratorExit)):
                raise
            spot = Path(getattr(sys.modules.get(where), "__file__", None) or ".")
            raise UserCode.of(object, spot).error(
                exc, f"Importing --model module {where}", fix="Fix the error there."
            ) from exc
    factory = getattr(module, name, None)
    if factory is None or not callable(factory):
        candidates = sorted(
            n
            for n, v in vars(module).items()
            if inspect.isclass(v) and issubclass(v, torch.nn.Module) and v.__module__ == module.__name__
        )
        raise UsageError(
            f"--model {target}: {where} has no class or function {name!r}. "
            + (f"nn.Module classes defined there: {', '.join(candidates)}." if candidates else "")
            + " Name an nn.Module subclass or a function that returns one."
        )
    kind = "class" if inspect.isclass(factory) else "factory"
    if kind == "class" and not issubclass(factory, torch.nn.Module):
        raise UsageError(f"--model {target}: {name} is a class but not an nn.Module subclass.")
    source = ModelSource(
        module=module.__name__ if file is None else file.stem,
        name=name,
        kind=kind,
        file=None if file is None else file.name,
        file_sha256=None if file is None else hashlib.sha256(file.read_bytes()).hexdigest(),
        path=file,
    )
    return factory, source


def read_kwargs_file(path: Path) -> dict[str, Any]:
    """``--config`` for a user model: a JSON object of keyword arguments."""
    fix = (
        "Expected a JSON object of the keyword arguments the model class or factory takes, such as "
        '{"hidden_size": 64, "num_layers": 2}.'
    )
    raw = read_bounded(path, limit=1 << 20, what="--config", fix=fix)
    data = loads_strict(raw, what=f"--config {path}", fix=fix)
    if not isinstance(data, dict):
        raise UsageError(
            f"--config {path} holds a JSON {type(data).__name__}, expected an object of keyword arguments."
        )
    return data


def instantiate(
    factory: Callable[..., Any], config: Mapping[str, Any], *, what: str, file: Path | None = None
) -> torch.nn.Module:
    """``factory(**config)`` in eval mode; a failure or a non-module result is a :class:`UsageError`.

    An exception (``sys.exit()`` included) is reported at the line of the user's code it came from
    (``file``: the --model file, besides the factory's own).
    """
    user = UserCode.of(factory, file)
    with user.running(
        f"Calling {what}(**config) with config {dict(config)}",
        fix="Give --config a JSON object of the keyword arguments it takes, or fix the error there.",
    ):
        model = factory(**dict(config))
        if isinstance(model, torch.nn.Module):
            model = model.eval()
    if not isinstance(model, torch.nn.Module):
        raise UsageError(f"{what}(**config) returned a {type(model).__name__}, expected an nn.Module.")
    return model


def load_user_weights(
    model: torch.nn.Module, checkpoint: Checkpoint, *, ignore_unexpected: bool = False
) -> Checkpoint:
    """Load ``checkpoint`` (read against ``model``'s keys) into ``model`` strictly; return it as loaded.

    Every missing, unexpected or wrongly shaped key is listed, with the options that would make
    the keys fit where some would (see :meth:`Checkpoint.advice`). ``ignore_unexpected`` leaves
    out the keys the model does not have (the returned checkpoint records them); missing keys stay
    an error. Each tensor's dtype is checked against the model's own parameter or buffer of that
    name, so BatchNorm's int64 ``num_batches_tracked`` loads as saved.
    """
    own = model.state_dict()
    fitted = checkpoint.fitted(own, ignore_unexpected=ignore_unexpected)
    expected = {k: tuple(v.shape) for k, v in own.items()}
    parts, _, _ = key_mismatches(expected, fitted.shapes, limit=8)
    if parts:
        advice = fitted.advice(ignore_unexpected=ignore_unexpected)
        raise WeightsError(
            f"The weights in {fitted.origin} do not fit the model: "
            + ". ".join(parts)
            + "."
            + (
                advice
                or " Check that the checkpoint was saved from this model class with the same --config "
                "(its sizes)."
            )
        )
    model.load_state_dict(fitted.load(), strict=True)
    return fitted


def state_sha256(model: torch.nn.Module) -> str:
    """A digest of the model's weights (names, shapes, dtypes and bytes), for the manifest."""
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f"{key}:{array.dtype}:{list(array.shape)};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


@dataclass
class OutputForm:
    """How ``forward``'s result maps to the declared outputs, as first seen: for the terminal and the
    manifest (``source.outputs``)."""

    returns: str = ""  # "a tensor", "a tuple", "a dict", "a NamedTuple Out", "a dataclass Out"
    by_name: bool = False
    dropped: list[str] = field(default_factory=list)  # keys or fields not declared: not exported
    skipped_none: int = 0  # None entries of a tuple or list

    def describe(self) -> str:
        """One line: what forward returns and what became of it."""
        how = "declared outputs taken by name" if self.by_name else "flattened leaf by leaf"
        text = f"forward returns {self.returns}: {how}"
        if self.skipped_none:
            text += f", {self.skipped_none} None entr{'y' if self.skipped_none == 1 else 'ies'} skipped"
        if self.dropped:
            text += f"; not declared, so dropped from the export: {', '.join(self.dropped)}"
        return text

    def to_json(self) -> dict[str, Any]:
        """For the manifest."""
        return {
            "returns": self.returns,
            "mapping": "by name" if self.by_name else "positional, leaf by leaf (None entries skipped)",
            "dropped": list(self.dropped),
            "none_skipped": self.skipped_none,
        }


# What to return instead, for a result rnnexport cannot map to declared outputs.
_RETURN_FIX = (
    "Return a tensor, a tuple of tensors (nested tuples count leaf by leaf, None entries are skipped), "
    "or a dict, NamedTuple or dataclass whose keys include every declared output name."
)


def _named_fields(result: Any) -> tuple[str, dict[str, Any]] | None:
    """``(description, {name: value})`` for a dict, a dataclass or a NamedTuple; None otherwise."""
    if isinstance(result, Mapping):
        kind = type(result).__name__
        return ("a dict" if kind == "dict" else f"a mapping {kind}"), dict(result)
    if dataclasses.is_dataclass(result) and not isinstance(result, type):
        return f"a dataclass {type(result).__name__}", {
            f.name: getattr(result, f.name) for f in dataclasses.fields(result)
        }
    if isinstance(result, tuple) and hasattr(result, "_fields"):
        return f"a NamedTuple {type(result).__name__}", dict(zip(result._fields, result, strict=True))
    return None


def _leaves(result: Any, form: OutputForm, *, what: str) -> list[Any]:
    if result is None:
        form.skipped_none += 1
        return []
    if isinstance(result, torch.nn.utils.rnn.PackedSequence):
        raise UsageError(
            f"{what}.forward returns a PackedSequence, which has no fixed layout to export. Unpack it "
            "first: padded, _ = pad_packed_sequence(packed, batch_first=True, total_length=x.shape[1]), "
            "and return the padded tensor."
        )
    if isinstance(result, (tuple, list)):  # a NamedTuple inside a tuple counts as a tuple
        return [leaf for item in result for leaf in _leaves(item, form, what=what)]
    named = _named_fields(result)
    if named is not None:
        raise UsageError(
            f"{what}.forward returns {named[0]} inside a tuple or list (outputs are taken by name only "
            f"from a dict, NamedTuple or dataclass returned as a whole). {_RETURN_FIX}"
        )
    return [result]


def select_outputs(
    result: Any, contract: Contract, *, what: str, form: OutputForm | None = None
) -> tuple[Any, ...]:
    """The declared outputs of a ``forward`` result, in declared order (unchecked: see check_outputs).

    A dict, a dataclass, or a NamedTuple that has a field of every declared name maps by name; keys
    not declared are dropped (listed in ``form``). A tensor, a tuple or a list is flattened leaf by
    leaf, ``None`` entries skipped (a NamedTuple whose fields are not the declared names counts as a
    tuple). ``form`` (updated on each call) records which.
    """
    form = form if form is not None else OutputForm()
    declared = contract.output_names
    named = _named_fields(result)
    if named is not None and (not isinstance(result, tuple) or set(declared) <= set(named[1])):
        form.returns, values = named
        missing = [n for n in declared if n not in values or values[n] is None]
        if missing:
            keys = [k if isinstance(k, str) else repr(k) for k in values]
            raise UsageError(
                f"{what}.forward returns {form.returns} with keys {keys}; the I/O description declares "
                f"outputs {declared}, and {missing} {'is' if len(missing) == 1 else 'are'} not among "
                "them (or None). Outputs are taken from it by name: name the outputs in io.json after "
                "its keys (the ones to export, in the order the ONNX model should return them)."
            )
        form.by_name = True
        form.dropped = [k if isinstance(k, str) else repr(k) for k in values if k not in declared]
        return tuple(values[n] for n in declared)
    form.skipped_none = 0
    if isinstance(result, torch.Tensor):
        form.returns = "a tensor"
    elif isinstance(result, (tuple, list)):
        plain = type(result) in (tuple, list)
        form.returns = f"a {type(result).__name__}" if plain else f"a NamedTuple {type(result).__name__}"
    else:
        raise UsageError(
            f"{what}.forward returns a {type(result).__name__}, which is not a tensor or a container of "
            f"tensors. {_RETURN_FIX}"
        )
    return tuple(_leaves(result, form, what=what))


@contextmanager
def declared_outputs(
    model: torch.nn.Module, contract: Contract, *, what: str, form: OutputForm | None = None
) -> Iterator[OutputForm]:
    """Inside the block, calling ``model`` returns exactly the declared outputs, as a flat tuple.

    A forward hook (removed on exit) applies :func:`select_outputs` to every call: the references,
    the float64 run (its deep copy keeps the hook), the streaming wrapper and the export all see the
    same outputs, and the ONNX model returns exactly the declared ones, in declared order. The
    module's names are unchanged (a wrapper module would prefix every weight and state name).
    """
    form = form if form is not None else OutputForm()

    def hook(module: torch.nn.Module, args: Any, result: Any) -> tuple[Any, ...]:
        return select_outputs(result, contract, what=what, form=form)

    handle = model.register_forward_hook(hook)
    try:
        yield form
    finally:
        handle.remove()


# Input names that say "each row's length" (tried on the whole name, case-insensitively).
_LENGTH_NAME = re.compile(
    r"(?:.*_)?(?:lengths?|lens?|seq_?lens?|seq_?lengths?|sequence_?lengths?|input_?lengths?|"
    r"num_?frames|n_?frames|num_?steps|n_?steps|valid_?lengths?)",
    re.IGNORECASE,
)


def lengths_hint(
    contract: Contract, model: Callable[..., Any], feeds: Mapping[str, Any], *, origin: str
) -> str:
    """A forgotten ``"role": "lengths"``, when the call on ``feeds`` failed: '' or what to add.

    Suspects are integer ``[batch]`` inputs without a role; one counts when the failing call passes
    it to ``pack_padded_sequence`` (the call is run again, watched) or when it is named like a length.
    """
    suspects = [t for t in contract.inputs if t.role is None and t.dtype != "float32" and t.shape == (BATCH,)]
    if not suspects:
        return ""
    args = [torch.from_numpy(feeds[t.name].copy()) for t in contract.inputs]
    with PackedLengths() as spy, torch.inference_mode():
        try:
            model(*args)
        except (KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException:  # the failure being explained; only what reached packing matters
            pass
    for spec in suspects:
        given = args[contract.input_names.index(spec.name)]
        packed = any(
            isinstance(t, torch.Tensor) and t.shape == given.shape and torch.equal(t.to(given), given)
            for t in spy.seen
        )
        if not packed and not _LENGTH_NAME.fullmatch(spec.name):
            continue
        why = "it reaches pack_padded_sequence as the lengths" if packed else "it is named like one"
        entry = {"name": spec.name, "dtype": spec.dtype, "shape": list(spec.shape), "role": "lengths"}
        return (
            f" Input '{visible(spec.name)}' looks like each row's length ({why}), but it has no role, so "
            "it was generated as plain integers (0 and values longer than the sequence included). Give "
            f"it the lengths role: in {origin}, its entry becomes {json.dumps(entry)}"
        )
    return ""


def check_outputs(contract: Contract, results: list[Any], sizes: Mapping[str, int], *, what: str) -> None:
    """Raise :class:`UsageError` unless the selected ``results`` (see :func:`select_outputs`) fit the
    declared outputs.

    ``sizes`` are the input axes' sizes of the call (``batch``, ``seq``, ...). Output axes with other
    names may take any size, the same wherever the name recurs.
    """
    declared = contract.outputs
    shapes = [list(r.shape) if isinstance(r, torch.Tensor) else type(r).__name__ for r in results]
    if len(results) != len(declared) or not all(isinstance(r, torch.Tensor) for r in results):
        raise UsageError(
            f"{what}.forward returned {len(results)} value(s) {shapes} once flattened (a tuple or list "
            "counts leaf by leaf, None entries skipped), but the I/O description declares "
            f"{len(declared)} output(s) {[t.shape_str() for t in declared]}. Declare the tensors forward "
            "returns, in order; or return a dict (or NamedTuple, or dataclass) and name the outputs "
            "to export after its keys."
        )
    seen = dict(sizes)
    for spec, tensor in zip(declared, results, strict=True):
        dtype = str(tensor.dtype).removeprefix("torch.")
        problem = None
        if dtype != spec.dtype:
            problem = f"dtype {dtype}"
        elif tensor.dim() != len(spec.shape):
            problem = f"rank {tensor.dim()}"
        else:
            for axis, (want, got) in enumerate(zip(spec.shape, tensor.shape, strict=True)):
                expected = want if isinstance(want, int) else seen.setdefault(want, int(got))
                if expected != got:
                    problem = f"size {got} on axis {axis} (expected {expected})"
                    break
        if problem:
            raise UsageError(
                f"{what}.forward's output '{spec.name}' has shape {list(tensor.shape)} and {problem}, "
                f"but the I/O description declares {spec.shape_str()} (inputs: {dict(sizes)}). Correct "
                "the output's entry in the description, or the model."
            )
