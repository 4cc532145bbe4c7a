#!/usr/bin/env bash
# Mutation testing of the pure cores with mutmut (not part of CI: minutes of
# CPU per module). Each module is mutated on its own, in a scratch copy of
# the tree, against the fast tests of its area; a surviving mutant is a
# change to the code that no test noticed. Every survivor either gets a test
# or a line in docs/mutation.md saying why it is equivalent or harmless.
#
#   bench/mutation.sh                    every module below
#   bench/mutation.sh backoff keepalive  some of them (by short name)
#   KEEP=1 bench/mutation.sh book        keep the scratch copy (mutmut show ...)
#
# Prints, per module: mutants, killed, survived (and any timeouts/suspicious).
# Runs under nice: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
"$PY" -c 'import mutmut' 2>/dev/null || "$PY" -m pip install -q 'mutmut>=3.8,<4'

# short name | module | its fast tests
MODULES=(
  "backoff|feedsup/supervisor/backoff.py|tests/test_backoff.py tests/test_policy.py"
  "budget|feedsup/supervisor/budget.py|tests/test_budget.py tests/test_policy.py"
  "keepalive|feedsup/workers/keepalive.py|tests/test_keepalive.py"
  "policy|feedsup/supervisor/policy.py|tests/test_policy.py tests/test_policy_edges.py tests/test_parent_actions.py tests/test_metrics.py"
  "book|feedsup/binance/book.py|tests/test_book.py tests/test_book_edges.py"
)

wanted=("$@")
summary=()
for entry in "${MODULES[@]}"; do
  IFS="|" read -r name module tests <<<"$entry"
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then
    continue
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/feedsup-mutation-$name.XXXXXX")
  cp -r feedsup tests setup.cfg "$work/"
  {
    cat pyproject.toml
    echo
    echo "[tool.mutmut]"
    echo "source_paths = [\"feedsup\"]"
    echo "only_mutate = [\"$module\"]"
    printf 'pytest_add_cli_args_test_selection = [%s]\n' \
      "$(printf '"%s", ' $tests | sed 's/, $//')"
    echo 'pytest_add_cli_args = ["-p", "no:cacheprovider", "-q"]'
  } >"$work/pyproject.toml"
  echo "== $name: $module against $tests ($work)"
  (cd "$work" && CI=1 nice -n 10 "$PY" -m mutmut run --max-children 1 >"$work/run.log" 2>&1) || true
  (cd "$work" && "$PY" -m mutmut results --all true >"$work/results.txt" 2>&1) || true
  total=$(grep -c ': ' "$work/results.txt" || true)
  killed=$(grep -c ': killed' "$work/results.txt" || true)
  survived=$(grep -c ': survived' "$work/results.txt" || true)
  other=$((total - killed - survived))
  line="$name: mutants $total, killed $killed, survived $survived, other $other"
  echo "$line"
  grep -v ': killed' "$work/results.txt" | sed 's/^/    /' || true
  summary+=("$line")
  [ -n "${KEEP:-}" ] || rm -rf "$work"
done
echo
printf '%s\n' "${summary[@]}"
