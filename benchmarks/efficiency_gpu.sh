#!/bin/sh
# docs/efficiency.md, "On a GPU": the commands run on the device machine, from the repository root, in two parts.
#   sh benchmarks/efficiency_gpu.sh bench OUT   the GPU tests of the kernels, then bench_efficiency.py gpu (LLaMA-2-7B shapes; SPARSITY, MODES)
#   sh benchmarks/efficiency_gpu.sh cases OUT   real SmolLM2-135M cases (SparseGPT 2:4; WITH_70=1: also Wanda 70 %) with eval=efficiency and
#                                               export=hf, then the perplexity of each exported model through its sparse paths
# Needs torch and transformers; `cases` also the project's Hydra/GGUF dependencies (PYTHONPATH) and SmolLM2's GGUF in
# $SPARSEBENCH_CACHE (the machine has no network), and WikiText-2 in .bench/data/wikitext2-tok (docs/efficiency.md says how).
set -e
out=${2:?usage: efficiency_gpu.sh bench|cases OUT}
export PYTHONUNBUFFERED=1
case $1 in
bench)
    python3 -m pytest tests/test_gpu_kernels.py tests/test_gemv24_gpu.py tests/test_bitmask_gpu.py -q -p no:cacheprovider 2>&1 | tee "$out/gpu_kernels_tests.txt" || true
    python3 benchmarks/bench_efficiency.py gpu --layers 32 --sparsity ${SPARSITY:-2:4} --decode-tokens 32 --e2e-repeats 3 --repeats 5 --modes ${MODES:-cuda_graph compiled_graph} \
        --e2e-paths cusparselt cusparselt_gemv24 bitmask --out "$out/figures.json" 2>&1 | tee "$out/bench_gpu.txt"
    ;;
cases)
    results=${RESULTS:-/tmp/efficiency_results}
    common="eval=efficiency device=cuda calibration=wikitext2 calibration.split=validation calibration.nsamples=16 calibration.seqlen=512
        data.wikitext2=.bench/data/wikitext2-tok export=hf export.dtype=float16 results_dir=$results experiment_name=efficiency_gpu
        progress=false eval.efficiency.decode_tokens=16 eval.efficiency.repeats=3"
    # shellcheck disable=SC2086
    python3 -m sparsebench.cli $common metric=sparsegpt sparsity=2of4 2>&1 | tee "$out/cases.txt"
    if [ -n "$WITH_70" ]; then  # Wanda 70 % unstructured: the bitmask path (sparsebench/kernels/bitmask_linear.py)
        # shellcheck disable=SC2086
        python3 -m sparsebench.cli $common metric=wanda sparsity.ratio=0.7 2>&1 | tee -a "$out/cases.txt"
    fi
    cp "$results"/*.json "$out/"
    python3 benchmarks/bench_efficiency.py ppl --model "$results"/models/* --tokens .bench/efficiency/wikitext2_smollm2_32x512.pt \
        --out "$out/ppl.json" 2>&1 | tee "$out/ppl.txt"
    ;;
*)
    echo "usage: efficiency_gpu.sh bench|cases OUT" >&2
    exit 2
    ;;
esac
