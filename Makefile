# One install path for users, tests and CI: a local .venv pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers: the tests run torch on one thread each (tests/conftest.py), so one worker per core; each file's
# tests run in one worker, in order (--dist loadfile): some share a module's folder (test_readme's blocks)
PYTEST_WORKERS ?= 2

.PHONY: install demo test bench-quick clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned. PyPI's Linux wheel is the CUDA build (several GB): TORCH_INDEX=https://download.pytorch.org/whl/cpu
	# takes the CPU build from PyTorch's index; left empty, pip's own configuration decides (a local CPU wheel here).
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[test,medical]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	# `make demo` again replaces the previous demo (training refuses a used folder without this flag).
	$(BIN)/diffusion-classifiers demo --output_dir outputs/demo --overwrite_output_dir

TEST_ENV := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# The whole suite on this CPU's own math kernels, then the float comparisons (`-m numerics`) again on the portable
# kernels and on the AVX2 ones (when this CPU has them: torch does not check, an unsupported value crashes), so a
# tolerance too tight for another CPU fails here. (AVX-512 cannot be forced on a CPU without it.) Only the files that
# hold numerics tests are collected again.
test: $(STAMP)
	$(TEST_ENV) $(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)
	native=$$($(BIN)/python -c "import torch; print(torch.backends.cpu.get_cpu_capability())"); \
	for capability in default avx2; do \
		case "$$capability:$$native" in avx2:AVX2|avx2:AVX512|default:*) ;; *) echo "skip $$capability: CPU is $$native"; continue;; esac; \
		echo "numerics tests with ATEN_CPU_CAPABILITY=$$capability"; \
		ATEN_CPU_CAPABILITY=$$capability $(TEST_ENV) \
			$(BIN)/python -m pytest $(PYTEST_ARGS) -q -m numerics -p no:cacheprovider $$(grep -l "mark.numerics" tests/test_*.py) || exit 1; \
	done

# every benchmark script; the tools beside them (the GPU data packer, the README's targets table) take no --quick
BENCHMARK_TOOLS := benchmarks/gpu_carry_plankton.py benchmarks/targets_table.py
bench-quick: $(STAMP)
	for b in $(filter-out $(BENCHMARK_TOOLS),$(wildcard benchmarks/[a-z]*.py)); do $(BIN)/python $$b --quick || exit 1; done

clean:
	rm -rf $(VENV) outputs build *.egg-info src/*.egg-info
