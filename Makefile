# Quick start: `make demo` and `make test` each create .venv, build the native code and run.
VENV := .venv
ifeq ($(OS),Windows_NT)
PY ?= py -3
VPY := $(VENV)/Scripts/python.exe
else
PY ?= python3
VPY := $(VENV)/bin/python
endif
STAMP := $(VENV)/.installed

.PHONY: venv build test test-fast demo bench fuzz sanitize annotate wheel mutation mutation-report clean

$(VPY):
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip "setuptools>=68" wheel

# Reinstall whenever the build inputs change.
$(STAMP): $(VPY) pyproject.toml setup.py $(wildcard native/*.pyx native/*.pxd native/*.c native/*.h native/*.py)
	$(VPY) -m pip install -q "Cython>=3.1,<4" "cffi>=1.17"
	$(VPY) -m pip install -q --no-build-isolation -e ".[test,sigma]"
	touch $(STAMP)

venv: $(STAMP)

build: $(STAMP)
	$(VPY) setup.py -q build_ext --inplace

test: build
	$(VPY) -m pytest -q

test-fast: build
	$(VPY) -m pytest -q -m "not slow"

demo: build
	$(VPY) -m sensor demo

bench: build
	$(VPY) bench/matcher.py
	$(VPY) bench/pe.py
	$(VPY) bench/forward.py
	$(VPY) bench/pipeline.py

# The installable package for this platform (the project is not on the public package index):
# dist/etw_sensor-<version>-<python>-<platform>.whl and dist/SHA256SUMS to check it on the endpoint.
wheel: $(STAMP)
	$(VPY) -c "import shutil; shutil.rmtree('dist', ignore_errors=True)"
	$(VPY) -m pip wheel -q --no-deps --no-build-isolation -w dist .
	$(VPY) -c "import hashlib, pathlib; d = pathlib.Path('dist'); (d / 'SHA256SUMS').write_text(''.join(f'{hashlib.sha256(w.read_bytes()).hexdigest()}  {w.name}\n' for w in sorted(d.glob('*.whl'))))"
	@cat dist/SHA256SUMS

annotate: $(STAMP)
	SENSOR_ANNOTATE=1 $(VPY) setup.py -q build_ext --inplace --force
	@echo "annotation: native/_matcher.html"

fuzz:
	fuzz/run.sh

# The compiled parts under ASan + UBSan: built into a copy of the project (build/sanitize/tree),
# so the normal build stays as it is; then the native tests and tools/sanitize_drive.py.
sanitize: $(STAMP)
	PY=$(abspath $(VPY)) tools/sanitize.sh

# Mutation testing (slow: a scheduled job, not every CI run). One worker, one module at a time.
#   make mutation                                    every module in tools/mutation.py's map
#   make mutation MODULES="sensor/deliver/spool.py"  just these
MODULES ?=
MUTATION_STAMP := $(VENV)/.mutation-installed
$(MUTATION_STAMP): $(STAMP)
	$(VPY) -m pip install -q "cosmic-ray>=8.7,<9" "coverage>=7.4,<8"
	touch $(MUTATION_STAMP)

mutation: build $(MUTATION_STAMP)
	$(VPY) tools/mutation.py --fail-under $(MODULES)

mutation-report: $(MUTATION_STAMP)
	$(VPY) tools/mutation.py --report

clean:
	rm -rf build dist .mutation *.egg-info sensor/*.so sensor/*/*.so sensor/*/*.pyd native/_matcher.c native/_etw_decode.c native/*.html fuzz/out
