// The streaming walk kernel (sparsebench/kernels/bitmask_stream.py) run on the CPU: bitmask_walk_main.cpp's harness,
// which passes it its slot size (SLOT_VALUES) after the walking kernel's arguments.
#define STAGED_KERNEL bitmask_stream_gemv
#define SLOT_ARGUMENTS 1
#include "bitmask_walk_main.cpp"
