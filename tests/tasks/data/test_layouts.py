"""Source layouts as teams bring them: recognised from the location (``kind: auto``), field names as
options, a location that matches nothing refused with what was expected; production validation
rules for ordinary images, the demo's kept for the demo."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tasks.data.sharding import ingest_items
from tasks.data.sources import (
    LayoutNotRecognisedError,
    SourceNotFoundError,
    SourceSpec,
    _records_from_json_array,
    check_source,
)
from tasks.data.validate import ValidationConfig, validate_item

REAL_IMAGES = Path(__file__).parents[2] / "fixtures" / "real_data" / "images"


def _png(size=(40, 30), colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


def _hf_folder(root: Path, records_name: str = "metadata.jsonl", n: int = 3) -> Path:
    (root / "images").mkdir(parents=True)
    rows = []
    for i in range(n):
        (root / "images" / f"{i}.png").write_bytes(_png(colour=(40 * i, 100, 200)))
        rows.append({"file_name": f"images/{i}.png", "text": f"Picture number {i}."})
    if records_name.endswith(".csv"):
        (root / records_name).write_text("file_name,text\n" + "".join(f'{r["file_name"]},"{r["text"]}"\n' for r in rows))
    else:
        (root / records_name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def _captions(spec: SourceSpec) -> dict[str, str]:
    return {item.item_id: item.caption for item in spec.read() if item.reader_problem is None}


@pytest.mark.parametrize("records_name", ["metadata.jsonl", "metadata.csv"])
def test_a_hugging_face_image_folder_is_read_out_of_the_box(tmp_path, records_name):
    folder = _hf_folder(tmp_path / "photos", records_name)
    spec = SourceSpec(location=str(folder))
    resolved = spec.resolved()
    assert (resolved.kind, resolved.records_file, resolved.image_field, resolved.caption_field) == (
        "image_folder", records_name, "file_name", "text")
    assert "Hugging Face image folder" in resolved.describe()
    check_source(spec)
    assert _captions(spec) == {str(i): f"Picture number {i}." for i in range(3)}
    report = ingest_items(spec.read(), tmp_path / "out", ValidationConfig())
    assert (report.num_in, report.num_accepted, report.num_quarantined) == (3, 3, 0)


def test_field_names_are_options(tmp_path):
    folder = tmp_path / "alt"
    (folder / "img").mkdir(parents=True)
    (folder / "img" / "a.png").write_bytes(_png())
    (folder / "records.jsonl").write_text(json.dumps({"path": "img/a.png", "alt_text": "A red box.", "uid": "x1"}) + "\n")
    spec = SourceSpec(location=str(folder), records_file="records.jsonl", image_field="path",
                      caption_field="alt_text", id_field="uid")
    assert _captions(spec) == {"x1": "A red box."}
    # with the layout's defaults, the records name no image: refused at once, naming the fields it has
    with pytest.raises(LayoutNotRecognisedError, match=r"'image'.*\['alt_text', 'path', 'uid'\].*image_field"):
        check_source(SourceSpec(location=str(folder), records_file="records.jsonl"))


def test_a_llava_json_list_is_read_as_a_file_location(tmp_path):
    folder = tmp_path / "llava"
    (folder / "coco").mkdir(parents=True)
    (folder / "coco" / "1.png").write_bytes(_png())
    records = [
        {"id": "1", "image": "coco/1.png", "conversations": [{"from": "human", "value": "<image>\nWhat colour? [a], {b}"},
                                                             {"from": "gpt", "value": "Red \"really\" \\ red."}]},
        {"id": "2", "conversations": [{"from": "human", "value": "Text only."}, {"from": "gpt", "value": "Yes."}]},
    ]
    (folder / "mix.json").write_text(json.dumps(records, indent=2))
    spec = SourceSpec(location=str(folder / "mix.json"))
    resolved = spec.resolved()
    assert (resolved.kind, resolved.location, resolved.records_file) == ("image_folder", str(folder), "mix.json")
    check_source(spec)  # the second record has no image, the first does: the layout is right
    items = list(spec.read())
    assert [i.item_id for i in items] == ["1", "2"]
    assert items[0].extra["conversations"] == records[0]["conversations"] and items[0].image_bytes
    assert items[1].reader_problem[0] == "missing_image"  # text-only: quarantined with its reason
    report = ingest_items(iter(items), tmp_path / "out", ValidationConfig(require_caption=False))
    assert (report.num_accepted, report.quarantined_by_reason) == (1, {"missing_image": 1})


def test_the_json_list_reader_holds_one_record_at_a_time(tmp_path):
    records = [{"id": i, "text": 'a "quoted" ], } \\ value' * (i % 3), "nested": [{"x": [i]}]} for i in range(40)]
    data = json.dumps(records).encode()
    for chunk_bytes in (1, 7, 64, 1 << 20):
        got = [r for _, r, _ in _records_from_json_array(io.BytesIO(data), "u", 10_000, chunk_bytes=chunk_bytes)]
        assert got == records
    overlong = b'[{"a": "' + b"x" * 500 + b'"}, {"b": 1}, oops, {"c": 2}'
    got = list(_records_from_json_array(io.BytesIO(overlong), "u", 100, chunk_bytes=16))
    assert [(index, record) for index, record, _ in got] == [(1, None), (2, {"b": 1}), (3, None), (4, {"c": 2}), (5, None)]
    assert "longer than 100 bytes" in got[0][2] and "not a JSON value" in got[2][2] and "closing ']'" in got[4][2]


def test_parquet_folders_and_webdataset_captions_in_json(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    data = tmp_path / "hf-dataset" / "data"
    data.mkdir(parents=True)
    for part in range(2):  # the layout of a Hugging Face dataset's data/ folder
        table = pa.table({"image": [{"bytes": _png(colour=(part, 0, 0)), "path": None}], "text": [f"Part {part}."]})
        pq.write_table(table, data / f"train-0000{part}-of-00002.parquet")
    spec = SourceSpec(location=str(tmp_path / "hf-dataset"))
    assert (spec.resolved().kind, spec.resolved().caption_field) == ("parquet", "text")
    assert sorted(i.caption for i in spec.read()) == ["Part 0.", "Part 1."]

    shards = tmp_path / "wds"
    shards.mkdir()
    with tarfile.open(shards / "000000.tar", "w") as tar:
        for name, payload in (("s1.png", _png()), ("s1.json", json.dumps({"alt": "A red box."}).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    spec = SourceSpec(location=str(shards), caption_field="alt")
    assert spec.resolved().kind == "webdataset" and _captions(spec) == {"s1": "A red box."}


def test_a_location_that_matches_no_layout_says_what_was_expected(tmp_path):
    folder = tmp_path / "unknown"
    (folder / "train").mkdir(parents=True)
    (folder / "notes.txt").write_text("hello")
    with pytest.raises(LayoutNotRecognisedError) as raised:
        check_source(SourceSpec(location=str(folder)))
    message = str(raised.value)
    assert "\n" not in message
    for expected in ("metadata.jsonl", "file_name", "captions.jsonl", "LLaVA", "*.tar", "*.parquet"):
        assert expected in message
    assert "found notes.txt, train/" in message
    with pytest.raises(SourceNotFoundError, match="no such file or folder"):
        check_source(SourceSpec(location=str(tmp_path / "missing")))
    with pytest.raises(LayoutNotRecognisedError, match="not a known source file"):
        check_source(SourceSpec(location=str(folder / "notes.txt")))


def test_production_validation_accepts_ordinary_images_the_demo_rules_refuse():
    from tasks.data.sources import RawItem
    from tests.fixtures.real_image_captions import STAMPS, tuxpaint_stamps

    tuxpaint_stamps()  # skips without the package
    # Real pictures at their real sizes: a 96 px traffic light (OpenClipart), the most elongated Tux
    # Paint stamp (a bassoon, 50 x 354 = 7.1:1) and a small one (a pepper grinder, 25 x 100).
    production, demo = ValidationConfig(), ValidationConfig.demo()
    pictures = {
        "light": (REAL_IMAGES / "openclipart-traffic-light-red.png").read_bytes(),
        "bassoon": (STAMPS / "hobbies/music/wind/bassoon.png").read_bytes(),
        "grinder": (STAMPS / "household/dishes/utensils/pepper_grinder.png").read_bytes(),
    }
    refused_by_demo = {}
    for name, image in pictures.items():
        item = RawItem(item_id=name, source_uri=name, image_bytes=image, image_name=f"{name}.png", caption="A thing.")
        assert not hasattr(validate_item(item, production), "reason"), name
        verdict = validate_item(item, demo)
        if hasattr(verdict, "reason"):
            refused_by_demo[name] = verdict.reason.value
    assert refused_by_demo == {"bassoon": "bad_aspect_ratio", "grinder": "bad_aspect_ratio"}
    assert production.rules_in_force()[:2] == ["image at least 14 x 14 px (after EXIF orientation)", "aspect ratio at most 10:1"]
    assert ValidationConfig.paper().min_width_pixels == 449 and demo.min_width_pixels == 64


@pytest.mark.slow
def test_layouts_are_recognised_on_s3_too(tmp_path, s3_env):
    import uuid

    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=s3_env.endpoint_url, skip_instance_cache=True)
    prefix = f"{s3_env.bucket}/layouts-{uuid.uuid4().hex[:8]}"
    fs.put(str(_hf_folder(tmp_path / "photos")), f"{prefix}/photos", recursive=True)
    fs.put(str(tmp_path / "photos" / "metadata.jsonl"), f"{prefix}/other/notes.jsonl")

    spec = SourceSpec(location=f"s3://{prefix}/photos")
    assert spec.resolved().describe().startswith("Hugging Face image folder")
    check_source(spec)
    assert _captions(spec) == {str(i): f"Picture number {i}." for i in range(3)}
    with pytest.raises(LayoutNotRecognisedError, match="found notes.jsonl"):
        check_source(SourceSpec(location=f"s3://{prefix}/other"))
