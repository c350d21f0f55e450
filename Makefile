# Two commands for a fresh machine: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test test-fast demo bench lint clean

install: $(STAMP)

# torch first, from local disk (pip, not uv/poetry: they would download ~3 GB).
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

test: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not gpu" --durations=20 tests

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not gpu and not slow and not browser" tests

demo: install
	HF_HUB_OFFLINE=1 $(PY) -m sdxl_probe.demo

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; HF_HUB_OFFLINE=1 $(PY) $$b || exit 1; done

lint: install
	$(VENV)/bin/ruff check sdxl_probe tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
