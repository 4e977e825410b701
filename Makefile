# The two commands of the README: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: setup system venv demo test unit lab-up lab-down lab-status clean

setup: system venv

system:
	@sh scripts/install-system-deps.sh

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: setup
	$(BIN)/cowfleet lab up
	$(BIN)/cowfleet demo

test: setup
	@$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc = 5 ]; then echo "pytest collected no tests: that is a failure here"; fi; exit $$rc

unit: venv
	$(BIN)/pytest tests/unit

lab-up: setup
	$(BIN)/cowfleet lab up

lab-down:
	$(BIN)/cowfleet lab down

lab-status:
	$(BIN)/cowfleet lab status

clean:
	rm -rf $(VENV) build *.egg-info
