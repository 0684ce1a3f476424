"""Convert BAAI's released EVE v1 checkpoints (EVE-7B, EVE-7B-HD) into this library's HF directory.

    eve convert upstream SRC DST [--preset eve_7b_hd] [--set teacher_path="/models/clip-vit-large-patch14-336"]
    python -m eve_model.convert_upstream SRC DST ...

``SRC`` is upstream's model directory (``config.json``; weights as ``*.safetensors`` or
``pytorch_model*.bin``, sharded or not; tokenizer files). ``DST`` gets a standard directory of this
library: ``config.json`` with its ``auto_map`` and code, safetensors weights (with an index when
sharded), the PAL as ``aligning_layer.safetensors`` when upstream saved one, processor and tokenizer
files (``<image>`` added), and a model card that records every source file's sha256 and the mapping.

The name mapping (``NAME_RULES``) is a table of patterns read both ways: ``library_name`` and
``upstream_name`` are inverses. Every upstream tensor must match exactly one rule: it is converted to
exactly one library name, or dropped for a stated reason (the frozen CLIP teacher, which this library
loads from ``EveConfig.teacher_path``; rotary frequencies, which are recomputed from the config).
Anything else is an error: an unknown upstream name, two names onto one, a library parameter that no
upstream tensor provides, or a shape that disagrees. Weights are copied bit for bit in their dtype, one
source shard at a time, so a 7B checkpoint converts in the memory of one shard.

The image geometry is not in upstream's weights (its processor config is a separate download), so it
comes from the preset: ``eve_7b`` (672 px) or ``eve_7b_hd`` (1344 px), guessed from ``mm_vision_tower``
in ``config.json`` when ``--preset`` is not given. Shapes (PEL width, projector, patch size, PAL depths,
teacher width) are read from the tensors and the Llama part from ``config.json``. The converted model
uses ``pixel_protocol="upstream"`` (docs/model.md): it sees images padded the way it was trained.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

UPSTREAM_REPOSITORY = "https://github.com/baaivision/EVE (EVEv1)"

NAME_RULES: tuple[tuple[str, str | None], ...] = (
    # Patch Embedding Layer (upstream VisionTokenizer) and projector (mlp2x_gelu).
    ("model.vision_tower.patch_embedding.weight", "patch_embedding.patch_conv.weight"),
    ("model.vision_tower.{kind}_embedding", "patch_embedding.{kind}_embedding"),
    ("model.vision_tower.{block}_attention.q.0.{param}", "patch_embedding.{block}_attention.query_norm.{param}"),
    ("model.vision_tower.{block}_attention.q.1.weight", "patch_embedding.{block}_attention.query_proj.weight"),
    ("model.vision_tower.{block}_attention.kv.0.{param}", "patch_embedding.{block}_attention.key_value_norm.{param}"),
    ("model.vision_tower.{block}_attention.kv.1.weight", "patch_embedding.{block}_attention.key_value_proj.weight"),
    ("model.vision_tower.{block}_attention.proj.{param}", "patch_embedding.{block}_attention.out_proj.{param}"),
    ("model.mm_projector.{layer}.{param}", "patch_embedding.projector.{layer}.{param}"),
    # Patch Aligning Layer (upstream VisionCompressor), training only: -> aligning_layer.safetensors.
    ("model.vision_tower_compressor.norm_layer.{depth}.{layer}.{param}", "aligning_layer.depth_heads.{depth}.{layer}.{param}"),
    ("model.vision_tower_compressor.input_layer.{param}", "aligning_layer.residual_proj.{param}"),
    ("model.vision_tower_compressor.output_layer.{param}", "aligning_layer.out_proj.{param}"),
    # Llama decoder and LM head.
    ("model.layers.{rest}.self_attn.rotary_emb.inv_freq", None),
    ("model.embed_tokens.weight", "language_model.model.embed_tokens.weight"),
    ("model.layers.{rest}", "language_model.model.layers.{rest}"),
    ("model.norm.weight", "language_model.model.norm.weight"),
    ("lm_head.weight", "language_model.lm_head.weight"),
)
"""(upstream pattern, library pattern or None = dropped); ``{rest}`` matches dotted paths, other fields one name
part. Teacher weights (any name with ``clip``, as upstream itself freezes them) are dropped before these rules."""

DROP_REASONS = {
    "teacher": "frozen CLIP teacher (training only; this library loads it from EveConfig.teacher_path)",
    "rotary": "rotary frequencies (a buffer recomputed from the config)",
}
ALIGNING_PREFIX = "aligning_layer."
UPSTREAM_CONFIG_FIELDS_FOR_LLAMA = (
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
    "hidden_act", "bos_token_id", "eos_token_id", "pad_token_id", "attention_bias", "mlp_bias",
)
"""Fields of upstream's ``config.json`` (a ``LlamaConfig`` with ``mm_*`` extras) that describe the decoder."""


class UpstreamConversionError(ValueError):
    """The source cannot be converted; the message names the tensors or files at fault."""


def _compile(pattern: str) -> re.Pattern[str]:
    regex = re.escape(pattern)
    regex = regex.replace(re.escape("{rest}"), r"(?P<rest>.+)")
    regex = re.sub(r"\\\{(\w+)\\\}", lambda match: f"(?P<{match.group(1)}>[^.]+)", regex)
    return re.compile(f"^{regex}$")


_FORWARD = [(_compile(upstream), library) for upstream, library in NAME_RULES]
_BACKWARD = [(_compile(library), upstream) for upstream, library in NAME_RULES if library is not None]


def library_name(upstream: str) -> str | None:
    """This library's name for an upstream tensor name; None when it is deliberately not converted.
    Raises ``UpstreamConversionError`` for a name no rule knows."""
    if "clip" in upstream:
        return None
    for regex, target in _FORWARD:
        match = regex.match(upstream)
        if match:
            return None if target is None else target.format(**match.groupdict())
    raise UpstreamConversionError(f"unknown upstream tensor {upstream!r}: no rule of NAME_RULES matches it")


def upstream_name(library: str) -> str:
    """The inverse of ``library_name`` for converted names."""
    for regex, source in _BACKWARD:
        match = regex.match(library)
        if match:
            return source.format(**match.groupdict())
    raise UpstreamConversionError(f"library tensor {library!r} has no upstream name")


def drop_reason(upstream: str) -> str:
    return DROP_REASONS["teacher"] if "clip" in upstream else DROP_REASONS["rotary"]


@dataclass
class NameMapping:
    """The outcome of mapping a set of upstream names: converted (upstream -> library) and dropped."""

    converted: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    """upstream name -> reason."""


def map_names(upstream_names: list[str], expected: dict[str, tuple[int, ...]] | None = None,
              shapes: dict[str, tuple[int, ...]] | None = None) -> NameMapping:
    """Map every upstream name exactly once; with ``expected`` (library name -> shape) also require that every
    expected parameter is provided, nothing unexpected is produced, and (with ``shapes``) that shapes agree."""
    mapping = NameMapping()
    unknown, targets = [], {}
    for name in upstream_names:
        try:
            target = library_name(name)
        except UpstreamConversionError:
            unknown.append(name)
            continue
        if target is None:
            mapping.dropped[name] = drop_reason(name)
            continue
        if target in targets:
            raise UpstreamConversionError(f"upstream tensors {targets[target]!r} and {name!r} both map to {target!r}")
        targets[target] = name
        mapping.converted[name] = target
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown upstream tensor(s): {sorted(unknown)[:20]}")
    if expected is not None:
        missing = sorted(set(expected) - set(targets))
        extra = sorted(set(targets) - set(expected))
        if missing:
            problems.append(f"{len(missing)} parameter(s) no upstream tensor provides: {missing[:20]}")
        if extra:
            problems.append(f"{len(extra)} converted tensor(s) the model has no parameter for: "
                            f"{[(targets[name], name) for name in extra[:20]]}")
        if shapes is not None:
            wrong = [(targets[name], shapes[targets[name]], expected[name]) for name in sorted(set(expected) & set(targets))
                     if tuple(shapes[targets[name]]) != tuple(expected[name])]
            if wrong:
                problems.append(f"{len(wrong)} shape mismatch(es) (upstream name, upstream shape, expected): {wrong[:10]}")
    if problems:
        raise UpstreamConversionError("; ".join(problems))
    return mapping


def convert_state_dict(upstream: dict[str, Any], expected: dict[str, tuple[int, ...]] | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any], NameMapping]:
    """(model tensors, PAL tensors keyed relative to the PAL, mapping) from an upstream state dict; the
    tensors are the same objects (no copy)."""
    mapping = map_names(list(upstream), expected, {name: tuple(tensor.shape) for name, tensor in upstream.items()})
    model, aligning = {}, {}
    for source, target in mapping.converted.items():
        if target.startswith(ALIGNING_PREFIX):
            aligning[target[len(ALIGNING_PREFIX):]] = upstream[source]
        else:
            model[target] = upstream[source]
    return model, aligning, mapping


# ------------------------------------------------------------------------------------------- the source
def _weight_files(source: Path) -> list[Path]:
    files = sorted(source.glob("*.safetensors")) or sorted(source.glob("pytorch_model*.bin"))
    if not files:
        raise UpstreamConversionError(f"{source} holds no *.safetensors or pytorch_model*.bin weights")
    return files


def _read_shard(path: Path) -> dict[str, Any]:
    """One weight file, loaded without unpickling code (safetensors, or torch.load weights_only)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def _tensor_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as handle:
                for name in handle.keys():
                    shapes[name] = tuple(handle.get_slice(name).get_shape())
        else:
            shapes.update({name: tuple(tensor.shape) for name, tensor in _read_shard(path).items()})
    return shapes


def _guess_preset(upstream_config: dict[str, Any]) -> str:
    tower = str(upstream_config.get("mm_vision_tower", ""))
    if "1344" in tower:
        return "eve_7b_hd"
    if "672" in tower:
        return "eve_7b"
    raise UpstreamConversionError(
        f"cannot tell EVE-7B from EVE-7B-HD (config.json mm_vision_tower={tower!r}); pass --preset eve_7b or eve_7b_hd"
    )


def build_eve_config(upstream_config: dict[str, Any], shapes: dict[str, tuple[int, ...]], preset: str | None,
                     overrides: dict[str, Any] | None = None):
    """The ``EveConfig`` of the converted model: the preset's geometry and teacher, the decoder from upstream's
    config.json, widths from the tensors (upstream names), then ``overrides``."""
    from transformers import LlamaConfig

    from .training.stage_protocol import eve_config_for_preset

    preset = preset or _guess_preset(upstream_config)
    text_fields = {key: upstream_config[key] for key in UPSTREAM_CONFIG_FIELDS_FOR_LLAMA if key in upstream_config}
    text_fields["tie_word_embeddings"] = False
    pel_width, _, patch, _ = shapes["model.vision_tower.patch_embedding.weight"]
    values: dict[str, Any] = {
        "text_config": LlamaConfig(**text_fields),
        "pel_width": pel_width,
        "patch_size": patch,
        "projector_hidden_size": shapes["model.mm_projector.0.weight"][0],
        "attention_full_width_scale": True,  # upstream scales by the full width (docs/model.md)
        "pixel_protocol": "upstream",
    }
    depth_heads = {int(name.split(".")[3]) for name in shapes if name.startswith("model.vision_tower_compressor.norm_layer.")}
    if depth_heads:
        num_layers = text_fields.get("num_hidden_layers", 32)
        if len(depth_heads) < 2 or num_layers % (len(depth_heads) - 1):
            raise UpstreamConversionError(f"{len(depth_heads)} PAL depth heads do not divide {num_layers} layers evenly")
        values["alignment_depth_interval"] = num_layers // (len(depth_heads) - 1)
        values["alignment_width"] = shapes["model.vision_tower_compressor.norm_layer.0.1.weight"][0]
        values["teacher_feature_dim"] = shapes["model.vision_tower_compressor.input_layer.weight"][0]
    values.update(overrides or {})
    return eve_config_for_preset(preset, values), preset


def _expected_shapes(config, with_alignment: bool) -> dict[str, tuple[int, ...]]:
    """Library parameter names and shapes of ``config``'s model (built on the meta device: no memory)."""
    import torch

    from .modeling_eve import EveForCausalLM, PatchAligningLayer

    with torch.device("meta"):
        model = EveForCausalLM(config)
        shapes = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()}
        if with_alignment:
            shapes.update({ALIGNING_PREFIX + name: tuple(tensor.shape)
                           for name, tensor in PatchAligningLayer(config).state_dict().items()})
    return shapes


def _source_checksums(source: Path) -> list[tuple[str, str]]:
    from .identity import file_sha256

    return [(path.name, file_sha256(path)) for path in sorted(source.iterdir(), key=lambda p: p.name) if path.is_file()]


@dataclass
class ConversionReport:
    destination: str
    preset: str
    converted: int
    dropped: dict[str, int]
    """Dropped tensors per reason."""
    aligning_layer: bool
    weights_sha256: str


def _iter_converted_shards(files: list[Path], mapping: NameMapping) -> Iterator[tuple[Path, dict[str, Any], dict[str, Any]]]:
    for path in files:
        tensors = _read_shard(path)
        model, aligning = {}, {}
        for source, tensor in tensors.items():
            target = mapping.converted.get(source)
            if target is None:
                continue
            if target.startswith(ALIGNING_PREFIX):
                aligning[target[len(ALIGNING_PREFIX):]] = tensor.contiguous()
            else:
                model[target] = tensor.contiguous()
        yield path, model, aligning


def convert_upstream(source: str | Path, destination: str | Path, preset: str | None = None,
                     overrides: dict[str, Any] | None = None, progress=print) -> ConversionReport:
    """Convert upstream's directory ``source`` into ``destination`` (which must not exist yet); see the module
    docstring. The directory is written under ``<destination>.partial`` and renamed at the end."""
    from safetensors.torch import save_file
    from transformers import AutoTokenizer, GenerationConfig
    from transformers.dynamic_module_utils import custom_object_save

    from .constants import IMAGE_PLACEHOLDER
    from .identity import weights_sha256
    from .model_card import markdown_table, write_model_card
    from .modeling_eve import EveForCausalLM
    from .processing_eve import EveImageProcessor, EveProcessor
    from .training.alignment_state import write_alignment_state

    source, destination = Path(source), Path(destination)
    if not (source / "config.json").is_file():
        raise UpstreamConversionError(f"{source} has no config.json: not an upstream EVE model directory")
    if destination.exists() and any(destination.iterdir()):
        raise UpstreamConversionError(f"{destination} exists and is not empty; choose a new destination")
    upstream_config = json.loads((source / "config.json").read_text())
    files = _weight_files(source)
    shapes = _tensor_shapes(files)
    config, preset = build_eve_config(upstream_config, shapes, preset, overrides)

    # The tokenizer decides the <image> id (Vicuna: added as id 32000, past the 32000-row vocabulary).
    tokenizer = AutoTokenizer.from_pretrained(str(source))
    if IMAGE_PLACEHOLDER not in tokenizer.get_vocab():
        tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_PLACEHOLDER]})
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token  # as upstream's training (pad = unk)
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER)

    with_alignment = any(name.startswith("model.vision_tower_compressor.") and "clip" not in name for name in shapes)
    expected = _expected_shapes(config, with_alignment)
    mapping = map_names(list(shapes), expected, shapes)
    progress(f"[eve convert] {len(mapping.converted)} tensors to convert, {len(mapping.dropped)} dropped, "
             f"{len(files)} source file(s)")

    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    weight_map: dict[str, str] = {}
    aligning_state: dict[str, Any] = {}
    total_bytes = 0
    dtype = None
    for index, (path, model_tensors, aligning) in enumerate(_iter_converted_shards(files, mapping), start=1):
        aligning_state.update(aligning)
        if not model_tensors:
            continue
        name = "model.safetensors" if len(files) == 1 else f"model-{index:05d}-of-{len(files):05d}.safetensors"
        save_file(model_tensors, str(partial / name), metadata={"format": "pt"})
        weight_map.update({tensor_name: name for tensor_name in model_tensors})
        total_bytes += sum(tensor.numel() * tensor.element_size() for tensor in model_tensors.values())
        dtype = dtype or next(iter(model_tensors.values())).dtype
        progress(f"[eve convert] {path.name}: {len(model_tensors)} tensors -> {name}")
    if len(set(weight_map.values())) > 1:
        index_file = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
        (partial / "model.safetensors.index.json").write_text(json.dumps(index_file, indent=2) + "\n")
    elif weight_map and "model.safetensors" not in weight_map.values():
        (partial / next(iter(weight_map.values()))).rename(partial / "model.safetensors")
    if aligning_state:
        write_alignment_state(aligning_state, config.alignment_depths, partial)

    if dtype is not None:
        config.dtype = str(dtype).removeprefix("torch.")
    import torch

    with torch.device("meta"):
        custom_object_save(EveForCausalLM(config), partial, config=config)
    config.save_pretrained(partial)
    GenerationConfig(bos_token_id=config.text_config.bos_token_id, eos_token_id=config.text_config.eos_token_id,
                     pad_token_id=config.text_config.pad_token_id).save_pretrained(partial)
    max_length = int(upstream_config.get("tokenizer_model_max_length") or (4096 if preset.endswith("_hd") else 2048))
    EveProcessor(EveImageProcessor.from_eve_config(config), tokenizer, max_length).save_pretrained(partial)

    dropped_counts: dict[str, int] = {}
    for reason in mapping.dropped.values():
        dropped_counts[reason] = dropped_counts.get(reason, 0) + 1
    converted_hash = weights_sha256(partial)
    write_model_card(
        partial,
        {
            "Model": (f"EVE v1 (encoder-free vision-language model, arXiv 2406.11832) converted from the upstream "
                      f"release with `eve convert upstream` (preset `{preset}`, pixel protocol `upstream`)."),
            "Source": "\n\n".join([
                f"Upstream code: {UPSTREAM_REPOSITORY}. Source directory: `{source.resolve()}`.",
                markdown_table(_source_checksums(source), header=("source file", "sha256")),
                markdown_table([
                    ("tensors converted", len(mapping.converted)),
                    *[(f"dropped: {reason}", count) for reason, count in sorted(dropped_counts.items())],
                    ("aligning layer (PAL)", "aligning_layer.safetensors" if aligning_state else "not in the source"),
                    ("weights_sha256 of this directory", converted_hash),
                ], header=("mapping", "value")),
            ]),
            "Intended use": ("Research and evaluation of encoder-free VLMs; a production baseline for the platform's "
                             "evaluation gate. The upstream licence and the base LLM's licence apply."),
        },
        metadata={"library_name": "transformers", "tags": ["eve", "vision-language", "converted-from-upstream"],
                  "pipeline_tag": "image-text-to-text"},
        title=f"EVE v1 ({preset}), converted",
    )
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
    progress(f"[eve convert] wrote {destination} (weights_sha256 {converted_hash[:16]}...)")
    return ConversionReport(str(destination), preset, len(mapping.converted), dropped_counts, bool(aligning_state),
                            converted_hash)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; a value is read as JSON when it parses (numbers, booleans, lists), else as a string."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, separator, value = item.partition("=")
        if not separator or not key:
            raise UpstreamConversionError(f"--set expects key=value, got {item!r}")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="upstream EVE v1 model directory (config.json, weights, tokenizer)")
    parser.add_argument("destination", help="new directory for the converted model (must not exist or be empty)")
    parser.add_argument("--preset", choices=["eve_7b", "eve_7b_hd"], default=None,
                        help="geometry and teacher of the release (default: from config.json's mm_vision_tower)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="EveConfig override, e.g. teacher_path=/models/clip-vit-large-patch14-336 (repeatable)")


def run(args: argparse.Namespace) -> int:
    """Run a conversion from parsed arguments: ``ExitCode.COMPLETED``, or ``ExitCode.CONFIG_ERROR`` with the
    reason in one line when the source cannot be converted (nothing is left at the destination)."""
    from .exit_codes import ExitCode

    try:
        convert_upstream(args.source, args.destination, args.preset, parse_overrides(args.overrides))
    except (UpstreamConversionError, ValueError, OSError) as error:
        print(f"[eve convert] cannot convert {args.source}: {error}", file=sys.stderr)
        return ExitCode.CONFIG_ERROR
    return ExitCode.COMPLETED


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eve_model.convert_upstream", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


__all__ = [
    "NAME_RULES",
    "ConversionReport",
    "NameMapping",
    "UpstreamConversionError",
    "build_eve_config",
    "convert_state_dict",
    "convert_upstream",
    "library_name",
    "map_names",
    "upstream_name",
]


if __name__ == "__main__":
    raise SystemExit(main())


