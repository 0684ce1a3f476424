"""EVE v1 model: Patch Embedding Layer + Llama decoder (+ Patch Aligning Layer and frozen teacher in training).

Sequence layout per sample with an image: ``[text][CLS][row 1: w patches][SPL]...[row h][SPL][text]``,
spliced at the single ``<image>`` placeholder; visual positions never carry a label.
Teacher and PAL exist only after :meth:`EveForCausalLM.enable_alignment` and are never saved with the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, LlamaForCausalLM, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from eve_model.configuration_eve import EveConfig
from eve_model.constants import IGNORE_INDEX

if TYPE_CHECKING:
    from eve_model.teachers import VisionTeacher

ALIGNMENT_STATE_FILE = "aligning_layer.safetensors"


# ------------------------------------------------------------------------------------------------ attention
class CrossAttention(nn.Module):
    """Multi-head cross-attention as in EVE's CA1/CA2/CA3 blocks: LayerNorm + bias-free projections.

    ``project_keys=False`` is the PAL variant: keys and values are the (already projected) inputs.
    """

    def __init__(self, width: int, num_heads: int, full_width_scale: bool, project_keys: bool = True):
        super().__init__()
        self.width, self.num_heads = width, num_heads
        self.head_dim = width // num_heads
        self.scale = width**-0.5 if full_width_scale else self.head_dim**-0.5
        self.project_keys = project_keys
        if project_keys:
            self.query_norm = nn.LayerNorm(width)
            self.query_proj = nn.Linear(width, width, bias=False)
            self.key_value_norm = nn.LayerNorm(width)
            self.key_value_proj = nn.Linear(width, 2 * width, bias=False)
            self.out_proj = nn.Linear(width, width)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        """query (N, Q, C), keys (N, K, C), key_padding_mask (N, K) True = attend -> (N, Q, C)."""
        if self.project_keys:
            query = self.query_proj(self.query_norm(query))
            key, value = self.key_value_proj(self.key_value_norm(keys)).chunk(2, dim=-1)
        else:
            key = value = keys
        n, q_len, _ = query.shape
        k_len = key.shape[1]
        query = query.view(n, q_len, self.num_heads, self.head_dim).transpose(1, 2)
        key = key.reshape(n, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        value = value.reshape(n, k_len, self.num_heads, self.head_dim).transpose(1, 2)
        scores = torch.matmul(query, key.transpose(-1, -2)) * self.scale  # (N, H, Q, K)
        if key_padding_mask is not None:
            scores = scores.masked_fill(~key_padding_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        attended = torch.matmul(scores.softmax(dim=-1), value).transpose(1, 2).reshape(n, q_len, self.width)
        return self.out_proj(attended) if self.project_keys else attended


# ------------------------------------------------------------------------------------- Patch Embedding Layer
@dataclass
class VisualTokens:
    """Output of the PEL for a batch, packed without padding.

    ``embeddings`` (sum_i n_i, D) with n_i = 1 + h_i * (w_i + 1), image after image; ``lengths`` (B,) = n_i;
    ``grid_hw`` (B, 2) = (h_i, w_i); ``has_image`` (B,): False rows are the 1x1 fallback of a blank image,
    computed only so every PEL parameter joins the graph and never spliced into the sequence.
    """

    embeddings: torch.Tensor
    lengths: torch.Tensor
    grid_hw: torch.Tensor
    has_image: torch.Tensor

    def split(self) -> list[torch.Tensor]:
        return list(self.embeddings.split(self.lengths.tolist()))


class PatchEmbeddingLayer(nn.Module):
    """EVE's PEL: conv (no bias) -> crop to the valid region -> 2x2 local cross-attention pooling (CA1) ->
    class-token global cross-attention (CA2) -> learned separator column -> flatten (class first) ->
    2-layer GELU projector to the LLM width.

    The whole batch runs at once: only the valid student cells of every image are gathered (so padding costs
    nothing and no Python loop runs per image), and CA2 uses a key-padding mask over each image's cells.
    """

    def __init__(self, config: EveConfig):
        super().__init__()
        width = config.pel_width
        self.patch_size, self.pool_stride = config.patch_size, config.pool_stride
        self.cell_px = config.student_cell_px
        self.patch_conv = nn.Conv2d(3, width, kernel_size=config.patch_size, stride=config.patch_size, bias=False)
        self.local_attention = CrossAttention(width, config.pel_num_heads, config.attention_full_width_scale)
        self.global_attention = CrossAttention(width, config.pel_num_heads, config.attention_full_width_scale)
        self.class_embedding = nn.Parameter(torch.randn(width))
        self.split_embedding = nn.Parameter(torch.randn(width))
        self.projector = nn.Sequential(
            nn.Linear(width, config.projector_hidden_size),
            nn.GELU(),
            nn.Linear(config.projector_hidden_size, config.text_config.hidden_size),
        )

    def valid_cells(self, pixel_values: torch.Tensor, has_image: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, G, G) bool grid of student cells covered by the image (mask channel), and has_image (B,).

        Rows without an image get their top-left cell marked valid (the 1x1 fallback, never spliced).
        """
        mask = pixel_values[:, 3:4].float()
        coverage = F.avg_pool2d(mask, kernel_size=self.cell_px, stride=self.cell_px)[:, 0]
        valid = coverage > 0.5
        image_present = valid.flatten(1).any(dim=1)
        if has_image is None:
            has_image = image_present
        has_image = has_image.to(device=valid.device, dtype=torch.bool)
        if bool((has_image & ~image_present).any()):
            raise ValueError("has_image is True for a sample whose mask channel covers no student cell")
        valid = valid & has_image[:, None, None]
        fallback = torch.zeros_like(valid)
        fallback[:, 0, 0] = True
        valid = torch.where(has_image[:, None, None], valid, fallback)
        return valid, has_image

    def forward(self, pixel_values: torch.Tensor, has_image: torch.Tensor | None = None) -> VisualTokens:
        """pixel_values (B, 4, S, S): normalised RGB + validity mask -> packed visual tokens (see VisualTokens)."""
        batch, _, side, _ = pixel_values.shape
        grid = side // self.cell_px
        valid, has_image = self.valid_cells(pixel_values, has_image)
        rgb = pixel_values[:, :3].to(self.patch_conv.weight.dtype)
        cells = rgb.reshape(batch, 3, grid, self.cell_px, grid, self.cell_px).permute(0, 2, 4, 1, 3, 5)
        cell_index = valid.nonzero()  # (N, 3) = (b, y, x), row-major within each image
        picked = cells[valid]  # (N, 3, cell, cell)
        patches = self.patch_conv(picked).flatten(2).transpose(1, 2)  # (N, pool*pool, C)
        pooled = patches.mean(dim=1, keepdim=True)  # (N, 1, C)
        cell_features = (pooled + self.local_attention(pooled, patches))[:, 0]  # (N, C)

        counts = valid.flatten(1).sum(dim=1)  # (B,)
        starts = torch.cumsum(counts, 0) - counts
        image_of_cell = cell_index[:, 0]
        slot = torch.arange(cell_index.shape[0], device=valid.device) - starts[image_of_cell]
        max_cells = int(counts.max())
        padded = cell_features.new_zeros(batch, max_cells, cell_features.shape[-1])
        padded = padded.index_put((image_of_cell, slot), cell_features)
        key_mask = torch.zeros(batch, max_cells, dtype=torch.bool, device=valid.device)
        key_mask[image_of_cell, slot] = True
        class_query = self.class_embedding.expand(batch, 1, -1)
        class_tokens = (class_query + self.global_attention(class_query, padded, key_mask))[:, 0]  # (B, C)

        rows = valid.any(dim=2)  # (B, G)
        cols = valid.any(dim=1)
        grid_h, grid_w = rows.sum(dim=1), cols.sum(dim=1)
        top, left = rows.float().argmax(dim=1), cols.float().argmax(dim=1)
        lengths = 1 + grid_h * (grid_w + 1)
        offsets = torch.cumsum(lengths, 0) - lengths
        row_in_image = cell_index[:, 1] - top[image_of_cell]
        col_in_image = cell_index[:, 2] - left[image_of_cell]
        cell_positions = offsets[image_of_cell] + 1 + row_in_image * (grid_w[image_of_cell] + 1) + col_in_image
        image_of_row = torch.repeat_interleave(torch.arange(batch, device=valid.device), grid_h)
        row_number = torch.arange(image_of_row.shape[0], device=valid.device) - (torch.cumsum(grid_h, 0) - grid_h)[image_of_row]
        separator_positions = offsets[image_of_row] + 1 + row_number * (grid_w[image_of_row] + 1) + grid_w[image_of_row]

        total = int(lengths.sum())
        sequence = cell_features.new_zeros(total, cell_features.shape[-1])
        sequence = sequence.index_put((offsets,), class_tokens)
        sequence = sequence.index_put((cell_positions,), cell_features)
        sequence = sequence.index_put((separator_positions,), self.split_embedding.expand(separator_positions.shape[0], -1))
        return VisualTokens(self.projector(sequence), lengths, torch.stack([grid_h, grid_w], dim=1), has_image)


# ------------------------------------------------------------------------------------- Patch Aligning Layer
class PatchAligningLayer(nn.Module):
    """EVE's PAL head (CA3): per-depth LayerNorm + Linear, depth cross-attention with the last depth as query,
    plus a residual Linear from the last depth's raw hidden state; outputs teacher-width features."""

    def __init__(self, config: EveConfig):
        super().__init__()
        hidden, width = config.text_config.hidden_size, config.alignment_width
        self.depths = config.alignment_depths
        self.depth_heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, width, bias=False)) for _ in self.depths
        )
        self.depth_attention = CrossAttention(width, config.alignment_num_heads, config.attention_full_width_scale, project_keys=False)
        self.residual_proj = nn.Linear(hidden, config.teacher_feature_dim)
        self.out_proj = nn.Linear(width, config.teacher_feature_dim)

    def forward(self, depth_states: torch.Tensor) -> torch.Tensor:
        """depth_states (num_depths, N, hidden), index 0 = last depth -> (N, teacher_feature_dim)."""
        projected = torch.stack([head(state) for head, state in zip(self.depth_heads, depth_states)], dim=1)  # (N, n, A)
        query, keys = projected[:, :1], projected[:, 1:]
        attended = self.depth_attention(query, keys)[:, 0]
        return self.residual_proj(depth_states[0]) + self.out_proj(attended)


def alignment_cosine_loss(student: torch.Tensor, teacher: torch.Tensor, sample_index: torch.Tensor,
                          has_image: torch.Tensor) -> torch.Tensor:
    """EVE's PAL loss: per image ``1 - mean_tokens cos(student, teacher)``, summed over images with an image and
    divided by ``max(#images, 1)``. student/teacher (N, D), sample_index (N,) in [0, B), has_image (B,).
    Range [0, 2]; 0 when every student token points the same way as its teacher token."""
    batch = has_image.shape[0]
    distance = 1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1, eps=1e-6)
    sums = distance.new_zeros(batch).index_add(0, sample_index, distance)
    counts = distance.new_zeros(batch).index_add(0, sample_index, torch.ones_like(distance))
    per_image = sums / counts.clamp(min=1)
    used = has_image & (counts > 0)
    return (per_image * used).sum() / used.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------- model
@dataclass
class EveCausalLMOutput(ModelOutput):
    """loss = ce_loss + alignment_loss_weight * alignment_loss; logits (B, T', V) over the spliced sequence."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    alignment_loss: torch.Tensor | None = None
    cache: Any = None
    attention_mask: torch.Tensor | None = None
    labels: torch.Tensor | None = None

    @property
    def past_key_values(self) -> Any:
        return self.cache


@dataclass
class SplicedInputs:
    """The decoder input after splicing: embeds (B, T', D), mask and labels (B, T'), per-sample visual start."""

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    visual_start: list[int]
    visual: VisualTokens | None


class EvePreTrainedModel(PreTrainedModel):
    config_class = EveConfig
    config: EveConfig
    base_model_prefix = "eve"
    supports_gradient_checkpointing = True
    _no_split_modules = ["LlamaDecoderLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        if isinstance(module, PatchEmbeddingLayer):
            # Unit-normal like the original (torch.randn); they enter the LLM through the projector.
            init.normal_(module.class_embedding, mean=0.0, std=1.0)
            init.normal_(module.split_embedding, mean=0.0, std=1.0)


class EveForCausalLM(EvePreTrainedModel, GenerationMixin):
    """EVE v1 for causal LM. Training adds the PAL loss after :meth:`enable_alignment`."""

    def __init__(self, config: EveConfig):
        super().__init__(config)
        self.language_model = LlamaForCausalLM(config.text_config)
        self.patch_embedding = PatchEmbeddingLayer(config)
        self.aligning_layer: PatchAligningLayer | None = None
        self.teacher: "VisionTeacher | None" = None
        self.post_init()

    # ------------------------------------------------------------------------------------------ plumbing
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    @classmethod
    def from_text_model(cls, llama_dir_or_model: str | Path | LlamaForCausalLM, eve_config: EveConfig) -> "EveForCausalLM":
        """Stage-1 start: a fresh PEL on top of a base LLM (directory or model) whose shape matches ``eve_config``."""
        if isinstance(llama_dir_or_model, (str, Path)):
            text_model = LlamaForCausalLM.from_pretrained(str(llama_dir_or_model))
        else:
            text_model = llama_dir_or_model
        mine, theirs = eve_config.text_config, text_model.config
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            if getattr(mine, name) != getattr(theirs, name):
                raise ValueError(f"text model {name}={getattr(theirs, name)} but eve_config.text_config has {getattr(mine, name)}")
        model = cls(eve_config)
        model.language_model.load_state_dict(text_model.state_dict(), strict=True)
        return model

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable groups: "pel" (patch embedding + projector), "aligning" (PAL), "llm". Teacher excluded."""
        return {
            "pel": list(self.patch_embedding.parameters()),
            "aligning": list(self.aligning_layer.parameters()) if self.aligning_layer is not None else [],
            "llm": list(self.language_model.parameters()),
        }

    def freeze_llm(self) -> None:
        """Stage 1: the whole LLM (embeddings, decoder, lm_head) stops training."""
        self.language_model.requires_grad_(False)

    def unfreeze_llm(self) -> None:
        self.language_model.requires_grad_(True)

    # ----------------------------------------------------------------------------------------- alignment
    def enable_alignment(self, teacher: "VisionTeacher | None" = None, teacher_feature_cache_dir: str | Path | None = None) -> None:
        """Training only: build the PAL and attach the frozen teacher (``build_teacher(config,
        teacher_feature_cache_dir)`` when None)."""
        from eve_model.teachers import build_teacher

        if teacher is None:
            teacher = build_teacher(self.config, teacher_feature_cache_dir)
        if teacher.grid_size != self.config.teacher_grid_size or teacher.feature_dim != self.config.teacher_feature_dim:
            raise ValueError(
                f"teacher grid {teacher.grid_size} / dim {teacher.feature_dim} != config "
                f"{self.config.teacher_grid_size} / {self.config.teacher_feature_dim}"
            )
        reference = self.patch_embedding.class_embedding
        if self.aligning_layer is None:
            self.aligning_layer = PatchAligningLayer(self.config).to(device=reference.device, dtype=reference.dtype)
        self.teacher = teacher.to(device=reference.device)
        self.teacher.requires_grad_(False)

    def disable_alignment(self) -> None:
        self.aligning_layer = None
        self.teacher = None

    def save_alignment_state(self, directory: str | Path) -> Path:
        """Write the PAL weights to ``directory/aligning_layer.safetensors`` (next stage continues them)."""
        from safetensors.torch import save_file

        if self.aligning_layer is None:
            raise RuntimeError("alignment is not enabled; nothing to save")
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with _gathered(list(self.aligning_layer.parameters())):
            state = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in self.aligning_layer.state_dict().items()}
        target = path / ALIGNMENT_STATE_FILE
        save_file(state, str(target), metadata={"depths": ",".join(map(str, self.config.alignment_depths))})
        return target

    def load_alignment_state(self, directory: str | Path) -> None:
        """Load ``aligning_layer.safetensors`` (builds the PAL if needed; the teacher stays as it is)."""
        from safetensors.torch import load_file

        source = Path(directory) / ALIGNMENT_STATE_FILE
        if not source.exists():
            raise FileNotFoundError(f"no {ALIGNMENT_STATE_FILE} in {directory}")
        reference = self.patch_embedding.class_embedding
        if self.aligning_layer is None:
            self.aligning_layer = PatchAligningLayer(self.config).to(device=reference.device, dtype=reference.dtype)
        state = load_file(str(source), device="cpu")
        with _gathered(list(self.aligning_layer.parameters()), modify=True):
            self.aligning_layer.load_state_dict(state, strict=True)

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs):
        """Standard HF checkpoint of PEL + LLM; teacher and PAL are never part of it."""
        detached = {name: self._modules.pop(name) for name in ("aligning_layer", "teacher") if self._modules.get(name) is not None}
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            for name, module in detached.items():
                self._modules[name] = module

    # --------------------------------------------------------------------------------------------- splice
    def build_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                     pixel_values: torch.Tensor | None = None, has_image: torch.Tensor | None = None,
                     labels: torch.Tensor | None = None) -> SplicedInputs:
        """Embed text, run the PEL and splice each image's tokens at its placeholder.

        Keeps the batch's padding side (left if any row starts with padding, as for generation).
        """
        batch = input_ids.shape[0]
        device = input_ids.device
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        placeholder = input_ids == self.config.image_token_id
        text_embeds = self.get_input_embeddings()(input_ids.masked_fill(placeholder, 0))
        visual = None
        if pixel_values is None:
            if bool(placeholder.any()):
                raise ValueError("input_ids contain the image placeholder but no pixel_values were given")
            return SplicedInputs(text_embeds, attention_mask, labels, [-1] * batch, None)
        visual = self.patch_embedding(pixel_values.to(device), has_image)
        placeholders_per_row = placeholder.sum(dim=1)
        expected = visual.has_image.to(device).long()
        if not torch.equal(placeholders_per_row, expected):
            bad = (placeholders_per_row != expected).nonzero()[:, 0].tolist()
            raise ValueError(f"rows {bad}: each sample needs exactly one placeholder iff it has an image "
                             f"(found {placeholders_per_row[bad].tolist()}, has_image {expected[bad].tolist()})")
        pieces = visual.split()
        left_padded = bool((attention_mask[:, 0] == 0).any())
        rows_embeds, rows_mask, rows_labels, starts = [], [], [], []
        for row in range(batch):
            if not bool(visual.has_image[row]):
                rows_embeds.append(text_embeds[row])
                rows_mask.append(attention_mask[row])
                rows_labels.append(labels[row] if labels is not None else None)
                starts.append(-1)
                continue
            position = int(placeholder[row].nonzero()[0, 0])
            tokens = pieces[row].to(text_embeds.dtype)
            count = tokens.shape[0]
            rows_embeds.append(torch.cat([text_embeds[row, :position], tokens, text_embeds[row, position + 1 :]]))
            rows_mask.append(torch.cat([attention_mask[row, :position], attention_mask.new_ones(count), attention_mask[row, position + 1 :]]))
            if labels is not None:
                rows_labels.append(torch.cat([labels[row, :position], labels.new_full((count,), IGNORE_INDEX), labels[row, position + 1 :]]))
            starts.append(position)
        length = max(embeds.shape[0] for embeds in rows_embeds)
        hidden = text_embeds.shape[-1]
        out_embeds = text_embeds.new_zeros(batch, length, hidden)
        out_mask = attention_mask.new_zeros(batch, length)
        out_labels = labels.new_full((batch, length), IGNORE_INDEX) if labels is not None else None
        for row in range(batch):
            size = rows_embeds[row].shape[0]
            offset = length - size if left_padded else 0
            out_embeds[row, offset : offset + size] = rows_embeds[row]
            out_mask[row, offset : offset + size] = rows_mask[row]
            if out_labels is not None:
                out_labels[row, offset : offset + size] = rows_labels[row]
            if starts[row] >= 0:
                starts[row] += offset
        # Text-only rows: their fallback visual tokens are not spliced, but every PEL parameter must still be
        # in the graph (ZeRO-3 / DDP hang otherwise); adding an exact zero keeps values unchanged.
        out_embeds = out_embeds + 0.0 * visual.embeddings.sum().to(out_embeds.dtype)
        return SplicedInputs(out_embeds, out_mask, out_labels, starts, visual)

    # ---------------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        teacher_pixel_values: torch.Tensor | None = None,
        has_image: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        logits_to_keep: int = 0,
        **kwargs: Any,
    ) -> EveCausalLMOutput:
        """input_ids (B, T) with one placeholder per image sample; pixel_values (B, 4, S, S);
        teacher_pixel_values (B, 4, T_t, T_t) enables the PAL loss (needs :meth:`enable_alignment`);
        labels (B, T) with IGNORE_INDEX on non-target tokens. Logits cover the spliced sequence."""
        cache = cache if cache is not None else past_key_values
        spliced = None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            has_past = cache is not None and cache.get_seq_length() > 0
            if not has_past:  # prefill / training: splice (and reject a placeholder without an image)
                spliced = self.build_inputs(input_ids, attention_mask, pixel_values, has_image, labels)
                inputs_embeds, attention_mask, labels = spliced.inputs_embeds, spliced.attention_mask, spliced.labels
            else:  # decoding: new text tokens only
                inputs_embeds = self.get_input_embeddings()(input_ids)
        if position_ids is None and attention_mask is not None and (cache is None or cache.get_seq_length() == 0):
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        want_alignment = (
            teacher_pixel_values is not None and self.aligning_layer is not None and spliced is not None
            and spliced.visual is not None
        )
        captured: dict[int, torch.Tensor] = {}
        handles = self._capture_depths(captured) if want_alignment else []
        try:
            outputs = self.language_model.model(
                inputs_embeds=inputs_embeds,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
            )
        finally:
            for handle in handles:
                handle.remove()
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.language_model.lm_head(hidden)

        ce_loss = None
        if labels is not None:
            shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
            shift_labels = labels[:, 1:].reshape(-1).to(logits.device)
            summed = F.cross_entropy(shift_logits, shift_labels, ignore_index=IGNORE_INDEX, reduction="sum")
            ce_loss = summed / (shift_labels != IGNORE_INDEX).sum().clamp(min=1)
        alignment_loss = None
        if want_alignment:
            captured[0] = inputs_embeds
            alignment_loss = self._alignment_loss(captured, spliced, teacher_pixel_values)
        loss = None
        if ce_loss is not None:
            loss = ce_loss
            if alignment_loss is not None:
                loss = loss + self.config.alignment_loss_weight * alignment_loss.to(loss.dtype)
        return EveCausalLMOutput(loss=loss, logits=logits, ce_loss=ce_loss, alignment_loss=alignment_loss,
                                 cache=outputs.cache if use_cache else None,
                                 attention_mask=attention_mask, labels=labels)

    def _capture_depths(self, captured: dict[int, torch.Tensor]) -> list[Any]:
        """Forward hooks that keep only the PAL depths (depth k = output of decoder layer k; the last one after
        the final norm, as HF's last hidden state) instead of every hidden state."""
        decoder = self.language_model.model
        num_layers = self.config.text_config.num_hidden_layers
        handles = []

        def keep(depth: int):
            def hook(_module, _inputs, output):
                captured[depth] = output[0] if isinstance(output, tuple) else output
            return hook

        for depth in self.config.alignment_depths:
            if depth == num_layers:
                handles.append(decoder.norm.register_forward_hook(keep(depth)))
            elif depth > 0:
                handles.append(decoder.layers[depth - 1].register_forward_hook(keep(depth)))
        return handles

    def _alignment_loss(self, captured: dict[int, torch.Tensor], spliced: SplicedInputs,
                        teacher_pixel_values: torch.Tensor) -> torch.Tensor:
        """Student visual tokens (CLS and SPL removed, grid pooled to the teacher's) vs frozen teacher."""
        visual = spliced.visual
        ratio = self.config.patch_ratio
        device = spliced.inputs_embeds.device
        with torch.no_grad():
            teacher_features, teacher_valid = self.teacher(teacher_pixel_values.to(device))
        sample_rows, positions, targets, sample_index = [], [], [], []
        for row in range(visual.has_image.shape[0]):
            if not bool(visual.has_image[row]):
                continue
            height, width = visual.grid_hw[row].tolist()
            if height % ratio or width % ratio:
                raise RuntimeError(f"row {row}: student grid {height}x{width} is not divisible by patch_ratio {ratio}")
            pooled_h, pooled_w = height // ratio, width // ratio
            row_targets = teacher_features[row][teacher_valid[row]]
            if row_targets.shape[0] != pooled_h * pooled_w:
                raise RuntimeError(
                    f"row {row}: student grid {pooled_h}x{pooled_w} (pooled) != teacher valid cells {row_targets.shape[0]}"
                )
            grid_rows = torch.arange(height, device=device).view(pooled_h, ratio, 1, 1)
            grid_cols = torch.arange(width, device=device).view(1, 1, pooled_w, ratio)
            token = spliced.visual_start[row] + 1 + grid_rows * (width + 1) + grid_cols  # (ph, r, pw, r)
            positions.append(token.permute(0, 2, 1, 3).reshape(pooled_h * pooled_w, ratio * ratio))
            sample_rows.append(torch.full((pooled_h * pooled_w,), row, device=device, dtype=torch.long))
            targets.append(row_targets)
        depths = self.config.alignment_depths
        if not positions:
            # No image in the batch: an exact zero that still runs every PAL parameter (ZeRO-3 / DDP).
            probe = torch.stack([captured[depth][:1, 0] for depth in depths])
            return 0.0 * self.aligning_layer(probe).sum()
        position_index = torch.cat(positions)
        row_index = torch.cat(sample_rows)
        depth_states = torch.stack([captured[depth][row_index[:, None], position_index].mean(dim=1) for depth in depths])
        predicted = self.aligning_layer(depth_states.to(self.aligning_layer.residual_proj.weight.dtype))
        return alignment_cosine_loss(predicted, torch.cat(targets).to(predicted.dtype), row_index, visual.has_image.to(device))

    # ------------------------------------------------------------------------------------------- generation
    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor | None = None, pixel_values: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, has_image: torch.Tensor | None = None, **kwargs: Any):
        """Visual tokens are spliced once at prefill; returns only the newly generated token ids (B, new)."""
        for unused in ("teacher_pixel_values", "image_grid_hw", "labels"):
            kwargs.pop(unused, None)
        if input_ids is None:
            return super().generate(attention_mask=attention_mask, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        spliced = self.build_inputs(input_ids, attention_mask, pixel_values, has_image)
        kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id)
        kwargs.setdefault("eos_token_id", self.config.text_config.eos_token_id)
        return super().generate(inputs_embeds=spliced.inputs_embeds, attention_mask=spliced.attention_mask, **kwargs)


class _gathered:
    """Gather ZeRO-3 partitioned parameters for a read (or a write with ``modify``); no-op otherwise."""

    def __init__(self, parameters: list[nn.Parameter], modify: bool = False):
        self.parameters, self.modify, self.context = parameters, modify, None

    def __enter__(self):
        if any(hasattr(parameter, "ds_id") for parameter in self.parameters):
            import deepspeed

            self.context = deepspeed.zero.GatheredParameters(self.parameters, modifier_rank=0 if self.modify else None)
            self.context.__enter__()
        return self

    def __exit__(self, *exc):
        if self.context is not None:
            return self.context.__exit__(*exc)
        return False


__all__ = [
    "PatchEmbeddingLayer",
    "PatchAligningLayer",
    "VisualTokens",
    "EvePreTrainedModel",
    "EveForCausalLM",
    "EveCausalLMOutput",
    "alignment_cosine_loss",
    "ALIGNMENT_STATE_FILE",
]


def _register_auto_classes() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    AutoConfig.register("eve", EveConfig, exist_ok=True)
    AutoModelForCausalLM.register(EveConfig, EveForCausalLM, exist_ok=True)


_register_auto_classes()
