"""The data pipeline: raw sources -> validation with quarantine -> tar shards -> DVC versions.

Modules: ``sources`` (readers), ``demo_source`` (the built-in synthetic source), ``validate``
(per-item checks), ``sharding`` (ingest into shards + quarantine list), ``versioning`` (DVC
dataset versions, local or S3 remote), ``steps`` (the Prefect task wrappers).
"""
