"""The PyTorch side of verification: the model, its reference cases, and the float64 oracle.

An architecture's model comes from its golden weights, a seeded initialisation or a checkpoint; a
user's module is used as given. Either way every case's reference outputs are computed here, in
eager PyTorch, and a user model's failures are reported at the line of its own code.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from rnnexport.artifact import sha256_file
from rnnexport.builder.accuracy import float64_references
from rnnexport.builder.cases import sweep_inputs
from rnnexport.builder.eager import ModuleRunner, TorchRunner, build_model
from rnnexport.builder.golden import load_golden
from rnnexport.builder.options import SWEEP_SEED
from rnnexport.builder.usermodel import UserCode, check_outputs, lengths_hint
from rnnexport.errors import ExportError, RnnExportError
from rnnexport.feeds import Case, Feeds
from rnnexport.spec import ArchConfig, ArchSpec, Contract

if TYPE_CHECKING:
    from rnnexport.builder.request import Request, Subject

__all__ = ["float64_oracle", "model_and_references", "module_references", "user_code"]


def model_and_references(
    request: Request, spec: ArchSpec, config: ArchConfig
) -> tuple[torch.nn.Module, list[Case], dict[str, Any]]:
    """The PyTorch model, every verification case with its reference outputs, and the weights' origin.

    Default sizes without a checkpoint use the committed golden weights and cases; other sizes use
    a seeded initialisation; a checkpoint is used as given. Either way the shape sweep's references
    are computed here from eager PyTorch.
    """
    golden_cases: list[Case] = []
    origin: dict[str, Any]
    weights = request.options.weights
    if request.state is not None and weights is not None:
        model = build_model(spec, config, state_dict=request.state)
        origin = {
            "source": "user",
            "file": weights.name,
            "sha256": sha256_file(weights),
            **request.weights_read,
        }
    elif config == ArchConfig():
        golden = load_golden(spec)
        model = build_model(
            spec, config, state_dict={k: torch.from_numpy(v) for k, v in golden.weights.items()}
        )
        golden_cases = golden.cases
        origin = {"source": "golden", "sha256": golden.meta["weights"]["sha256"], "seed": golden.meta["seed"]}
    else:
        model = build_model(spec, config, seed=0)
        origin = {
            "source": "seeded",
            "seed": 0,
            "note": "PyTorch default init; sizes differ from the golden data",
        }
    runner = TorchRunner(spec, model)
    sweep = sweep_inputs(request.subject.contract, request.options.sweep_shapes)
    cases = golden_cases + [Case(name, feeds, runner.infer(feeds)) for name, feeds in sweep]
    cases += [Case(f"user:{name}", feeds, runner.infer(feeds)) for name, feeds in request.user_cases]
    origin["references"] = (
        ("committed golden cases + " if golden_cases else "")
        + f"eager PyTorch on CPU at build time (float32, seed {SWEEP_SEED})"
        + (f" ({spec.reference})" if spec.reference != "forward" else "")
    )
    return model, cases, origin


@contextmanager
def user_code(subject: Subject, when: str) -> Iterator[None]:
    """A user model's code running inside the block (a no-op for an architecture): what it raises,
    ``sys.exit()`` included, is reported at the line of its file it came from, as is an export
    failure whose cause was raised there."""
    user = subject.user
    if user is None:
        yield
        return
    action = f"Your model's forward ({user.name}.forward), {when},"
    try:
        with user.running(action, fix="Fix the error there (it ran in eager PyTorch without raising)."):
            yield
    except ExportError as exc:
        # The exporter may wrap what the model raised (torch.export's TorchExportError has it as its
        # own cause): look down the chain for the exception raised in the user's files.
        cause: BaseException | None = exc.__cause__
        while cause is not None:
            spot = user.locate(cause)
            if spot.startswith("at "):
                raise type(exc)(f"{exc} {action} raised it {spot}.") from cause
            cause = cause.__cause__ or cause.__context__
        raise


_ORACLE_RAN = {"ran": True, "default_dtype": "float64 during the run"}


def float64_oracle(
    subject: Subject, contract: Contract, model: torch.nn.Module, cases: Sequence[Case], method: str
) -> tuple[dict[str, Feeds], dict[str, Any]]:
    """The float64 references, and the manifest's ``verification.float64_oracle`` entry.

    A user model that cannot run in float64 (it casts to float32 itself, or mixes in float32 tensors
    it makes from numpy) is built anyway, without float64 references and so under the tolerance
    rule against float32, with the reason printed and recorded; ``sys.exit()`` there is still an
    error. An architecture's failure is a bug and keeps its traceback.
    """
    user = subject.user
    if user is None:
        return float64_references(contract, model, cases, method=method), dict(_ORACLE_RAN)
    try:
        float64 = float64_references(contract, model, cases, method=method)
    except (RnnExportError, KeyboardInterrupt, GeneratorExit):
        raise
    except Exception as exc:  # the model's own float32-only code: no oracle, said so
        reason = f"in float64, {user.name}.forward raised {user.describe(exc)}"
    except BaseException as exc:  # SystemExit
        raise user.error(exc, f"Your model's forward ({user.name}.forward), in float64,", fix="") from exc
    else:
        narrow = next(
            (
                f"in float64, {user.name}.forward returned '{name}' as {array.dtype} (it casts it itself)"
                for outputs in float64.values()
                for name, array in outputs.items()
                if array.dtype == np.float32
            ),
            None,
        )
        if narrow is None:
            return float64, dict(_ORACLE_RAN)
        reason = narrow
    reason += "; verified under the tolerance rule against PyTorch float32 instead"
    return {}, {"ran": False, "reason": reason}


def module_references(
    request: Request,
    model: torch.nn.Module,
    what: str,
    origin: dict[str, Any],
    *,
    user: UserCode,
    io_origin: str,
) -> tuple[torch.nn.Module, list[Case], dict[str, Any]]:
    """A user module's reference cases: the sweep (and ``--inputs``), from ``forward`` in eager PyTorch.

    Every call's outputs are checked against the declared outputs first, and a module that raises on
    the generated inputs is reported as a usage problem (its description, or the module, is wrong),
    at the line of the user's code it came from.
    """
    contract = request.subject.contract
    runner = ModuleRunner(contract, model)

    def reference(name: str, feeds: Feeds) -> Case:
        sizes = {
            d: int(feeds[t.name].shape[axis])
            for t in contract.inputs
            for axis, d in enumerate(t.shape)
            if isinstance(d, str)
        }
        try:
            results = runner.run(feeds)
        except (RnnExportError, KeyboardInterrupt, GeneratorExit):
            raise
        except BaseException as exc:  # the user's forward failed on inputs its description allows
            shapes = {k: list(v.shape) for k, v in feeds.items()}
            hint = (
                lengths_hint(contract, model, feeds, origin=io_origin) if isinstance(exc, Exception) else ""
            )
            raise user.error(
                exc,
                f"Your model's forward ({what}.forward)",
                fix=f"It ran on inputs generated from {io_origin} ({shapes}): check the description "
                f"against the model (shapes, dtypes, the range of integer inputs).{hint}",
            ) from exc
        check_outputs(contract, results, sizes, what=what)
        return Case(
            name,
            feeds,
            {n: t.detach().cpu().numpy() for n, t in zip(contract.output_names, results, strict=True)},
        )

    cases = [reference(name, feeds) for name, feeds in sweep_inputs(contract, request.options.sweep_shapes)]
    cases += [reference(f"user:{name}", feeds) for name, feeds in request.user_cases]
    origin["references"] = f"eager PyTorch on CPU at build time (float32, seed {SWEEP_SEED}): {what}.forward"
    return model, cases, origin
