"""``finetune=none,lora`` in a Hydra multirun, and the W&B mirror of a fine-tuned case (offline)."""

from __future__ import annotations

import pytest

from sparsebench.config import validate
from sparsebench.runner import run_case

from .conftest import compose, documents, run_cli

LORA = ["finetune.steps=3", "finetune.seqlen=32", "finetune.batch_size=2", "finetune.log_every=1", "finetune.dataset=wikitext2"]


def test_multirun_doubles_a_grid_with_and_without_finetuning(tiny_case, tmp_path):
    done = run_cli(["--multirun", "finetune=none,lora", *LORA, *tiny_case], cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    found = documents(tmp_path / "results")
    assert len(found) == 2 and all(d["status"] == "ok" for d in found.values())
    by_method = {d["config"]["finetune"]["name"]: d for d in found.values()}
    assert "finetune" not in by_method["none"] and "ppl_before_finetune" not in by_method["none"]["metrics"]
    assert by_method["lora"]["finetune"]["steps"] == 3 and "_lora_" in by_method["lora"]["case_id"]


def _wandb_records(path):
    """The records of a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB's log
    format: 32 KiB blocks of chunks, each ``crc32c (4) | length (2, LE) | type (1: full, 2: first, 3: middle, 4: last)``."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    position, block, pending = 7, 32768, b""
    while position + 7 <= len(data):
        if block - position % block < 7:  # a chunk header never straddles blocks: the tail is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            yield chunk
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            yield pending + chunk


def _history(run_dir) -> list[dict]:
    """The history rows (``run.log`` calls) of an offline W&B run."""
    import json

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("run-*.wandb")
    rows = []
    for data in _wandb_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item})
    return rows


def test_wandb_offline_run_holds_the_loss_curve(tiny_case, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for key in ("WANDB_API_KEY", "WANDB_ENTITY", "WANDB_PROJECT", "WANDB_RUN_ID", "WANDB_RUN_GROUP"):
        monkeypatch.delenv(key, raising=False)
    for key, value in {"WANDB_MODE": "offline", "WANDB_BASE_URL": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
                       "HTTP_PROXY": "http://127.0.0.1:9", "WANDB_CONFIG_DIR": str(tmp_path / "wandb-config"), "NETRC": str(tmp_path / "no-netrc")}.items():
        monkeypatch.setenv(key, value)
    wandb_dir = tmp_path / "wandb-runs"
    document = run_case(validate(compose([*tiny_case, "finetune=lora", *LORA, "tracker=wandb", f"tracker.wandb.dir={wandb_dir}"])))
    assert document["status"] == "ok" and document["tracking"]["wandb"]["status"] == "ok", document["tracking"]
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    series = [(row["finetune/step"], row["finetune/loss"]) for row in _history(run_dir) if "finetune/loss" in row]
    curve = document["finetune"]["loss_curve"]
    assert series == list(zip(curve["step"], curve["loss"]))
