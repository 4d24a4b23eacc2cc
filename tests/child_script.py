"""A Python script run in a subprocess (its own process group) whose stdout the test reads line
by line without blocking: what the crash tests use to kill a writer at a chosen moment."""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class ChildScript:
    """``python -c script *args`` with the repository on ``PYTHONPATH``; :meth:`line` reads its
    next stdout line (unbuffered: a printed line never waits in a pipe buffer), :meth:`kill`
    SIGKILLs its whole process group."""

    def __init__(self, script: str, *args: str):
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-c", script, *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0,
                                     cwd=ROOT, env=env, start_new_session=True)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.proc.stdout, selectors.EVENT_READ)
        self.buffer = b""

    def line(self, timeout: float = 60.0, waiting_for: str | None = None) -> str:
        """The next stdout line, stripped; fails the test (killing the child) when none comes
        within ``timeout`` s or the child exits first."""
        what = "anything" if waiting_for is None else repr(waiting_for)
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                pytest.fail(f"the child did not print {what} within {timeout} s")
            if self.selector.select(left):
                data = os.read(self.proc.stdout.fileno(), 65536)
                if not data:
                    self.proc.wait()
                    pytest.fail(f"the child exited ({self.proc.returncode}) before printing "
                                f"{what}:\n{self.proc.stderr.read().decode(errors='replace')}")
                self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode().strip()

    def expect(self, prefix: str, timeout: float = 60.0) -> str:
        """The next stdout line, which must start with ``prefix``."""
        line = self.line(timeout, waiting_for=prefix)
        assert line.startswith(prefix), f"expected {prefix!r}, got {line!r}"
        return line

    def kill(self) -> int:
        """SIGKILL the process group (if still running), reap it; its return code."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self.proc.stdout.close()
        self.proc.stderr.close()
        return self.proc.returncode
