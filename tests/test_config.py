"""Bad input fails early with one clear line naming the key and the allowed values."""

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import WIKITEXT_TEST, compose_config, tiny_case_overrides
from sparsebench.config import validate
from sparsebench.errors import ConfigError, ModelLoadError, SparsebenchError

CONF = Path(__file__).resolve().parent.parent / "sparsebench" / "conf"


@pytest.fixture
def base(tiny_model_dirs, tmp_path, cache_dir):
    return tiny_case_overrides(tiny_model_dirs["llama"], tmp_path, cache_dir)


@pytest.mark.parametrize(
    "override,error,message",
    [
        ("sparsity.ratio=1.5", ConfigError, "sparsity.ratio=1.5: must be a number in (0, 1)"),
        ("sparsity.ratio=0", ConfigError, "sparsity.ratio=0"),
        ("sparsity.pattern=3:2", ConfigError, "sparsity.pattern"),
        ("metric.name=nonesuch", ConfigError, "allowed: hassle_free, magnitude, multiflow, none, ria, sparsegpt, swiftprune, wanda"),
        ("metric.comparison=column", ConfigError, "metric.comparison='column': allowed values are row, layer"),
        ("+metric.blocksize=64", ConfigError, "metric.blocksize: not a key of metric 'wanda'; allowed: comparison"),
        ("model.family=gpt2", ConfigError, "model.family='gpt2': allowed values are auto, gemma3, gpt_neox, llama, mistral, opt, phi, qwen2"),
        ("model.dtype=int8", ConfigError, "model.dtype='int8'"),
        ("calibration.dataset=imagenet", ConfigError, "calibration.dataset='imagenet': allowed values are c4, ptb, wikitext2"),
        ("eval.ppl.datasets=[wikitext2,lambada]", ConfigError, "eval.ppl.datasets='lambada': allowed values are c4, ptb, wikitext2"),
        ("data.ptb=/no/such/ptb.txt", ConfigError, "data.ptb='/no/such/ptb.txt': no such file or folder"),
        ("model.path=/no/such/model", ModelLoadError, "no such file or folder"),
        ("device=tpu", ConfigError, "device='tpu': allowed values are auto, cpu, cuda, cuda:N"),
        ("calibration.nsamples=0", ConfigError, "calibration.nsamples=0: must be an integer >= 1"),
    ],
)
def test_bad_values_raise_one_clear_error(base, override, error, message):
    with pytest.raises(error) as raised:
        validate(compose_config(base + [override]))
    assert message in str(raised.value)
    assert "\n" not in str(raised.value)


def test_n_m_pattern_with_contradictory_ratio(base):
    with pytest.raises(ConfigError, match=r"sparsity.ratio=0.6 contradicts sparsity.pattern=2:4 .* set sparsity.ratio=0.5"):
        validate(compose_config(base + ["sparsity.pattern=2:4", "sparsity.ratio=0.6"]))
    assert validate(compose_config(base + ["sparsity.pattern=4:8"])).pattern.m == 8


def test_offload_needs_a_gpu(base):
    with pytest.raises(ConfigError, match="offload=true .* needs device=cuda"):
        validate(compose_config(base + ["offload=true"]))


def test_unknown_keys_fail_at_composition(base):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException):
        compose_config(base + ["sparsity.ratoi=0.5"])
    with pytest.raises(Exception, match="metric/nonesuch"):
        compose_config(base + ["metric=nonesuch"])


def test_corrupt_gguf_is_a_clear_error(base, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"\x00\x01not a gguf file")
    with pytest.raises(ModelLoadError, match="not a GGUF file"):
        validate(compose_config(base + [f"model.path={not_gguf}"]))


def test_every_preset_composes_and_validates(base):
    for group in ("model", "metric", "sparsity", "calibration", "eval", "allocator"):
        for preset in sorted((CONF / group).glob("*.yaml")):
            config = compose_config(base + [f"{group}={preset.stem}"])
            if group != "model":  # model presets name hub ids, which are not fetched here
                assert isinstance(validate(config).ratio, float)


def _cli(*overrides, cwd):
    return subprocess.run([sys.executable, "-m", "sparsebench.cli", *overrides], capture_output=True, text=True, cwd=cwd, timeout=600)


def test_cli_reports_bad_input_without_traceback(base, tmp_path):
    done = _cli(*base, "sparsity.pattern=2:4", "sparsity.ratio=0.7", cwd=tmp_path)
    assert done.returncode == 2
    assert "sparsebench: error: sparsity.ratio=0.7 contradicts sparsity.pattern=2:4" in done.stderr
    assert "Traceback" not in done.stderr


def test_cli_records_a_failed_case_and_exits_non_zero(base, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + b"\x00" * 64)
    done = _cli(*base, f"model.path={fake}", cwd=tmp_path)
    assert done.returncode == 1
    assert "sparsebench: case failed: ModelLoadError: model.path=" in done.stderr
    assert "Traceback" not in done.stderr
    documents = list(Path(tmp_path).glob("*.json"))
    assert len(documents) == 1
    import json

    document = json.loads(documents[0].read_text())
    assert document["status"] == "failed" and document["error"]["type"] == "ModelLoadError" and "Traceback" in document["error"]["traceback"]


def test_errors_are_sparsebench_errors():
    assert issubclass(ConfigError, SparsebenchError) and issubclass(ModelLoadError, SparsebenchError)


def test_unsupported_architecture_lists_the_supported_ones(base, tmp_path, cache_dir):
    from transformers import AutoModelForCausalLM, GPT2Config

    from sparsebench.models.loading import load_model

    folder = tmp_path / "gpt2"
    AutoModelForCausalLM.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(folder)
    with pytest.raises(ConfigError, match=r"architecture 'gpt2' is not supported; supported model types: gemma3_text, gpt_neox, llama, mistral, opt, phi, qwen2"):
        load_model(str(folder), cache_dir)
