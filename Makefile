# The two set-up commands of the README: `make demo` (main job) and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
OUT ?= fairal-out
TORCH_SPEC ?= torch==2.13.0

# PyTorch is installed first, as the CPU build: a bare torch requirement would fetch a multi-GB CUDA build.
# An already installed torch is kept; TORCH_SPEC picks another build (e.g. a CUDA one).
$(BIN)/fairal: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test,ray]"
	touch $@

install: $(BIN)/fairal

demo: install
	$(BIN)/fairal reproduce $(OUT) --profile quick
	@echo "fairal is installed in $(VENV): 'source $(VENV)/bin/activate' puts it on your PATH"

smoke: install
	$(BIN)/fairal reproduce $(OUT)-smoke --profile smoke

test: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/pytest -n auto --dist loadfile  # one process per core, a file's tests in one

# fairal inside MONAI Label (docs/annotate.md): the server's runtime set, then MONAI Label itself without its
# requirements; the installed torch and numpy are held (pip fails rather than replace them). MONAI is pinned to the
# version MONAI Label is tested with, which replaces the venv's own MONAI (fairal's runs use it too): said before
# and after, loudly. `make monailabel VENV=.venv-monailabel` keeps the server in a venv of its own.
MONAILABEL_SPEC ?= monailabel==0.8.5 monai==1.5.2 pydicom-seg==0.4.1
MONAI_PIN = $(patsubst monai==%,%,$(filter monai==%,$(MONAILABEL_SPEC)))
MONAI_NOW = $(BIN)/python -c "import importlib.metadata as m; print(m.version('monai'))" 2>/dev/null || echo none
monailabel: install
	@($(MONAI_NOW)) > $(VENV)/monai-before.txt; now=$$(cat $(VENV)/monai-before.txt); \
	if [ -n "$(MONAI_PIN)" ] && [ "$$now" != "$(MONAI_PIN)" ]; then \
	  echo "*** make monailabel: MONAI $$now in $(VENV) is replaced by MONAI $(MONAI_PIN) (the version MONAI Label"; \
	  echo "*** is tested with); fairal's own commands in $(VENV) use it too. To keep $(VENV) as it is, give the"; \
	  echo "*** server a venv of its own: make monailabel VENV=.venv-monailabel (docs/annotate.md)"; fi
	$(BIN)/pip freeze | grep -i -E "^(torch|numpy)==" > $(VENV)/held.txt
	$(BIN)/pip install -q -c $(VENV)/held.txt -e ".[test,ray,monailabel]"
	$(BIN)/pip install -q --no-deps $(MONAILABEL_SPEC)
	$(BIN)/python -c "import monailabel.main, torch; print('MONAI Label', __import__('monailabel').__version__, 'with torch', torch.__version__)"
	@before=$$(cat $(VENV)/monai-before.txt); now=$$($(MONAI_NOW)); if [ "$$before" != "$$now" ]; then \
	  echo "*** MONAI $$before in $(VENV) was replaced by MONAI $$now: fairal's commands in $(VENV) now use MONAI $$now."; \
	  echo "*** To go back: $(BIN)/pip install monai==$$before (MONAI Label then runs on a MONAI it is not tested with)"; fi

# nnU-Net for tests/test_saved_outputs.py (its own exporter writes the probabilities fairal query reads): its
# readers and exporter with what they import, torch and numpy held; nnU-Net itself without its requirements, whose
# timm/torchvision would replace nothing fairal needs but do not import beside a CPU build of torch. A lab's own
# nnU-Net lives in its own environment: fairal reads the files it writes (docs/nnunet.md).
NNUNET_SPEC ?= nnunetv2==2.8.1 dynamic-network-architectures==0.4.4 batchgeneratorsv2==0.3.6
NNUNET_DEPS ?= acvl-utils==0.2.6 batchgenerators==0.25.5 blosc2 SimpleITK scikit-image
nnunet: install
	$(BIN)/pip freeze | grep -i -E "^(torch|numpy)==" > $(VENV)/held.txt
	$(BIN)/pip install -q -c $(VENV)/held.txt $(NNUNET_DEPS)
	$(BIN)/pip install -q --no-deps $(NNUNET_SPEC)
	$(BIN)/python -c "from nnunetv2.inference.export_prediction import export_prediction_from_logits; import importlib.metadata as m; print('nnU-Net', m.version('nnunetv2'))"

bench: install
	$(BIN)/python benchmarks/bench_simulate.py

.PHONY: install demo smoke test monailabel nnunet bench
