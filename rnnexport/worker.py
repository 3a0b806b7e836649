"""Running an untrusted model with a deadline: ONNX Runtime in a child process that can be killed.

A model from elsewhere can ask ONNX Runtime for unbounded work (a ``Loop`` of 10^15 trips is a
kilobyte), and a session's ``run`` cannot be interrupted from Python. So ``verify`` runs each
provider's session in a child interpreter and kills it when the time bound passes; the parent only
waits. The child gets the model bytes and the parsed test cases on stdin and sends back the
:class:`~rnnexport.compare.ProviderResult` (both pickled; the parent trusts only its own child).

Run as ``python -m rnnexport.worker``. Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rnnexport.compare import ProviderResult, Tolerance, verify_on_device
from rnnexport.feeds import Case
from rnnexport.runtime import PROVIDERS, Device

__all__ = ["verify_with_deadline"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)
_PARENT = "RNNEXPORT_WORKER_PARENT"
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def verify_with_deadline(
    model: bytes | Path,
    cases: Sequence[Case],
    *,
    device: Device,
    tol: Tolerance,
    tf32: bool,
    seconds: float,
    **options: Any,
) -> ProviderResult:
    """:func:`~rnnexport.compare.verify_on_device` in a child process that is killed after ``seconds``.

    ``options`` (the rule, float64 references, sequence axes) go to ``verify_on_device`` unchanged.
    ``model`` is the model's bytes, or the path of a model whose external data lies beside it (a
    private copy: the child reads it from there).
    A child that runs out of time, crashes or is killed gives a ``failed`` result with the reason;
    an interruption of the parent (Ctrl-C, SIGTERM) kills the child before it propagates.
    """
    provider = str(options.get("provider") or PROVIDERS[device])
    payload = pickle.dumps(
        (model, list(cases), device, tol, tf32, seconds, options), protocol=pickle.HIGHEST_PROTOCOL
    )
    env = dict(os.environ)
    # The child must import this very rnnexport, wherever it was imported from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    env[_PARENT] = str(os.getpid())
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnexport.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a Ctrl-C at the terminal reaches the parent, which then ends the child
    )
    try:
        out, err = process.communicate(payload, timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        return ProviderResult(
            device,
            provider,
            "failed",
            tol,
            tf32,
            reason=(
                f"onnxruntime did not finish the test data within the time bound of {seconds:g} s and "
                "was stopped (a model that runs this long on a few small inputs, such as a Loop with "
                "an enormous trip count, is not what rnnexport builds); pass a larger --time-limit "
                "if this model is legitimately that slow"
            ),
        )
    except BaseException:
        process.kill()
        process.communicate()
        raise
    if process.returncode != 0 or not out:
        how = (
            f"was killed by signal {signal.Signals(-process.returncode).name}"
            if process.returncode < 0
            else f"exited with code {process.returncode}"
        )
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        return ProviderResult(
            device,
            provider,
            "failed",
            tol,
            tf32,
            reason=f"onnxruntime {how} while running the model ({last[0]})",
        )
    result = pickle.loads(out)  # written by our own child process
    assert isinstance(result, ProviderResult)
    return result


def _die_with_parent() -> None:
    """Linux: have the kernel kill this process when its parent ends, however the parent ends.

    The parent kills its child on every exit it sees; this covers the ones it cannot see (SIGKILL,
    or a signal that arrives while the child is being started).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != int(os.environ.get(_PARENT, os.getppid())):
        os._exit(1)  # the parent is already gone


def _child() -> None:
    _die_with_parent()
    model, cases, device, tol, tf32, seconds, options = pickle.loads(sys.stdin.buffer.read())  # our parent's
    if hasattr(signal, "alarm"):
        # Should the parent die without killing us (SIGKILL), SIGALRM's default action ends this
        # process soon after the deadline, even inside a native call that never returns.
        signal.alarm(math.ceil(seconds) + 5)
    result = verify_on_device(model, cases, device=device, tol=tol, tf32=tf32, **options)
    sys.stdout.buffer.write(pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    _child()
