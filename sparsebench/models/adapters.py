"""Family adapters: the only place that knows a model family's module names.

An adapter says where the decoder blocks are, which linears of a block are pruned (grouped by the
input they read, so statistics are computed once per input), and which modules turn the last
block's output into the LM head's input. Adding a family is one more ``FamilyAdapter`` in ``ADAPTERS``.
Embeddings and the LM head are never pruned.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from sparsebench.errors import ConfigError


@dataclass(frozen=True)
class FamilyAdapter:
    name: str
    model_types: tuple[str, ...]  # values of the HF config's ``model_type``
    blocks: str  # dotted path of the ModuleList of decoder blocks
    input_groups: tuple[tuple[str, ...], ...]  # prunable linears of a block, grouped by shared input
    final_modules: tuple[str, ...]  # applied in order after the last block (final norm, projections)

    @property
    def linear_names(self) -> tuple[str, ...]:
        return tuple(name for group in self.input_groups for name in group)

    @property
    def mlp_linears(self) -> tuple[str, ...]:
        """The MLP's linears: the last two input groups (the MLP's input and its output projection) in every family."""
        return tuple(name for group in self.input_groups[-2:] for name in group)

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
        """The LM head (``lm_head``, GPT-NeoX's former ``embed_out``), as transformers itself finds it."""
        return model.get_output_embeddings()

    def get_linears(self, block: nn.Module) -> dict[str, nn.Linear]:
        return {name: block.get_submodule(name) for name in self.linear_names}


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
