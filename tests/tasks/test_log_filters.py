"""Library hints stay out of the platform's logs; their warnings do not."""

from __future__ import annotations

import logging

from tasks.log_filters import CHATTY_LIBRARY_LOGGERS, is_job_log_chatter, quiet_library_chatter


def test_dvc_and_gx_hints_are_dropped_and_their_warnings_kept(caplog):
    quiet_library_chatter()
    quiet_library_chatter()  # idempotent
    # GX sets this logger to INFO itself when its module is imported, also after the call above.
    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.INFO)
    with caplog.at_level(logging.DEBUG):
        logging.getLogger("dvc.repo.init").info("You can now commit the changes to git.")
        logging.getLogger("great_expectations.data_context.types.base").info("Created temporary directory '/tmp/x'")
        logging.getLogger("great_expectations.data_context.types.base").warning("GX config problem")
        logging.getLogger("dvc.repo").warning("remote is unreachable")
    assert [record.getMessage() for record in caplog.records] == ["GX config problem", "remote is unreachable"]
    assert set(CHATTY_LIBRARY_LOGGERS) == {"dvc", "great_expectations"}


def test_job_log_chatter_is_launcher_banners_and_progress_bars_only():
    assert is_job_log_chatter("*****************************************")
    assert is_job_log_chatter("Setting OMP_NUM_THREADS environment variable for each process to be 1 in default")
    assert is_job_log_chatter("Writing model shards: 100%|██████████| 1/1 [00:00<00:00, 353.26it/s]")
    for line in ("[eve.progress] stage 2 step 3/10 (30.0%) loss 1.5000 | 9.0 samples/s | elapsed 3s | ETA 7s",
                 "[eve.train] stage 2 complete after 10 steps", "WARNING: loss is 100% higher | step 3/4 [x]"):
        assert not is_job_log_chatter(line)
