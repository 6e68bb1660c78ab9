"""Run a model one decoder block at a time on captured hidden states.

The inputs of the first block are captured by running the model until that block is called (a
pre-hook stops the forward there), so each family's own embedding, position and mask code runs
unchanged. The keyword arguments a block receives (attention mask, rotary embeddings, position
ids) are captured once for a batch of one sequence and broadcast over micro-batches: every
segment has the same length, so they are the same for all. With ``offload`` the model stays on
the CPU and only the block at work (plus the small non-block modules) sits on the GPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from sparsebench.models.adapters import FamilyAdapter


class _StopForward(Exception):
    """Raised by the capture hook to end the model's forward at the first block."""


@dataclass
class BlockInputs:
    hidden: Tensor  # [sequences, seqlen, hidden] on the work device
    kwargs: dict[str, Any]  # what every block takes besides the hidden states


def move_non_block_modules(model: nn.Module, blocks: nn.ModuleList, device: torch.device | str) -> None:
    """Move every parameter and buffer outside the decoder blocks (embeddings, norms, head)."""
    in_blocks = {id(t) for t in blocks.parameters()} | {id(t) for t in blocks.buffers()}
    for module in model.modules():
        for store in (module._parameters, module._buffers):
            for name, tensor in store.items():
                if tensor is not None and id(tensor) not in in_blocks and tensor.device != torch.device(device):
                    tensor.data = tensor.data.to(device)


def _block_output(output: Any) -> Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def batches(count: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, count, batch_size):
        yield slice(start, min(count, start + batch_size))


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module, adapter: FamilyAdapter, input_ids: Tensor, device: torch.device | str, batch_size: int
) -> BlockInputs:
    """Hidden states entering the first block for every sequence of ``input_ids`` [n, seqlen]."""
    first_block = adapter.get_blocks(model)[0]
    captured: list[Tensor] = []
    kwargs_of_one: dict[str, Any] = {}

    def hook(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        captured.append(hidden)
        if not kwargs_of_one:
            kwargs_of_one.update({k: v for k, v in kwargs.items() if k != "hidden_states"})
            kwargs_of_one["use_cache"] = False
            kwargs_of_one.pop("past_key_values", None)
            kwargs_of_one.pop("past_key_value", None)
            kwargs_of_one.pop("layer_past", None)
        raise _StopForward

    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for part in [slice(0, 1)] + list(batches(input_ids.shape[0], batch_size)):
            try:
                model(input_ids[part].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    hidden = torch.cat(captured[1:], dim=0)
    return BlockInputs(hidden, kwargs_of_one)


@torch.inference_mode()
def run_block(block: nn.Module, inputs: BlockInputs, batch_size: int, out: Tensor | None = None) -> Tensor:
    """The block's outputs for every captured sequence, computed in micro-batches (``out`` may be the input)."""
    hidden = inputs.hidden
    result = torch.empty_like(hidden) if out is None else out
    for part in batches(hidden.shape[0], batch_size):
        result[part] = _block_output(block(hidden[part], **inputs.kwargs))
    return result


@torch.inference_mode()
def run_block_for_hooks(block: nn.Module, inputs: BlockInputs, batch_size: int) -> None:
    """Run the block for what its hooks observe; its outputs are dropped batch by batch."""
    for part in batches(inputs.hidden.shape[0], batch_size):
        block(inputs.hidden[part], **inputs.kwargs)


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
