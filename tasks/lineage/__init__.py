"""Lineage of every model version (docs/architecture.md, "Lineage").

- ``schema``: the manifest (every input and output by content hash) and its chain checks;
- ``store``: manifests in the registry repository, and reverse lookup by dataset;
- ``render``: the graph as text, dot, a picture and markdown;
- ``assemble``: the retrain's Prefect task that builds a candidate's manifest from the step results.
"""
