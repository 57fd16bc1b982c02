# The README's two commands: `make demo` and `make test`. Each sets up .venv on a fresh machine.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.faceveil-installed
DATA   ?= ../shared/data
CACHE  := .cache/data
DEMO_PASSWORD ?= correct horse battery staple

.PHONY: all venv browser test test-all demo data train eval eval-veils contact-sheet results bench attack security load clean

all: test

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# the CPU build of torch 2.13.0 first, so nothing later pulls a CUDA build
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

venv: $(STAMP)

# Debian's headless Chromium for the web app's browser test (see tools/install_browser.sh)
browser:
	@sh tools/install_browser.sh

test: $(STAMP) browser
	$(PY) -m pytest -q

test-all: $(STAMP) browser
	$(PY) -m pytest -q -m ''

demo: $(STAMP)
	@mkdir -p out
	rm -f out/demo-veiled.png out/demo-recovered.png
	FACEVEIL_PASSWORD='$(DEMO_PASSWORD)' $(PY) -m faceveil protect examples/group.jpg \
	    -o out/demo-veiled.png --password-env FACEVEIL_PASSWORD
	$(PY) -m faceveil inspect out/demo-veiled.png
	FACEVEIL_PASSWORD='$(DEMO_PASSWORD)' $(PY) -m faceveil recover out/demo-veiled.png \
	    -o out/demo-recovered.png --password-env FACEVEIL_PASSWORD
	$(PY) examples/make_figure.py examples/group.jpg out/demo-veiled.png out/demo-recovered.png \
	    -o out/demo-figure.jpg
	@echo "demo: out/demo-veiled.png (veiled), out/demo-recovered.png (recovered), out/demo-figure.jpg"

# Training and evaluation data, extracted from ../shared/data into a git-ignored cache.
data: $(CACHE)/.extracted

$(CACHE)/.extracted:
	@test -d $(DATA) || { echo "no $(DATA): the data sets live in ../shared/data" >&2; exit 1; }
	mkdir -p $(CACHE)
	cd $(DATA) && sha256sum -c --quiet SHA256SUMS
	for f in $(DATA)/*.tar.gz; do tar -xzf $$f -C $(CACHE); done
	touch $@

# Training (resumable; see configs/) and evaluation on the held-out LFW crops.
CONFIG ?= configs/proface-s-randwr.yaml
MODEL  ?= proface-s-randwr
LIMIT  ?= 200

train: $(STAMP) data
	$(PY) -m faceveil train --config $(CONFIG)

eval: $(STAMP) data
	@mkdir -p docs/results
	$(PY) -m faceveil eval --faces $(CACHE)/lfw_dev_128 --model $(MODEL) --mode png --limit $(LIMIT) \
	    --json-out docs/results/$(MODEL)-png.json --quiet > /dev/null
	$(MAKE) results

# every veil (and the pose-consistency paper's baselines) measured like that paper's Tables 1-2, on LFW
# crops and whole photos: docs/results/veils.json, then docs/RESULTS.md (about 15 min at 500 on 2 busy cores)
VEIL_LIMIT ?= 500
eval-veils: $(STAMP) data
	@mkdir -p docs/results
	$(PY) -m faceveil eval-veils --limit $(VEIL_LIMIT) --threads 1 --json-out docs/results/veils.json --quiet > /dev/null
	$(MAKE) results

# docs/veils.png: every veil on the public-domain sample faces (tools/contact_sheet.py --help for LFW)
contact-sheet: $(STAMP)
	$(PY) tools/contact_sheet.py

results: $(STAMP)
	$(PY) -m faceveil.eval.report $(sort $(filter-out docs/results/bench_speed.json docs/results/photo_quality.json docs/results/attack_decoder.json docs/results/serve_load.json docs/results/batch_speed.json,$(wildcard docs/results/*.json)))

bench: $(STAMP)
	$(PY) benchmarks/bench_speed.py
	$(PY) benchmarks/photo_quality.py
	$(PY) benchmarks/batch_speed.py

load: $(STAMP)
	$(PY) benchmarks/serve_load.py

# the attack suite (about 45 min on 2 cores): docs/SECURITY.md and docs/results/security.json
security: $(STAMP) data
	$(PY) -m faceveil attack

attack: $(STAMP) data
	$(PY) benchmarks/attack_decoder.py

clean:
	rm -rf $(VENV) out .pytest_cache .hypothesis
