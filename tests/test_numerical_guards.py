"""Non-finite activations stop a case at the block where they appear, naming the dtype (not as a NaN
perplexity recorded as ok, nor as a misleading Cholesky or sparsity error later); model.dtype=auto
picks bfloat16 for Gemma on a GPU, whose activations overflow float16."""

import pytest
import torch

from sparsebench.allocators.uniform import uniform
from sparsebench.errors import NumericalError
from sparsebench.blockwalk import Execution
from sparsebench.evaluate.perplexity import perplexity
from sparsebench.metrics import METRICS
from sparsebench.models.adapters import adapter_for
from sparsebench.models.loading import resolve_dtype
from sparsebench.layers import prunable_layers
from sparsebench.prune import PrunePlan, prune_model
from sparsebench.testing.tiny_models import VOCAB, tiny_model


def _overflowing_llama():
    """A tiny LLaMA whose second block's MLP output is infinite (as float16 overflow makes it)."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.fill_(float("inf"))
    return model, adapter_for("auto", "llama")


def test_perplexity_names_the_block_where_activations_stop_being_finite():
    model, adapter = _overflowing_llama()
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    with pytest.raises(NumericalError, match=r"after block 1, computing in torch.float32.*model.dtype=bfloat16 or model.dtype=float32"):
        perplexity(model, adapter, ids, Execution("cpu", False, 2))


def test_a_finite_model_passes_the_guard():
    model, adapter = tiny_model("llama"), adapter_for("auto", "llama")
    ids = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(torch.tensor(perplexity(model, adapter, ids, Execution("cpu", False, 2)).ppl))


def test_pruning_stops_at_the_block_whose_outputs_are_not_finite():
    model, adapter = _overflowing_llama()
    ids = torch.randint(0, VOCAB, (4, 16), generator=torch.Generator().manual_seed(1))
    ratios = uniform(prunable_layers(model, adapter), 0.5)
    # the inf weights are pruned or kept by the metric; either way block 1's outputs are not finite
    with pytest.raises(NumericalError, match="after pruned block 1"):
        prune_model(model, adapter, PrunePlan(METRICS.get("wanda"), {}, ratios, None), ids, Execution("cpu", False, 2))


@pytest.mark.parametrize("family, expected", [("gemma3_text", torch.bfloat16), ("llama", torch.float16), ("qwen2", torch.float16)])
def test_auto_dtype_on_a_gpu_is_the_familys_half_type_for_float32_checkpoints(family, expected):
    adapter = adapter_for("auto", family)
    assert resolve_dtype("auto", "cuda", torch.float32, adapter.half_dtype) == expected
    assert resolve_dtype("auto", "cuda", torch.bfloat16, adapter.half_dtype) == torch.bfloat16  # the checkpoint's own half type wins
    assert resolve_dtype("auto", "cpu", torch.float32, adapter.half_dtype) == torch.float32
    assert resolve_dtype("float16", "cuda", torch.float32, adapter.half_dtype) == torch.float16  # asked for explicitly


class _Tokenizer:
    def __init__(self, pieces):
        self.pieces = pieces

    def tokenize(self, text):
        return self.pieces


def test_a_gguf_tokenizer_that_cuts_words_into_pieces_is_refused(tmp_path):
    from sparsebench.errors import ModelLoadError
    from sparsebench.models.loading import check_converted_tokenizer

    # what transformers 5.17 made of Gemma 3's GGUF tokenizer
    broken = ["▁T", "he", "▁qu", "ick", "▁b", "ro", "wn", "▁f", "ox", "▁j", "um", "ps", "▁o", "ver", "▁t", "he", "▁la", "zy", "▁d", "og", "."]
    with pytest.raises(ModelLoadError, match=r"cuts common words into pieces \(21 tokens.*upgrade transformers and delete .*converted"):
        check_converted_tokenizer(_Tokenizer(broken), "pypi:x", tmp_path / "converted" / "abc")
    right = ["The", "▁quick", "▁brown", "▁fox", "▁jumps", "▁over", "▁the", "▁lazy", "▁dog", "."]
    check_converted_tokenizer(_Tokenizer(right), "pypi:x", tmp_path / "converted" / "abc")
