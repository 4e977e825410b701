# The two commands of the README: `make demo` and `make test`.
VENV   ?= .venv
PYTHON ?= python3
BIN     = $(VENV)/bin

.PHONY: setup system venv demo test unit layers lab-up lab-racks lab-down lab-status test-lab clean provider provider-proto provider-docs

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
	@$(BIN)/pytest --durations=25 $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc = 5 ]; then echo "pytest collected no tests: that is a failure here"; fi; exit $$rc

unit: venv
	$(BIN)/pytest tests/unit

# the import-linter contracts of pyproject.toml (part of unit and test too)
layers: venv
	$(BIN)/pytest -q tests/unit/test_layers.py

lab-up: setup
	$(BIN)/cowfleet lab up

# the racks lab: every node in its own network namespace (fake hypervisor)
lab-racks: setup
	$(BIN)/cowfleet lab up --racks 2 --nodes-per-rack 2 --zk 3 --fake

# testinfra on every node of a racks lab of its own, and the racks scenarios
test-lab: setup
	$(BIN)/pytest -m lab tests/lab

lab-down:
	$(BIN)/cowfleet lab down

lab-status:
	$(BIN)/cowfleet lab status

# the Terraform provider: installs it for a local Terraform, prints the CLI config
provider: venv
	$(BIN)/cowfleet terraform install

# regenerate provider-shim/tfplugin5_pb2.py from provider-shim/proto/tfplugin5.proto
provider-proto: venv
	$(BIN)/pip install -q -e '.[dev]'
	cd provider-shim && ../$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=. proto/tfplugin5.proto

# regenerate the provider's registry-style docs (provider-shim/docs) from its
# schema and provider-shim/examples (tests/unit/test_provider_docs.py fails when stale)
provider-docs: venv
	$(BIN)/python -m cowfleet.provider.gen_docs

clean:
	rm -rf $(VENV) build *.egg-info
