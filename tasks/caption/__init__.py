"""Caption generation (issue 5): teachers re-caption every image, with provenance per caption.

- ``config``: ``CaptionConfig`` (flow parameter);
- ``provenance``: versioned prompt templates, backend identity, per-caption provenance;
- ``backends``: ``source`` / ``hf`` / ``openai`` behind ``CaptionBackend``;
- ``cache``: persistent SQLite caption cache (image hash + identity);
- ``run``: ``caption_dataset`` - resumable captioning of a shard dataset into a new version;
- ``normalize``: caption text normalisation;
- ``diff``: re-caption diff between two captioned versions;
- ``prefect_tasks``: the thin ``@task`` wrapper.
"""
