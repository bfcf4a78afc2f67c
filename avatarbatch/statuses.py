"""A job's status in the state file, as a value every layer can name.

It lives at the bottom so that `plan` (below the state layer) can tell done and failed jobs
apart by the enum itself; `state/records.py` defines the legal moves between these statuses,
and everything that names them can import them from `avatarbatch.state.store` as well.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    PENDING = "pending"  #: known, nothing under way (new, changed, or reset for a retry)
    UPLOADING = "uploading"  #: local inputs are being uploaded (free, cached by content hash)
    SUBMITTING = "submitting"  #: task UUID committed; the paid POST may or may not have landed
    PROCESSING = "processing"  #: Runware has the task; poll its task UUID
    DOWNLOADING = "downloading"  #: results and costs known; the files are being fetched
    DONE = "done"  #: every result downloaded and verified
    FAILED = "failed"  #: given up; error_code and error_message say why
