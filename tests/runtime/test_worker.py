"""rnnexport.runtime.worker: the bounded child process that bench and verify run ONNX Runtime in."""

from __future__ import annotations

import os
import time

import pytest

from rnnexport.runtime.worker import Stopped, run_bounded


def test_run_bounded_returns_raises_and_reports_a_crash() -> None:
    assert run_bounded(sorted, [3, 1, 2], seconds=60) == [1, 2, 3]
    with pytest.raises(ValueError, match="invalid literal"):
        run_bounded(int, "not a number", seconds=60)
    with pytest.raises(Stopped) as caught:
        run_bounded(os.abort, seconds=60)
    assert not caught.value.timed_out
    assert caught.value.how == "was killed by signal SIGABRT"
    with pytest.raises(Stopped) as slept:
        run_bounded(time.sleep, 60, seconds=0.5)
    assert slept.value.timed_out
    assert slept.value.seconds == 0.5
