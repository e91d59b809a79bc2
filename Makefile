# The two commands: `make demo` (the main job on the local emulator) and `make test` (everything).
# Each builds its own virtualenv from pinned requirements; nothing is installed by hand.

# The Lambda runtime is python3.13: use it where pyenv has it, else the machine's python3.
PYTHON ?= $(shell if PYENV_VERSION=3.13.0 python3 -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then echo "env PYENV_VERSION=3.13.0 python3"; else echo python3; fi)
VENV := .venv
BIN := $(VENV)/bin
RUN := env PYTHONPATH=src:tools AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 PATH=$(CURDIR)/$(BIN):$$PATH

.PHONY: demo demo-generalize test bench serve lint build schema asl clean

$(BIN)/.installed: requirements-dev.txt src/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements-dev.txt
	touch $@

demo: $(BIN)/.installed
	$(RUN) $(BIN)/python -m ami_factory_local demo $(if $(GENERALIZE),--generalize)

# The same demo, with a Windows instance sysprepped on a temporary clone.
demo-generalize: $(BIN)/.installed
	$(RUN) $(BIN)/python -m ami_factory_local demo --generalize

test: $(BIN)/.installed
	$(RUN) $(BIN)/python -m pytest

bench: $(BIN)/.installed
	$(RUN) $(BIN)/python -m ami_factory_local bench

serve: $(BIN)/.installed
	$(RUN) $(BIN)/python -m ami_factory_local serve

lint: $(BIN)/.installed
	$(RUN) $(BIN)/sam validate --lint -t template.yaml

build: $(BIN)/.installed
	$(RUN) PYENV_VERSION=3.13.0 $(BIN)/sam build

schema: $(BIN)/.installed
	$(RUN) $(BIN)/python tools/write_schema.py

# The state machine is generated: edit tools/write_asl.py, then rewrite the ASL.
asl: $(BIN)/.installed
	$(RUN) $(BIN)/python tools/write_asl.py

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache
