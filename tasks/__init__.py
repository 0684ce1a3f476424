"""The platform's Prefect tasks, one module or package per concern (docs/architecture.md).

Importing any of them installs the log scrubbing of ``tasks.redact`` for the whole process, so no
log line of a flow, task, library or CLI command that uses the platform carries a credential.
"""

from tasks.redact import install_log_scrubbing

install_log_scrubbing()
