"""What every benchmark record carries: the machine, the versions, the threads, the load, the command.

Imported by the scripts in ``benchmarks/`` (they run as ``python benchmarks/<script>.py``, which puts
this folder on ``sys.path``). Nothing here imports jax or torch at module level, so a script can set
environment variables (``XLA_PYTHON_CLIENT_MEM_FRACTION``, ...) before either is imported.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Environment variables that decide how many threads the frameworks use or how they allocate memory.
THREAD_ENV = ("XLA_FLAGS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "OPENBLAS_CORETYPE", "TF_CPP_MIN_LOG_LEVEL", "XLA_PYTHON_CLIENT_PREALLOCATE",
              "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR", "CUDA_VISIBLE_DEVICES",
              "JAX_PLATFORMS", "JAX_DEFAULT_MATMUL_PRECISION", "NVIDIA_TF32_OVERRIDE")

# Dense peak TFLOP/s by device kind (vendor data sheets): bf16 on the tensor cores (no sparsity),
# tf32 on the tensor cores, and fp32 on the CUDA cores. Matched as substrings of device_kind, first
# match wins (so "H100 PCIe" before "H100").
KNOWN_PEAKS = (
    ("H100 PCIe", dict(bf16=756.0, tf32=378.0, fp32=51.2)),
    ("H100", dict(bf16=989.4, tf32=494.7, fp32=66.9)),  # SXM
    ("H200", dict(bf16=989.4, tf32=494.7, fp32=66.9)),
    ("A100", dict(bf16=312.0, tf32=156.0, fp32=19.5)),
    ("L4", dict(bf16=121.0, tf32=60.0, fp32=30.3)),
)


def now_utc() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def stamp() -> str:
  return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def command_line() -> str:
  script = os.path.relpath(os.path.abspath(sys.argv[0]), ROOT)
  return " ".join(["python", script] + sys.argv[1:])


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.lower().startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def loadavg():
  try:
    return [round(v, 2) for v in os.getloadavg()]
  except OSError:
    return None


def git_state() -> dict:
  """The commit and the files that differ from it (read-only git commands)."""
  def run(*args):
    try:
      return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
      return ""

  commit = run("rev-parse", "HEAD").strip()
  dirty = [line[3:] for line in run("status", "--porcelain", "--untracked-files=no").splitlines() if line]
  return {"commit": commit or None, "modified_tracked_files": dirty}


def versions() -> dict:
  out = {"python": platform.python_version()}
  for name in ("jax", "jaxlib", "flax", "optax", "numpy", "torch", "pyautoattack"):
    try:
      mod = __import__(name)
      out[name] = getattr(mod, "__version__", "?")
    except Exception:  # noqa: BLE001 - not installed (or broken): record its absence
      out[name] = None
  return out


def threads_info() -> dict:
  info = {"cpu_count": os.cpu_count(), "env": {k: os.environ[k] for k in THREAD_ENV if k in os.environ}}
  try:
    info["cpu_affinity"] = sorted(os.sched_getaffinity(0))
  except AttributeError:
    pass
  if "torch" in sys.modules:
    import torch

    info["torch_num_threads"] = torch.get_num_threads()
    info["torch_num_interop_threads"] = torch.get_num_interop_threads()
  return info


def device_info() -> dict:
  import jax

  d = jax.devices()[0]
  info = {"jax_device_kind": str(d.device_kind), "jax_platform": d.platform,
          "jax_backend": jax.default_backend(), "jax_device_count": jax.device_count(),
          "cpu_model": cpu_model(), "machine": platform.machine(), "os": platform.platform()}
  if "torch" in sys.modules:
    import torch

    if torch.cuda.is_available():
      info["torch_cuda_device"] = torch.cuda.get_device_name()
      info["torch_cuda"] = torch.version.cuda
      info["torch_cudnn"] = torch.backends.cudnn.version()
  return info


def peak_tflops(device_kind: str, given=None) -> dict:
  """``{"source", "<precision>": TFLOP/s}``: the ``--peak-tflops`` given, else a known GPU's data sheet."""
  if given:
    return {"source": "--peak-tflops", "given": float(given)}
  for key, peaks in KNOWN_PEAKS:
    if key.lower() in device_kind.lower():
      return {"source": f"data sheet ({key}, dense)", **peaks}
  return {}


def new_record(benchmark: str, **fields) -> dict:
  """A benchmark's record with what every record carries: time, command, device, versions, git
  state, threads and the load before the run."""
  return {"benchmark": benchmark, "created": now_utc(), "command": command_line(), **fields,
          "device": device_info(), "versions": versions(), "git": git_state(), "threads": threads_info(),
          "load_before": loadavg()}


def finish(record: dict, out) -> None:
  """Add the load after the run and, when ``out`` is given, write the record there as JSON."""
  record["load_after"] = loadavg()
  if out:
    write_json(out, record)
    print(f"written {out}")


def write_json(path: str, obj) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, path)
  return path
