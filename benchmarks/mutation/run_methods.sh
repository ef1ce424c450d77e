#!/usr/bin/env bash
# Mutation testing of other modules than pyproject.toml's [tool.mutmut] (docs/mutation.md).
#
# The [tool.mutmut] section of pyproject.toml mutates attack.py, losses.py and awp.py against their
# fast tests. Other modules run here, in a copy of the working tree whose pyproject.toml selects
# their modules and tests instead: the checkout itself is only read. Default: saat_jax/methods/
# against tests/test_methods.py (one training step of every method against a slow implementation).
#
#   bash benchmarks/mutation/run_methods.sh [WORKDIR [MUTANT_PATTERN ...]]   # then: cd WORKDIR && mutmut results
#   MUTATE='"saat_jax/evaluators/*"' TESTS='"tests/test_evaluators.py", "tests/test_autoattack_checks.py"' \
#     bash benchmarks/mutation/run_methods.sh /tmp/mut_evaluators
#
# MUTANT_PATTERNs (mutmut's names, fnmatch) restrict the run to some functions of the mutated files,
# e.g. 'saat_jax.train.x_make_optimizer__mutmut_*'; PYTEST_ARGS adds pytest arguments to every test
# run (e.g. '"-k", "not resume"'); TIMEOUT_S is the seconds a mutant may take beyond its tests' clean
# time (default 300: a mutant that changes a jitted function recompiles it, which is not a hang).
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
work=${1:-$(mktemp -d /tmp/saat_mutation_methods.XXXXXX)}
shift || true
mkdir -p "$work"
# tracked and untracked-but-not-ignored files, as they are in the working tree
(cd "$repo" && { git ls-files; git ls-files --others --exclude-standard; } | sort -u |
   while read -r f; do [ -f "$f" ] && printf '%s\0' "$f"; done | tar --null -T - -cf -) | tar -xf - -C "$work"
export MUTATE=${MUTATE:-'"saat_jax/methods/*"'}
# test_train_pieces.py: the methods' own checks (MethodDef.validate, e.g. trades_problems) moved into
# methods/ with issue 20 and are tested there, by validate_config at every boundary. test_extending.py:
# the registry (MethodDef's own checks, register, method_def), which the package runs at import time,
# before mutmut activates a mutant: only a test that builds and registers a method reaches it.
export TESTS=${TESTS:-'"tests/test_methods.py", "tests/test_mutation_killers.py", "tests/test_train_pieces.py", "tests/test_extending.py"'}
export PYTEST_ARGS=${PYTEST_ARGS:-} TIMEOUT_S=${TIMEOUT_S:-300}
python - "$work/pyproject.toml" <<'PY'
import os
import sys
path = sys.argv[1]
text = open(path).read()
head = text[:text.index("[tool.mutmut]")]
open(path, "w").write(head + f'''[tool.mutmut]
source_paths = ["saat_jax"]
only_mutate = [{os.environ["MUTATE"]}]
pytest_add_cli_args_test_selection = [{os.environ["TESTS"]}]
pytest_add_cli_args = ["-p", "no:cacheprovider"{", " + os.environ["PYTEST_ARGS"] if os.environ["PYTEST_ARGS"] else ""}]
also_copy = ["configs"]
process_isolation = "forkserver"
timeout_constant = {int(os.environ["TIMEOUT_S"])}
''')
PY
# A persistent compilation cache: every mutant recompiles only what its mutation changed.
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$work/.jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=-1
export XLA_FLAGS="${XLA_FLAGS:-} --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
cd "$work"
echo "mutating $MUTATE in $work"
mutmut run --max-children "${MUTMUT_CHILDREN:-2}" "$@"
mutmut results
