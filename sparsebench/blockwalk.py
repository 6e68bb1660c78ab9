"""Run a model one decoder block at a time on captured hidden states.

The inputs of the first block are captured by running the model until that block is called (a
pre-hook stops the forward there), so each family's own embedding, position and mask code runs
unchanged. The keyword arguments a block receives (attention mask, rotary embeddings, position
ids) are captured once for a batch of one sequence and broadcast over micro-batches: every
segment has the same length, so they are the same for all. They are captured for every block,
because blocks of one model may take different ones (Gemma 3's sliding-window layers take a
sliding mask and local rotary embeddings, its full-attention layers a causal mask and global
ones): in that one-sequence pass each block is replaced by the identity while its arguments are
recorded, so no block computes and an offloaded model needs none of them on the GPU. With
``offload`` the model stays on the CPU and only the block at work (plus the small non-block
modules) sits on the GPU.

Every stage that walks the blocks (pruning, the allocators' dense pass and trial prunes,
perplexity) does it the same way, through ``first_block_inputs`` and ``walk_blocks``: placement and
offload, input capture and the non-finite checks live here only, driven by one ``Execution``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from sparsebench.errors import NumericalError
from sparsebench.models.adapters import FamilyAdapter


class _StopForward(Exception):
    """Raised by the capture hook to end the model's forward at the first block."""


class StopBlock(Exception):
    """Raised by a hook of ``run_block_for_hooks`` once it has observed all it needs of a batch:
    the rest of that batch's block forward (whose outputs are dropped anyway) is skipped."""


@dataclass(frozen=True)
class Execution:
    """How the blocks run: on ``device``; with ``offload`` the model stays on the CPU and one block at a
    time (plus the small non-block modules) sits on the device; forwards in micro-batches of
    ``batch_size`` sequences; ``progress`` bars."""

    device: str
    offload: bool = False
    batch_size: int = 1
    progress: bool = False


@dataclass
class BlockInputs:
    hidden: Tensor  # [sequences, seqlen, hidden] on the work device
    kwargs: dict[str, Any]  # what the first block takes besides the hidden states
    block_kwargs: dict[nn.Module, dict[str, Any]] = field(default_factory=dict)  # each block's own

    def kwargs_for(self, block: nn.Module) -> dict[str, Any]:
        """What ``block`` takes besides the hidden states (its own, where blocks take different ones)."""
        return self.block_kwargs.get(block, self.kwargs)


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


_NOT_REUSABLE = ("hidden_states", "cache", "past_key_values", "past_key_value", "layer_past")


def _reusable_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """A block's keyword arguments without the hidden states and caches, with ``use_cache=False``."""
    kept = {k: v for k, v in kwargs.items() if k not in _NOT_REUSABLE}
    kept["use_cache"] = False
    return kept


@torch.inference_mode()
def capture_block_kwargs(model: nn.Module, adapter: FamilyAdapter, one_sequence: Tensor, device: torch.device | str) -> dict[nn.Module, dict[str, Any]]:
    """The keyword arguments the model passes to each of its blocks, for ``one_sequence`` [1, seqlen].

    Every block is the identity during this forward (it records its arguments and returns its
    hidden states unchanged), so the model's own mask and position code runs and no block computes.
    """
    blocks = list(adapter.get_blocks(model))
    recorded: dict[nn.Module, dict[str, Any]] = {}
    saved = {block: block.__dict__.get("forward") for block in blocks}

    def identity_for(block: nn.Module):
        def identity(*args, **kwargs):
            recorded[block] = _reusable_kwargs(kwargs)
            if block is blocks[-1]:
                raise _StopForward  # the final norm and the head are not needed
            return args[0] if args else kwargs["hidden_states"]

        return identity

    try:
        for block in blocks:
            block.forward = identity_for(block)
        try:
            model(one_sequence.to(device), use_cache=False)
        except _StopForward:
            pass
    finally:
        for block, forward in saved.items():
            if forward is None:
                del block.forward
            else:
                block.forward = forward
    if len(recorded) != len(blocks):
        raise RuntimeError(f"the model called {len(recorded)} of its {len(blocks)} blocks ({adapter.name} adapter)")
    return recorded


@torch.inference_mode()
def capture_block_inputs(
    model: nn.Module, adapter: FamilyAdapter, input_ids: Tensor, device: torch.device | str, batch_size: int
) -> BlockInputs:
    """Hidden states entering the first block for every sequence of ``input_ids`` [n, seqlen], and
    the keyword arguments of every block."""
    first_block = adapter.get_blocks(model)[0]
    captured: list[Tensor] = []

    def hook(module, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _StopForward

    block_kwargs = capture_block_kwargs(model, adapter, input_ids[:1], device)
    handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for part in batches(input_ids.shape[0], batch_size):
            try:
                model(input_ids[part].to(device), use_cache=False)
            except _StopForward:
                pass
    finally:
        handle.remove()
    hidden = torch.cat(captured, dim=0)
    return BlockInputs(hidden, block_kwargs[first_block], block_kwargs)


@torch.inference_mode()
def run_block(block: nn.Module, inputs: BlockInputs, batch_size: int, out: Tensor | None = None) -> Tensor:
    """The block's outputs for every captured sequence, computed in micro-batches (``out`` may be the input)."""
    hidden = inputs.hidden
    result = torch.empty_like(hidden) if out is None else out
    for part in batches(hidden.shape[0], batch_size):
        result[part] = _block_output(block(hidden[part], **inputs.kwargs_for(block)))
    return result


@torch.inference_mode()
def run_block_for_hooks(block: nn.Module, inputs: BlockInputs, batch_size: int) -> None:
    """Run the block for what its hooks observe; its outputs are dropped batch by batch.

    A hook may raise ``StopBlock`` to end a batch's forward early, once nothing after it is observed.
    """
    for part in batches(inputs.hidden.shape[0], batch_size):
        try:
            block(inputs.hidden[part], **inputs.kwargs_for(block))
        except StopBlock:
            pass


def first_block_inputs(model: nn.Module, adapter: FamilyAdapter, input_ids: Tensor, run: Execution) -> BlockInputs:
    """The first block's inputs for ``input_ids`` on the device (the non-block modules moved there first
    when offloaded), checked finite."""
    if run.offload:
        move_non_block_modules(model, adapter.get_blocks(model), run.device)
    inputs = capture_block_inputs(model, adapter, input_ids, run.device, run.batch_size)
    check_finite(inputs.hidden, "in the inputs of the first block")
    return inputs


def walk_blocks(
    model: nn.Module, adapter: FamilyAdapter, run: Execution, desc: str, inputs: BlockInputs | None = None, stage: str = ""
) -> Iterator[tuple[int, nn.Module]]:
    """``(index, block)`` of every block in order, the block on the device while the caller works on it
    (moved there and back when offloaded). When the caller resumes the walk, the hidden states of
    ``inputs`` (which its step replaced by the block's outputs) are checked finite; ``stage`` (e.g.
    ``pruned``) names the block in the error."""
    for index, block in enumerate(tqdm(adapter.get_blocks(model), desc=desc, unit="block", disable=not run.progress)):
        if run.offload:
            block.to(run.device)
        yield index, block
        if inputs is not None:
            check_finite(inputs.hidden, f"after {stage + ' ' if stage else ''}block {index}")
        if run.offload:
            block.to("cpu")


def check_finite(hidden: Tensor, where: str) -> None:
    """Stop at the first non-finite activation (one reduction and one sync per block), naming the dtype.

    A NaN or inf in a block's outputs otherwise surfaces much later as a misleading error (a
    Hessian that is not positive definite, every weight of a layer pruned) or as a NaN perplexity.
    """
    if not bool(torch.isfinite(hidden).all()):
        raise NumericalError(
            f"non-finite activations (NaN or inf) {where}, computing in {hidden.dtype}: the model overflows in this dtype "
            f"(float16 is known to overflow for Gemma models); set model.dtype=bfloat16 or model.dtype=float32"
        )


def synchronize(device: torch.device | str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
