"""Thin Prefect task over ``tasks.caption.run.caption_dataset``.

Retries are safe and cheap: a retried run resumes from its committed shards and its cache.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from tasks.caption.config import CaptionConfig
from tasks.caption.run import CaptionRunResult, caption_dataset
from tasks.lineage.openlineage import lineage_run
from tasks.lineage.openlineage_refs import dataset_ref, model_ref


def _summary_markdown(result: CaptionRunResult) -> str:
    identity = result.identity
    return "\n".join([
        f"# Caption run `{result.run_id}`",
        "",
        f"- backend: {identity.backend}, model `{identity.model_id}`, weights `{identity.weights_sha256}`",
        f"- prompt: {identity.prompt_template}, decoding: `{identity.decoding}`",
        f"- input `{result.input_dataset_hash}` -> output `{result.output_dataset_hash}`",
        f"- samples: {result.num_samples} = {result.num_captioned} captioned + {result.num_failed} failed",
        f"- this invocation: {result.num_generated} generated, {result.num_from_cache} from cache, "
        f"{result.num_shards_resumed}/{result.num_shards} shards resumed, {result.duration_seconds:.1f} s",
    ]) + "\n"


@task(name="generate-captions", retries=2, retry_delay_seconds=30, timeout_seconds=48 * 3600)
def generate_captions(input_location: str, output_dir: str, config: CaptionConfig) -> CaptionRunResult:
    """Caption a dataset version; publishes a summary artifact and an OpenLineage run (the input version
    and the teacher in, the captioned version out)."""
    read = [dataset_ref(input_location, "curated")]
    with lineage_run("caption", read) as written:
        result = caption_dataset(input_location, output_dir, config)
        identity = result.identity
        # The teacher is known once the run resolved its backend: it joins the inputs of the COMPLETE event,
        # named by its identity fingerprint (model, weights, prompt, decoding).
        read.append(model_ref(identity.model_id, identity.fingerprint(), role="teacher", backend=identity.backend,
                              teacher_weights_sha256=identity.weights_sha256, prompt_sha256=identity.prompt_sha256))
        written.append(dataset_ref(output_dir, "captioned", result.output_dataset_hash))
    create_markdown_artifact(_summary_markdown(result), key="caption-run",
                             description=f"caption run {result.run_id}")
    return result


__all__ = ["generate_captions"]
