"""What each config key means: ``saat-train --config <file> --config_help`` lists them.

The meanings are the comments of :func:`saat_jax.config_base.base_config` and of the training
methods' ``defaults`` (the sections they own, :class:`saat_jax.methods.MethodDef`), read from their
source (one place to document a key, next to its default): a comment on the line that sets a key, or the
comment lines just above it, belong to that key; above a section (``c.at = ConfigDict(...)``) they
belong to the section and are printed as its heading. The values shown are the loaded config's,
overrides included.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import os
import re
import textwrap
import tokenize

import ml_collections

WIDTH = 120  # the help's line width
_SET = re.compile(r"^\s*c\.([A-Za-z_][\w.]*)\s*=")
_NEW_SECTION = re.compile(r"^\s*c\s*=")


def _source_comments(source: str, prefix: str = "", section: str = "") -> dict[str, str]:
  """``{prefix + key: comment}`` of the ``c.<key> = ...`` lines of ``source``; with ``section``, the
  comment lines above ``c = ...`` (a method's ``defaults``) are that section's."""
  lines = source.splitlines()
  trailing, standalone = {}, {}
  for tok in tokenize.generate_tokens(io.StringIO(source).readline):
    if tok.type == tokenize.COMMENT:
      row = tok.start[0] - 1
      text = tok.string.lstrip("#").strip()
      before = lines[row][:tok.start[1]].strip()
      (trailing if before else standalone)[row] = text
  out: dict[str, str] = {}
  pending: list[str] = []
  for row, line in enumerate(lines):
    if row in standalone:
      pending.append(standalone[row])
      continue
    m = _SET.match(line)
    if m:
      text = " ".join(pending + ([trailing[row]] if row in trailing else []))
      if text:
        out[prefix + m.group(1)] = text
    elif section and _NEW_SECTION.match(line) and pending:
      out[section] = " ".join(pending)
    pending = [] if line.strip() or m else pending
  return out


def key_comments() -> dict[str, str]:
  """``{dotted key: comment}`` from the source of ``base_config`` (keys and sections) and of the
  registered methods' section defaults (:class:`saat_jax.methods.MethodDef`), which also say which
  other sections a method reads."""
  from saat_jax import config_base
  from saat_jax.methods import METHODS

  out = _source_comments(inspect.getsource(config_base.base_config))
  for d in METHODS.values():
    if d.section:
      found = _source_comments(textwrap.dedent(inspect.getsource(d.defaults)), f"{d.section}.", d.section)
      if d.reads:
        found[d.section] = (found.get(d.section, "") + f" Method {d.name!r} also reads the section(s) "
                            + ", ".join(d.reads) + ".").strip()
      out.update(found)
  return out


def flat_keys(config, prefix: str = "") -> list[str]:
  """Every key of ``config`` as ``--config.<key>`` names it (``saat.rho``), sections included."""
  out = []
  for k, v in config.items():
    if hasattr(v, "items"):
      out += flat_keys(v, f"{prefix}{k}.")
    out.append(f"{prefix}{k}")
  return out


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of ``path[:arg]`` as ``--config`` loads it: ``get_config()`` or ``get_config(arg)``
  of the file, imported by path (the file needs no package around it)."""
  path, _, arg = spec.partition(":")
  name = "saat_jax_config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  module_spec = importlib.util.spec_from_file_location(name, path)
  if module_spec is None or module_spec.loader is None:
    raise FileNotFoundError(f"cannot load a config from {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _show(v) -> str:
  if isinstance(v, float):
    k = v * 255
    if v and abs(k - round(k)) < 1e-6 and 0 < abs(k) <= 255:
      return f"{v:.6g} ({round(k)}/255)"
    return repr(v)
  if isinstance(v, tuple):
    v = list(v)
  return repr(v)


def describe(config: ml_collections.ConfigDict, spec: str = "") -> str:
  """Every key of ``config`` with its value and, where ``base_config`` documents it, its meaning;
  sections (``at``, ``saat``, ``eval``, ...) under their own heading."""
  comments = key_comments()
  out = []
  if spec:
    out.append(f"config {spec}: every key, its value here and what it means. Override any of them with "
               f"--config.<key>=<value> (e.g. --config.num_epochs=5); budgets are in [0, 1] pixel units (8/255).")

  def walk(c, prefix: str) -> None:
    scalars = [(k, v) for k, v in c.items() if not isinstance(v, ml_collections.ConfigDict)]
    sections = [(k, v) for k, v in c.items() if isinstance(v, ml_collections.ConfigDict)]
    width = max([len(prefix + k) for k, _ in scalars] + [0])
    rows = [(f"  {prefix + k:<{width}} = {_show(v)}", comments.get(prefix + k, "")) for k, v in scalars]
    column = min(max([len(r) for r, _ in rows] + [0]) + 2, 48)
    for line, note in rows:
      if note:
        wrapped = textwrap.wrap(note, width=max(40, WIDTH - column - 2))
        line = f"{line:<{column}}# {wrapped[0]}" + "".join(f"\n{' ' * column}# {w}" for w in wrapped[1:])
      out.append(line)
    for k, v in sections:
      key = prefix + k
      out.append("")
      out.append(f"[{key}]")
      out.extend(f"  # {w}" for w in textwrap.wrap(comments.get(key, ""), width=WIDTH - 4))
      walk(v, key + ".")

  walk(config, "")
  return "\n".join(out)
