#!/bin/sh
# docs/efficiency.md, "On a GPU": the commands run on the device machine, from the repository root, one step a call
# (each took under 6 minutes on an H100; on an H200 with a cold Inductor cache one compiled whole-model path took about
# 5 minutes, dense-stored included: 106 s compiling dense-stored, 123 s cusparselt_gemv24).
#   sh benchmarks/efficiency_gpu.sh tests OUT   the GPU tests (kernels, paths, modes, SparseGPT on the GPU)
#   sh benchmarks/efficiency_gpu.sh linear OUT  per linear: each LLaMA-2-7B shape at 1, 16, 2,048, 8,192 tokens, every 2:4 path and bitmask at 70 %
#   sh benchmarks/efficiency_gpu.sh bitmask OUT one token per linear at 50, 60, 70, 80 %: the kept and walk (CUDA C++), chunks and bytes (Triton) kernels
#   sh benchmarks/efficiency_gpu.sh memcheck OUT the CUDA C++ kernels' GPU tests under compute-sanitizer (out-of-bounds and misaligned accesses)
#   sh benchmarks/efficiency_gpu.sh e2e70_b1 OUT whole model, 70 %, decode at batch 1, compiled and graphed: bitmask (the walking kernel) and bitmask_kept
#   sh benchmarks/efficiency_gpu.sh e2e OUT     whole model, 2:4: cusparselt graphed and compiled
#   sh benchmarks/efficiency_gpu.sh e2e_gemv24 OUT  whole model, 2:4: cusparselt_gemv24 compiled
#   sh benchmarks/efficiency_gpu.sh e2e70 OUT   whole model, 70 %: bitmask graphed and compiled
#   sh benchmarks/efficiency_gpu.sh block OUT   one block at 1, 16, 2,048 tokens for 2:4, both cuSPARSELt paths, token-major and MLP features-major
#   sh benchmarks/efficiency_gpu.sh fused OUT   whole model, 2:4 cusparselt_gemv24 compiled with q/k/v and gate/up fused (--fuse-projections)
#   sh benchmarks/efficiency_gpu.sh cases OUT   real SmolLM2-135M cases (SparseGPT 2:4; WITH_70=1: also Wanda 70 %) with eval=efficiency and
#                                               export=hf, then the perplexity of each exported model through its sparse paths
# Needs torch and transformers; `tests` and `cases` also the project's Hydra/GGUF dependencies (PYTHONPATH), `cases` SmolLM2's
# GGUF in $SPARSEBENCH_CACHE (the machine has no network) and WikiText-2 in .bench/data/wikitext2-tok (docs/efficiency.md says how).
set -e
out=${2:?usage: efficiency_gpu.sh tests|linear|bitmask|memcheck|e2e|e2e_gemv24|e2e70|e2e70_b1|block|fused|cases OUT}
export PYTHONUNBUFFERED=1
bench="python3 benchmarks/bench_efficiency.py gpu --layers 32 --decode-tokens 32 --e2e-repeats 3 --repeats 5"
case $1 in
tests)
    python3 -m pytest tests/test_gpu_kernels.py tests/test_gemv24_gpu.py tests/test_bitmask_gpu.py tests/test_bitmask_kept.py tests/test_gpu.py \
        -q -p no:cacheprovider 2>&1 \
        | tee "$out/gpu_tests.txt" || true
    ;;
linear)
    $bench --skip-block --skip-e2e --sparsity 2:4 0.7 --out "$out/figures_linear.json" 2>&1 | tee "$out/bench_linear.txt"
    ;;
bitmask)
    python3 benchmarks/bench_bitmask_kernel.py --sparsities 0.5 0.6 0.7 0.8 --tokens 1 --repeats 20 --json "$out/bitmask_one_token.json" 2>&1 \
        | tee "$out/bitmask_one_token.txt"
    ;;
memcheck)  # compute-sanitizer comes with the CUDA toolkit, in /usr/local/cuda/bin on the GPU image
    PATH=$PATH:/usr/local/cuda/bin compute-sanitizer --tool memcheck --error-exitcode 1 python3 -m pytest tests/test_bitmask_gpu.py -q -p no:cacheprovider \
        -k "cuda_kernels or kept or walk" 2>&1 | tee "$out/memcheck_cuda_kernels.txt"
    ;;
e2e)
    $bench --skip-linear --skip-block --modes cuda_graph compiled_graph --sparsity 2:4 --e2e-paths cusparselt \
        --out "$out/figures_2of4_cusparselt.json" 2>&1 | tee "$out/bench_2of4_cusparselt.txt"
    ;;
e2e_gemv24)
    $bench --skip-linear --skip-block --modes compiled_graph --sparsity 2:4 --e2e-paths cusparselt_gemv24 \
        --out "$out/figures_2of4_gemv24_compiled.json" 2>&1 | tee "$out/bench_2of4_gemv24_compiled.txt"
    ;;
e2e70_b1)
    $bench --skip-linear --skip-block --modes compiled_graph --sparsity 0.7 --e2e-paths bitmask bitmask_kept --decode-batches 1 \
        --out "$out/figures_70_b1.json" 2>&1 | tee "$out/bench_70_b1.txt"
    ;;
e2e70)
    $bench --skip-linear --skip-block --modes cuda_graph compiled_graph --sparsity 0.7 --e2e-paths bitmask \
        --out "$out/figures_70.json" 2>&1 | tee "$out/bench_70.txt"
    ;;
fused)
    $bench --skip-linear --skip-block --modes compiled_graph --sparsity 2:4 --e2e-paths cusparselt_gemv24 --fuse-projections \
        --out "$out/figures_2of4_gemv24_compiled_fused.json" 2>&1 | tee "$out/bench_2of4_gemv24_compiled_fused.txt"
    ;;
block)
    python3 benchmarks/bench_efficiency.py gpu --layers 2 --skip-linear --skip-e2e --repeats 5 --modes cuda_graph compiled_graph --sparsity 2:4 \
        --block-paths cusparselt cusparselt_gemv24 --block-tokens 1 16 2048 --out "$out/figures_block_2of4.json" 2>&1 | tee "$out/block_2of4.txt"
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
    echo "usage: efficiency_gpu.sh tests|linear|bitmask|memcheck|e2e|e2e_gemv24|e2e70|e2e70_b1|block|fused|cases OUT" >&2
    exit 2
    ;;
esac
