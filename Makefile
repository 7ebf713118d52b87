# Two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_OUT ?= runs/mae-cluttered

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	rm -rf $(DEMO_OUT)
	$(BIN)/python pretrain/mae.py --data cluttered --out $(DEMO_OUT) --train.epochs 15
	$(BIN)/python probes/knn.py --ckpt $(DEMO_OUT) --pool avg
	$(BIN)/python probes/linear.py --ckpt $(DEMO_OUT) --recipe dino_avg --head mae --epochs 50 --baselines true
	@echo "Outputs: $(DEMO_OUT)/ (report.html: the run on one page; backbone.safetensors, knn.json, linear.json, pictures_*.png, curves.png, log.jsonl, checkpoints/)"

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=15

clean:
	rm -rf runs
