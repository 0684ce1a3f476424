"""OpenLineage run events: every step's START and COMPLETE/FAIL, datasets carrying their content hashes,
checked against the RunEvent structure of the OpenLineage 2-0-2 spec.

No package reachable here ships the spec's ``OpenLineage.json``, so the schema below restates what the spec
requires of a RunEvent and its facets (required fields, formats, enums); it rejects unknown event types,
non-UUID run ids, facets without ``_producer``/``_schemaURL`` and datasets without a namespace or name."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tasks.lineage.openlineage import NAMESPACE, LineageDataset, events_path, lineage_run

FACET = {"type": "object", "required": ["_producer", "_schemaURL"],
         "properties": {"_producer": {"type": "string", "format": "uri"}, "_schemaURL": {"type": "string", "format": "uri"}}}
DATASET = {
    "type": "object", "required": ["namespace", "name"],
    "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                   "facets": {"type": "object", "additionalProperties": FACET}},
}
RUN_EVENT = {
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string", "format": "uri"},
        "schemaURL": {"type": "string", "pattern": r"^https://openlineage\.io/spec/\d+-\d+-\d+/OpenLineage\.json#/\$defs/RunEvent$"},
        "run": {"type": "object", "required": ["runId"],
                "properties": {"runId": {"type": "string", "format": "uuid"}, "facets": {"type": "object", "additionalProperties": FACET}}},
        "job": {"type": "object", "required": ["namespace", "name"],
                "properties": {"namespace": {"type": "string"}, "name": {"type": "string"},
                               "facets": {"type": "object", "additionalProperties": FACET}}},
        "inputs": {"type": "array", "items": DATASET},
        "outputs": {"type": "array", "items": DATASET},
    },
}


def _events():
    return [json.loads(line) for line in events_path().read_text().splitlines() if line.strip()]


def _validate(event: dict) -> None:
    jsonschema.validate(event, RUN_EVENT, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


def test_a_step_emits_start_and_complete_with_content_hashes(eve_home):
    source = LineageDataset(name="/data/raw", content_hash="a" * 64, dvc_md5="b" * 32 + ".dir", num_items=605)
    with lineage_run("ingest", [source]) as outputs:
        outputs.append(LineageDataset(name="s3://bucket/demo-raw", content_hash="c" * 64, num_items=600))
    start, complete = _events()
    for event in (start, complete):
        _validate(event)
        assert event["job"] == {"namespace": NAMESPACE, "name": "ingest", "facets": {}}
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    read = complete["inputs"][0]
    assert read["facets"]["version"]["datasetVersion"] == "a" * 64
    assert read["facets"]["eve_content"]["dvc_md5"] == "b" * 32 + ".dir"
    written = complete["outputs"][0]
    assert (written["namespace"], written["name"]) == ("s3://bucket", "demo-raw")
    assert written["facets"]["version"]["datasetVersion"] == "c" * 64


def test_a_failed_step_emits_fail_with_the_error_and_still_raises(eve_home):
    with pytest.raises(ValueError, match="no items"):
        with lineage_run("caption-gate", [LineageDataset(name="/d", content_hash="d" * 64)]):
            raise ValueError("no items passed")
    start, fail = _events()
    _validate(fail)
    assert fail["eventType"] == "FAIL"
    assert fail["run"]["facets"]["errorMessage"]["message"] == "ValueError: no items passed"


def test_the_schema_rejects_what_the_spec_rejects(eve_home):
    with lineage_run("stage-1", []):
        pass
    event = _events()[0]
    for broken in ({**event, "eventType": "DONE"}, {**event, "run": {"runId": "not-a-uuid"}},
                   {**event, "inputs": [{"namespace": "", "name": "x"}]}):
        with pytest.raises(jsonschema.ValidationError):
            _validate(broken)


def test_an_unreachable_http_endpoint_never_fails_the_step(eve_home, monkeypatch):
    monkeypatch.setenv("EVE_OPENLINEAGE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    with lineage_run("stage-2", []) as outputs:
        outputs.append(LineageDataset(name="eve@v0.1.0", content_hash="e" * 64, kind="model"))
