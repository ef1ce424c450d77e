"""The order of the test files: longest first by the last run's durations (saat_jax/testing/durations.py)."""

import json

import pytest

from saat_jax.testing import durations


def test_files_run_longest_first_each_keeping_its_tests_in_order():
  ids = ["t/a.py::x", "t/a.py::y", "t/b.py::x", "t/c.py::x", "t/c.py::y[1]", "t/c.py::y[2]", "t/d.py::x"]
  files = [durations.file_of(i) for i in ids]
  assert files[4] == "t/c.py"
  got = durations.longest_first(ids, files, {"t/a.py": 5.0, "t/b.py": 1.0, "t/c.py": 30.0})
  # d.py was never measured (a new file): first; then c (30 s), a (5 s), b (1 s)
  assert got == ["t/d.py::x", "t/c.py::x", "t/c.py::y[1]", "t/c.py::y[2]", "t/a.py::x", "t/a.py::y", "t/b.py::x"]


def test_equal_or_missing_durations_keep_the_collection_order():
  ids = ["b.py::1", "a.py::1", "c.py::1", "a.py::2"]
  files = [durations.file_of(i) for i in ids]
  assert durations.longest_first(ids, files, {}) == ["b.py::1", "a.py::1", "a.py::2", "c.py::1"]
  assert durations.longest_first(ids, files, {"a.py": 2, "b.py": 2, "c.py": 2}) == [
      "b.py::1", "a.py::1", "a.py::2", "c.py::1"]
  with pytest.raises(ValueError, match="one file per item"):
    durations.longest_first(ids, files[:-1], {})


def test_a_two_worker_run_ends_sooner_in_that_order():
  """What the order is for: two workers each taking the next file when free finish at nearly the
  same time, where the collection order (the long file last) leaves one worker alone at the end."""
  seconds = {"a.py": 10, "b.py": 10, "c.py": 10, "d.py": 10, "long.py": 40}

  def makespan(order):
    free = [0.0, 0.0]
    for f in order:
      free[free.index(min(free))] += seconds[f]
    return max(free)

  collected = ["a.py", "b.py", "c.py", "d.py", "long.py"]
  ordered = durations.longest_first(collected, collected, seconds)
  assert ordered[0] == "long.py"
  assert makespan(collected) == 60 and makespan(ordered) == 40


def test_test_seconds_sum_to_file_seconds():
  assert durations.by_file({"t/a.py::x": 1.5, "t/b.py::x": 2.0, "t/a.py::y[1]": 3.0, "t/a.py::y[2]": 0.5}) == {
      "t/a.py": 5.0, "t/b.py": 2.0}


def test_the_record_merges_and_drops_files_that_are_gone(tmp_path):
  (tmp_path / "tests").mkdir()
  for name in ("a.py", "b.py"):
    (tmp_path / "tests" / name).write_text("")
  record = tmp_path / "durations.json"
  record.write_text(json.dumps({"tests/a.py": 3.0, "tests/b.py": 4.0, "tests/removed.py": 9.0}))
  written = durations.write(record, {"tests/b.py": 1.26}, tmp_path)
  assert written == {"tests/a.py": 3.0, "tests/b.py": 1.3}  # a kept, b measured anew, removed.py dropped
  assert durations.read(record) == written
  assert sorted(p.name for p in tmp_path.iterdir()) == ["durations.json", "tests"]  # no temporary file left


@pytest.mark.parametrize("text", ["", "not json", "[1, 2]", '{"a.py": "slow"}', '{"a.py": true}', '{"a.py": -1}'])
def test_a_missing_or_garbled_record_orders_nothing(tmp_path, text):
  record = tmp_path / "d.json"
  if text:
    record.write_text(text)
  assert durations.read(record) == {}


def test_tests_over_the_limit_without_the_slow_mark_are_named_longest_first():
  seconds = {"t.py::quick": 0.4, "t.py::slow_marked": 30.0, "t.py::slow_unmarked": 6.0,
             "t.py::slower_unmarked": 12.5, "t.py::at_the_limit": durations.SLOW_S, "t.py::no_mark_info": 7.0}
  marked = {"t.py::quick": False, "t.py::slow_marked": True, "t.py::slow_unmarked": False,
            "t.py::slower_unmarked": False, "t.py::at_the_limit": False}
  assert durations.unmarked_slow(seconds, marked) == [("t.py::slower_unmarked", 12.5), ("t.py::no_mark_info", 7.0),
                                                      ("t.py::slow_unmarked", 6.0)]
  assert durations.unmarked_slow(seconds, marked, limit=10.0) == [("t.py::slower_unmarked", 12.5)]
  assert durations.unmarked_slow({}, {}) == []
