# The two commands of the README: `make demo` and `make test`.
# Both create .venv when missing and install tapeout with the pinned stack (constraints.txt).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.tapeout-installed
DEMO_OUT ?= out/demo
# pytest-xdist workers: CI machines have 2 cores.
JOBS   ?= 2

.PHONY: demo test install freeze bench clean corpus corpus-sources fuzz

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# A fresh venv carries an old setuptools that cannot read pyproject's SPDX license field.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt setuptools wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all,test]"
	touch $@

demo: $(STAMP)
	$(BIN)/tapeout compile samples/digits_cnn/model.keras -t onnx -t tflite:fp32 -t tflite:int8 -t tensorrt:fp16 -o $(DEMO_OUT) \
		--eval samples/digits_cnn/eval.npz --calibration samples/digits_cnn/calibration.npz
	$(BIN)/tapeout compile samples/jet_mlp/model.keras -t hls4ml -o $(DEMO_OUT)/jet_mlp \
		--eval samples/jet_mlp/eval.npz --calibration samples/jet_mlp/calibration.npz

test: $(STAMP)
	$(BIN)/python -m pytest -n $(JOBS) --dist loadfile

# Fuzz every input parser through the CLI (docs/security.md): FUZZ_RUNS executions each, coverage-guided.
FUZZ_RUNS ?= 10000
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz.py --runs $(FUZZ_RUNS) --jobs $(JOBS)

# The public-model corpus (docs/corpus.md): every model through every target that applies.
corpus: $(STAMP)
	$(BIN)/python scripts/corpus_matrix.py --jobs $(JOBS)

# Rebuild tests/corpus/ from the public sources. PyTorch exports need torch, which tapeout and
# its tests never need: it goes into a separate venv, .venv-corpus.
CORPUS_VENV := .venv-corpus
corpus-sources: $(STAMP)
	test -x $(CORPUS_VENV)/bin/python || { $(PYTHON) -m venv $(CORPUS_VENV) && \
		$(CORPUS_VENV)/bin/pip install --quiet torch==2.13.0 torchvision==0.28.0 timm onnx onnxscript onnxruntime; }
	$(CORPUS_VENV)/bin/python scripts/make_corpus.py --part torch
	$(BIN)/python scripts/make_corpus.py --part keras --part legacy --part onnx-zoo --part old-opset

bench: $(STAMP)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[all,test,bench]"
	$(BIN)/python benchmarks/compile_speed.py
	$(BIN)/python benchmarks/onnx_import.py
	$(BIN)/python benchmarks/compile_scaling.py
	$(BIN)/python benchmarks/trace_overhead.py
	$(BIN)/python benchmarks/build_cache.py
	$(BIN)/python benchmarks/ethos_u.py

# Re-pin the stack from the current environment.
freeze:
	{ echo "# Known-good pinned stack (pip constraints). Regenerate with: make freeze"; \
	  $(BIN)/python -m pip freeze --all --exclude-editable | grep -v -i -E '^(tapeout|pip)=='; } > constraints.txt

clean:
	rm -rf out build *.egg-info
