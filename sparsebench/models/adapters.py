"""Family adapters: the only place that knows a model family's module names.

An adapter says where the decoder blocks are, which linears of a block are pruned (grouped by the
input they read, so statistics are computed once per input), and which modules turn the last
block's output into the LM head's input. Adding a family is one more ``FamilyAdapter`` in ``ADAPTERS``.
Embeddings and the LM head are never pruned.

What happens between the embedding table and the first block (Gemma's scaling of embeddings by
sqrt(hidden)), the keyword arguments each block takes (masks, rotary embeddings; they may differ
from block to block, see ``sparsebench.blockwalk``) and the norms inside a block (Gemma's
``(1 + weight)`` RMSNorm, its q/k norms) are the model's own code, run unchanged: the block walk
captures the first block's inputs from the model's forward and calls the blocks as modules. Only
what follows the last block is named here: the final modules, the head and, for families that
squash their logits (Gemma's ``final_logit_softcapping``), the cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sparsebench.errors import ConfigError


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_types: tuple[str, ...]  # values of the HF config's ``model_type``
    blocks: str  # dotted path of the ModuleList of decoder blocks
    input_groups: tuple[tuple[str, ...], ...]  # prunable linears of a block, grouped by shared input
    final_modules: tuple[str, ...]  # applied in order after the last block (final norm, projections)
    logit_softcap: str | None = None  # config key of a cap applied as cap * tanh(logits / cap), when set
    bos_per_segment: bool = False  # default of model.bos_per_segment: the family needs a BOS token first
    half_dtype: str = "float16"  # model.dtype=auto on a GPU for a float32 checkpoint (bfloat16 where float16 overflows)

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.input_groups for name in group)

    @property
    def mlp_linears(self) -> tuple[str, ...]:
        """The MLP's linears: the last two input groups (the MLP's input and its output projection) in every family."""
        return tuple(name for group in self.input_groups[-2:] for name in group)

    @property
    def mlp_input_linears(self) -> tuple[str, ...]:
        """The MLP's input projections (gate and up, fc1, dense_h_to_4h): their outputs reach the output projection only
        through elementwise operations (the activation, the gate's product) in every family."""
        return self.input_groups[-2]

    def linear_kind(self, name: str) -> str:
        """``mlp`` or ``attention``."""
        return "mlp" if name in self.mlp_linears else "attention"

    def get_blocks(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.blocks)

    def get_final_modules(self, model: nn.Module) -> list[nn.Module]:
        """The final modules that exist in this model (OPT-350m has a projection, others do not)."""
        modules = []
        for path in self.final_modules:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            if module is not None:
                modules.append(module)
        return modules

    def get_head(self, model: nn.Module) -> nn.Module:
        """The LM head (``lm_head``, GPT-NeoX's former ``embed_out``), as transformers itself finds it,
        followed by the family's logit cap where the model's config sets one."""
        head = model.get_output_embeddings()
        cap = getattr(model.config, self.logit_softcap, None) if self.logit_softcap else None
        return _SoftCappedHead(head, float(cap)) if cap else head

    def get_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {name: block.get_submodule(name) for name in self.linear_names}

    def grouped_linears(self, model: nn.Module) -> list[tuple[nn.Linear, ...]]:
        """Every block's linears grouped by the input they read (``input_groups``), block after block."""
        return [tuple(block.get_submodule(name) for name in group) for block in self.get_blocks(model) for group in self.input_groups]

    def mlp_input_modules(self, model: nn.Module) -> list[nn.Linear]:
        """Every block's MLP input projections (``mlp_input_linears``), block after block."""
        return [block.get_submodule(name) for block in self.get_blocks(model) for name in self.mlp_input_linears]


class _SoftCappedHead(nn.Module):
    """``cap * tanh(head(x) / cap)``: Gemma's final logit soft-capping (as in Gemma2/3ForCausalLM.forward)."""

    def __init__(self, head: nn.Module, cap: float):
        super().__init__()
        self.head = head
        self.cap = cap

    def forward(self, hidden: Tensor) -> Tensor:
        return torch.tanh(self.head(hidden) / self.cap) * self.cap


_LLAMA_GROUPS = (
    ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    ("self_attn.o_proj",),
    ("mlp.gate_proj", "mlp.up_proj"),
    ("mlp.down_proj",),
)

ADAPTERS: dict[str, FamilyAdapter] = {
    adapter.name: adapter
    for adapter in (
        # LLaMA 1/2/3 and SmolLM share LlamaForCausalLM.
        FamilyAdapter("llama", ("llama",), "model.layers", _LLAMA_GROUPS, ("model.norm",)),
        FamilyAdapter("qwen2", ("qwen2",), "model.layers", _LLAMA_GROUPS, ("model.norm",)),
        FamilyAdapter("mistral", ("mistral",), "model.layers", _LLAMA_GROUPS, ("model.norm",)),
        # Gemma 3 text models (Gemma3ForCausalLM, model_type gemma3_text; a GGUF file's "gemma3" is
        # read as gemma3_text by transformers): LLaMA's linears; q_norm/k_norm and the four
        # (1 + weight) RMSNorms of each block are not pruned. Gemma is trained with a BOS token at
        # the start of every sequence and is far worse without it (docs/gemma3.md). Its activations
        # overflow float16 (every perplexity NaN on an H200, dense included), so a float32 checkpoint
        # runs in bfloat16 on a GPU with model.dtype=auto.
        FamilyAdapter("gemma3", ("gemma3_text",), "model.layers", _LLAMA_GROUPS, ("model.norm",), "final_logit_softcapping", bos_per_segment=True,
                      half_dtype="bfloat16"),
        FamilyAdapter(
            "opt",
            ("opt",),
            "model.decoder.layers",
            (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.out_proj",), ("fc1",), ("fc2",)),
            ("model.decoder.final_layer_norm", "model.decoder.project_out"),
        ),
        FamilyAdapter(
            "gpt_neox",
            ("gpt_neox",),
            "gpt_neox.layers",
            (("attention.query_key_value",), ("attention.dense",), ("mlp.dense_h_to_4h",), ("mlp.dense_4h_to_h",)),
            ("gpt_neox.final_layer_norm",),
        ),
        FamilyAdapter(
            "phi",
            ("phi",),
            "model.layers",
            (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.dense",), ("mlp.fc1",), ("mlp.fc2",)),
            ("model.final_layernorm",),
        ),
    )
}


def supported_families() -> list[str]:
    return sorted(ADAPTERS)


def adapter_for(family: str, model_type: str | None) -> FamilyAdapter:
    """The adapter named by ``family``, or found from the HF ``model_type`` when family is 'auto'."""
    if family != "auto":
        if family not in ADAPTERS:
            raise ConfigError(f"model.family={family!r}: allowed values are auto, {', '.join(supported_families())}")
        return ADAPTERS[family]
    for adapter in ADAPTERS.values():
        if model_type in adapter.model_types:
            return adapter
    known = sorted(t for a in ADAPTERS.values() for t in a.model_types)
    raise ConfigError(
        f"model: architecture {model_type!r} is not supported; supported model types: {', '.join(known)} "
        f"(model.family: auto, {', '.join(supported_families())})"
    )
