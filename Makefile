# Two entry points: `make run` (the main job) and `make test` (the whole test suite).
# Both create .venv when missing; torch is installed first and pinned exactly, because any
# other spelling can pull a multi-GB CUDA build instead of the CPU wheel.
PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: run test bench bench-containment bench-conformance venv walkthrough third-party

venv: .venv/.installed

.venv/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	touch $@

# The main job: refimpl against torch, ci profile; the report lands in reports/<run-id>/.
run: venv
	.venv/bin/conformance run --optimizer refimpl --profile ci

# First the static checks (about a minute): ruff (lint, and the format `ruff format` writes),
# the import rules of ARCHITECTURE.md (import-linter: [tool.importlinter] in pyproject.toml) and
# mypy --strict on conformance/ and refimpl/ ([tool.mypy] there). Then the tests, on every core
# (pytest-xdist, in the test extra); pytest exits 5 when it collected nothing: that is a
# failure, never a pass. The conformance suite runs with a fixed seed here so CI is
# reproducible; `pytest conformance` alone explores. Last, the package is installed as users
# install it (wheel, clean venv, from a temp directory) and both routes run there
# (scripts/check-install.sh, about a minute).
test: venv
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy
	$(PY) -m pytest -q -n auto --dist worksteal --conformance-seed 0; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi; exit $$rc
	PYTHON=$(PY) bash scripts/check-install.sh

bench: venv
	$(PY) benchmarks/bench_autograd.py

# What each hostile implementation (tests/hostile.py) makes of a run, and isolation's cost.
bench-containment: venv
	$(PY) benchmarks/bench_containment.py

# Throughput: programs/s and actions/s of a ci run (float32, refimpl in-process and a correct
# module:Class in its worker process), the ratio to a bare twin loop over the same programs, and
# where the time goes (torch, the implementation, the twins, Hypothesis).
bench-conformance: venv
	$(PY) benchmarks/bench_conformance.py

# Regenerates the README walkthrough (docs/walkthrough.md, docs/report.png); needs chromium.
walkthrough: venv
	scripts/walkthrough.sh

# Third-party optimizers in the configuration each claims equals torch.optim.SGD, Adam or AdamW
# (examples/third_party/README.md; the Adam ones run with `conformance run --family adam|adamw`),
# ci profile: prints the verdict table; reports in reports/third_party/. timm goes in without its
# dependencies (torchvision pulls a CUDA torch); timm's AdamWLegacy needs none of them either.
third-party: venv
	$(PIP) install --quiet -e '.[test,third-party]'
	$(PIP) install --quiet --no-deps timm==1.0.31
	$(PY) -m examples.third_party.check_all
