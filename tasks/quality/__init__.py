"""Caption and instruction-data quality gates (docs/architecture.md, "The retrain").

- ``metrics`` / ``instruction_metrics``: per-sample metrics tables (pandas);
- ``near_duplicates``: MinHash + LSH near-duplicate detection with exact verification;
- ``config``: thresholds (pydantic flow parameters) and the caption profiles (teacher-captions, short-labels);
- ``suites``: the versioned GX expectation suites;
- ``validate``: runs a suite (GX stores and Data Docs per dataset version), turns GX's result into
  filtered rows + pass/fail;
- ``gate``: dataset in -> filtered dataset version + ``GateResult``;
- ``store``: results keyed by dataset hash + suite version under the platform home;
- ``report``: metric deltas against the previous version, markdown;
- ``prefect_tasks``: thin ``@task`` wrappers that publish Prefect artifacts.
"""
