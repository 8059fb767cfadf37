# The two commands of a fresh machine:
#   make demo   napari with the plugin on a generated sample (headless: Xvfb, screenshot + mask in demo-output/)
#   make test   the whole test suite
# Both create .venv, install the CPU torch wheel first (a bare `torch` requirement would pull
# gigabytes of CUDA packages), then the package with its test/GUI extras; on Debian as root they
# also install Xvfb and the Qt system libraries when missing. Re-runs skip what is already done.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# Machines with a local CPU wheel (find-links) take it; elsewhere use PyTorch's CPU index.
TORCH_SOURCE ?= $(if $(wildcard /opt/wheels/torch-$(TORCH_VERSION)*),,--index-url https://download.pytorch.org/whl/cpu)
STAMP := $(VENV)/.napari-lgms-installed
APT_PACKAGES := xvfb xauth libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
	libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xkb1 libxkbcommon-x11-0 \
	libxcb-cursor0 libgl1 libegl1 libdbus-1-3
# Run GUI code on a virtual screen when there is no display.
HEADLESS = $(if $(DISPLAY),,$(if $(shell command -v xvfb-run),xvfb-run -a -s "-screen 0 1400x1000x24",))
PYTEST_ARGS ?=

.PHONY: demo test setup system-deps wheel weights screenshots benchmark clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch==$(TORCH_VERSION) $(TORCH_SOURCE)
	$(PIP) install -q -e ".[test]"
	@touch $(STAMP)

system-deps:
	@if command -v dpkg-query >/dev/null 2>&1 && ! dpkg-query -W $(APT_PACKAGES) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Xvfb and the Qt system libraries"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES) >/dev/null; \
	  else \
	    echo "missing system packages for Qt/Xvfb ($(APT_PACKAGES)); GUI tests will be skipped"; \
	  fi; \
	fi

demo: setup system-deps
	$(HEADLESS) $(PY) scripts/demo.py $(if $(DISPLAY),,--screenshot demo-output)

test: setup system-deps
	$(HEADLESS) $(PY) -m pytest $(PYTEST_ARGS)

wheel: setup
	$(PY) -m build --wheel --outdir dist .

weights: setup
	$(PY) scripts/train_weights.py

screenshots: setup system-deps
	$(HEADLESS) $(PY) scripts/screenshots.py

benchmark: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf build dist demo-output .pytest_cache
