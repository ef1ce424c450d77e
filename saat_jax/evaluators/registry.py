"""Evaluators by config, as big_vision's ``config.evals``: ``{name: {type: ..., <settings>}}``.

An evaluator *type* is registered once (:func:`register_evaluator`) with the settings it reads and
the columns it yields; an entry of ``config.evals`` (or one the evaluation CLI makes from its
flags) names a type and sets some of those settings. :func:`build_evaluators` turns the entries into
objects with ``run(variables, images_u8, labels, key)`` yielding ``(name, value)`` pairs. Training
records ``<prefix><split>_<name>`` every evaluated epoch (``test_natural_accuracy``); ``python -m
saat_jax.evaluate`` stores a column's value under its ``key`` in eval.json (``natural``, ``pgd20``)
and the report and the tables head it with its ``display`` name (``Natural``, ``PGD-20``).

A setting an entry leaves out is read from ``defaults`` (training: ``config.eval``, so that
``--config.eval.steps=10`` still sets the per-epoch PGD; the CLI: its ``--eval.*`` flags), else the
type's own default; a required one missing in both is refused by :func:`config_problems`.

This module imports no JAX (the report reads the column names from it); the built-in types
(:mod:`saat_jax.evaluators.builtin`) import their JAX code when built.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Callable, Iterable, Mapping, Optional


class Required:
  """The default of a setting that an entry (or ``defaults``) must give."""

  def __repr__(self):
    return "REQUIRED"


REQUIRED = Required()


@dataclasses.dataclass(frozen=True)
class Column:
  """One value an evaluator yields: ``name`` in ``run``'s pairs (training records
  ``<split>_<name>``), ``key`` in eval.json and the report, ``display`` in tables."""

  name: str
  key: str
  display: str


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
  """A registered type. ``factory(settings, *, apply_fn, mesh)`` returns the evaluator (an object
  with ``run``); ``settings`` maps each setting it reads to its default (:data:`REQUIRED`: none);
  ``columns(settings)`` are the columns it yields with those settings (other pairs it yields, such as
  AutoAttack's ``checks``, are stored under their own name); ``column(key)`` is ``(order, display)``
  of an eval.json key this type writes (``None`` for the keys of other types): tables list columns
  by ``(rank, order)``; ``check(settings)`` returns what is wrong with the values: ``(setting,
  message)`` pairs (``("eps", "must be >= 0, got -1")``), or strings for a problem of no one setting."""

  name: str
  factory: Callable[..., Any]
  settings: Mapping[str, Any]
  columns: Callable[[dict], tuple]
  column: Callable[[str], Optional[tuple]]
  check: Callable[[dict], list]
  rank: int
  doc: str


EVALUATORS: dict[str, EvaluatorType] = {}
# The yielded name that picks training's `best` checkpoint (``<split>_pgd_accuracy``): exactly one
# entry of ``config.evals`` must yield it, and a change of that entry changes what `best` means.
BEST_COLUMN = "pgd_accuracy"
# Training's per-epoch evaluation when a config has no ``evals`` (configs built by hand, runs saved
# before it existed): natural and PGD-``eval.steps`` accuracy with ``config.eval``'s settings.
DEFAULT_EVALS = {"robustness": {"type": "robustness"}}


def register_evaluator(type_name: str, factory: Callable[..., Any], *, settings: Mapping[str, Any],
                       columns: Callable[[dict], Iterable[Column]] | Iterable[Column],
                       column: Optional[Callable[[str], Optional[tuple]]] = None,
                       check: Optional[Callable[[dict], list]] = None, rank: int = 50, doc: str = "") -> EvaluatorType:
  """Register (or replace) the evaluator type ``type_name``: ``config.evals.<name>.type = type_name``
  then builds it. ``columns`` may be a fixed list; ``column`` defaults to a lookup of the columns
  with the default settings; ``rank`` orders a type's columns in tables (natural/PGD 0, AA 10, new
  types 50, RD 90). See :class:`EvaluatorType`."""
  fixed = None if callable(columns) else tuple(columns)
  cols = (lambda s: fixed) if fixed is not None else (lambda s: tuple(columns(s)))

  def by_default(key):
    for i, c in enumerate(cols({k: v for k, v in settings.items() if v is not REQUIRED})):
      if c.key == key:
        return i, c.display
    return None

  t = EvaluatorType(type_name, factory, dict(settings), cols, column or by_default, check or (lambda s: []), rank,
                    doc)
  EVALUATORS[type_name] = t
  return t


def get_type(type_name: str) -> EvaluatorType:
  """The registered type, or ``ValueError`` naming the close ones."""
  if type_name not in EVALUATORS:
    close = difflib.get_close_matches(str(type_name), list(EVALUATORS), n=1)
    raise ValueError(f"unknown evaluator type {type_name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                     + f"; registered: {', '.join(EVALUATORS)} (saat_jax.evaluators.register_evaluator adds one)")
  return EVALUATORS[type_name]


def _as_dict(entry) -> dict:
  return entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)


def resolve(entry, defaults=None) -> tuple[EvaluatorType, dict]:
  """``(type, settings)`` of one entry: each setting of its type from the entry, else ``defaults``
  (``config.eval`` in training), else the type's default. ``ValueError`` for an unknown type, a
  setting the type does not read, or a required one missing."""
  e = _as_dict(entry)
  if "type" not in e:
    raise ValueError(f"has no type; set type to one of {', '.join(EVALUATORS)}")
  t = get_type(e["type"])
  unknown = [k for k in e if k != "type" and k not in t.settings]
  if unknown:
    close = difflib.get_close_matches(unknown[0], list(t.settings), n=1)
    raise ValueError(f"type {t.name!r} has no setting {unknown[0]!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
                     + f"; its settings: {', '.join(t.settings)}")
  defaults = {} if defaults is None else defaults
  out, missing = {}, []
  for k, default in t.settings.items():
    if k in e:
      out[k] = e[k]
    elif k in defaults and defaults[k] is not None:
      out[k] = defaults[k]
    elif default is REQUIRED:
      missing.append(k)
    else:
      out[k] = default
  if missing:
    raise ValueError(f"type {t.name!r} needs setting(s) {', '.join(missing)} (set them in the entry)")
  return t, out


def config_problems(evals, defaults=None, *, needs: Iterable[str] = (), checked: Iterable[str] = ()) -> list[str]:
  """What is wrong with ``evals`` (``{name: {type, <settings>}}``), one string each, for
  ``saat_jax.train.validate_config``: an entry that is not a section, an unknown type (with the
  close match), an unknown or missing setting, a bad value (the type's ``check``), two entries
  yielding the same name, and each of ``needs`` (a yielded name, e.g. ``pgd_accuracy``, which picks
  ``best``) that no entry yields. ``checked``: settings of ``defaults`` that the caller checks
  itself (``validate_config`` checks ``eval.eps`` and ``eval.batch_size``); a problem of such a
  setting that an entry inherits is not reported a second time, as ``evals.<name>: ...``."""
  problems, seen, checked = [], {}, tuple(checked)
  for name, entry in (_as_dict(evals) if evals is not None else {}).items():
    if not isinstance(entry, Mapping) and not hasattr(entry, "to_dict"):
      problems.append(f"evals.{name} must be a section {{type: ..., <settings>}}, got {entry!r}")
      continue
    try:
      t, settings = resolve(entry, defaults)
    except ValueError as e:
      problems.append(f"evals.{name}: {e}")
      continue
    inherited = {k for k in checked if k not in _as_dict(entry)}  # the caller reports these itself
    bad = [b if isinstance(b, str) else f"{b[0]} {b[1]}" for b in t.check(settings)
           if isinstance(b, str) or b[0] not in inherited]
    problems += [f"evals.{name}: {b}" for b in bad]
    if bad:
      continue
    clash = {}
    for c in t.columns(settings):
      if c.name in seen:
        clash.setdefault(seen[c.name], []).append(repr(c.name))
      seen.setdefault(c.name, name)
    for other, names in clash.items():
      hint = "keep one of them"
      if repr(BEST_COLUMN) in names and "selects_best" in t.settings:
        hint = ("only one entry picks `best`: set selects_best=False on the other (it then yields "
                "pgd<steps>_accuracy)")
      problems.append(f"evals.{name} and evals.{other} both yield {', '.join(names)} (training records "
                      f"<split>_<name> for each); {hint}")
  for n in needs:
    if n not in seen and not problems:
      problems.append(f"no entry of evals yields {n!r}, which selects the `best` checkpoint; keep an entry of type "
                      f"'robustness' (the default evals.robustness)")
  return problems


def yields(entry, defaults=None) -> Optional[frozenset]:
  """The names an entry yields (its type's columns with its settings); ``None`` when the entry is not
  valid (an unknown type or setting: :func:`config_problems` says what)."""
  try:
    t, settings = resolve(entry, defaults)
    return frozenset(c.name for c in t.columns(settings))
  except (ValueError, TypeError, KeyError):
    return None


def build_evaluators(evals, defaults=None, *, apply_fn, mesh=None) -> list:
  """The evaluators of ``evals`` in its order (a ConfigDict lists its names sorted): ``[(name, evaluator)]``. Each evaluator has the
  ``columns`` of its type and settings and ``run(variables, images_u8, labels, key)``."""
  out = []
  for name, entry in _as_dict(evals).items():
    try:
      t, settings = resolve(entry, defaults)
    except ValueError as e:
      raise ValueError(f"evals.{name}: {e}") from None
    ev = t.factory(settings, apply_fn=apply_fn, mesh=mesh)
    if not hasattr(ev, "columns"):
      ev.columns = t.columns(settings)
    out.append((name, ev))
  return out


def column_display(key: str) -> Optional[str]:
  """The table header of an eval.json key (``'PGD-50'`` for ``'pgd50'``), from the registered types;
  ``None`` for a key no type writes."""
  for t in EVALUATORS.values():
    c = t.column(key)
    if c is not None:
      return c[1]
  return None


def column_order(keys: Iterable[str]) -> list[str]:
  """The eval.json keys among ``keys`` that are columns of a registered type, in table order (by
  the type's rank, then its own order: Natural, PGD-k by k, AA, others, RD)."""
  ranked = []
  for k in dict.fromkeys(keys):
    for i, t in enumerate(EVALUATORS.values()):
      c = t.column(k)
      if c is not None:
        ranked.append(((t.rank, i, c[0]), k))
        break
  return [k for _, k in sorted(ranked, key=lambda r: r[0])]

