"""Where an attempt's full logs land at job end: a local directory or a Google Cloud Storage bucket.

Keys are ``<workflow>/<task>/<job>.<attempt>/<file>`` (see :func:`attempt_prefix`); ``put`` returns
the URL the attempt record keeps.

Examples:
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "pilot.log"
    >>> _ = log.write_text("ok")
    >>> store = LocalObjectStore(log.parent / "store")
    >>> store.put(log, attempt_prefix("wf", "t1", "j7", 2) + "pilot.log").endswith("wf/t1/j7.2/pilot.log")
    True
    >>> store.list("wf/")
    ['wf/t1/j7.2/pilot.log']
"""

from __future__ import annotations

import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from panray.config import Settings

if TYPE_CHECKING:  # google-cloud-storage loads only for a gs:// store
    from google.auth.credentials import Credentials


def attempt_prefix(workflow_id: str, task_id: str, job_id: str, attempt: int) -> str:
    """``<workflow>/<task>/<job>.<attempt>/``: one folder per attempt, so retries never overwrite."""
    return f"{workflow_id}/{task_id}/{job_id}.{attempt}/"


def _checked_key(key: str) -> str:
    """Reject keys that would leave the store's root (absolute, ``..``) or name nothing."""
    parts = PurePosixPath(key).parts
    if not parts or key.startswith("/") or ".." in parts:
        raise ValueError(f"invalid object key {key!r}")
    return key


class ObjectStore(ABC):
    """Three calls: store a file under a key, list keys, read one back."""

    @abstractmethod
    def put(self, local_path: Path, key: str) -> str:
        """Copy ``local_path`` to ``key``; returns the object's URL."""

    def put_files(self, paths: list[Path], prefix: str) -> str | None:
        """Store each of ``paths`` under ``prefix`` + its name; the URL of that folder (None: no paths)."""
        url = None
        for path in paths:
            url = self.put(path, prefix + path.name)
        return url.rsplit("/", 1)[0] + "/" if url else None

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix``, sorted."""

    @abstractmethod
    def get(self, key: str) -> bytes:
        """The object's content."""


class LocalObjectStore(ObjectStore):
    """A directory tree; URLs are ``file://``."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def put(self, local_path: Path, key: str) -> str:
        target = self.root / _checked_key(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(local_path, target)
        return target.as_uri()

    def put_files(self, paths: list[Path], prefix: str) -> str | None:
        """One folder for all of an attempt's files, each hard-linked where the store shares the
        work directory's file system (no copy: a payload's end is on the pilot's hot path), else copied."""
        if not paths:
            return None
        folder = (self.root / _checked_key(prefix + paths[0].name)).parent
        folder.mkdir(parents=True, exist_ok=True)
        for path in paths:
            target = self.root / _checked_key(prefix + path.name)
            try:
                os.link(path, target)
            except OSError:  # another file system, or the key is taken (copied over, as put does)
                shutil.copyfile(path, target)
        return folder.as_uri() + "/"

    def list(self, prefix: str) -> list[str]:
        return sorted(key for path in self.root.rglob("*") if path.is_file()
                      and (key := path.relative_to(self.root).as_posix()).startswith(prefix))

    def get(self, key: str) -> bytes:
        return (self.root / _checked_key(key)).read_bytes()


class GCSObjectStore(ObjectStore):
    """A bucket (optionally under ``prefix``) through the real google-cloud-storage client.

    ``endpoint`` (an emulator) implies anonymous credentials; without it the deployment's default
    credentials are used. Keys given and listed are relative to ``prefix``; URLs are ``gs://``.
    """

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint: str | None = None,
        *,
        project: str = "panray-local",
        credentials: Credentials | None = None,
    ):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        if credentials is None and endpoint:
            credentials = AnonymousCredentials()
        self._client = storage.Client(
            project=project,
            credentials=credentials,
            client_options={"api_endpoint": endpoint} if endpoint else None,
        )
        self._bucket = self._client.bucket(bucket)
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""

    def put(self, local_path: Path, key: str) -> str:
        name = self.prefix + _checked_key(key)
        self._bucket.blob(name).upload_from_filename(str(local_path))
        return f"gs://{self._bucket.name}/{name}"

    def list(self, prefix: str) -> list[str]:
        blobs = self._client.list_blobs(self._bucket, prefix=self.prefix + prefix)
        return sorted(blob.name[len(self.prefix):] for blob in blobs)

    def get(self, key: str) -> bytes:
        return self._bucket.blob(self.prefix + _checked_key(key)).download_as_bytes()


def make_object_store(settings: Settings) -> ObjectStore:
    """``gs://bucket[/prefix]`` -> GCS (at ``storage_endpoint`` if set), anything else a directory."""
    location = settings.resolved_storage
    if location.startswith("gs://"):
        bucket, _, prefix = location.removeprefix("gs://").partition("/")
        return GCSObjectStore(bucket, prefix, endpoint=settings.storage_endpoint,
                              project=settings.gcp_project)
    return LocalObjectStore(Path(location))
