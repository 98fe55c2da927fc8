#!/usr/bin/env bash
# Installs sgd-conformance as a user does and checks both routes from outside the source tree:
# `python -m build` makes a wheel and an sdist; a clean venv in a temporary directory gets
# `pip install torch==2.13.0` first (that exact spelling: any other can pull a multi-GB CUDA
# build), then the wheel with its [conformance] extra; then, from an empty directory (so the
# source tree cannot be imported), `conformance run --profile dev` (refimpl) must exit 0 and
# write a report, and `pytest --pyargs conformance` must pass both dtypes and write one too.
# Installed without the extra (numpy only), `conformance run` must exit 2 naming the extra.
# `make test` runs it after pytest and ruff. PYTHON: the interpreter with `build` (default
# .venv/bin/python); BASE_PYTHON: the one the clean venv is made from (default python3).
set -euo pipefail

root="$(cd "$(dirname "$0")/.." && pwd)"
py="${PYTHON:-$root/.venv/bin/python}"
base="${BASE_PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/sgd-conformance-install.XXXXXX")"
trap 'rm -rf "$work"' EXIT
unset PYTHONPATH
start=$SECONDS

fail() { echo "check-install: $*" >&2; exit 1; }

echo "check-install: building the wheel and the sdist"
"$py" -m build --outdir "$work/dist" "$root" >"$work/build.log" 2>&1 \
    || { cat "$work/build.log" >&2; fail "python -m build failed"; }
wheels=("$work"/dist/*.whl)
sdists=("$work"/dist/*.tar.gz)
[ -f "${wheels[0]}" ] || fail "no wheel was built"
[ -f "${sdists[0]}" ] || fail "no sdist was built"
wheel="${wheels[0]}"
# the pytest route's test module, the plugin and the report schema ship in both
"$py" - "$wheel" "${sdists[0]}" <<'EOF' || fail "a file is missing from the wheel or the sdist"
import sys, tarfile, zipfile
wheel = set(zipfile.ZipFile(sys.argv[1]).namelist())
sdist = {name.split("/", 1)[1] for name in tarfile.open(sys.argv[2]).getnames() if "/" in name}
needed = ["conformance/test_conformance.py", "conformance/pytest_plugin.py",
          "conformance/report_schema.json", "conformance/__main__.py", "refimpl/optim.py"]
missing = [f"wheel: {n}" for n in needed if n not in wheel]
missing += [f"sdist: {n}" for n in needed if n not in sdist]
if missing:
    sys.exit("missing " + ", ".join(missing))
EOF

echo "check-install: without the [conformance] extra, a run says what to install (exit 2)"
"$base" -m venv "$work/bare"
"$work/bare/bin/python" -m pip --quiet --disable-pip-version-check install "$wheel"
mkdir "$work/bare-run"
rc=0
(cd "$work/bare-run" && "$work/bare/bin/conformance" run --profile dev) 2>"$work/bare.err" || rc=$?
[ "$rc" -eq 2 ] || { cat "$work/bare.err" >&2; fail "conformance run without the extra exited $rc (2 expected)"; }
grep -q "pip install 'sgd-conformance\[conformance\]'" "$work/bare.err" && [ "$(wc -l <"$work/bare.err")" -eq 1 ] \
    || { cat "$work/bare.err" >&2; fail "conformance run without the extra did not name it in one line"; }

echo "check-install: installing torch==2.13.0, then the wheel with [conformance], into a clean venv"
"$base" -m venv "$work/venv"
pip=("$work/venv/bin/python" -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install torch==2.13.0
"${pip[@]}" install "$wheel[conformance]"

mkdir "$work/run"
cd "$work/run"
"$work/venv/bin/python" - "$work/venv" <<'EOF' || fail "conformance is imported from the source tree"
import sys
import conformance
if not conformance.__file__.startswith(sys.argv[1]):
    sys.exit(f"conformance imported from {conformance.__file__}")
EOF

echo "check-install: conformance run --profile dev (refimpl)"
"$work/venv/bin/conformance" run --profile dev --seed 0 \
    || fail "conformance run exited $? (0 expected)"
ls reports/*/report.json >/dev/null 2>&1 || fail "conformance run wrote no report"
rm -r reports

echo "check-install: pytest --pyargs conformance --optimizer torch.optim:SGD"
rc=0
"$work/venv/bin/python" -m pytest -q -p no:cacheprovider --pyargs conformance \
    --optimizer torch.optim:SGD --conformance-profile dev --conformance-seed 0 || rc=$?
[ "$rc" -ne 5 ] || fail "pytest --pyargs conformance collected no test"
[ "$rc" -eq 0 ] || fail "pytest --pyargs conformance exited $rc (0 expected)"
ls reports/*/report.json >/dev/null 2>&1 || fail "the pytest route wrote no report"

echo "check-install: passed in $((SECONDS - start)) s"
