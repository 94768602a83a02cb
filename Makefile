# Two commands: `make demo` (set up, run the demo) and `make test` (set up, run every check).
PYTHON ?= python3
VENV ?= .venv
export VENV

.PHONY: demo test setup clean paho-compat

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	bash scripts/bootstrap.sh
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -U pip
	$(VENV)/bin/pip install -q -e .
	touch $@

# The tests also need the dev tools and the host-side training extra (TensorFlow).
$(VENV)/.installed-test: $(VENV)/.installed
	$(VENV)/bin/pip install -q -e '.[dev,train]'
	touch $@

demo: setup
	bash scripts/demo.sh

test: $(VENV)/.installed-test
	bash scripts/test.sh

# edged.publish.paho_client's tests under every supported paho-mqtt minor (venvs in /tmp).
paho-compat:
	bash scripts/paho-compat.sh

clean:
	rm -rf $(VENV) .venv-tflite .mypy_cache .ruff_cache .pytest_cache state
