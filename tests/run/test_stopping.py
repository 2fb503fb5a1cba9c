"""A first Ctrl-C (or SIGTERM) during an engine call lets that call finish and be kept; a second stops at once."""

from __future__ import annotations

import os
import signal

import pytest

from capmill.run.stopping import FinishInFlight, Terminated


def test_first_signal_waits_for_the_engine_call_second_stops_at_once(capsys):
    guard = FinishInFlight()
    finished = False
    with guard.engine_call():
        os.kill(os.getpid(), signal.SIGINT)  # delivered to this (main) thread at once
        finished = True  # the call in progress goes on
    assert finished
    assert "stopping after the batch in progress" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt):
        guard.raise_if_asked()
    with pytest.raises(KeyboardInterrupt), guard.engine_call():
        os.kill(os.getpid(), signal.SIGINT)  # asked before: now
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers put back


def test_sigterm_is_kept_as_sigterm():
    guard = FinishInFlight()
    with guard.engine_call():
        os.kill(os.getpid(), signal.SIGTERM)
    with pytest.raises(Terminated):
        guard.raise_if_asked()


def test_no_signal_no_stop():
    guard = FinishInFlight()
    with guard.engine_call():
        pass
    guard.raise_if_asked()
