# The two commands: `make demo` (the main job on the local emulator) and `make test` (everything).
# Each builds its own virtualenv from the lock (requirements-dev.txt); nothing is installed by hand.

# The Lambda runtime is python3.13: use it where pyenv has it, else the machine's python3.
PYTHON ?= $(shell if PYENV_VERSION=3.13.0 python3 -c 'import sys; assert sys.version_info[:2] == (3, 13)' >/dev/null 2>&1; then echo "env PYENV_VERSION=3.13.0 python3"; else echo python3; fi)
VENV := .venv
BIN := $(VENV)/bin
RUN := env PYTHONPATH=src:tools AWS_DEFAULT_REGION=us-east-1 SAM_CLI_TELEMETRY=0 PATH=$(CURDIR)/$(BIN):$$PATH

.PHONY: demo demo-generalize test unit lint mutation mutation-score iam-report bench serve build schema asl documents lock clean

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

# The lint gate, then the whole suite: the README's test command, and so CI's.
test: lint
	$(RUN) $(BIN)/python -m pytest -n 2

# The fast loop while you work: no subprocesses, no sam build.
unit: $(BIN)/.installed
	$(RUN) $(BIN)/python -m pytest -n 2 -m "not slow"

# Mutation testing (mutmut) of the rule and decision modules: each mutant against the 20 fastest tests
# that reach its function, then the survivors against the 100 fastest (tools/mutation.py says why),
# then the score. Results are kept in mutants/: a second run only re-tests what changed.
# `mutmut results` lists the survivors, `mutmut show NAME` shows one.
mutation: $(BIN)/.installed
	env SAM_CLI_TELEMETRY=0 $(BIN)/python tools/mutation.py run --max-children 2
	env SAM_CLI_TELEMETRY=0 $(BIN)/python tools/mutation.py recheck
	$(BIN)/python tools/mutation_score.py

mutation-score: $(BIN)/.installed
	$(BIN)/python tools/mutation_score.py

# Over-privilege: the suite runs with every role's grants and uses recorded, then each role's grants
# that no test path used are listed (with the justification, or UNUSED: then it fails).
iam-report: $(BIN)/.installed
	rm -rf .iam-usage && mkdir .iam-usage
	$(RUN) AMI_FACTORY_IAM_USAGE=$(CURDIR)/.iam-usage $(BIN)/python -m pytest -n 2 -q tests/workflow tests/security tests/handlers tests/cli
	$(RUN) $(BIN)/python tools/iam_report.py --strict .iam-usage

bench: $(BIN)/.installed
	$(RUN) $(BIN)/python -m ami_factory_local bench

serve: $(BIN)/.installed
	$(RUN) $(BIN)/python -m ami_factory_local serve

lint: $(BIN)/.installed
	$(RUN) $(BIN)/ruff check .
	$(RUN) $(BIN)/ruff format --check .
	$(RUN) $(BIN)/mypy
	$(RUN) $(BIN)/sam validate --lint -t template.yaml
	$(RUN) $(BIN)/cfn-lint template.yaml examples/*.yaml
	$(RUN) $(BIN)/python tools/check_scripts.py

build: $(BIN)/.installed
	$(RUN) PYENV_VERSION=3.13.0 $(BIN)/sam build

# One lock, two files: the development environment (every Python from 3.11, universal) and the
# Lambda layer (python3.13 on Amazon Linux 2023, x86_64), the layer held to the versions tested.
# uv, because it resolves for a platform other than this machine's; pip-tools cannot.
lock: $(BIN)/.installed
	$(BIN)/uv pip compile pyproject.toml --group dev --universal --python-version 3.11 \
		--custom-compile-command "make lock" -o requirements-dev.txt
	$(BIN)/uv pip compile pyproject.toml --python-version 3.13 --python-platform x86_64-manylinux_2_34 \
		-c requirements-dev.txt --custom-compile-command "make lock" -o src/requirements.txt

schema: $(BIN)/.installed
	$(RUN) $(BIN)/python tools/write_schema.py

# The state machine is generated: edit tools/write_asl.py, then rewrite the ASL.
asl: $(BIN)/.installed
	$(RUN) $(BIN)/python tools/write_asl.py

# The SSM documents in template.yaml are generated from src/ami_factory/scripts: edit a script, then this.
documents: $(BIN)/.installed
	$(RUN) $(BIN)/python tools/write_documents.py

clean:
	rm -rf $(VENV) .aws-sam .pytest_cache .mypy_cache .ruff_cache mutants
