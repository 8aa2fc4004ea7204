# analysis.mk: figures and the report from the summaries (the paper).
# Included by the Makefile, which defines PY (the Python interpreter); nothing else is needed
# (ANALYSIS, when set, names the folder of the summaries; EXPERIMENTS, when set, the valid
# experiment names, which figures-EXP of another name lists).
#
#   analysis/<exp>.npz [+ analysis/<exp>_nn.npz]  ->  output/<exp>/<figure>.{pdf,png,pgf,tex,json}
#   analysis/bmnist_lr3.npz + analysis/bmnist_lr4.npz  ->  output/bmnist/<figure>.* (compared)
#   all of them  ->  output/report.pdf
#
# Each figure is one grouped target, made from its summary (and nn file) and the code its
# command runs, so a changed summary or module rebuilds only the figures that read it; `make -j`
# safe. That code comes from the import graph (scripts/plan.py deps --analysis: FIGURE:FILE words
# for each figure and report:FILE for the report), in AN_CODE: the Makefile's plan holds it, and
# a makefile that includes this one without the plan gets it here.

AN_IN  := $(or $(ANALYSIS),analysis)
AN_OUT := output
AN_FIG := scripts/memo/figures
AN_EXT := pdf png pgf tex json
ifeq ($(origin AN_CODE),undefined)
AN_CODE := $(if $(wildcard $(firstword $(PY))),$(shell $(PY) scripts/plan.py deps --analysis))
endif
an_code = $(patsubst $1:%,%,$(filter $1:%,$(AN_CODE)))

# the other files beside the summaries: nearest neighbours, other measures, size sweeps
AN_AUX := %_nn.npz %_measures.npz %_sweep.npz
AN_SUMMARIES := $(filter-out $(AN_AUX),$(wildcard $(AN_IN)/*.npz))
AN_EXPS      := $(patsubst $(AN_IN)/%.npz,%,$(AN_SUMMARIES))
AN_NN_EXPS   := $(filter $(AN_EXPS),$(patsubst $(AN_IN)/%_nn.npz,%,$(wildcard $(AN_IN)/*_nn.npz)))
AN_MEASURES_EXPS := $(filter $(AN_EXPS),$(patsubst $(AN_IN)/%_measures.npz,%,$(wildcard $(AN_IN)/*_measures.npz)))

# The figures drawn for one experiment each (AN_SINGLE) and for one experiment or a comparison
# group (AN_SERIES): memo/figures/__init__.py's lists, which scripts/plan.py writes into the plan
ifeq ($(origin AN_SINGLE),undefined)
AN_SINGLE := $(if $(wildcard $(firstword $(PY))),$(shell $(PY) scripts/plan.py figures | sed -n 1p))
AN_SERIES := $(if $(wildcard $(firstword $(PY))),$(shell $(PY) scripts/plan.py figures | sed -n 2p))
endif

# Comparison groups, drawn when every member has a summary; members then get no single
# versions of the AN_SERIES figures. A group: AN_GROUPS += name, AN_GROUP_name := members.
# A group may add figures of its own: AN_GROUP_FIGURES_name.
AN_GROUPS := bmnist privacy
AN_GROUP_bmnist := bmnist_lr3 bmnist_lr4
# private training at several budgets (`make dp`; DP_SWEEP comes from the experiment table)
AN_GROUP_privacy := $(DP_SWEEP)
AN_GROUP_FIGURES_privacy := privacy
AN_BUILT_GROUPS := $(foreach g,$(AN_GROUPS),$(if $(AN_GROUP_$g),$(if $(filter-out $(AN_EXPS),$(AN_GROUP_$g)),,$g)))
AN_GROUPED := $(foreach g,$(AN_BUILT_GROUPS),$(AN_GROUP_$g))

# The figures of one experiment (output/<exp>/<figure>) and of one group.
an_exp_stems = $(addprefix $(AN_OUT)/$1/,$(AN_SINGLE) \
                 $(if $(filter $1,$(AN_GROUPED)),,$(AN_SERIES)) \
                 $(if $(filter $1,$(AN_NN_EXPS)),neighbours) \
                 $(if $(filter $1,$(AN_MEASURES_EXPS)),measures))
an_group_stems = $(addprefix $(AN_OUT)/$1/,$(AN_SERIES) $(AN_GROUP_FIGURES_$1))
an_files = $(foreach s,$1,$(addprefix $s.,$(AN_EXT)))
AN_STEMS := $(foreach e,$(AN_EXPS),$(call an_exp_stems,$e)) \
            $(foreach g,$(AN_BUILT_GROUPS),$(call an_group_stems,$g))
# the training-set size sweep (scripts/sweep.py), when its file exists
AN_SWEEP := $(wildcard $(AN_IN)/fashion_sizes_sweep.npz)
AN_STEMS += $(if $(AN_SWEEP),$(AN_OUT)/size_sweep/sweep)
# which examples each model family memorizes (scripts/compare_families.py), when its file exists
AN_FAMILIES := $(wildcard $(AN_IN)/families.json)
AN_STEMS += $(if $(AN_FAMILIES),$(AN_OUT)/families/families)
AN_FIGURES := $(call an_files,$(AN_STEMS))

# One pattern rule per figure: $(call an_rule,FIGURE,EXTRA-PREREQUISITES)
define an_rule
$(foreach x,$(AN_EXT),$(AN_OUT)/%/$1.$x) &: $(AN_IN)/%.npz $2 $(call an_code,$1)
	$$(PY) scripts/analysis.py $1 $$< --out $$(@D)
endef
$(foreach f,$(AN_SINGLE) $(AN_SERIES),$(eval $(call an_rule,$f)))
$(eval $(call an_rule,neighbours,$(AN_IN)/%_nn.npz))
$(eval $(call an_rule,measures,$(AN_IN)/%_measures.npz))
# the gallery shows the full model's samples from the nn file when there is one: redrawn with it
$(foreach e,$(AN_NN_EXPS),$(eval $(call an_files,$(AN_OUT)/$e/gallery): $(AN_IN)/$(e)_nn.npz))

$(call an_files,$(AN_OUT)/size_sweep/sweep) &: $(AN_IN)/fashion_sizes_sweep.npz $(call an_code,sweep)
	$(PY) scripts/analysis.py sweep $< --out $(@D)

$(call an_files,$(AN_OUT)/families/families) &: $(AN_IN)/families.json $(call an_code,families)
	$(PY) scripts/analysis.py families $< --out $(@D)

# One explicit rule per (group, figure): the summaries in the group's order.
define an_group_rule
$(foreach x,$(AN_EXT),$(AN_OUT)/$1/$2.$x) &: $(patsubst %,$(AN_IN)/%.npz,$(AN_GROUP_$1)) $(call an_code,$2)
	$$(PY) scripts/analysis.py $2 $$(filter %.npz,$$^) --out $$(@D)
endef
$(foreach g,$(AN_BUILT_GROUPS),$(foreach f,$(AN_SERIES) $(AN_GROUP_FIGURES_$g),$(eval $(call an_group_rule,$g,$f))))

# figures-<exp>: its own figures and those of the groups it belongs to. Which figures exist is
# decided by which files exist when Make starts: those left out for a missing input are named
# in one line with the target that makes it (`make all-EXP` makes every one).
an_left_out = $(strip $(if $(filter $1,$(AN_NN_EXPS)),,neighbours (make nn-$1)) \
                $(if $(filter $1,$(AN_MEASURES_EXPS)),,measures (make measures-$1)))
define an_exp_target
.PHONY: figures-$1
figures-$1: $(call an_files,$(call an_exp_stems,$1) \
              $(foreach g,$(AN_BUILT_GROUPS),$(if $(filter $1,$(AN_GROUP_$g)),$(call an_group_stems,$g))))
	$(if $(call an_left_out,$1),@echo "figures-$1: left out as their input is missing:" \
	  "$(call an_left_out,$1)")
endef
$(foreach e,$(AN_EXPS),$(eval $(call an_exp_target,$e)))

figures-%: ## every figure of one experiment: make figures-EXP (needs analysis/EXP.npz)
	$(if $(EXPERIMENTS),$(if $(filter $*,$(EXPERIMENTS)),,$(call unknown_experiment,$*,$@)))
	$(error figures-$*: no summary $(AN_IN)/$*.npz; make summary-$* first)

AN_JSON := $(filter %.json,$(AN_FIGURES))
AN_NNS  := $(patsubst %,$(AN_IN)/%_nn.npz,$(AN_NN_EXPS))
AN_MEASURES := $(patsubst %,$(AN_IN)/%_measures.npz,$(AN_MEASURES_EXPS))
# The report reads each figure's .json and includes its .pdf (LaTeX) or .png (without LaTeX):
# a missing one is rebuilt first.
AN_REPORT_IN := $(filter %.json %.pdf %.png,$(AN_FIGURES))
# report.tex exists only when LaTeX made the report (memo.figures.common.latex_engine); a
# target that is never written would be remade on every run.
AN_LATEX := $(if $(MEMO_NO_LATEX),,$(shell command -v pdflatex || command -v lualatex))
AN_REPORT := $(AN_OUT)/report.pdf $(if $(AN_LATEX),$(AN_OUT)/report.tex)

$(AN_REPORT) &: $(AN_REPORT_IN) $(AN_SUMMARIES) $(AN_NNS) $(AN_MEASURES) $(call an_code,report)
	$(PY) scripts/report.py --out $(AN_OUT)/report.pdf --summaries $(AN_SUMMARIES) --figures $(AN_JSON)

analysis: ## summaries of every experiment whose result files are all present, then every figure and output/report.pdf
	$(if $(COMPLETE),,$(NO_COMPLETE))
	$(MAKE) --no-print-directory summaries-present
	$(MAKE) --no-print-directory figures report

figures: $(AN_FIGURES) ## every figure of every summary in analysis/ (output/<experiment>/)

report: $(AN_REPORT) ## output/report.pdf: every figure with its caption, a table of key numbers

clean-analysis: ## remove the figures and the report (output/)
	rm -rf $(addprefix $(AN_OUT)/,$(sort $(AN_EXPS) $(AN_GROUPS)) size_sweep families) $(AN_OUT)/report.pdf $(AN_OUT)/report.tex

.PHONY: analysis figures report clean-analysis
