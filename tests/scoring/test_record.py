"""The result Record: JSON round trip, strict reading, and the schema 1 -> 2 migration on a real
record as committed before the migration (tests/data/, gzipped)."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import pytest

from mqbench.board import store as L
from mqbench.errors import MqbenchError
from mqbench.scoring.record import RECORD_SCHEMA, Allocation, Record, Timing, migrate

REPO = Path(__file__).resolve().parents[2]
# leaderboard/records/fmnist-resnet8/bparams.json (table v1) as committed in record schema 1
V1 = Path(__file__).parent.parent / "data" / "record_v1_fmnist-resnet8_bparams.json.gz"
V2 = REPO / "leaderboard" / "archive" / "fmnist-resnet8-v1" / "bparams.json"  # as migrated


def v1_text() -> str:
    return gzip.decompress(V1.read_bytes()).decode()


def small() -> Record:
    return Record(
        proxy="p", proxy_version=3, proxy_sha256="a" * 64, proxy_kind="layer", paper="x",
        task="t", task_version=1, task_checksum="c" * 64, table_checksum="d" * 64, seed=0,
        package_version="0.1.0", git_commit="e" * 40, torch_version="2", n_configs=2,
        bootstrap=0, metrics={"spearman": 0.25, "layer_spearman": None},
        downstream=(Allocation(3.0, "size", "w:2|a:8", 0.5, 1.0, 0.1, 100, 200, 0.6, 0.1),),
        timing=Timing(0.5, 0.001, 0.25), scores={"k1": 1.0, "k2": -2.5},
        sensitivity={"u": 0.5})


def test_round_trip_and_frozen():
    rec = small()
    assert Record.from_json(rec.to_json()) == rec
    assert Record.from_dict(json.loads(json.dumps(rec.to_dict()))) == rec
    d = rec.to_dict()
    assert d["schema_version"] == RECORD_SCHEMA and isinstance(d["downstream"][0], dict)
    assert "recorded_at" not in d and "table_provenance" not in d  # None: left out
    stamped = dataclasses.replace(rec, recorded_at="2025-01-01T00:00:00+00:00")
    assert Record.from_json(stamped.to_json()) == stamped
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.proxy = "q"


def test_strict_reading_is_one_line():
    d = small().to_dict()
    for bad, match in [({**d, "extra": 1}, "unknown record field"),
                       ({k: v for k, v in d.items() if k != "timing"}, "no 'timing' field"),
                       ({**d, "schema_version": RECORD_SCHEMA + 1}, "newer than this"),
                       ({**d, "schema_version": "2"}, "integer schema_version"),
                       ({**d, "downstream": [{"acc": 1.0}]}, "malformed downstream")]:
        with pytest.raises(MqbenchError, match=match) as err:
            Record.from_dict(bad, "r.json")
        assert "\n" not in str(err.value)
    with pytest.raises(MqbenchError, match="not valid JSON"):
        Record.from_json("{broken")


def test_v1_record_migrates_to_the_committed_v2_file():
    old = json.loads(v1_text())
    assert old["schema_version"] == 1 and "spearman_top100" in old["metrics"]
    rec = Record.from_json(v1_text())
    assert rec.schema_version == 2
    assert not any(k.startswith("spearman_top100") for k in rec.metrics)
    for suffix in ("", "_lo", "_hi"):  # the dropped duplicate was the same number
        assert rec.metrics["spearman" + suffix] == old["metrics"]["spearman_top100" + suffix]
    # everything else is untouched: the migrated text is the committed schema-2 file
    assert rec.to_json() == V2.read_text()
    assert migrate(old) is not old and old["schema_version"] == 1  # the input is not changed
    # a v1 writer that left `spearman` out keeps the value under the surviving name
    m = {k: v for k, v in old["metrics"].items() if not k.startswith("spearman") or "top" in k}
    assert migrate({**old, "metrics": m})["metrics"]["spearman"] == old["metrics"]["spearman"]


def test_store_reads_upgrades_and_replaces_v1_files(tmp_path, monkeypatch):
    lb = tmp_path / "lb"
    folder = lb / "records" / "fmnist-resnet8"
    folder.mkdir(parents=True)
    (folder / "bparams.json").write_text(v1_text())
    monkeypatch.setenv("MQBENCH_LEADERBOARD", str(lb))
    # read as the current schema: no duplicate metric rows, the stored JSON is migrated
    names = {r[0] for r in L.query("SELECT metric FROM metrics")}
    assert "spearman" in names and not any(n.startswith("spearman_top100") for n in names)
    (record,), = L.query("SELECT record FROM runs")
    assert json.loads(record)["schema_version"] == RECORD_SCHEMA
    # upgrade_records rewrites the file exactly as the committed v2 file, once
    assert L.upgrade_records() == [folder / "bparams.json"]
    assert (folder / "bparams.json").read_text() == V2.read_text()
    assert L.upgrade_records() == []
    # the same run against a v1 file is a replacement (the file's schema is part of identity)
    (folder / "bparams.json").write_text(v1_text())
    saved = L.save_record(Record.from_json(V2.read_text()))
    assert saved.status == "replaced" and saved.changed == ("schema_version",)
    assert L.save_record(Record.from_json(V2.read_text())).status == "unchanged"
