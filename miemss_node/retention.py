"""Deletes studies older than the retention period, and never one whose results are undelivered."""

from __future__ import annotations

import logging
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from miemss_node.clock import utcnow
from miemss_node.queue import repository
from miemss_node.storage import StorageLayout

logger = logging.getLogger(__name__)


class Janitor:
    """Removes expired studies: database rows first, then their folders."""

    def __init__(self, sessions: sessionmaker[Session], storage_dir: Path, retention_days: float) -> None:
        self.sessions = sessions
        self.storage_dir = storage_dir
        self.retention_days = retention_days

    def run_once(self) -> int:
        """Delete up to one batch of expired studies; returns how many were deleted."""
        if self.retention_days <= 0:
            return 0
        cutoff = utcnow() - timedelta(days=self.retention_days)
        with self.sessions.begin() as session:
            studies = repository.studies_past_retention(session, cutoff=cutoff)
            uids = [study.study_instance_uid for study in studies]
            for study in studies:
                repository.delete_study(session, study)
        # Rows go first: a crash here leaves orphan files (harmless), never rows pointing at nothing.
        for uid in uids:
            for folder in StorageLayout(self.storage_dir).study_folders(uid):
                shutil.rmtree(folder, ignore_errors=True)
            logger.info("study %s deleted (retention)", uid, extra={"action": "retention.deleted", "study_uid": uid})
        return len(uids)
