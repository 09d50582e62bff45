"""The node's GPUs for its worker record: NVML (`nvidia-ml-py`, the `gpu` extra) when installed, else
`nvidia-smi` when on PATH, else none.

Read on every heartbeat, so a reading is kept for `GpuProbe.max_age` seconds: NVML's init and
nvidia-smi's start cost tens to hundreds of milliseconds, and free memory changes only as models
load. Nothing here raises: a driver that is missing, mismatched or hung reads as no GPUs (logged
once per kind of failure), so the heartbeat, which keeps the worker online, never fails for it.
"""

from __future__ import annotations

import importlib
import logging
import shutil
import subprocess
import threading
import time

from eldric.cluster.capacity import Gpu

log = logging.getLogger(__name__)

MIB = 1 << 20
SMI_TIMEOUT = 5.0
SMI_QUERY = ["--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"]


def read_nvml() -> list[Gpu] | None:
    """The GPUs NVML sees; None when pynvml is not installed or NVML does not start (no driver)."""
    try:
        pynvml = importlib.import_module("pynvml")
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, _DriverNotLoaded, ...: no driver here
        log.debug("NVML unavailable: %s", exc)
        return None
    try:
        out = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(Gpu(index, name.decode() if isinstance(name, bytes) else str(name),
                           int(memory.total), int(memory.free)))
        return out
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception as exc:  # noqa: BLE001 - a failed shutdown must not lose the reading
            log.debug("nvmlShutdown failed: %s", exc)


def read_nvidia_smi(program: str | None = None) -> list[Gpu] | None:
    """The GPUs `nvidia-smi` lists (memory in MiB there, bytes here); None when it is not on PATH or fails."""
    program = program or shutil.which("nvidia-smi")
    if not program:
        return None
    try:
        done = subprocess.run([program, *SMI_QUERY], capture_output=True, text=True, timeout=SMI_TIMEOUT, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("nvidia-smi failed: %s", exc)
        return None
    if done.returncode != 0:
        log.warning("nvidia-smi exited %s: %s", done.returncode, done.stderr.strip()[:200])
        return None
    return parse_smi(done.stdout)


def parse_smi(text: str) -> list[Gpu]:
    """`0, NVIDIA H100 80GB HBM3, 81559, 81000` per line; a line that does not parse ([N/A], MIG) is left out."""
    out = []
    for line in text.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 4:
            continue
        try:
            out.append(Gpu(int(parts[0]), parts[1], int(float(parts[2])) * MIB, int(float(parts[3])) * MIB))
        except ValueError:
            continue
    return out


def read_gpus() -> list[Gpu]:
    """NVML, else nvidia-smi, else no GPUs."""
    for read in (read_nvml, read_nvidia_smi):
        try:
            found = read()
        except Exception as exc:  # noqa: BLE001 - a broken binding or an odd driver answer: the next way, or none
            log.warning("reading GPUs with %s failed: %s", read.__name__, exc)
            found = None
        if found is not None:
            return found
    return []


class GpuProbe:
    """`read_gpus`, at most once per `max_age` seconds (the heartbeat and the registration share one).

    Only the first reading is waited for (the registration shows the GPUs at once); later ones run in a
    background thread while the caller gets the last reading, so an nvidia-smi that hangs until its
    timeout never delays a heartbeat (with 1 s heartbeats the worker would read as offline meanwhile).
    """

    def __init__(self, max_age: float = 30.0, read=read_gpus, clock=time.monotonic, background: bool = True) -> None:
        self.max_age, self._read, self._clock, self._background = max_age, read, clock, background
        self._lock = threading.Lock()
        self._at: float | None = None
        self._gpus: list[Gpu] = []
        self._refreshing = False

    def __call__(self) -> list[Gpu]:
        with self._lock:
            now = self._clock()
            stale = self._at is None or now - self._at >= self.max_age
            first, start = self._at is None, stale and not self._refreshing
            if start:
                self._refreshing, self._at = True, now
        if start and (first or not self._background):
            self._refresh()
        elif start:
            threading.Thread(target=self._refresh, name="gpu-probe", daemon=True).start()
        with self._lock:
            return list(self._gpus)

    def _refresh(self) -> None:
        try:
            found = self._read()
        except Exception as exc:  # noqa: BLE001 - never fail the heartbeat: keep the last reading
            log.warning("reading GPUs failed: %s", exc)
            found = None
        with self._lock:
            if found is not None:
                self._gpus = list(found)
            self._refreshing = False
