"""The test files' durations, recorded by one run and used to order the next (``tests/conftest.py``).

The suite runs in two worker processes, a test file to a worker (``pytest -n 2 --dist loadfile``).
Given files in collection order, a worker that is free takes the next one, so a long file that
comes last keeps one worker busy minutes after the other has finished. Taking the longest files
first (longest-processing-time-first scheduling) ends both workers within about one short file of
each other. The durations are each file's setup, call and teardown time summed over its tests, as
the last full run (``.ci/run``) measured them on its machine; only their order matters, so a
slower or faster machine orders the files the same way.

The quick check, ``pytest -m "not slow"``, stays quick only while each of its tests is: ``unmarked_slow``
names the tests that took longer than ``SLOW_S`` without the ``slow`` mark, and every run prints them
at its end.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Mapping, Sequence, TypeVar

from saat_jax.data.cache import atomic_file

Item = TypeVar("Item")

# A test that takes longer than this (setup, call and teardown, on the 2-core machine of .ci/run) is
# marked ``slow``: the 517 tests under it took 6 minutes of CPU time there (collection included),
# so the quick check ends in ~3 minutes on 2 workers. A test over it is typically a training run, a comparison with
# the PyTorch reference, several processes, or the first user of a module fixture that compiles.
SLOW_S = 5.0


def file_of(nodeid: str) -> str:
  """``tests/test_x.py`` of the test id ``tests/test_x.py::test_y[z]``."""
  return nodeid.split("::", 1)[0]


def by_file(seconds: Mapping[str, float]) -> dict[str, float]:
  """Seconds by test id summed to seconds by test file."""
  files: dict[str, float] = {}
  for test, s in seconds.items():
    files[file_of(test)] = files.get(file_of(test), 0.0) + s
  return files


def longest_first(items: Sequence[Item], files: Sequence[str], seconds: Mapping[str, float]) -> list[Item]:
  """``items`` (each in the file ``files[i]``) with whole files in order of ``seconds``, longest
  first, each file's items in their own order. A file with no recorded duration (a new one) goes
  first: its cost is unknown, and started early it cannot end the run late. Ties keep the
  collection order."""
  if len(items) != len(files):
    raise ValueError(f"{len(items)} items but {len(files)} file names: give one file per item")
  first_seen = {}
  for f in files:
    first_seen.setdefault(f, len(first_seen))

  def key(i: int):
    f = files[i]
    unknown = f not in seconds
    return (not unknown, -seconds.get(f, 0.0), first_seen[f], i)

  return [items[i] for i in sorted(range(len(items)), key=key)]


def read(path: Path) -> dict[str, float]:
  """The recorded ``{file: seconds}``; empty when the file is missing or not such a mapping (the
  order then stays the collection's, which is only slower)."""
  try:
    data = json.loads(Path(path).read_text())
  except (OSError, ValueError):
    return {}
  if not isinstance(data, dict):
    return {}
  return {str(k): float(v) for k, v in data.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0}


def write(path: Path, measured: Mapping[str, float], root: Path) -> dict[str, float]:
  """Merges ``measured`` (seconds by file) into the record at ``path``: a file measured now takes its
  new time, one not run keeps its old one, and one that no longer exists under ``root`` is dropped.
  Written atomically, keys sorted, so the committed file's diff shows what changed. Returns what
  was written."""
  merged = {**read(path), **measured}
  merged = {f: round(s, 1) for f, s in sorted(merged.items()) if (Path(root) / f).is_file()}
  with atomic_file(Path(path)) as f:
    f.write((json.dumps(merged, indent=1) + "\n").encode())
  return merged


def unmarked_slow(seconds: Mapping[str, float], marked: Mapping[str, bool],
                  limit: float = SLOW_S) -> list[tuple[str, float]]:
  """The tests (ids of ``seconds``) that took over ``limit`` seconds but are not marked slow
  (``marked[id]`` false or missing), longest first: they belong under ``@pytest.mark.slow``, or
  made faster, or the quick check grows."""
  over = [(t, s) for t, s in seconds.items() if s > limit and not marked.get(t, False)]
  return sorted(over, key=lambda ts: (-ts[1], ts[0]))
