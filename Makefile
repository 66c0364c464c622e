# The two README commands: `make demo` and `make test`. Both create (or reuse) .venv first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Re-install whenever pyproject.toml changes (the stamp is named by its hash).
STAMP := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)
# Where torch JIT-builds extensions (the engine skips DeepSpeed's inference-only comm kernel, the one the
# demo built); in the venv: a build is tied to its venv's paths, so two clones sharing one folder rebuild.
export TORCH_EXTENSIONS_DIR ?= $(abspath $(VENV))/torch_extensions
PYTEST_ARGS ?=

.PHONY: install demo test test-fast

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

demo: $(STAMP)
	$(VENV)/bin/codiray demo

# The report's browser test (tests/codiray/test_report.py) opens report.html in Debian's `chromium`:
# installed here when missing, before the network namespace cuts the package mirrors off. Without
# root (and no password-less sudo) it says so in one line and the browser test is skipped.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
define ensure_chromium
	@command -v chromium >/dev/null 2>&1 || { echo "installing Debian's chromium for the browser test"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
	  --no-install-recommends chromium >/dev/null; } || echo "chromium could not be installed: the browser test will be skipped"
endef

# Hermetic: a private network namespace with only loopback up, so Ray and every test server bind
# 127.0.0.1 and any accidental download fails loudly.
test: $(STAMP)
	$(ensure_chromium)
	unshare --net --map-root-user sh -c 'ip link set lo up && exec $(PY) -m pytest $(PYTEST_ARGS)'

# The fast subset: every test that starts neither Ray nor DeepSpeed (`slow` marks those).
test-fast: $(STAMP)
	unshare --net --map-root-user sh -c 'ip link set lo up && exec $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)'
