"""EVE v1 model: Patch Embedding Layer + Llama decoder (+ Patch Aligning Layer and frozen teacher in training).

Sequence layout per sample with an image: ``[text][CLS][row 1: w patches][SPL]...[row h][SPL][text]``.
``EveProcessor`` writes the visual block as ``visual_token_count(h, w)`` image-token ids (HF's LLaVA
pattern); the model embeds the text and fills those positions with the PEL output in one ``masked_scatter``.
Visual positions never carry a label. Teacher and PAL exist only after :meth:`EveForCausalLM.enable_alignment`
and are never saved with the model; saving and loading the PAL is ``eve_model.training.alignment_state``.
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

from .configuration_eve import EveConfig
from .constants import IGNORE_INDEX
from .geometry import visual_token_count

if TYPE_CHECKING:
    from .teacher_base import VisionTeacher


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

    ``embeddings`` (sum_i n_i, D) with n_i = ``visual_token_count(h_i, w_i)``, image after image; ``lengths``
    (B,) = n_i; ``grid_hw`` (B, 2) = (h_i, w_i); ``has_image`` (B,): False rows are the 1x1 fallback of a blank
    image, computed only so every PEL parameter joins the graph and never placed in the sequence.
    """

    embeddings: torch.Tensor
    lengths: torch.Tensor
    grid_hw: torch.Tensor
    has_image: torch.Tensor

    def split(self) -> list[torch.Tensor]:
        return list(self.embeddings.split(self.lengths.tolist()))

    def image_embeddings(self) -> torch.Tensor:
        """(sum of n_i over rows with an image, D): the tokens that go into the sequence, image after image."""
        keep = torch.repeat_interleave(self.has_image.to(self.lengths.device), self.lengths)
        return self.embeddings[keep.to(self.embeddings.device)]


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

        Rows without an image get their top-left cell marked valid (the 1x1 fallback, never placed in the sequence).
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
        lengths = visual_token_count(grid_h, grid_w)
        offsets = torch.cumsum(lengths, 0) - lengths
        row_in_image = cell_index[:, 1] - top[image_of_cell]
        col_in_image = cell_index[:, 2] - left[image_of_cell]
        cell_positions = offsets[image_of_cell] + 1 + row_in_image * (grid_w[image_of_cell] + 1) + col_in_image
        image_of_row = torch.repeat_interleave(torch.arange(batch, device=valid.device), grid_h)
        row_number = torch.arange(image_of_row.shape[0], device=valid.device) - (torch.cumsum(grid_h, 0) - grid_h)[image_of_row]
        separator_positions = offsets[image_of_row] + 1 + row_number * (grid_w[image_of_row] + 1) + grid_w[image_of_row]

        # Under autocast the cell features come out of the conv/linears in the autocast dtype (bf16) while the
        # class token (a float parameter plus attention output) and the separator parameter stay float: the
        # buffer takes their common dtype, so nothing is rounded before the projector (which autocasts itself).
        dtype = torch.promote_types(torch.promote_types(cell_features.dtype, class_tokens.dtype), self.split_embedding.dtype)
        total = int(lengths.sum())
        sequence = cell_features.new_zeros(total, cell_features.shape[-1], dtype=dtype)
        sequence = sequence.index_put((offsets,), class_tokens.to(dtype))
        sequence = sequence.index_put((cell_positions,), cell_features.to(dtype))
        separators = self.split_embedding.to(dtype).expand(separator_positions.shape[0], -1)
        sequence = sequence.index_put((separator_positions,), separators)
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
    # At least float32 (bf16 cosines are too coarse), float64 stays float64; eps as upstream's nn.CosineSimilarity.
    dtype = torch.promote_types(torch.promote_types(student.dtype, teacher.dtype), torch.float32)
    distance = 1.0 - F.cosine_similarity(student.to(dtype), teacher.to(dtype), dim=-1, eps=1e-8)
    sums = distance.new_zeros(batch).index_add(0, sample_index, distance)
    counts = distance.new_zeros(batch).index_add(0, sample_index, torch.ones_like(distance))
    per_image = sums / counts.clamp(min=1)
    used = has_image & (counts > 0)
    return (per_image * used).sum() / used.sum().clamp(min=1)


# --------------------------------------------------------------------------------------------------- model
@dataclass
class EveCausalLMOutput(ModelOutput):
    """loss = ce_loss + alignment_loss_weight * alignment_loss; logits (B, T, V) over the input sequence
    (visual block included); attention_mask (B, T) as given; labels (B, T) as given, visual positions
    set to IGNORE_INDEX."""

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
        if teacher is None:
            # ``from . import`` on purpose: a checkpoint's copy of this file (trust_remote_code) carries only the
            # modules named by ``from .<module> import`` (transformers copies those), and the teachers, with their
            # weight packages, are training code that inference never needs. The package build has them.
            from . import teachers

            teacher = teachers.build_teacher(self.config, teacher_feature_cache_dir)
        if teacher.grid_size != self.config.teacher_grid_size or teacher.feature_dim != self.config.teacher_feature_dim:
            raise ValueError(
                f"teacher grid {teacher.grid_size} / dim {teacher.feature_dim} != config "
                f"{self.config.teacher_grid_size} / {self.config.teacher_feature_dim}"
            )
        self.build_aligning_layer()
        self.teacher = teacher.to(device=self.patch_embedding.class_embedding.device)
        self.teacher.requires_grad_(False)

    def build_aligning_layer(self) -> PatchAligningLayer:
        """The PAL, created (freshly initialised, on the PEL's device and dtype) if the model has none yet."""
        if self.aligning_layer is None:
            reference = self.patch_embedding.class_embedding
            self.aligning_layer = PatchAligningLayer(self.config).to(device=reference.device, dtype=reference.dtype)
        return self.aligning_layer

    def disable_alignment(self) -> None:
        self.aligning_layer = None
        self.teacher = None

    def save_pretrained(self, save_directory: str | Path, *args, **kwargs):
        """Standard HF checkpoint of PEL + LLM; teacher and PAL are never part of it."""
        detached = {name: self._modules.pop(name) for name in ("aligning_layer", "teacher") if self._modules.get(name) is not None}
        try:
            return super().save_pretrained(save_directory, *args, **kwargs)
        finally:
            for name, module in detached.items():
                self._modules[name] = module

    # --------------------------------------------------------------------------------------- image tokens
    def image_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) -> (B, T) bool, True at the image-token positions the PEL output fills."""
        return input_ids == self.config.image_token_id

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None = None,
                     has_image: torch.Tensor | None = None) -> tuple[torch.Tensor, VisualTokens | None]:
        """Decoder input embeddings (B, T, D) and the PEL output (None without ``pixel_values``).

        input_ids (B, T) holds ``visual_token_count(h, w)`` image-token ids per sample with an image
        (``EveProcessor`` expands them); pixel_values (B, 4, S, S); has_image (B,) bool (derived from the mask
        channel when None). Raises ``ValueError`` naming the rows whose image-token count differs from their
        visual tokens.
        """
        mask = self.image_token_mask(input_ids)
        # A production tokenizer's <image> id may lie past the LLM vocabulary (Vicuna: 32000 of 32000 rows), so
        # it never reaches the lookup; those rows are overwritten below anyway.
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(mask, 0))
        if pixel_values is None:
            if bool(mask.any()):
                raise ValueError("input_ids contain image tokens but no pixel_values were given")
            return inputs_embeds, None
        visual = self.patch_embedding(pixel_values.to(inputs_embeds.device), has_image)
        self._check_image_tokens(mask, visual)
        inputs_embeds = inputs_embeds.masked_scatter(mask[..., None], visual.image_embeddings().to(inputs_embeds.dtype))
        # Text-only rows: their fallback visual tokens are not placed, but every PEL parameter must still be
        # in the graph (ZeRO-3 / DDP hang otherwise); adding an exact zero keeps values unchanged.
        inputs_embeds = inputs_embeds + 0.0 * visual.embeddings.sum().to(inputs_embeds.dtype)
        return inputs_embeds, visual

    @staticmethod
    def _check_image_tokens(mask: torch.Tensor, visual: VisualTokens) -> None:
        """Every row needs exactly as many image tokens as the PEL made for its image (0 without an image)."""
        found = mask.sum(dim=1)
        expected = torch.where(visual.has_image, visual.lengths, torch.zeros_like(visual.lengths)).to(found.device)
        if not torch.equal(found, expected):
            bad = (found != expected).nonzero()[:, 0].tolist()
            raise ValueError(
                f"rows {bad}: image tokens in input_ids {found[bad].tolist()} != visual tokens of their image "
                f"{expected[bad].tolist()} (in total {int(found.sum())} != {int(expected.sum())}); EveProcessor "
                "expands each <image> into visual_token_count(h, w) image tokens, and a sample without an image has none"
            )

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
        """input_ids (B, T) with the expanded image tokens of each image sample (``EveProcessor``);
        attention_mask (B, T); pixel_values (B, 4, S, S); has_image (B,) bool;
        teacher_pixel_values (B, 4, T_t, T_t) enables the PAL loss (needs :meth:`enable_alignment`);
        labels (B, T) with IGNORE_INDEX on non-target tokens (image-token positions are always ignored).
        Logits (B, T, V), or (B, logits_to_keep, V)."""
        cache = cache if cache is not None else past_key_values
        visual, image_mask = None, None
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            has_past = cache is not None and cache.get_seq_length() > 0
            if not has_past:  # prefill / training: fill the image tokens (and reject them without an image)
                if attention_mask is None:
                    attention_mask = torch.ones_like(input_ids)
                image_mask = self.image_token_mask(input_ids)
                inputs_embeds, visual = self.embed_inputs(input_ids, pixel_values, has_image)
                if labels is not None:
                    labels = labels.masked_fill(image_mask.to(labels.device), IGNORE_INDEX)
            else:  # decoding: new text tokens only
                inputs_embeds = self.get_input_embeddings()(input_ids)
        if position_ids is None and attention_mask is not None and (cache is None or cache.get_seq_length() == 0):
            position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)

        want_alignment = teacher_pixel_values is not None and self.aligning_layer is not None and visual is not None
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
            alignment_loss = self.alignment_loss(captured, image_mask, visual, teacher_pixel_values)
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

    def alignment_loss(self, captured: dict[int, torch.Tensor], image_mask: torch.Tensor, visual: VisualTokens,
                       teacher_pixel_values: torch.Tensor) -> torch.Tensor:
        """The PAL loss: student visual tokens (CLS and SPL removed, grid pooled to the teacher's) vs the frozen
        teacher (``forward`` calls it; public for the upstream parity test).

        captured: depth -> hidden states (B, T, D) for every depth of ``config.alignment_depths`` (0 = decoder
        input); image_mask (B, T) bool, each image row's visual block being one contiguous run starting with its
        CLS token; visual: the PEL output's ``grid_hw`` and ``has_image``; teacher_pixel_values (B, 4, T_t, T_t)."""
        ratio = self.config.patch_ratio
        device = captured[0].device
        image_mask = image_mask.to(device)
        block_start = image_mask.int().argmax(dim=1).tolist()  # first image-token position (CLS) per row
        with torch.no_grad():
            teacher_features, teacher_valid = self.teacher(teacher_pixel_values.to(device))
        sample_rows, positions, targets = [], [], []
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
            token = block_start[row] + 1 + grid_rows * (width + 1) + grid_cols  # (ph, r, pw, r)
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
        """input_ids (B, T) left-padded with expanded image tokens (``EveProcessor.for_generation``),
        pixel_values (B, 4, S, S). The visual tokens are filled in once at prefill.

        Returns what a transformers decoder-only model returns for ``input_ids``: the prompt followed by the new
        tokens, (B, T + new), so ``output[:, input_ids.shape[1]:]`` are the generated ids (with
        ``return_dict_in_generate`` the same holds for ``output.sequences``)."""
        for unused in ("teacher_pixel_values", "image_grid_hw", "labels"):
            kwargs.pop(unused, None)
        if input_ids is None:
            return super().generate(attention_mask=attention_mask, **kwargs)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        inputs_embeds, _ = self.embed_inputs(input_ids, pixel_values, has_image)
        kwargs.setdefault("pad_token_id", self.config.text_config.pad_token_id)
        kwargs.setdefault("eos_token_id", self.config.text_config.eos_token_id)
        # Generating from inputs_embeds (the only way to hand over the spliced visual block) makes transformers
        # return the new tokens alone; the prompt is put back in front to keep the convention.
        output = super().generate(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs)
        if isinstance(output, torch.Tensor):
            return torch.cat([input_ids, output.to(input_ids.device)], dim=1)
        output.sequences = torch.cat([input_ids, output.sequences.to(input_ids.device)], dim=1)
        return output


__all__ = [
    "PatchEmbeddingLayer",
    "PatchAligningLayer",
    "VisualTokens",
    "EvePreTrainedModel",
    "EveForCausalLM",
    "EveCausalLMOutput",
    "alignment_cosine_loss",
]


def _register_auto_classes() -> None:
    """``model_type="eve"`` -> the package's classes for ``AutoConfig``, ``AutoModelForCausalLM`` and
    ``AutoProcessor`` (loading a checkpoint after ``import eve_model``, no remote code involved)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoProcessor

    from .processing_eve import EveProcessor

    AutoConfig.register("eve", EveConfig, exist_ok=True)
    AutoModelForCausalLM.register(EveConfig, EveForCausalLM, exist_ok=True)
    AutoProcessor.register(EveConfig, EveProcessor, exist_ok=True)


# Every save_pretrained copies this file, the files it imports with ``from .<module> import`` and an ``auto_map``
# into the checkpoint, so ``AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)`` works where this
# package is not installed (docs/model.md, "Loading a checkpoint").
EveForCausalLM.register_for_auto_class("AutoModelForCausalLM")
if __name__ == "eve_model.modeling_eve":
    # Only the package registers itself globally: a checkpoint's copy of this file (loaded as remote code) must not
    # replace the package's classes in transformers' mappings for the rest of the process.
    _register_auto_classes()
