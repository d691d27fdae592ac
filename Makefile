# The two set-up commands of the README:
#   make demo   -- the embedded small world, end to end
#   make test   -- the test suite (what .ci/run calls): the main venv's tests, then tests/official
#                  in the side venvs whose pins the official NOVA / Harmon code needs
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

# side venvs for the official model code (envs/make-venv.sh: the main venv + these pins on top)
OFFICIAL_VENVS := .venv-nova .venv-harmon
OFFICIAL_STAMPS := $(addsuffix /.installed,$(OFFICIAL_VENVS))

.PHONY: demo test install official-venvs clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[pipeline,dev]'
	touch $(STAMP)

install: $(STAMP)

.venv-%/.installed: envs/%-requirements.txt envs/make-venv.sh $(STAMP)
	envs/make-venv.sh .venv-$* envs/$*-requirements.txt

official-venvs: $(OFFICIAL_STAMPS)

# both suites run; the target fails if either does
test: $(STAMP) $(OFFICIAL_STAMPS)
	@rc=0; \
	$(BIN)/python -m pytest -q --ignore=tests/official $(PYTEST_ARGS) || rc=1; \
	echo "[make test] tests/official against the official NOVA and Harmon code"; \
	.venv-harmon/bin/python -m pytest -q tests/official/test_harmon_official.py $(PYTEST_ARGS) || rc=1; \
	.venv-nova/bin/python -m pytest -q tests/official/test_nova_official.py tests/official/test_schedule_diffusers.py \
		$(PYTEST_ARGS) || rc=1; \
	exit $$rc

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/marpipe demo
