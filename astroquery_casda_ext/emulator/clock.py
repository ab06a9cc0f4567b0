"""The emulator's time, injected: every job phase, expiry, WAIT and signed URL reads it.

`Clock` is the real one.  `ManualClock` stands still until told to ``advance``,
so a test can walk a job through timed phases, expire it or end a UWS ``WAIT`` without
sleeping (``CasdaEmulator.use_clock``).  Transfer rates and injected latencies stay on
real time: they shape how bytes leave the socket.
"""
import datetime as _dt
import threading
import time

__all__ = ["Clock", "ManualClock"]

#: Longest a blocked wait goes without looking at the clock again (real seconds), so that a
#: `ManualClock` moved by another thread ends it.
_LOOK_AGAIN = 0.02


class Clock:
    """Real time."""

    #: True for a clock that only moves when told to.
    manual = False

    def time(self):
        """Seconds since the epoch (``time.time``)."""
        return time.time()

    def now(self):
        """The current time as an aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self.time(), _dt.timezone.utc)

    def wait(self, condition, seconds):
        """Wait on ``condition`` (held by the caller) for up to ``seconds`` of this clock.

        Returns early when the condition is notified; callers loop on their own test.
        """
        condition.wait(max(0.0, min(seconds, _LOOK_AGAIN if self.manual else seconds)))


class ManualClock(Clock):
    """A clock that moves only when ``advance`` is called (thread-safe).

    Parameters
    ----------
    start : float, optional
        Seconds since the epoch to start at (default: the real time now).
    """

    manual = True

    def __init__(self, start=None):
        self._lock = threading.Lock()
        self._time = time.time() if start is None else float(start)

    def time(self):
        with self._lock:
            return self._time

    def advance(self, seconds):
        """Move the clock on by ``seconds`` (>= 0); returns the new time."""
        if seconds < 0:
            raise ValueError("a clock does not go back")
        with self._lock:
            self._time += seconds
            return self._time
