"""Evaluation harness and gates (issue 7).

- ``readers``: benchmark formats (demo VQA JSONL, LLaVA questions + answers, POPE, MME, captions,
  text) -> ``EvalItem`` lists, with file:line errors on bad input;
- ``metrics``: scoring on plain Python inputs (exact match, VQA soft accuracy, POPE, MME, CIDEr-D /
  BLEU-4 / ROUGE-L, perplexity);
- ``suites``: suite specs (flow parameters) and scoring of model outputs into ``SuiteResult``;
- ``harness``: loads an HF EVE directory and runs suites with batched greedy decoding;
- ``report``: the versioned JSON report, Prefect table artifacts and a PNG plot;
- ``gates``: gate policy and rules (non-inferiority, significant regression, per question type,
  language retention), default policies, ``GateDecision`` (markdown for reviewers);
- ``gate_statistics``: seeded (paired) bootstrap and the sample size a margin needs;
- ``contamination``: eval images vs training data (bytes, pixels, teacher embeddings), n-gram overlap;
- ``prefect_tasks``: thin ``@task`` wrappers used by flows.
"""
