# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO_OUT ?= demo-output

.PHONY: demo test install lint clean

# torch first, pinned, so pip takes the CPU build from disk and nothing pulls a CUDA build.
# The rest goes through uv (about 60 s against pip's 130 s here, bytecode compiled: imports in
# every Ray worker would otherwise parse source each time); pip takes over if uv fails.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0 uv
	$(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python -e ".[cpu,test]" \
		|| $(BIN)/pip install -q -e ".[cpu,test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/dsco demo --out $(DEMO_OUT) --ipc 10

# The RADOS Gateway (real S3 server) is installed here and started/stopped by the tests.
test: install
	bash tests/s3/radosgw.sh install
	$(BIN)/python -m pytest -q --durations=15 tests

lint: install
	$(BIN)/flake8 pipeline actors cluster tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_OUT) *.egg-info
