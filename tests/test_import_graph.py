"""The package's import graph: no cycles between its modules, and no module reaching into another's
private names (``from saat_jax.x import _y`` or ``x._y``), so that every module's private helpers can
change without breaking another (issue 20). Read from the source with ``ast``; nothing is imported.
"""

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "saat_jax"


def module_name(path: Path) -> str:
  rel = path.relative_to(PKG.parent).with_suffix("")
  parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
  return ".".join(parts)


def modules() -> dict:
  return {module_name(p): ast.parse(p.read_text(), str(p)) for p in sorted(PKG.rglob("*.py"))}


def imported(name: str, tree: ast.AST, known) -> list:
  """``[(module imported, private names taken from it, line)]`` of one module's imports."""
  out = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.startswith("saat_jax"):
      for a in node.names:
        sub = f"{node.module}.{a.name}"
        target = sub if sub in known else node.module
        out.append((target, [a.name] if a.name.startswith("_") and target != sub else [], node.lineno))
    elif isinstance(node, ast.Import):
      out += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("saat_jax")]
  return out


def private_attribute_uses(tree: ast.AST, known) -> list:
  """``x._y`` where ``x`` is bound in this module to another saat_jax module."""
  bound = {}
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("saat_jax"):
      for a in node.names:
        if f"{node.module}.{a.name}" in known:
          bound[a.asname or a.name] = f"{node.module}.{a.name}"
    elif isinstance(node, ast.Import):
      for a in node.names:
        if a.name in known and a.asname:
          bound[a.asname] = a.name
  return [(bound[n.value.id], n.attr, n.lineno) for n in ast.walk(tree)
          if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
          and n.attr.startswith("_") and not n.attr.startswith("__")]


def test_no_module_uses_another_modules_private_names():
  mods = modules()
  found = []
  for name, tree in mods.items():
    for target, private, line in imported(name, tree, mods):
      found += [f"{name}:{line} imports {target}.{p}" for p in private]
    found += [f"{name}:{line} uses {target}.{attr}" for target, attr, line in private_attribute_uses(tree, mods)
              if target != name]
  assert not found, "private names used across modules (make them public or move them):\n" + "\n".join(found)


def test_the_module_graph_has_no_cycle():
  """Module-level imports only (an import inside a function is the way to break a needed cycle)."""
  mods = modules()
  graph = {}
  for name, tree in mods.items():
    deps = set()
    for node in tree.body:  # top level only
      if isinstance(node, (ast.Import, ast.ImportFrom)):
        for target, _, _ in imported(name, ast.Module(body=[node], type_ignores=[]), mods):
          if target in mods and target != name and not name.startswith(target + "."):
            deps.add(target)  # a package's __init__ importing its submodules is not a cycle
    graph[name] = deps
  state, cycles = {}, []

  def visit(n, stack):
    state[n] = "open"
    for d in sorted(graph.get(n, ())):
      if d.startswith(n + "."):
        continue  # a package importing its own submodules
      if state.get(d) == "open":
        cycles.append(" -> ".join(stack[stack.index(d):] + [d]) if d in stack else f"{n} -> {d}")
      elif d not in state:
        visit(d, stack + [d])
    state[n] = "done"

  for n in sorted(graph):
    if n not in state:
      visit(n, [n])
  assert not cycles, "import cycles between modules:\n" + "\n".join(cycles)


TESTS = PKG.parent / "tests"


def patched_names(tree: ast.AST) -> set:
  """Names a test replaces with ``monkeypatch.setattr(module, "_name", fake)`` (fault injection:
  what is asserted is the public behaviour around the fake)."""
  return {n.args[1].value for n in ast.walk(tree)
          if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "setattr"
          and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant) and isinstance(n.args[1].value, str)}


def test_tests_reach_the_package_through_its_public_names():
  """A test calls what the package offers: private helpers are tested through public functions, so
  they can change without rewriting tests (issue 20, item 6). Replacing a private function with a
  fake (``monkeypatch.setattr``) to inject a fault is allowed, and so is reading the real one to wrap."""
  mods = modules()
  found = []
  for path in sorted(TESTS.glob("*.py")):
    tree = ast.parse(path.read_text(), str(path))
    patched = patched_names(tree)
    name = f"tests/{path.name}"
    for target, private, line in imported(name, tree, mods):
      found += [f"{name}:{line} imports {target}.{p}" for p in private]
    found += [f"{name}:{line} uses {target}.{attr}" for target, attr, line in private_attribute_uses(tree, mods)
              if attr not in patched]
  assert not found, "tests using private names of saat_jax (test through a public function, or make it public):\n" + "\n".join(found)


_IMPORT_EVERY_TEST_MODULE = """
import importlib, sys
from pathlib import Path
tests = Path(sys.argv[1])
sys.path.insert(0, str(tests))
for path in sorted(tests.glob("test_*.py")):
  importlib.import_module(path.stem)
from jax._src import xla_bridge
print("initialised" if xla_bridge.backends_are_initialized() else "not initialised")
"""


@pytest.mark.slow  # imports every test module (torch, the reference AutoAttack, ...): 9 s
def test_no_test_module_starts_jax_when_imported():
  """Collection imports every test module in every xdist worker, and mutmut's fork server imports
  them before it forks (docs/mutation.md): JAX work at import time (module-level weights, a key in a
  parametrize list) costs each worker its compilations (13 of them, 11 s, in one file once) and hangs
  the forked mutants. Build such values in a fixture or a functools.cache'd function instead."""
  import subprocess
  import sys

  from jax._src import xla_bridge

  if not hasattr(xla_bridge, "backends_are_initialized"):
    pytest.skip("this JAX has no xla_bridge.backends_are_initialized")
  tests = Path(__file__).resolve().parent
  proc = subprocess.run([sys.executable, "-c", _IMPORT_EVERY_TEST_MODULE, str(tests)], capture_output=True, text=True,
                        timeout=300, cwd=tests.parent)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert proc.stdout.split() == ["not", "initialised"], "a test module ran JAX when imported: " + proc.stdout
