"""The built-in demo source: synthetic shape scenes with web-like alt-text, clean descriptions and QA.

It is the embedded default's raw data (docs/operations.md): small enough that the whole retrain runs
in minutes on a laptop CPU, yet shaped like the real thing:

- ``train/images/*.png`` + ``train/captions.jsonl``: one record per scene with noisy web-like
  ``caption`` (alt-text: short, repetitive, truncated, boilerplate duplicated across images, URLs,
  markup) and the clean ``true_caption`` that a ``source``/teacher captioner may use;
- ``train/conversations.jsonl``: LLaVA-style QA conversations about the same scenes (stage 3);
- ``eval/images/*.png`` + ``eval/questions.jsonl``: held-out questions on *separate* scenes
  (question_id, image, question, answer, question_type in {colour, shape, count, position});
- ``eval/captions.jsonl``: the clean descriptions of those held-out scenes (image, caption): held-out
  text in the language the model is taught, for text-only perplexity;
- a handful of deliberately broken caption records (truncated PNG, empty file, tiny image, absurd
  aspect ratio, empty caption) so a demo run shows quarantine at work.

Generation is seeded and byte-for-byte reproducible: Python's ``random.Random`` sequence is stable
across versions, shapes are drawn without antialiasing, and PNGs use fixed encoder settings with the
pinned Pillow's bundled zlib. ``ensure_demo_data()`` regenerates ``data/`` on a fresh clone (which
cannot ``dvc pull`` without a remote) and checks it against the md5 recorded in ``data.dvc``.

Run by hand: ``python -m tasks.data.demo_source data/`` (or ``eve data demo``).
"""

from __future__ import annotations

import io
import json
import math
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, Field

from tasks.data.sources import SourceSpec
from tasks.platform import REPO_ROOT

SHAPE_KINDS = ("circle", "square", "triangle", "diamond", "star", "hexagon")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 210, 20),
    "orange": (250, 130, 10),
    "purple": (130, 40, 170),
    "black": (15, 15, 15),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (215, 215, 215),
    "beige": (240, 230, 200),
    "light blue": (200, 225, 245),
}
ROW_NAMES = ("top", "middle", "bottom")
COLUMN_NAMES = ("left", "center", "right")
SIZE_FRACTIONS = {"small": 0.7, "medium": 0.85, "large": 1.0}
"""Shape diameter as a fraction of one grid cell's shorter side. Shapes fill most of their cell: the tiny model
sees a scene through 3 x 3 tokens, one per cell, and a shape far smaller than its token is hard to name
(at 0.45 of a cell a small shape was a dozen pixels of the model's 96 px canvas)."""

COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
BOILERPLATE_ALT_TEXTS = (
    "image",
    "stock photo",
    "untitled",
    "click here to enlarge",
    "img_0001.png",
    "no description available",
)
PNG_COMPRESS_LEVEL = 6
"""Fixed so the bytes (and hence data.dvc's md5) are reproducible."""

DEMO_SUBDIR = "demo"


class DemoDataConfig(BaseModel):
    """Sizes and seed of the demo source; the defaults keep the demo retrain to minutes on 2 CPU cores."""

    seed: int = 1234
    """Seed of the whole generation; the same seed gives byte-identical files."""

    num_caption_scenes: int = Field(default=600, ge=1)
    """Training scenes with alt-text and a true caption (pre-training stages)."""

    num_qa_train_conversations: int = Field(default=600, ge=0)
    """LLaVA-style conversations for stage 3; they reuse the caption scenes round-robin."""

    num_eval_scenes: int = Field(default=100, ge=1)
    """Held-out scenes, never used for training."""

    eval_questions_per_scene: int = Field(default=2, ge=1, le=4)
    """Questions per held-out scene (question types rotate)."""

    min_image_side_pixels: int = Field(default=96, ge=32)
    """Smallest width/height of a generated scene."""

    max_image_side_pixels: int = Field(default=192, ge=32)
    """Largest width/height of a generated scene."""

    max_aspect_ratio: float = Field(default=1.25, ge=1.0)
    """Widest width:height (and height:width) of a scene. Near-square scenes keep the 3 x 3 layout on the model's
    3 x 3 token grid (the processor snaps the short side to whole cells); at up to 2:1 the short side's objects
    shared tokens."""

    include_broken_items: bool = True
    """Append deliberately broken caption records (one per quarantine reason the demo shows)."""

    @classmethod
    def tiny(cls) -> "DemoDataConfig":
        """A few dozen items, for tests."""
        return cls(num_caption_scenes=24, num_qa_train_conversations=12, num_eval_scenes=6)


@dataclass(frozen=True)
class SceneShape:
    kind: str
    colour: str
    size: str
    row: int
    column: int

    @property
    def position(self) -> str:
        """Grid cell in words: 'top left', 'center', 'bottom', ..."""
        row, column = ROW_NAMES[self.row], COLUMN_NAMES[self.column]
        if row == "middle":
            return column
        if column == "center":
            return row
        return f"{row} {column}"

    def phrase(self) -> str:
        return f"a {self.size} {self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    background: str
    shapes: tuple[SceneShape, ...]

    def describe(self) -> str:
        """The clean 'true' caption; shapes in reading order (top row first, left to right), so the caption is a
        function of the image and not of the order the generator drew the shapes in."""
        parts = []
        for shape in sorted(self.shapes, key=lambda shape: (shape.row, shape.column)):
            where = "in the center" if shape.position == "center" else f"at the {shape.position}"
            parts.append(f"{shape.phrase()} {where}")
        if len(parts) == 1:
            listing = parts[0]
        else:
            listing = ", ".join(parts[:-1]) + " and " + parts[-1]
        count = len(self.shapes)
        noun = "shape" if count == 1 else "shapes"
        return f"{COUNT_WORDS[count].capitalize()} {noun} on a {self.background} background: {listing}."

    def shape_set(self) -> frozenset:
        """Every shape's kind, colour and cell, whatever the image size or shape sizes."""
        return frozenset((s.kind, s.colour, s.row, s.column) for s in self.shapes)

    def repeats(self, other: "Scene") -> bool:
        """Whether this scene shows ``other`` again, as far as the questions and the teacher can tell: the same
        background and the same shapes in the same cells but for at most one shape added or removed. (A scene
        that only adds one small shape to another scored cosine 0.97 with it under the teacher, past the
        evaluation gate's near-duplicate threshold of 0.95; scenes further apart stayed below 0.95.)"""
        if self.background != other.background:
            return False
        mine, theirs = self.shape_set(), other.shape_set()
        return (mine <= theirs or theirs <= mine) and len(mine ^ theirs) <= 1

    def to_json(self) -> dict:
        return {
            "width": self.width,
            "height": self.height,
            "background": self.background,
            "shapes": [
                {"kind": s.kind, "colour": s.colour, "size": s.size, "position": s.position}
                for s in self.shapes
            ],
        }


def sample_scene(rng: random.Random, config: DemoDataConfig) -> Scene:
    """Draw one scene description (no pixels yet)."""
    while True:
        width = rng.randint(config.min_image_side_pixels, config.max_image_side_pixels)
        height = rng.randint(config.min_image_side_pixels, config.max_image_side_pixels)
        if 1 / config.max_aspect_ratio <= width / height <= config.max_aspect_ratio:
            break
    count = rng.randint(1, 4)
    cells = rng.sample([(r, c) for r in range(3) for c in range(3)], count)
    shapes = tuple(
        SceneShape(
            kind=rng.choice(SHAPE_KINDS),
            colour=rng.choice(tuple(COLOURS)),
            size=rng.choice(tuple(SIZE_FRACTIONS)),
            row=row,
            column=column,
        )
        for row, column in cells
    )
    return Scene(width=width, height=height, background=rng.choice(tuple(BACKGROUNDS)), shapes=shapes)


def _polygon(cx: float, cy: float, radius: float, sides: int, rotation: float) -> list[tuple[float, float]]:
    return [
        (cx + radius * math.cos(rotation + 2 * math.pi * i / sides), cy + radius * math.sin(rotation + 2 * math.pi * i / sides))
        for i in range(sides)
    ]


def _star(cx: float, cy: float, radius: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        r = radius if i % 2 == 0 else radius * 0.45
        angle = -math.pi / 2 + math.pi * i / 5
        points.append((cx + r * math.cos(angle), cy + r * math.sin(angle)))
    return points


def render_scene(scene: Scene) -> bytes:
    """PNG bytes of a scene (deterministic: no antialiasing, fixed encoder settings)."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (scene.width, scene.height), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    cell_w, cell_h = scene.width / 3, scene.height / 3
    for shape in scene.shapes:
        cx, cy = (shape.column + 0.5) * cell_w, (shape.row + 0.5) * cell_h
        radius = SIZE_FRACTIONS[shape.size] * min(cell_w, cell_h) / 2
        fill = COLOURS[shape.colour]
        if shape.kind == "circle":
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=fill)
        elif shape.kind == "square":
            side = radius * 0.85
            draw.rectangle((cx - side, cy - side, cx + side, cy + side), fill=fill)
        elif shape.kind == "triangle":
            draw.polygon(_polygon(cx, cy, radius, 3, -math.pi / 2), fill=fill)
        elif shape.kind == "diamond":
            draw.polygon(_polygon(cx, cy, radius, 4, 0.0), fill=fill)
        elif shape.kind == "star":
            draw.polygon(_star(cx, cy, radius), fill=fill)
        elif shape.kind == "hexagon":
            draw.polygon(_polygon(cx, cy, radius, 6, 0.0), fill=fill)
        else:  # pragma: no cover - SHAPE_KINDS is closed
            raise ValueError(shape.kind)
    return encode_png(image)


def encode_png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def noisy_alt_text(rng: random.Random, scene: Scene, index: int) -> str:
    """Web-like alt-text: what LAION-style captions look like before re-captioning."""
    first = scene.shapes[0]
    short = f"{first.colour} {first.kind}"
    style = rng.choices(
        ("plain", "short", "repetitive", "truncated", "boilerplate", "url", "markup"),
        weights=(3, 2, 1, 2, 2, 1, 1),
    )[0]
    if style == "plain":
        return " and ".join(f"{s.colour} {s.kind}" for s in scene.shapes)
    if style == "short":
        return rng.choice((first.kind, short, "shapes", "geometry"))
    if style == "repetitive":
        return " ".join([first.colour] * rng.randint(2, 4) + [first.kind] * rng.randint(2, 5))
    if style == "truncated":
        text = scene.describe()
        return text[: rng.randint(8, max(9, len(text) - 10))]
    if style == "boilerplate":
        return rng.choice(BOILERPLATE_ALT_TEXTS)
    if style == "url":
        return f"{short} https://cdn.example.com/img/{index:06d}.png?utm_source=feed"
    return f"<b>{short.capitalize()}</b>&nbsp;for sale<br/>"


def _single_word_suffix() -> str:
    return "Answer with a single word."


def question_answer(rng: random.Random, scene: Scene, question_type: str) -> tuple[str, str] | None:
    """One unambiguous question about the scene, or None if this type has no unambiguous subject."""
    kinds = [s.kind for s in scene.shapes]
    colours = [s.colour for s in scene.shapes]
    unique_kind = [s for s in scene.shapes if kinds.count(s.kind) == 1]
    unique_colour = [s for s in scene.shapes if colours.count(s.colour) == 1]
    if question_type == "colour" and unique_kind:
        shape = rng.choice(unique_kind)
        return f"What color is the {shape.kind}? {_single_word_suffix()}", shape.colour
    if question_type == "shape" and unique_colour:
        shape = rng.choice(unique_colour)
        return f"What shape is the {shape.colour} object? {_single_word_suffix()}", shape.kind
    if question_type == "count":
        return "How many shapes are in the image? Answer with a number.", str(len(scene.shapes))
    if question_type == "position" and unique_kind:
        shape = rng.choice(unique_kind)
        question = f"Is the {shape.kind} on the left, in the center, or on the right? {_single_word_suffix()}"
        return question, COLUMN_NAMES[shape.column]
    return None


QUESTION_TYPES = ("colour", "shape", "count", "position")


def _questions(rng: random.Random, scene: Scene, wanted: int, start_type: int) -> list[tuple[str, str, str]]:
    """Up to ``wanted`` distinct (type, question, answer) triples, rotating through the types."""
    found: list[tuple[str, str, str]] = []
    for offset in range(len(QUESTION_TYPES)):
        question_type = QUESTION_TYPES[(start_type + offset) % len(QUESTION_TYPES)]
        qa = question_answer(rng, scene, question_type)
        if qa is not None:
            found.append((question_type, *qa))
        if len(found) == wanted:
            break
    return found


def _broken_records(rng: random.Random) -> list[tuple[str, bytes, str]]:
    """(id, file bytes, caption) of deliberately bad records, one per demo quarantine reason."""
    from PIL import Image

    good = render_scene(Scene(128, 128, "white", (SceneShape("circle", "red", "large", 1, 1),)))
    tiny = encode_png(Image.new("RGB", (16, 16), (255, 0, 0)))
    sliver = encode_png(Image.new("RGB", (400, 20), (0, 0, 255)))
    return [
        ("broken-truncated", good[: len(good) // 2], "a red circle"),
        ("broken-zero-bytes", b"", "an empty file"),
        ("broken-tiny", tiny, "a red square"),
        ("broken-aspect", sliver, "a blue line"),
        ("broken-empty-caption", good, "   "),
    ]


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")


def generate_demo_data(out_root: str | Path, config: DemoDataConfig | None = None) -> Path:
    """Write the demo source under ``out_root/demo`` (replacing it); returns that directory.

    Written into a sibling temp directory and renamed at the end, so an interrupted run
    leaves no half-written demo behind.
    """
    config = config or DemoDataConfig()
    out_root = Path(out_root)
    final_dir = out_root / DEMO_SUBDIR
    staging = out_root / f".{DEMO_SUBDIR}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    train_images = staging / "train" / "images"
    eval_images = staging / "eval" / "images"
    train_images.mkdir(parents=True)
    eval_images.mkdir(parents=True)

    rng = random.Random(config.seed)
    caption_records, scenes = [], []
    for index in range(config.num_caption_scenes):
        scene = sample_scene(rng, config)
        scenes.append(scene)
        name = f"scene-{index:06d}"
        (train_images / f"{name}.png").write_bytes(render_scene(scene))
        caption_records.append(
            {
                "id": name,
                "image": f"images/{name}.png",
                "caption": noisy_alt_text(rng, scene, index),
                "true_caption": scene.describe(),
                "scene": scene.to_json(),
            }
        )
        _progress("demo scenes", index + 1, config.num_caption_scenes)
    if config.include_broken_items:
        for name, payload, caption in _broken_records(rng):
            (train_images / f"{name}.png").write_bytes(payload)
            caption_records.append({"id": name, "image": f"images/{name}.png", "caption": caption})
    _write_jsonl(staging / "train" / "captions.jsonl", caption_records)

    conversations = []
    for index in range(config.num_qa_train_conversations):
        scene_index = index % config.num_caption_scenes
        scene = scenes[scene_index]
        turns = _questions(rng, scene, wanted=rng.randint(1, 3), start_type=index)
        messages = []
        for turn, (_, question, answer) in enumerate(turns):
            prefix = "<image>\n" if turn == 0 else ""
            messages.append({"from": "human", "value": prefix + question})
            messages.append({"from": "gpt", "value": answer})
        name = f"scene-{scene_index:06d}"
        conversations.append({"id": f"qa-{index:06d}", "image": f"images/{name}.png", "conversations": messages})
    _write_jsonl(staging / "train" / "conversations.jsonl", conversations)

    questions, eval_captions = [], []
    seen = list(scenes)
    redrawn = 0
    for index in range(config.num_eval_scenes):
        scene = sample_scene(rng, config)
        while any(scene.repeats(other) for other in seen):  # held out means unseen (and no two alike)
            redrawn += 1
            scene = sample_scene(rng, config)
        seen.append(scene)
        name = f"eval-{index:06d}"
        (eval_images / f"{name}.png").write_bytes(render_scene(scene))
        eval_captions.append({"image": f"images/{name}.png", "caption": scene.describe()})
        for question_type, question, answer in _questions(
            rng, scene, wanted=config.eval_questions_per_scene, start_type=index
        ):
            questions.append(
                {
                    "question_id": f"{name}-{question_type}",
                    "image": f"images/{name}.png",
                    "question": question,
                    "answer": answer,
                    "question_type": question_type,
                }
            )
    print(f"demo held-out scenes: {redrawn} draws repeated a training or earlier held-out scene and were drawn again", file=sys.stderr)
    _write_jsonl(staging / "eval" / "questions.jsonl", questions)
    _write_jsonl(staging / "eval" / "captions.jsonl", eval_captions)
    (staging / "demo_config.json").write_text(json.dumps(config.model_dump(), indent=2, sort_keys=True) + "\n")

    shutil.rmtree(final_dir, ignore_errors=True)
    staging.rename(final_dir)
    return final_dir


def _progress(label: str, done: int, total: int) -> None:
    if done == total or done % 100 == 0:
        print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)


# --- data.dvc: verify a regenerated data/ against the committed pointer -------------------------


class DemoDataMismatchError(RuntimeError):
    """The regenerated data/ does not hash to what data.dvc records."""


def recorded_data_md5(dvc_file: Path) -> str:
    """The directory md5 (``<hex>.dir``) that ``data.dvc`` records for ``data/``."""
    import yaml

    pointer = yaml.safe_load(dvc_file.read_text())
    return pointer["outs"][0]["md5"]


def directory_md5(path: Path) -> str:
    """DVC's directory hash of ``path`` (what ``dvc add`` would record), computed by DVC itself."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory() as scratch:
        odb = HashFileDB(fs, scratch)
        _, _, obj = build(odb, str(path), fs, "md5", dry_run=True, ignore=None)
    return obj.hash_info.value


def ensure_demo_data(
    data_root: str | Path = REPO_ROOT / "data",
    dvc_file: str | Path = REPO_ROOT / "data.dvc",
    config: DemoDataConfig | None = None,
) -> Path:
    """Make sure ``data/demo`` exists and matches ``data.dvc``; regenerate it if missing.

    A fresh clone has ``data.dvc`` but (without a shared remote) no way to ``dvc pull``; since the
    demo is generated deterministically, regenerating it gives back exactly the tracked bytes.
    Raises ``DemoDataMismatchError`` if the result does not hash to the recorded md5 (a changed
    generator, a different Pillow/zlib, or a hand-edited data/).
    """
    data_root, dvc_file = Path(data_root), Path(dvc_file)
    demo_dir = data_root / DEMO_SUBDIR
    if not (demo_dir / "train" / "captions.jsonl").exists():
        generate_demo_data(data_root, config)
    if dvc_file.exists():
        expected = recorded_data_md5(dvc_file)
        actual = directory_md5(data_root)
        if actual != expected:
            raise DemoDataMismatchError(
                f"{data_root} hashes to {actual} but {dvc_file.name} records {expected}. "
                "Either data/ was edited (delete data/demo to regenerate it) or the demo generator or "
                "its Pillow/zlib version changed (regenerate, then `dvc add data` and commit data.dvc)."
            )
    return demo_dir



def publish_demo_data(data_dvc: str | Path = REPO_ROOT / "data.dvc") -> str:
    """Push the verified ``data/`` to the platform's DVC remote and make that remote the checkout's
    (``.dvc/config.local``: this machine's, never committed), so that ``dvc pull`` and
    ``dvc.api.open("data/demo/...", repo=checkout)`` work at the repository root as in any DVC
    project. Returns the remote's URL (without credentials).

    data/ is generated, not downloaded (``ensure_demo_data``): the repository names no remote of its
    own, since a fresh clone has nothing to pull from until some platform home has published it.
    Call ``ensure_demo_data`` first. A second call pushes nothing (the remote has every file)."""
    from dvc.repo import Repo

    from tasks.data.versioning import REMOTE_NAME, RemoteConfig, write_remote_config
    from tasks.platform import PlatformSettings
    from tasks.redact import url_without_credentials

    checkout = Path(data_dvc).parent
    remote = RemoteConfig.from_settings(PlatformSettings.load())
    write_remote_config(checkout, remote)
    with Repo(str(checkout), config=remote.runtime_config()) as repo:
        pointer = str(Path(data_dvc).resolve())
        repo.commit(pointer, force=True)  # data/ into the cache under data.dvc's own md5
        repo.push([pointer], remote=REMOTE_NAME)
    return url_without_credentials(remote.url)


class DemoSources(BaseModel):
    """The demo's raw sources as ingest specs, plus the held-out evaluation questions."""

    captions: list[SourceSpec]
    """Image + alt-text records (pre-training stages)."""

    sft: list[SourceSpec]
    """LLaVA-style conversations about the same scenes (stage 3)."""

    eval_questions_path: str | None = None
    """JSONL of held-out questions (question_id, image, question, answer, question_type)."""


def demo_sources(demo_dir: str | Path) -> DemoSources:
    demo_dir = Path(demo_dir)
    return DemoSources(
        captions=[SourceSpec(kind="image_folder", location=str(demo_dir / "train"), records_file="captions.jsonl")],
        sft=[SourceSpec(kind="image_folder", location=str(demo_dir / "train"), records_file="conversations.jsonl")],
        eval_questions_path=str(demo_dir / "eval" / "questions.jsonl"),
    )

if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO_ROOT / "data"
    print(generate_demo_data(target))
