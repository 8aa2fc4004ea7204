# Memorization in probabilistic deep generative models: train, summarize, analyse.
# `make help` lists the targets and variables.

SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
MAKEFLAGS += --no-builtin-rules
.SUFFIXES:
.DEFAULT_GOAL := help
# A recipe that fails leaves no target behind that looks up to date. Every script writes its
# files whole (temporary name, then rename), so what is deleted is a file of a failed run (a
# summary without its CSV, part of a figure's files); result files are exempt (.PRECIOUS in
# the plan): a result file that exists is finished work.
.DELETE_ON_ERROR:

##@ Variables (set on the command line: make VAR=value ...)
VENV ?= .venv## virtualenv made by `make setup`
DEVICE ?=## cuda or cpu (empty: cuda when available)
LAUNCH ?=## prefix of every training command, e.g. LAUNCH="srun --gres=gpu:1"
DATA_ROOT ?= ./data## where MNIST, CIFAR-10, CelebA live (Fashion-MNIST also from Debian)
RESULTS ?= results## root of the result files
ANALYSIS ?= analysis## where summaries (.npz, .csv) are written
CHECKSUMS ?=## your own manifest: `make checksums` writes it, `make verify` then checks it
EXPERIMENTS_FILE ?=## JSON file with experiments of your own (see README)
DATA ?= bmnist## data set for `make data`: bmnist, fashion, cifar10, celeba
NPROC := $(shell nproc 2>/dev/null || echo 2)
JOBS ?= $(NPROC)## parallel training jobs of `make demo` (default: the number of cores)
GROUP ?= 1## fold models trained together by one process, vectorized (GPU: 10; CPU: keep 1, use -j)
TF32 ?=## 1: TF32 tensor cores in training on CUDA (evaluation stays IEEE float32)
COMPILE ?=## torch.compile the training loss: auto (CUDA graphs on CUDA), default, ...
VERBOSE ?=## 1: a line per epoch from every training job (default: one line per model)
SUMMARIZE_ARGS ?=## summary options over the experiments' own, e.g. "--n-perm 20000 --fdr-q 0.1"; kept until given again (docs/calibration.md)

export DATA_ROOT EXPERIMENTS_FILE
PY := $(VENV)/bin/python
SETUP := $(VENV)/.installed
TRAIN = $(PY) scripts/memorization.py --results-dir $(RESULTS) $(if $(DEVICE),--device $(DEVICE)) \
        $(if $(filter 1,$(TF32)),--tf32) $(if $(COMPILE),--compile $(COMPILE)) \
        $(if $(filter 1,$(VERBOSE)),--verbose)
SWEEP := $(ANALYSIS)/fashion_sizes_sweep.npz
SWEEP_SUMMARIES := $(ANALYSIS)/sweep## the sweep's summaries, apart from the report's experiments

# The experiment table becomes one file target per result file (scripts/plan.py) and also names
# PAPER_EXPERIMENTS and DEMO. It is regenerated on every run (cheap) so that EXPERIMENTS_FILE
# edits are always seen; so are the settings stamps SETTINGS_DIR/<exp>.json that the summaries
# depend on (rewritten only when an experiment's settings change). The plan also names the code
# each command runs, from the import graph: SUMMARIZE_DEPS, NN_DEPS, MEASURES_DEPS, SWEEP_DEPS
# and the figures' AN_CODE (analysis.mk), the prerequisites beside each command's input files.
# EXPERIMENTS_FILE becomes a shell word and a part of file names here: one without spaces,
# quotes, backslashes or '$', else the command lines would break (or run what follows a quote)
ifneq ($(strip $(EXPERIMENTS_FILE)),)
ifneq ($(words $(EXPERIMENTS_FILE))$(findstring ',$(EXPERIMENTS_FILE))$(findstring ",$(EXPERIMENTS_FILE))$(findstring \,$(EXPERIMENTS_FILE))$(findstring `,$(EXPERIMENTS_FILE)),1)
$(error EXPERIMENTS_FILE '$(EXPERIMENTS_FILE)' holds a space, quote, backquote or backslash: move or link the file to a plain path, e.g. ln -s '...' my-experiments.json)
endif
endif
PLAN := build/experiments$(subst /,_,$(abspath $(EXPERIMENTS_FILE))).mk
SETTINGS_DIR = $(dir $(PLAN))settings
# SUMMARIZE_ARGS reaches the plan only when given (on the command line or in the environment,
# even empty): left out, each summary keeps the options it was made with (docs/calibration.md)
PLAN_CMD = EXPERIMENTS_FILE='$(EXPERIMENTS_FILE)' $(PY) scripts/plan.py make --group $(GROUP) \
           --output $(PLAN) --settings-dir $(SETTINGS_DIR) --results-dir '$(RESULTS)' \
           --train $(filter memorization-%,$(MAKECMDGOALS)) \
           $(if $(filter file,$(origin SUMMARIZE_ARGS)),,--summarize-args '$(SUMMARIZE_ARGS)')
# Figures and the report alone read the summaries as they are and never train (plan.py).
FIGURE_GOALS := analysis figures report clean-analysis figures-%
FIGURES_ONLY := $(if $(MAKECMDGOALS),$(if $(filter-out $(FIGURE_GOALS),$(MAKECMDGOALS)),,1))
NO_PLAN_GOALS := help setup clean checksums verify test bench data
ifneq ($(MAKECMDGOALS),)
ifeq ($(filter-out $(NO_PLAN_GOALS),$(MAKECMDGOALS)),)
SKIP_PLAN := 1
endif
else
SKIP_PLAN := 1
endif
ifndef SKIP_PLAN
ifneq ($(wildcard $(SETUP)),)
# Written while the Makefile is read, so that a bad experiments file stops make with plan.py's
# message as its one line (a failing rule would add Make's lines about the missing include).
# $(shell) turns newlines into spaces: the plan's lines (one design line per experiment) come
# joined by a record separator instead, and are split again here.
RS := $(shell printf '\036')
define newline


endef
PLAN_ERROR := $(shell set -o pipefail; $(PLAN_CMD) 2>&1 >/dev/null | sed -z 's/\n$$//' | tr '\n' '\036')
ifneq ($(.SHELLSTATUS),0)
$(error $(or $(subst $(RS),; ,$(PLAN_ERROR)),scripts/plan.py failed))
endif
$(if $(PLAN_ERROR),$(info $(subst $(RS),$(newline),$(PLAN_ERROR))))
else
# No virtualenv yet: Make creates it, writes the plan and reads the Makefile again. A bad
# experiments file is then reported as above (here an empty plan is left for that second read).
$(PLAN): FORCE | $(SETUP)
	@$(PLAN_CMD) 2>/dev/null || { mkdir -p $(@D); : >> $@; }
endif
include $(PLAN)
else
# no figure is made: analysis.mk need not read the import graph
AN_CODE :=
endif
# a stamp lost after the Makefile was read (make clean in the same run) is written again
$(SETTINGS_DIR)/%.json: | $(SETUP)
	@$(PLAN_CMD)
FORCE:
.PHONY: FORCE

##@ Targets
help: ## list targets and variables
	@awk 'BEGIN {FS = ":.*## "} /^##@/ {printf "\n%s\n", substr($$0, 5); next} \
	  /^[a-zA-Z_%\/.-]+:.*## / {printf "  %-22s %s\n", $$1, $$2} \
	  /^[A-Z0-9_]+ \?=.*## / {split($$0, a, "## "); sub(/ \?=.*/, "", a[1]); \
	  v = $$0; sub(/^[A-Z0-9_]+ \?= ?/, "", v); sub(/## .*/, "", v); \
	  printf "  %-22s %s%s\n", a[1], a[2], ((v == "" || index(a[2], "(default")) ? "" : " (default: " v ")")}' $(MAKEFILE_LIST)
	@echo; echo "Per experiment: all-EXP (all of these in turn), memorization-EXP, summary-EXP, nn-EXP," \
	  "measures-EXP, figures-EXP" \
	  "(EXP: a name in scripts/memo/config/experiments.py or EXPERIMENTS_FILE)"

setup: $(SETUP) ## create the virtualenv, install requirements (and Debian packages as root)
$(SETUP): requirements.txt scripts/setup.sh
	bash scripts/setup.sh $(VENV)

# One experiment end to end. Each step is a Make of its own: the figures are planned after the
# files they draw exist (analysis.mk decides which figures exist when it is read).
# Models left to train, of a model make bench knows, and no rates of it yet: all-EXP measures
# them quickly first, so that the design line (scripts/plan.py) can estimate the time
speed_unknown = $(and $(filter-out $(wildcard $(RESULTS_$1)),$(RESULTS_$1)),\
  $(filter $(MODEL_$1),$(BENCH_MODELS)),$(if $(wildcard output/bench.json \
  $(call BENCH_QUICK,$(MODEL_$1))),,1))
all-%: $(SETUP) ## one experiment end to end: models (-j JOBS), summary, neighbours, measures, figures, report
	$(if $(filter $*,$(EXPERIMENTS)),,$(call unknown_experiment,$*,$@))
	$(if $(call speed_unknown,$*),@echo "all-$*: measuring this machine's speed with $(MODEL_$*)" \
	  "once for the time estimate (~20 s; make bench measures with care)"; \
	  $(PY) scripts/bench.py --quick --models $(MODEL_$*) $(if $(DEVICE),--device $(DEVICE)) \
	  --out $(call BENCH_QUICK,$(MODEL_$*)) > /dev/null || echo "all-$*: speed not measured")
	$(MAKE) --no-print-directory -j $(JOBS) memorization-$*
	$(MAKE) --no-print-directory summary-$* nn-$* measures-$*
	$(MAKE) --no-print-directory figures-$* report
	@echo "per-example memorization scores: $(ANALYSIS)/$*.csv, flagged examples:" \
	  "$(ANALYSIS)/$*_flagged.csv, other measures: $(ANALYSIS)/$*_measures.csv;" \
	  "figures: $(AN_OUT)/$*/, report: $(AN_OUT)/report.pdf"

demo: $(SETUP) ## the offline default, end to end: Fashion-MNIST K-fold VAEs -> scores -> figures
	$(MAKE) --no-print-directory all-$(DEMO)

benchmark: $(SETUP) ## planted memorization: every measure against M (analysis/fashion_planted_benchmark.csv, report)
	$(MAKE) --no-print-directory -j $(JOBS) memorization-$(BENCHMARK)
	$(MAKE) --no-print-directory summary-$(BENCHMARK) measures-$(BENCHMARK)
	$(MAKE) --no-print-directory figures-$(BENCHMARK) report
	@echo "benchmark table: $(ANALYSIS)/$(BENCHMARK)_benchmark.csv; figures: output/$(BENCHMARK)/, report: output/report.pdf"

dp: $(SETUP) ## private training (DP-SGD) at ε = 100, 10, 1 and without, on the planted benchmark (report)
	$(MAKE) --no-print-directory -j $(JOBS) $(addprefix memorization-,$(DP_SWEEP))
	$(MAKE) --no-print-directory $(addprefix summary-,$(DP_SWEEP))
	$(MAKE) --no-print-directory report
	@echo "private training: $(foreach e,$(DP_SWEEP),$(ANALYSIS)/$e.csv); figure: output/privacy/; report: output/report.pdf"

# the pairs `make families` compares (VAE:MADE), on the demo's data and on the planted benchmark:
# 64 models, 27 CPU minutes of training (docs/models.md: the time measured on 2 cores)
FAMILY_PAIRS := fashion_demo:fashion_demo_made fashion_planted:fashion_planted_made
FAMILY_EXPS := $(subst :, ,$(FAMILY_PAIRS))
families: $(SETUP) ## which examples VAE and MADE memorize, demo and planted data (analysis/families.json, figure)
	$(MAKE) --no-print-directory -j $(JOBS) $(addprefix memorization-,$(FAMILY_EXPS))
	$(MAKE) --no-print-directory $(addprefix summary-,$(FAMILY_EXPS))
	$(PY) scripts/compare_families.py $(foreach p,$(FAMILY_PAIRS),--experiments $(subst :, ,$p)) \
	  --analysis-dir $(ANALYSIS) --results-dir $(RESULTS) -o $(ANALYSIS)/families.json
	$(MAKE) --no-print-directory $(AN_OUT)/families/families.pdf
	@echo "families table: $(ANALYSIS)/families.json (printed above); figure:" \
	  "$(AN_OUT)/families/families.pdf; make report adds it to $(AN_OUT)/report.pdf"

sweep: $(SETUP) ## training-set size sweep: 1/3-rule copies and M on 250 ... 8,000 images (report)
	$(MAKE) --no-print-directory -j $(JOBS) $(addprefix memorization-,$(SIZE_SWEEP))
	$(MAKE) --no-print-directory ANALYSIS=$(SWEEP_SUMMARIES) $(addprefix summary-,$(SIZE_SWEEP))
	$(MAKE) --no-print-directory $(SWEEP)
	$(MAKE) --no-print-directory report
	@echo "size sweep: $(ANALYSIS)/fashion_sizes_sweep.npz; figure: output/size_sweep/; report: output/report.pdf"

memorization: $(addprefix memorization-,$(PAPER_EXPERIMENTS)) ## train the paper's four experiments (404 models)

summaries: $(addprefix summary-,$(PAPER_EXPERIMENTS)) ## per-experiment summaries (U, V, M) of the paper's experiments

neighbours: $(addprefix $(ANALYSIS)/,$(addsuffix _nn.npz,$(PAPER_EXPERIMENTS))) ## nearest-neighbour distance ratios from the full models

data: $(SETUP) ## download DATA (needs internet): make data DATA=cifar10
	$(PY) scripts/get_data.py $(DATA)

test: $(SETUP) ## run the test suite
	$(PY) -m pytest -q --durations=15 tests

bench: $(SETUP) ## training and importance-sampling images/s on this machine (BENCH_ARGS: more flags)
	$(PY) scripts/bench.py $(BENCH_ARGS)

# results.sha256 is the authors' published list of their results archive (407 files); it is
# never written here. Your own results get a manifest of a name you choose.
PUBLISHED_SHA256 := results.sha256
checksums: ## write CHECKSUMS (sorted, sha256sum format) for every file under results/
	$(if $(CHECKSUMS),$(if $(filter $(abspath $(PUBLISHED_SHA256)),$(abspath $(CHECKSUMS))),$(error \
	  checksums: $(PUBLISHED_SHA256) is the authors' published list and is never overwritten; \
	  name a manifest of your own, e.g. make checksums CHECKSUMS=my-results.sha256)),$(error \
	  checksums: name your manifest, e.g. make checksums CHECKSUMS=my-results.sha256 \
	  ($(PUBLISHED_SHA256) is the authors' published list and is never overwritten)))
	@find $(RESULTS) -type f ! -name '.*' -print0 | LC_ALL=C sort -z \
	  | xargs -0 -r sha256sum > $(CHECKSUMS).tmp
	@mv $(CHECKSUMS).tmp $(CHECKSUMS)
	@echo "$(CHECKSUMS): $$(wc -l < $(CHECKSUMS)) files"

VERIFY_LIST = $(or $(CHECKSUMS),$(PUBLISHED_SHA256))
verify: ## check results/ against CHECKSUMS, or else the authors' results.sha256: OK, or the failed/missing files
	@test -f $(VERIFY_LIST) || { echo "verify: $(VERIFY_LIST) not found (make checksums CHECKSUMS=$(VERIFY_LIST) writes it)"; exit 1; }
	@extra=$$(comm -13 <(cut -c67- $(VERIFY_LIST) | LC_ALL=C sort) \
	  <(find $(RESULTS) -type f ! -name '.*' | LC_ALL=C sort)); \
	if [ -n "$$extra" ]; then echo "verify: note: files not in $(VERIFY_LIST):"; \
	  echo "$$extra" | sed 's/^/  /'; fi
	@if out=$$(sha256sum --check --quiet $(VERIFY_LIST) 2>&1); then \
	  echo "verify: OK ($$(wc -l < $(VERIFY_LIST)) files match $(VERIFY_LIST))"; \
	else \
	  echo "verify: FAILED (changed or missing files):"; \
	  echo "$$out" | grep -v '^sha256sum: WARNING' | sed 's/^/  /'; exit 1; fi

clean: ## remove the generated Make plans (not results, summaries, figures or settings stamps)
	rm -f build/experiments*.mk

.PHONY: help setup demo benchmark dp families sweep memorization summaries neighbours data test bench checksums verify clean


# Experiments whose result files are all present (trained here, or the authors' published
# files unzipped into results/): `make analysis` summarizes these and trains nothing.
# (strip: the spaces foreach leaves between empty words would make $(if) true)
COMPLETE = $(strip $(foreach e,$(EXPERIMENTS),$(if $(filter-out $(wildcard $(RESULTS_$e)),$(RESULTS_$e)),,$e)))
NO_COMPLETE = $(error no experiment has all its result files under $(RESULTS)/: train one \
  (make memorization-EXP) or unzip published results there ($(EXPERIMENTS)))
summaries-present:
	$(if $(COMPLETE),,$(NO_COMPLETE))
	$(MAKE) --no-print-directory $(foreach e,$(COMPLETE),summary-$e \
	  $(if $(wildcard $(FULL_CHECKPOINT_$e)),$(ANALYSIS)/$e_nn.npz))
.PHONY: summaries-present

# A name that is not an experiment: one line with the valid names. These pattern rules apply
# only where the plan has no rule of its own for the name (its per-experiment targets are phony).
comma := ,
unknown_experiment = $(error unknown experiment '$1' (in $2); valid names: \
  $(subst $() ,$(comma) ,$(strip $(EXPERIMENTS))) (add your own in a JSON file named by EXPERIMENTS_FILE))
# (one rule per pattern: a rule with several target patterns is one recipe for all of them)
memorization-%:
	$(call unknown_experiment,$*,$@)
summary-%:
	$(call unknown_experiment,$*,$@)
nn-%:
	$(call unknown_experiment,$*,$@)
measures-%:
	$(call unknown_experiment,$*,$@)

# the size sweep from its full models (figures and the report use it as it is)
$(SWEEP): $(if $(FIGURES_ONLY),,$(foreach e,$(SIZE_SWEEP),$(FULL_RESULT_$e)) $(SWEEP_DEPS) \
	  $(wildcard $(SWEEP_SUMMARIES)/*.npz))
	$(if $(FIGURES_ONLY),$(error $@ is missing: make sweep first),$(PY) scripts/sweep.py \
	  --results-dir $(RESULTS) $(if $(DEVICE),--device $(DEVICE)) --sizes $(SIZE_SWEEP) \
	  --summaries $(SWEEP_SUMMARIES) -o $@)
$(ANALYSIS)/%_measures.npz:
	$(call unknown_experiment,$*,$@)
$(ANALYSIS)/%_nn.npz:
	$(call unknown_experiment,$*,$@)
$(ANALYSIS)/%.npz:
	$(call unknown_experiment,$*,$@)
$(ANALYSIS)/%.csv:
	$(call unknown_experiment,$*,$@)

include analysis.mk
