"""Running an untrusted model with a deadline: ONNX Runtime in a child process that can be killed.

A model from elsewhere can ask ONNX Runtime for unbounded work (a ``Loop`` of 10^15 trips is a
kilobyte), and a session's ``run`` cannot be interrupted from Python: neither a deadline nor SIGTERM
gets through a native call that never returns. So ``verify`` and ``bench`` run every session in a
child interpreter (:func:`run_bounded`) and kill it when its time bound passes; the parent only
waits, in Python, where Ctrl-C and SIGTERM reach it and it kills the child before they propagate.
The child gets a module-level function and its arguments on stdin and sends back what it returns
or raises (all pickled; the parent trusts only its own child), and may report progress: each
report starts a new step with its own time bound.

Run as ``python -m rnnexport.runtime.worker``. Torch-free.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import pickle
import selectors
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rnnexport.runtime import PROVIDERS, Device
from rnnexport.runtime.compare import ProviderResult, verify_on_device
from rnnexport.runtime.plan import VerificationPlan

__all__ = ["Progress", "Stopped", "run_bounded", "verify_with_deadline"]

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder that holds rnnexport/
_PARENT = "RNNEXPORT_WORKER_PARENT"
_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_FRAME = struct.Struct(">Q")  # each message: its length, then its pickle
_STDERR_KEPT = 8192  # the child's last words, for the message when it crashes

# What the child's function gets to report progress: ``progress(text, seconds, why)`` starts a step
# bounded by ``seconds`` (text None: a step not worth a line on the screen; the last step with a
# text is the one named if it overruns); ``why`` says how that bound was chosen, for the message.
Progress = Callable[[str | None, float, str], None]


class Stopped(Exception):
    """The child did not finish: it ran past its step's time bound, or it crashed or was killed.

    ``step`` is the last step the child reported (None before any), ``seconds`` the bound that was
    running and ``why`` how it was chosen, ``timed_out`` whether the bound is what ended it; otherwise
    ``how`` says what did ("was killed by signal SIGKILL") and ``last_words`` the last line of the
    child's stderr.
    """

    def __init__(
        self,
        step: str | None,
        seconds: float,
        *,
        timed_out: bool,
        how: str = "",
        last_words: str = "",
        why: str = "",
    ) -> None:
        super().__init__(how or f"ran past {seconds:g} s")
        self.step, self.seconds, self.timed_out, self.why = step, seconds, timed_out, why
        self.how, self.last_words = how, last_words


def run_bounded(
    function: Callable[..., Any],
    *args: Any,
    seconds: float,
    on_step: Callable[[str], None] | None = None,
    progress: bool = False,
    **kwargs: Any,
) -> Any:
    """``function(*args, **kwargs)`` in a child process, killed when it overruns; its return value.

    ``function`` must be importable by its module and name (pickled by reference). With
    ``progress``, it is also passed ``progress=`` (see :data:`Progress`): every report starts a new
    step and a new bound, and a step's text goes to ``on_step``. The first step's bound is
    ``seconds``. An exception the function raises is raised here (its type and message, from the
    child); a child that overruns, crashes or is killed raises :class:`Stopped`. An interruption of
    the parent (Ctrl-C, SIGTERM) kills the child before it propagates.
    """
    payload = pickle.dumps((function, args, kwargs, progress, seconds), protocol=pickle.HIGHEST_PROTOCOL)
    env = dict(os.environ)
    # The child must import this very rnnexport, wherever it was imported from.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH", "")) if p)
    env[_PARENT] = str(os.getpid())
    process = subprocess.Popen(
        [sys.executable, "-m", "rnnexport.runtime.worker"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,  # a Ctrl-C at the terminal reaches the parent, which then ends the child
    )
    try:
        return _converse(process, payload, seconds, on_step)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def _converse(
    process: subprocess.Popen[bytes], payload: bytes, seconds: float, on_step: Callable[[str], None] | None
) -> Any:
    """Send the payload, then read the child's messages until its result, each step within its bound."""
    assert process.stdin is not None
    assert process.stdout is not None
    assert process.stderr is not None
    step: str | None = None
    why = ""
    deadline = time.monotonic() + seconds
    with contextlib.suppress(BrokenPipeError):  # a child that died early: its exit says why
        process.stdin.write(payload)
        process.stdin.close()
    received, last_words = bytearray(), bytearray()
    open_streams = 2
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        selector.register(process.stderr, selectors.EVENT_READ)
        while open_streams:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Stopped(step, seconds, timed_out=True, why=why)
            for key, _ in selector.select(remaining):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    selector.unregister(key.fileobj)
                    open_streams -= 1
                elif key.fileobj is process.stderr:
                    last_words = (last_words + chunk)[-_STDERR_KEPT:]
                else:
                    received += chunk
            while len(received) >= _FRAME.size:
                (size,) = _FRAME.unpack_from(received)
                if len(received) < _FRAME.size + size:
                    break
                kind, *body = pickle.loads(received[_FRAME.size : _FRAME.size + size])  # our own child's
                del received[: _FRAME.size + size]
                if kind == "result":
                    return body[0]
                if kind == "error":
                    raise body[0]
                step_text, seconds, why = body
                deadline = time.monotonic() + seconds
                if step_text is not None:
                    step = step_text
                    if on_step is not None:
                        on_step(step_text)
    code = process.wait()
    how = f"was killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    last = last_words.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
    raise Stopped(step, seconds, timed_out=False, how=how, last_words=last[0], why=why)


def verify_with_deadline(
    model: bytes | Path,
    plan: VerificationPlan,
    *,
    device: Device,
    seconds: float,
    **options: Any,
) -> ProviderResult:
    """:func:`~rnnexport.runtime.compare.verify_on_device` in a child process killed after ``seconds``.

    ``plan`` and ``options`` (another runtime's ``open_runner`` and ``provider``) go to
    ``verify_on_device`` unchanged. ``model`` is the model's bytes, or the path of a model whose
    external data lies beside it (a private copy: the child reads it from there).
    A child that runs out of time, crashes or is killed gives a ``failed`` result with the reason;
    an interruption of the parent (Ctrl-C, SIGTERM) kills the child before it propagates.
    """
    provider = str(options.get("provider") or PROVIDERS[device])
    try:
        result = run_bounded(verify_on_device, model, plan, device=device, seconds=seconds, **options)
    except Stopped as stopped:
        reason = (
            f"onnxruntime did not finish the test data within the time bound of {seconds:g} s and "
            "was stopped (a model that runs this long on a few small inputs, such as a Loop with "
            "an enormous trip count, is not what rnnexport builds); pass a larger --time-limit "
            "if this model is legitimately that slow"
            if stopped.timed_out
            else f"onnxruntime {stopped.how} while running the model ({stopped.last_words})"
        )
        return ProviderResult(
            device,
            provider,
            "failed",
            plan.tolerance(device),
            plan.tf32_for(device),
            reason=reason,
            criterion=plan.criterion,  # the rule the plan asked for, not the default
        )
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


def _alarm(seconds: float) -> None:
    """Should the parent die without killing us (SIGKILL), SIGALRM's default action ends this process
    soon after the step's deadline, even inside a native call that never returns."""
    if hasattr(signal, "alarm"):
        signal.alarm(math.ceil(seconds) + 5)


def _child() -> None:
    _die_with_parent()
    function, args, kwargs, progress, seconds = pickle.loads(sys.stdin.buffer.read())  # our parent's
    # The messages get a descriptor of their own; anything else printed (by user code, by a library)
    # goes to stderr and cannot break their framing.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def send(*message: Any) -> None:
        data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        channel.write(_FRAME.pack(len(data)) + data)
        channel.flush()

    def report(text: str | None, step_seconds: float, why: str = "") -> None:
        _alarm(step_seconds)
        send("progress", text, step_seconds, why)

    _alarm(seconds)
    try:
        result = function(*args, **kwargs, **({"progress": report} if progress else {}))
    except Exception as exc:  # sent to the parent, which raises it there
        try:
            send("error", exc)
        except Exception:  # an exception that does not pickle: its type and message do
            send("error", RuntimeError(f"{type(exc).__name__}: {exc}"))
        return
    send("result", result)


if __name__ == "__main__":
    _child()
