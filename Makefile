# photodist: two commands for newcomers.
#   make demo  - create a virtual environment if needed, install, run the main job on built-in defaults
#   make test  - install with test extras and run the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of PyTorch. A GPU user installs a CUDA build of torch into the venv before
# running make; an importable torch is never replaced.
TORCH_CPU_VERSION ?= 2.13.0
DEMO_OUT ?= demo_output

.PHONY: install demo test lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "torch==$(TORCH_CPU_VERSION)"
	$(PY) -m pip install -q -e ".[scale,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/photodist demo --out $(DEMO_OUT)

test: install
	$(VENV)/bin/ruff check src tests benchmarks validation
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check src tests benchmarks validation
	$(VENV)/bin/ruff format --check src tests benchmarks validation

clean:
	rm -rf $(VENV) $(DEMO_OUT) .pytest_cache .ruff_cache
