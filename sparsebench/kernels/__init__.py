"""GPU kernels that turn a pruned weight into speed: modules swapped into a model's pruned linears to measure it.

- ``semi_sparse``: 2:4 weights through cuSPARSELt, called directly (``SemiSparseLinear``);
- ``bitmask_linear``: unstructured weights in the ``sparse-bitmask`` layout, Triton kernels (``BitmaskLinear``);
- ``bitmask_walk``: the one-token product on that layout in which each lane multiplies as it walks its mask word,
  CUDA C++ (the default from 55 % sparsity); ``bitmask_kept``: the one it replaced, through a list of kept columns;
- ``one_token_cuda``: what those two CUDA C++ kernels share (conversions, scan, operand checks, compiling and loading);
- ``bitmask_unpack``: that layout unpacked to the dense weight for one call (a prefill), a Triton kernel;
- ``nvrtc``: CUDA C++ compiled at run time by NVRTC and launched through the driver (no toolkit needed);
- ``gemv24``: 2:4 weights in the ``sparse-24-bitmask`` layout, Triton kernels for decode (``Gemv24Linear``);
- ``transpose``: a tiled Triton transpose, which puts cuSPARSELt's ``W @ x.T`` into ``[tokens, out]``;
- ``paths``: the registry of these paths and the swap of a model's pruned linears;
- ``fused_inputs``: the linears that read one input (q/k/v, gate/up) as one product, as serving engines run them;
- ``launching``: what the Triton launchers share (device checks, split partial sums);
- ``custom_ops``: the Triton products as ``torch.library`` custom operators, opaque to ``torch.compile``.
"""
