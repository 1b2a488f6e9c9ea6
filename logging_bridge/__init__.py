"""Payload logs to Cloud Logging (or local files) while jobs run, full logs to storage at job end,
and a prmon-like memory monitor. No Ray here: the pilot drives these from its own threads."""

from panray.logging_bridge.entries import ID_FIELDS, make_entry, panray_ids, severity_of
from panray.logging_bridge.memory import MemoryMonitor
from panray.logging_bridge.objectstore import (
    GCSObjectStore,
    LocalObjectStore,
    ObjectStore,
    attempt_prefix,
    make_object_store,
)
from panray.logging_bridge.sinks import (
    CloudLoggingSink,
    CloudSinkOptions,
    LocalSink,
    LogSink,
    fit_entry,
    make_sink,
)
from panray.logging_bridge.tailer import LogTailer

__all__ = [
    "ID_FIELDS",
    "CloudLoggingSink",
    "CloudSinkOptions",
    "GCSObjectStore",
    "LocalObjectStore",
    "LocalSink",
    "LogSink",
    "LogTailer",
    "MemoryMonitor",
    "ObjectStore",
    "attempt_prefix",
    "fit_entry",
    "make_entry",
    "make_object_store",
    "make_sink",
    "panray_ids",
    "severity_of",
]
