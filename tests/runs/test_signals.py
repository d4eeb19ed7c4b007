"""pyro_vae.runs.signals: SIGINT and SIGTERM set the stop flag a fit polls, where a
background job may have been started with them ignored, and the handlers come back after."""

from __future__ import annotations

import os
import signal

import pytest

from pyro_vae.runs import stop_on_signals


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_sets_the_flag_and_the_old_handler_comes_back(signum):
    before = signal.signal(signum, signal.SIG_IGN)  # as a shell starts a job in the background
    try:
        with stop_on_signals() as stop:
            assert not stop()
            os.kill(os.getpid(), signum)
            assert stop() and stop.signal == signum
        assert signal.getsignal(signum) is signal.SIG_IGN
    finally:
        signal.signal(signum, before)
