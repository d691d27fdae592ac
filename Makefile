# The two set-up commands of the README:
#   make demo   -- the embedded small world, end to end
#   make test   -- the test suite (what .ci/run calls): the main venv's tests, then tests/official
#                  in the side venvs whose pins the official NOVA / Harmon code needs
# and, on demand:
#   make mutation -- mutation testing (mutmut, [tool.mutmut] in pyproject.toml) of the RL core
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

# side venvs for the official model code (envs/make-venv.sh: the main venv + these pins on top)
OFFICIAL_VENVS := .venv-nova .venv-harmon
OFFICIAL_STAMPS := $(addsuffix /.installed,$(OFFICIAL_VENVS))

.PHONY: demo study rehearse test test-fast test-kernels install official-venvs clean mutation

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[pipeline,dev]'
	touch $(STAMP)

install: $(STAMP)

# NOVA's official package diffnext is not on PyPI: it goes into .venv-nova at the pinned commit, from
# GitHub, or from a local copy of that commit where one exists (the official code the tests read)
NOVA_COMMIT := 2cd254afdedae8670ccb492c28c53caa08f7b5a0
OFFICIAL    ?= $(or $(MARPIPE_OFFICIAL_CODE),../shared/official)
DIFFNEXT    ?= $(if $(wildcard $(OFFICIAL)/NOVA/setup.py),$(OFFICIAL)/NOVA,git+https://github.com/baaivision/NOVA.git@$(NOVA_COMMIT))
.venv-nova/.installed: EXTRA_NO_DEPS = $(DIFFNEXT)

.venv-%/.installed: envs/%-requirements.txt envs/make-venv.sh $(STAMP)
	EXTRA_NO_DEPS="$(EXTRA_NO_DEPS)" envs/make-venv.sh .venv-$* envs/$*-requirements.txt

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

# the development tier: unit and stage tests in the main venv (no SLURM, no side venvs, no end-to-end
# runs: the `slow` marker, tests/infra, tests/pipeline, tests/official); `make test` stays the full suite
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" tests/core tests/bench tests/io tests/tables tests/stages tests/world tests/metrics tests/models tests/testbed $(PYTEST_ARGS)

# the checks that compare bytes or tight tolerances, under another CPU capability than this machine's
# (ATen's scalar kernels: other floats from torch's initialisers and reductions): a check that
# depends on the CPU's kernels fails here on any x86 machine. `make test` runs them natively.
CAPABILITY   ?= default
KERNEL_TESTS := tests/testbed/test_local_hub.py tests/core/test_presets.py tests/io/test_checkpoint_bytes.py \
                tests/core/test_direction.py tests/models/test_conformance.py
test-kernels: $(STAMP) $(OFFICIAL_STAMPS)
	@rc=0; export ATEN_CPU_CAPABILITY=$(CAPABILITY); \
	$(BIN)/python -m pytest -q $(KERNEL_TESTS) $(PYTEST_ARGS) || rc=1; \
	.venv-harmon/bin/python -m pytest -q tests/official/test_harmon_official.py $(PYTEST_ARGS) || rc=1; \
	.venv-nova/bin/python -m pytest -q tests/official/test_nova_official.py tests/official/test_schedule_diffusers.py \
		$(PYTEST_ARGS) || rc=1; \
	exit $$rc

demo: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/marpipe demo

# the study: the small world with 3 training seeds, more prompts and images, the Fig. 7 sweep and the
# gradient-noise tables, in study/. Its verdicts must not depend on the machine: THREADS=2 CORES=1 (two
# torch threads per job, one job at a time: another summation order) and
# STUDY_EXTRA=config/study-seeds.yaml (other training and sampling seeds), each in its own STUDY_DIR,
# must give the same verdicts (docs/results.md, "The study"). CORES: jobs at a time x THREADS must not exceed
# the machine's cores: two 2-thread jobs on 2 cores made each tiny training job 8-20x slower.
THREADS     ?=
CORES       ?= 2
STUDY_EXTRA ?=
STUDY_DIR   ?= study
study: $(STAMP)
	PATH=$(CURDIR)/$(BIN):$$PATH MARPIPE_TORCH_THREADS=$(THREADS) $(BIN)/marpipe demo --cores $(CORES) \
		--config config/small.yaml config/study.yaml $(STUDY_EXTRA) --directory $(STUDY_DIR)

# the rehearsal: the README's cluster commands (lock, preflight, run, report) on the PAPER DAG
# (config/rehearsal.yaml: config.yaml at tiny sizes, the same null pins) on CPU against the local hub of tiny
# random-weight models in the real repositories' layouts (.marpipe/hub, built on first use), through
# --profile slurm on the one-node cluster (.ci/cluster.sh up) with the overrides that node needs, in
# rehearsal/; model jobs run in .venv-nova/.venv-harmon as the profile deploys them. Without SLURM:
# make rehearse REHEARSE_PROFILE=local. Prints each rule's job count and summed wall time.
REHEARSE_PROFILE ?= slurm
REHEARSE_DIR     ?= rehearsal
rehearse: $(STAMP) $(OFFICIAL_STAMPS)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m testbed.hub.rehearse --profile $(REHEARSE_PROFILE) \
		--directory $(REHEARSE_DIR)

# mutation testing: mutmut 3.8.1 mutates MUTATE's modules (marpipe/<name>.py) in a fresh copy of
# the project (mutants/), runs the fast tests that reach each mutated function, then prints the
# undetected mutants (`mutmut results`) and the score per file (tests/mutation_report.py: equivalent
# mutants listed there and not counted; fails below the targets). mutmut's own log:
# mutants/mutmut-run.log. E.g. `make mutation MUTATE="grpo diffusion" MUTMUT_JOBS=4`.
MUTATE      ?= grpo diffusion loss rollout
MUTMUT_JOBS ?= 2
mutation: $(STAMP)
	@rm -rf mutants && mkdir mutants
	@echo "[make mutation] mutmut run over $(MUTATE) ($(MUTMUT_JOBS) workers; log: mutants/mutmut-run.log)"
	@start=$$(date +%s); \
	$(BIN)/mutmut run --max-children $(MUTMUT_JOBS) $(foreach m,$(MUTATE),'marpipe.$(m).*') \
		> mutants/mutmut-run.log 2>&1 || { tail -n 40 mutants/mutmut-run.log; exit 1; }; \
	elapsed=$$(( $$(date +%s) - start )); \
	echo "[make mutation] mutmut results (undetected mutants of $(MUTATE))"; \
	$(BIN)/mutmut results | grep -E "marpipe\.($(subst $(eval) ,|,$(strip $(MUTATE))))\." || true; \
	$(BIN)/python tests/mutation_report.py $(MUTATE) --elapsed $$elapsed
