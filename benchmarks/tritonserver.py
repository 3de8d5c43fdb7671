"""Triton Inference Server as a child process: find an install, start it on loopback ports, stop it by its PID.

Where Triton is, two environment variables say (the tests and ``bench-unet
serve --server triton`` read them):

- ``UNET_TRITONSERVER``: the ``tritonserver`` executable. In NVIDIA's
  container it is ``/opt/tritonserver/bin/tritonserver``; the PyPI wheel
  ``nvidia-pytriton`` ships one as ``pytriton/tritonserver/bin/tritonserver``
  (unzip the wheel; installing it pins numpy < 2).
- ``UNET_TRITON_BACKENDS``: the backend folder holding
  ``onnxruntime/libtriton_onnxruntime.so`` (the container's
  ``/opt/tritonserver/backends``).

Unset, both default to the container's paths. The libraries the server
needs must be found by the dynamic loader (the wheel's binary finds its own
through its RPATH; otherwise set ``LD_LIBRARY_PATH``): :func:`locate` names
any that are missing.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ENV_SERVER",
    "ENV_BACKENDS",
    "TritonInstall",
    "TritonServer",
    "locate",
    "start_triton",
]

ENV_SERVER = "UNET_TRITONSERVER"
ENV_BACKENDS = "UNET_TRITON_BACKENDS"
_CONTAINER_SERVER = "/opt/tritonserver/bin/tritonserver"
_CONTAINER_BACKENDS = "/opt/tritonserver/backends"


@dataclass(frozen=True)
class TritonInstall:
    """A ``tritonserver`` executable and the backend folder it loads ``onnxruntime`` from."""

    server: Path
    backends: Path


def locate() -> tuple[TritonInstall | None, str | None]:
    """The install the environment points at, or None and exactly what is missing (with the fix)."""
    server = Path(os.environ.get(ENV_SERVER) or _CONTAINER_SERVER)
    backends = Path(os.environ.get(ENV_BACKENDS) or _CONTAINER_BACKENDS)
    missing = []
    if not (server.is_file() and os.access(server, os.X_OK)):
        missing.append(f"the tritonserver executable ({ENV_SERVER}={server} is not one)")
    backend_lib = backends / "onnxruntime" / "libtriton_onnxruntime.so"
    if not backend_lib.is_file():
        missing.append(
            f"Triton's ONNX Runtime backend ({ENV_BACKENDS}={backends} has no "
            "onnxruntime/libtriton_onnxruntime.so)"
        )
    if not missing:
        libs = _unresolved_libraries(server)
        if libs:
            missing.append(
                f"libraries tritonserver needs ({', '.join(libs)}): add their folder to "
                "LD_LIBRARY_PATH"
            )
    if missing:
        return None, "; ".join(missing)
    return TritonInstall(server, backends), None


def _unresolved_libraries(binary: Path) -> list[str]:
    """The shared libraries ``ldd`` cannot resolve for ``binary`` (empty when ldd is not there)."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.split()[0] for line in out.splitlines() if "not found" in line]


@dataclass
class TritonServer:
    """A running ``tritonserver``: its process, loopback endpoints and log file."""

    process: subprocess.Popen
    http: str
    grpc: str
    metrics: str
    log: Path

    def __getitem__(self, protocol: str) -> str:
        """``server["http"]`` / ``server["grpc"]``: the address, as ``start_server``'s dict gives it."""
        return {"http": self.http, "grpc": self.grpc, "metrics": self.metrics}[protocol]

    def get(self, path: str, port: str = "http", timeout: float = 10):
        """GET ``path`` on the HTTP (or metrics) endpoint; returns (status, body bytes)."""
        url = f"http://{getattr(self, port)}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str):
        """GET ``path`` and decode its JSON (raises RuntimeError on a non-200 answer)."""
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"GET {path}: {status} {body[:500]!r}")
        return json.loads(body)

    def stop(self, timeout_s: float = 45) -> int:
        """SIGTERM by PID, then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(timeout=timeout_s)

    def log_tail(self, chars: int = 4000) -> str:
        """The server's error lines (Triton starts them with ``E``), then the end of its log."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        errors = [line for line in text.splitlines() if re.match(r"E\d{4} ", line)]
        return "\n".join([*errors[:20], "...", text[-chars:]]) if errors else text[-chars:]

    def __enter__(self) -> "TritonServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_triton(
    install: TritonInstall,
    repository: Path,
    log: Path,
    *,
    timeout_s: float = 120,
    extra_args: tuple[str, ...] = (),
) -> TritonServer:
    """``tritonserver`` serving ``repository`` on free loopback ports, once every model is READY.

    Raises RuntimeError with the end of the server's log if it exits, or is
    not ready within ``timeout_s`` (it is stopped first).
    """
    from .serve_load import free_ports

    http, grpc, metrics = free_ports(3)
    args = [
        str(install.server),
        f"--model-repository={repository}",
        f"--backend-directory={install.backends}",
        "--http-address=127.0.0.1",
        f"--http-port={http}",
        "--grpc-address=127.0.0.1",
        f"--grpc-port={grpc}",
        "--metrics-address=127.0.0.1",
        f"--metrics-port={metrics}",
        # A CPU machine: no GPU metrics to collect (the start-up warnings about CUDA, NVML and DCGM
        # remain).
        "--allow-gpu-metrics=false",
        *extra_args,
    ]
    with open(log, "wb") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT)
    server = TritonServer(
        proc, f"127.0.0.1:{http}", f"127.0.0.1:{grpc}", f"127.0.0.1:{metrics}", Path(log)
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if server.get("/v2/health/ready", timeout=2)[0] == 200:
                return server
        except OSError:
            pass
        time.sleep(0.3)
    code = server.stop()
    raise RuntimeError(
        f"tritonserver did not become ready in {timeout_s:.0f} s (exit code {code}); its log:\n"
        + server.log_tail()
    )
