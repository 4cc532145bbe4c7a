#!/usr/bin/env bash
# Mutation testing of the pure cores and the wiring with mutmut (not CI: minutes of
# CPU per module). Each module is mutated on its own, in a scratch copy of
# the tree, against the fast tests of its area; a surviving mutant is a
# change to the code that no test noticed. Every survivor either gets a test
# or a line in docs/mutation.md saying why it is equivalent or harmless.
#
#   bench/mutation.sh                    every module below
#   bench/mutation.sh backoff keepalive  some of them (by short name)
#   KEEP=1 bench/mutation.sh book        keep the scratch copy (mutmut show ...)
#   bench/mutation.sh --list             the names, modules, tests and functions
#   TESTS="tests/a.py tests/b.py" bench/mutation.sh account
#                                        other tests than MODULES names (a "before"
#                                        figure against the suite without new tests)
#
# A target may mutate only some functions of its module (the wiring: parent,
# runtime, account resync): a fourth field names them, "Class.method" or
# "function", and only those mutants are run (the others show as "not
# checked" and are not counted). mutmut maps tests to mutants by running the
# tests in-process, so code that only runs in a child process (a worker
# spawned by an e2e test) has "no tests": each wiring target names the
# functions its in-process tests reach.
#
# Prints, per module: mutants, killed, survived (and any timeouts/suspicious).
# Runs under nice: the machine is shared.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

# short name | module | its fast tests
MODULES=(
  "backoff|feedsup/supervisor/backoff.py|tests/test_backoff.py tests/test_policy.py"
  "budget|feedsup/supervisor/budget.py|tests/test_budget.py tests/test_policy.py"
  "keepalive|feedsup/workers/keepalive.py|tests/test_keepalive.py"
  "policy|feedsup/supervisor/policy.py|tests/test_policy.py tests/test_policy_edges.py tests/test_parent_actions.py tests/test_metrics.py"
  "book|feedsup/binance/book.py|tests/test_book.py tests/test_book_edges.py"
  "sequencer|feedsup/supervisor/sequencer.py|tests/test_sequencer.py tests/test_state.py tests/test_parent_input.py"
  "backfill|feedsup/binance/backfill.py|tests/test_backfill.py tests/test_mutation_kills_backfill.py"
  "restlimit|feedsup/restlimit.py|tests/test_restlimit.py tests/test_mutation_kills_restlimit.py"
  "state|feedsup/supervisor/state.py|tests/test_state.py tests/test_parent_actions.py tests/test_sink_parent.py tests/test_mutation_kills_state.py"
  "parent|feedsup/supervisor/parent.py|tests/test_parent_actions.py tests/test_parent_input.py tests/test_sink_parent.py tests/test_state.py tests/test_mutation_kills_parent.py|Parent._drain Parent._vet Parent._owns Parent._worker_gap Parent._reject Parent._publish Parent._sink_seeded Parent._announce_loss Parent._last_ms Parent._close_gap Parent.hello Parent._control_message Parent._on_control Parent._serve_control Parent._execute Parent._restore_state Parent._save_state Parent._resume_marks"
  "runtime|feedsup/workers/runtime.py|tests/test_mutation_kills_runtime.py|Runtime.stats Runtime._idle Runtime.finish Runtime.notice Runtime.ready Runtime.streaming Runtime._on_signal Runtime.end Runtime.ending receive handle_other read_event classify_status close_reason check_symbols"
  "account|feedsup/workers/account.py|tests/test_account_resync.py::test_snapshots_are_ordered_by_exchange_time_not_the_wall_clock tests/test_mutation_kills_account.py|resync SnapshotFetch.* read_until_done publish publish_snapshot receive stream_topic drain"
)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${MODULES[@]}" | tr '|' '\t'
  exit 0
fi

PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
"$PY" -c 'import mutmut' 2>/dev/null || "$PY" -m pip install -q 'mutmut>=3.8,<4'

# "Class.method" -> mutmut's name glob for its mutants; "function" likewise.
globs() {
  local module=$1; shift
  local dotted=${module%.py}; dotted=${dotted//\//.}
  for fn in "$@"; do
    if [[ $fn == *.* ]]; then
      echo "$dotted.xǁ${fn%%.*}ǁ${fn#*.}__mutmut_*"
    else
      echo "$dotted.x_${fn}__mutmut_*"
    fi
  done
}

wanted=("$@")
summary=()
for entry in "${MODULES[@]}"; do
  IFS="|" read -r name module tests functions <<<"$entry"
  tests=${TESTS:-$tests}
  tests=$(for t in $tests; do if [ -e "${t%%::*}" ]; then printf '%s ' "$t"; fi; done)
  if [ ${#wanted[@]} -gt 0 ] && [[ ! " ${wanted[*]} " =~ " $name " ]]; then
    continue
  fi
  work=$(mktemp -d "${TMPDIR:-/tmp}/feedsup-mutation-$name.XXXXXX")
  cp -r feedsup tests docs setup.cfg "$work/"
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
  selection=()
  if [ -n "${functions:-}" ]; then
    mapfile -t selection < <(globs "$module" $functions)
    echo "   functions: $functions"
  fi
  start=$SECONDS
  (cd "$work" && CI=1 nice -n 10 "$PY" -m mutmut run --max-children 1 "${selection[@]}" >"$work/run.log" 2>&1) || true
  (cd "$work" && "$PY" -m mutmut results --all true 2>&1 | grep -v ': not checked' >"$work/results.txt") || true
  total=$(grep -c ': ' "$work/results.txt" || true)
  killed=$(grep -c ': killed' "$work/results.txt" || true)
  survived=$(grep -c ': survived' "$work/results.txt" || true)
  other=$((total - killed - survived))
  line="$name: mutants $total, killed $killed, survived $survived, other $other ($((SECONDS - start)) s)"
  echo "$line"
  grep -v ': killed' "$work/results.txt" | sed 's/^/    /' || true
  summary+=("$line")
  [ -n "${KEEP:-}" ] || rm -rf "$work"
done
echo
printf '%s\n' "${summary[@]}"
