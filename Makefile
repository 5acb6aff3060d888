# ultrabones: make setup && make paper   |   make test
#
# Each stage's notebook writes build/$(PROFILE)/stamps/<stem>.done only on success.
# A stamp is remade when its notebook, the package sources, the profile, a
# per-specimen file, the input data (DATA_ROOT, or its files' content: see
# $(B)/inputs.digest) or the stage before it changed; otherwise nothing reruns.

PROFILE ?= default
PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
# SEED=N runs the profile with master seed N into build/$(PROFILE)-seedN/ and data/twin/$(PROFILE)-seedN/
SEED    ?=
ifneq ($(strip $(SEED)),)
  B       := build/$(PROFILE)-seed$(SEED)
  SEEDARG := --seed $(SEED)
else
  B       := build/$(PROFILE)
  SEEDARG :=
endif
STAMPS  := $(B)/stamps
RUN     := $(PY) -m ultrabones run

STAGES       := 00_simulate 01_calibration 02_labeling 03_rating_statistics 04_training 05_evaluation 06_reconstruction 07_summary
PER_SPECIMEN := 00_simulate 01_calibration 02_labeling 06_reconstruction
LIB          := $(shell find lib/ultrabones -name '*.py' -o -name '*.html' 2>/dev/null)
# The profile's file and the files it extends (params/default.yaml, ...), and the per-specimen files.
PARAMS       := $(shell $(PY) -m ultrabones params --profile $(PROFILE) --files 2>/dev/null || echo params/$(PROFILE).yaml) \
                $(wildcard params/specimens/*.yaml)
# shq: one shell word in single quotes (a path with spaces or quotes stays one argument)
shq = '$(subst ','\'',$(1))'
DATA_ROOT    ?=
ifneq ($(strip $(DATA_ROOT)),)
  EXTRA := -p $(call shq,data_root=$(DATA_ROOT))
endif
DERIVED_ROOT ?=
ifneq ($(strip $(DERIVED_ROOT)),)
  EXTRA += -p $(call shq,derived_root=$(DERIVED_ROOT))
endif
INIT_CHECKPOINT ?=
ifneq ($(strip $(INIT_CHECKPOINT)),)
  EXTRA += -p $(call shq,training.init_checkpoint=$(INIT_CHECKPOINT))
endif
# COMPARE_FRAMES=N: notebook 02 also fits every objective on N frames and measures each against the truth (twin)
COMPARE_FRAMES ?=
ifneq ($(strip $(COMPARE_FRAMES)),)
  EXTRA += -p twin.compare_objectives_frames=$(COMPARE_FRAMES)
endif
# The input dataset's path and content digest. Regenerated on every make (also under make -n: the
# recipe starts with +), rewritten only when its text changes, so its mtime moves only when the
# inputs do; every stamp depends on it.
DIGEST       := $(B)/inputs.digest

.PHONY: help setup test test-fast paper nb specimen lab clean benchmarks check validate unseal labelling FORCE

help:
	@echo "make setup                 create $(VENV) (torch pair first, then the project)"
	@echo "make paper [PROFILE=default] [DATA_ROOT=...] [DERIVED_ROOT=...] [INIT_CHECKPOINT=...]   run notebooks 00..07, skipping up-to-date stages"
	@echo "make test                  unit tests + every notebook on params/smoke.yaml"
	@echo "make validate              stages 00-02 on the validation seeds (core/paper.py) into figures/validation/"
	@echo "make unseal                the sealed seeds' one run (00-02), reported as it comes out"
	@echo "make nb NB=02              run one notebook now"
	@echo "make specimen SPECIMEN=id  rerun the per-specimen stages for one specimen, then the stages after"
	@echo "make lab                   JupyterLab with the project kernel"
	@echo "make benchmarks            speed benchmarks (on demand)"
	@echo "make clean                 remove build/ for PROFILE and the twin's data"

# ------------------------------------------------------------------ setup
setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	@bash tools/setup.sh "$(PYTHON)" "$(VENV)"
	@touch $@

# ------------------------------------------------------------------ tests
test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not notebook"

benchmarks: setup
	$(PY) -m pytest -q benchmarks -s

check: setup
	$(PY) -m ultrabones check --profile $(PROFILE)

# ------------------------------------------------------------------ paper
paper: $(STAMPS)/07_summary.done
	@echo "[ultrabones] paper done: summary in $(B)/notebooks/07_summary.ipynb and figures/summary_table.md"
	@$(PY) -m ultrabones timings --profile $(PROFILE) $(SEEDARG) || true

$(STAMPS)/%.done: notebooks/%.ipynb $(LIB) $(PARAMS) $(DIGEST) | setup
	@$(RUN) $* --profile $(PROFILE) $(SEEDARG) $(EXTRA) --stamp $@ --no-progress

FORCE:

$(DIGEST): FORCE | setup
	+@if [ -x "$(PY)" ]; then $(PY) -m ultrabones inputs-digest --profile $(PROFILE) $(SEEDARG) $(EXTRA) --out $@; fi

# each stage runs after the one before it
$(STAMPS)/01_calibration.done:       $(STAMPS)/00_simulate.done
$(STAMPS)/02_labeling.done:          $(STAMPS)/01_calibration.done
$(STAMPS)/03_rating_statistics.done: $(STAMPS)/02_labeling.done
$(STAMPS)/04_training.done:          $(STAMPS)/02_labeling.done
$(STAMPS)/05_evaluation.done:        $(STAMPS)/04_training.done
$(STAMPS)/06_reconstruction.done:    $(STAMPS)/05_evaluation.done
$(STAMPS)/07_summary.done:           $(STAMPS)/03_rating_statistics.done $(STAMPS)/06_reconstruction.done

# ------------------------------------------------------------------ seeds (core/paper.py)
# The labelling stages of one seed build (SEED=N): what the validation seeds are run for.
labelling: $(STAMPS)/02_labeling.done

SEEDS_OF = $(shell $(PY) -c "from ultrabones.core import paper; print(*paper.$(1))")
VALIDATION_OUT := $(if $(filter default,$(PROFILE)),figures/validation,build/$(PROFILE)/validation)

validate: setup
	@for s in $(call SEEDS_OF,VALIDATION_SEEDS); do $(MAKE) --no-print-directory labelling PROFILE=$(PROFILE) SEED=$$s \
	  COMPARE_FRAMES=$(shell $(PY) -c "from ultrabones.core import paper; print(paper.VALIDATION_COMPARE_FRAMES)") || exit 1; done
	$(PY) -m ultrabones collect-validation --profile $(PROFILE) --seeds $(call SEEDS_OF,VALIDATION_SEEDS) --out $(VALIDATION_OUT)
	$(PY) -m ultrabones.twin.measure merge-collected --profile $(PROFILE) --seeds $(call SEEDS_OF,VALIDATION_SEEDS) --out $(VALIDATION_OUT)

# The sealed seeds run once: their results are reported as they come out, then they join VALIDATION_SEEDS.
unseal: setup
	@for s in $(call SEEDS_OF,SEALED_SEEDS); do ULTRABONES_UNSEAL=1 $(MAKE) --no-print-directory labelling PROFILE=$(PROFILE) SEED=$$s || exit 1; done
	ULTRABONES_UNSEAL=1 $(PY) -m ultrabones collect-validation --profile $(PROFILE) --seeds $(call SEEDS_OF,SEALED_SEEDS) --out $(VALIDATION_OUT)
	$(PY) -m ultrabones.twin.measure merge-collected --profile $(PROFILE) --seeds $(call SEEDS_OF,SEALED_SEEDS) --out $(VALIDATION_OUT)

nb: setup
	@test -n "$(NB)" || (echo "usage: make nb NB=02 [PROFILE=...]"; exit 2)
	$(RUN) $(NB) --profile $(PROFILE) $(SEEDARG) $(EXTRA)

# One specimen: its per-specimen stages run for it alone (the others' cached results stand), every other
# stage reruns whole. A per-specimen stage's stamp is refreshed only if it was complete before.
specimen: setup
	@test -n "$(SPECIMEN)" || (echo "usage: make specimen SPECIMEN=<id> [PROFILE=...]"; exit 2)
	@for nb in $(STAGES); do \
	  stamp=$(STAMPS)/$$nb.done; \
	  case " $(PER_SPECIMEN) " in \
	    *" $$nb "*) had=0; [ -f $$stamp ] && had=1; \
	      $(RUN) $$nb --profile $(PROFILE) $(SEEDARG) $(EXTRA) --specimen $(SPECIMEN) --no-progress || exit 1; \
	      [ $$had = 1 ] && touch $$stamp || true ;; \
	    *) $(RUN) $$nb --profile $(PROFILE) $(SEEDARG) $(EXTRA) --stamp $$stamp --no-progress || exit 1 ;; \
	  esac; \
	done

lab: setup
	$(VENV)/bin/jupyter lab --notebook-dir=notebooks

clean:
	rm -rf $(B) data/twin/$(notdir $(B))
