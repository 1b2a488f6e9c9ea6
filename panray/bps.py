"""Rubin BPS WMS plugin: ``bps submit/report/status/cancel/restart`` on panray.

Users set ``wmsServiceClass: panray.bps.PanrayService`` and nothing else. The plugin turns the
GenericWorkflow into one panray :class:`~panray.models.Workflow` (one job per GenericWorkflowJob,
groups expanded, NOOP nodes as no-op jobs that only order, ``pipetaskInit`` as the init job and
the bps final job as panray's always-run final job).

How bps reaches panray. bps builds the service with an empty config for report, status, cancel,
restart and ping, so the run id says where the workflow lives:

* ``<workflow id>@http(s)://host:port`` for a run submitted to a panray server (``PANRAY_URL``);
  the token comes from ``PANRAY_TOKEN`` or the token file in ``PANRAY_HOME``;
* ``<workflow id>@<PANRAY_HOME>`` when the state store is the default SQLite file in the home;
* ``<workflow id>@<db url without password>`` otherwise (the password comes from ``PANRAY_DB``);
* a plain ``<workflow id>`` or the submit directory (its ``panray_run.json``) also work. A submit
  directory is anyone's to write, so the server or Ray address its file names is used only if it
  is the one the user configured (``PANRAY_URL``, ``PANRAY_RAY_ADDRESS`` or the home's server).

Anything the id does not say (the Ray address, the password) comes from the ``PANRAY_*``
variables, as for every panray command.

When submit returns. With a ``panray serve`` running for ``PANRAY_HOME`` (or
``PANRAY_RAY_ADDRESS`` naming a cluster), ``bps submit`` submits and returns at once: the
workflow's manager is a detached actor that outlives the bps process. Without one panray runs
embedded: the cluster lives only as long as the ``bps submit`` process, so submit waits until
the workflow has ended (and ``bps restart`` waits for the rerun).

Restart is in place (``Panray.retry``): the same run id, the finished jobs stay finished, the
failed, pruned and cancelled ones run again with a fresh retry budget, then the final job.

State mapping (panray job status -> WmsStates): pending -> UNREADY (waits for parents: bps's own
meaning of UNREADY); defined -> READY; assigned, activated -> PENDING (queued at a site);
sent, starting, running -> RUNNING (a pilot holds the job and its slot from ``sent`` on);
finished -> SUCCEEDED; failed -> FAILED; closed -> PRUNED; cancelled -> DELETED.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from lsst.ctrl.bps import (
    BaseWmsService,
    BaseWmsWorkflow,
    BpsConfig,
    GenericWorkflow,
    GenericWorkflowGroup,
    GenericWorkflowJob,
    GenericWorkflowNodeType,
    WmsJobReport,
    WmsRunReport,
    WmsStates,
)

from panray.api import Panray
from panray.config import Settings
from panray.exceptions import NotFoundError, PanrayError
from panray.models import Job, Workflow
from panray.orphans import cancel_orphan, driven
from panray.placement import place
from panray.serve import persistent, server_info
from panray.sites import SiteCatalog, load_catalog
from panray.statuses import JobStatus, WorkflowStatus
from panray.store import store_exists
from panray.store.base import JobRow, WorkflowRow

__all__ = ["PanrayService", "PanrayWorkflow", "RunRef", "job_state", "run_state"]

log = logging.getLogger(__name__)

INIT_NAME = "pipetaskInit"
RUN_FILE = "panray_run.json"
WORKFLOW_FILE = "panray_workflow.json"
FINAL_SCRIPT = "final_job.bash"  #: the script bps writes for its final job (``lsst.ctrl.bps.transform``)
#: Exit code reported for a failure without one (lost pilot, pruned by the system).
NO_EXIT_CODE = -1

_JOB_STATES: dict[str, WmsStates] = {
    JobStatus.PENDING.value: WmsStates.UNREADY,
    JobStatus.DEFINED.value: WmsStates.READY,
    JobStatus.ASSIGNED.value: WmsStates.PENDING,
    JobStatus.ACTIVATED.value: WmsStates.PENDING,
    JobStatus.SENT.value: WmsStates.RUNNING,
    JobStatus.STARTING.value: WmsStates.RUNNING,
    JobStatus.RUNNING.value: WmsStates.RUNNING,
    JobStatus.FINISHED.value: WmsStates.SUCCEEDED,
    JobStatus.FAILED.value: WmsStates.FAILED,
    JobStatus.CLOSED.value: WmsStates.PRUNED,
    JobStatus.CANCELLED.value: WmsStates.DELETED,
}
#: What ``restart`` reruns (the final job reruns after them).
_RERUN = frozenset({JobStatus.FAILED.value, JobStatus.CLOSED.value, JobStatus.CANCELLED.value})

_RUN_STATES: dict[str, WmsStates] = {
    WorkflowStatus.NEW.value: WmsStates.PENDING,
    WorkflowStatus.TRANSFORMING.value: WmsStates.RUNNING,
    WorkflowStatus.FINISHED.value: WmsStates.SUCCEEDED,
    WorkflowStatus.SUBFINISHED.value: WmsStates.FAILED,  # bps calls a run with failed jobs failed
    WorkflowStatus.FAILED.value: WmsStates.FAILED,
    WorkflowStatus.CANCELLED.value: WmsStates.DELETED,
}


def job_state(status: str) -> WmsStates:
    """The WmsStates of a panray job status (see the module docstring)."""
    return _JOB_STATES.get(status, WmsStates.UNKNOWN)


def run_state(status: str) -> WmsStates:
    """The WmsStates of a panray workflow status; a partial success is FAILED, as on HTCondor."""
    return _RUN_STATES.get(status, WmsStates.UNKNOWN)


# -- where a run lives --------------------------------------------------------------------------


def _redact(url: str) -> str:
    """The URL without its password: run ids are printed and logged."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", "@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class RunRef:
    """A workflow id and the settings that reach its state store and cluster."""

    workflow_id: int
    settings: Settings
    url: str | None = None  #: the panray server the run was submitted to, if any

    @property
    def run_id(self) -> str:
        s = self.settings
        if self.url is not None:
            return f"{self.workflow_id}@{self.url}"
        if s.db_url is None:
            return f"{self.workflow_id}@{s.home}"
        return f"{self.workflow_id}@{_redact(s.db_url)}"

    @classmethod
    def parse(cls, wms_id: str | int, env: Mapping[str, str] | None = None) -> RunRef:
        """Accepts ``ID``, ``ID@URL``, ``ID@HOME``, ``ID@DB_URL`` or a submit directory; the rest from ``PANRAY_*``."""
        env = os.environ if env is None else env
        base = Settings.load(env=env)
        text = str(wms_id).strip()
        run_file = Path(text) / RUN_FILE
        if not text.isdigit() and run_file.is_file():
            info = json.loads(run_file.read_text())
            ref = cls.parse(info["run_id"], env)
            _check_trusted(run_file, ref, info.get("ray_address"), base, env)
            if ref.settings.ray_address is None and info.get("ray_address"):
                ref = cls(ref.workflow_id, ref.settings.model_copy(update={"ray_address": info["ray_address"]}))
            return ref
        wf_id, _, where = text.partition("@")
        if not wf_id.isdigit():
            raise PanrayError(f"not a panray run id: {text!r} (expected ID, ID@URL, ID@HOME, ID@DB_URL or a submit dir)")
        if where.startswith(("http://", "https://")):
            return cls(int(wf_id), base, where.rstrip("/"))
        if not where:
            return cls(int(wf_id), base, env.get("PANRAY_URL") or None)
        if "://" not in where:
            return cls(int(wf_id), base.model_copy(update={"home": Path(where), "db_url": None}))
        if base.db_url is not None and _redact(base.db_url) == where:
            return cls(int(wf_id), base)  # the environment names the same store, with its password
        return cls(int(wf_id), base.model_copy(update={"db_url": where}))


# -- GenericWorkflow -> panray Workflow ----------------------------------------------------------

_ENV = re.compile(r"<ENV:([^>]+)>")
_FILE = re.compile(r"<FILE:([^>]+)>")
_CMDVAL = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
#: cmdvals that name a path: a relative one is relative to where bps ran, like bps's own files.
PATH_CMDVALS = frozenset({"butlerConfig", "qgraphFile"})


class _Resolver:
    """Resolves bps command-line placeholders the way bps's shared-filesystem plugins do.

    ``{key}`` takes ``cmdvals[key]`` (other braces are left alone: they may be shell or data
    queries), ``<FILE:name>`` the file's full path (panray stages nothing: jobs see the submit
    directory), ``<ENV:X>`` becomes ``${X}`` so that the job's own environment decides.
    Values may hold placeholders themselves, hence the loop.

    Jobs run in their own work directories, so every relative path is made absolute once, against
    the directory bps ran in (``base``), as bps itself built it: file URIs and executables
    (bps already joins a relative ``submitPath`` into them) and the repository paths in
    :data:`PATH_CMDVALS`.
    """

    def __init__(self, gwf: GenericWorkflow, base: Path):
        self.gwf = gwf
        self.base = base

    def _path(self, uri: str) -> str:
        if not uri or os.path.isabs(uri) or "://" in uri or "<" in uri or "{" in uri or "$" in uri:
            return uri
        return str(self.base / uri)

    def literal_paths(self, line: str, paths: Iterable[str]) -> str:
        """``line`` with each argument that is one of ``paths`` made absolute: bps writes the
        configured ``butlerConfig`` into the final job's arguments as is, not as ``{butlerConfig}``."""
        relative = {p for p in paths if self._path(p) != p}
        if not relative:
            return line
        return " ".join(self._path(arg) if arg in relative else arg for arg in line.split(" "))

    def cmdvals(self, job: GenericWorkflowJob) -> dict[str, Any]:
        values = dict(job.cmdvals)
        for key in PATH_CMDVALS.intersection(values):
            values[key] = self._path(str(values[key]))
        return values

    def file(self, container: GenericWorkflow, name: str) -> str:
        for graph in (container, self.gwf):
            try:
                f = graph.get_file(name)
            except KeyError:
                continue
            return self._path(f.src_uri or name)
        raise PanrayError(f"command line names <FILE:{name}> but the workflow has no such file")

    def text(self, text: str, cmdvals: dict[str, Any], container: GenericWorkflow) -> str:
        for _ in range(10):
            before = text
            text = _CMDVAL.sub(lambda m: str(cmdvals[m[1]]) if m[1] in cmdvals else m[0], text)
            text = _FILE.sub(lambda m: self.file(container, m[1]), text)
            text = _ENV.sub(r"${\1}", text)
            if text == before:
                return text
        raise PanrayError(f"placeholders do not resolve (cycle?): {text!r}")

    def command(self, job: GenericWorkflowJob, container: GenericWorkflow) -> str:
        if job.executable is None:
            raise PanrayError(f"bps job {job.name!r} has no executable")
        exe = self._path(job.executable.src_uri or job.executable.name)
        line = f"{exe} {job.arguments}" if job.arguments else exe
        line = self.text(line, self.cmdvals(job), container)
        exports = self.exports(job, container)
        return f"{exports}{line}" if exports else line

    def exports(self, job: GenericWorkflowJob, container: GenericWorkflow) -> str:
        """``export`` lines for environment values with placeholders (evaluated in the job)."""
        out = []
        for key, value in job.environment.items():
            text = str(value)
            if _ENV.search(text) or _FILE.search(text) or _CMDVAL.search(text):
                resolved = self.text(text, self.cmdvals(job), container)
                quoted = re.sub(r'(["\\`])', r"\\\1", resolved)
                out.append(f'export {key}="{quoted}"\n')
        return "".join(out)

    @staticmethod
    def literal_env(job: GenericWorkflowJob) -> dict[str, str]:
        return {k: str(v) for k, v in job.environment.items()
                if not (_ENV.search(str(v)) or _FILE.search(str(v)) or _CMDVAL.search(str(v)))}


def _flatten(graph: GenericWorkflow) -> tuple[list[tuple[Any, GenericWorkflow]], list[tuple[str, str]]]:
    """Leaf nodes (payload and NOOP) with their containing graph, and parent->child edges.

    A GROUP node is replaced by its inner graph: its parents point at the group's sources, the
    group's sinks at its children. panray prunes the descendants of any failed job, so a group
    behaves as a blocking one (see ``PanrayService`` for what non-blocking groups need).
    """
    nodes: list[tuple[Any, GenericWorkflow]] = []
    edges: list[tuple[str, str]] = []
    ends: dict[str, tuple[list[str], list[str]]] = {}
    for name in graph:
        node = graph.get_job(name)
        if node.node_type == GenericWorkflowNodeType.GROUP:
            assert isinstance(node, GenericWorkflowGroup)
            inner_nodes, inner_edges = _flatten(node)
            nodes.extend(inner_nodes)
            edges.extend(inner_edges)
            srcs = [n for n in node if node.in_degree(n) == 0]
            sinks = [n for n in node if node.out_degree(n) == 0]
            ends[name] = (_leaves(node, srcs, "in_degree"), _leaves(node, sinks, "out_degree"))
        else:
            nodes.append((node, graph))
            ends[name] = ([name], [name])
    for u, v in graph.edges():
        edges.extend((p, c) for p in ends[u][1] for c in ends[v][0])
    return nodes, edges


def _leaves(group: GenericWorkflow, names: Iterable[str], degree: str) -> list[str]:
    """Leaf jobs that a group's sources (``degree="in_degree"``) or sinks (``"out_degree"``)
    expand to; a source or sink may itself be a group."""
    out: list[str] = []
    for n in names:
        node = group.get_job(n)
        if node.node_type == GenericWorkflowNodeType.GROUP:
            out.extend(_leaves(node, [m for m in node if getattr(node, degree)(m) == 0], degree))
        else:
            out.append(n)
    return out


def _priority(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0


def _retry_unless_exit(value: int | list[int] | None) -> list[int] | None:
    if value is None:
        return None
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def _jsonable(tags: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(tags, default=str))


def _rewrite_final_script(config: BpsConfig, final: GenericWorkflowJob, cores: int) -> None:
    """bps writes its final job's script (``final_job.bash``, with ``-j {requestCpus}``) before the
    plugin clamps the job: write it again for the clamped cores, so the job starts no more worker
    processes than it asks cores for (``-j 16`` on a 2-core machine did not end within 200 s)."""
    from lsst.ctrl.bps.transform import create_final_command

    script = final.executable.src_uri if final.executable is not None else None
    if (not isinstance(config, BpsConfig) or not script or os.path.basename(script) != FINAL_SCRIPT
            or int(final.request_cpus or 1) == cores):
        return
    clamped = BpsConfig(config)
    clamped[".finalJob.requestCpus"] = cores
    create_final_command(clamped, os.path.dirname(script) or ".")


def _clamped_final(final_job: Job, catalog: SiteCatalog) -> Job:
    """bps's final job with its request shrunk to what its site (the home site) can take.

    Its request comes from bps's defaults (16 cores, 32768 MB), not from the pipeline: refusing
    the run for it would refuse most bps submissions, so it is clamped whatever the setting.
    """
    pinned = final_job.model_copy(update={"site": final_job.site or Workflow.model_fields["home_site"].default})
    [placed] = place([pinned], catalog, workflow="bps final job", mode="clamp")
    return final_job.model_copy(update={"request_memory": placed.request_memory, "request_cpus": placed.request_cpus})


def convert(gwf: GenericWorkflow, *, base: Path | None = None, sites: Iterable[str] = (),
            owner: str | None = None, meta: dict[str, Any] | None = None,
            catalog: SiteCatalog | None = None, butler_config: str | None = None) -> Workflow:
    """The panray Workflow of a GenericWorkflow (see the module docstring).

    ``base`` is the directory relative paths are relative to: where bps runs (the default); with a
    ``catalog`` the final job's request is clamped to its site's limits. ``butler_config`` is the
    submit config's ``butlerConfig``, which bps passes to the final job literally.
    """
    resolver = _Resolver(gwf, (base or Path.cwd()).absolute())
    known_sites = set(sites)
    nodes, edges = _flatten(gwf)
    parents: dict[str, list[str]] = {}
    for p, c in edges:
        parents.setdefault(c, []).append(p)

    def job(node: Any, container: GenericWorkflow, extra_tags: dict[str, Any] | None = None) -> Job:
        if node.node_type == GenericWorkflowNodeType.NOOP:
            return Job(name=node.name, label=node.label, command=None, parents=parents.get(node.name, []),
                       request_memory=1, tags={"bps_node": "noop"})
        g: GenericWorkflowJob = node
        site = g.compute_site if g.compute_site in known_sites else None
        if g.compute_site and site is None:
            log.info("job %s: computeSite %r is not a panray site; brokerage chooses", g.name, g.compute_site)
        fields: dict[str, Any] = {
            "name": g.name, "label": g.label, "command": resolver.command(g, container),
            "parents": parents.get(g.name, []), "environment": resolver.literal_env(g),
            "request_memory": int(g.request_memory or 2048), "request_cpus": int(g.request_cpus or 1),
            "max_attempts": int(g.number_of_retries or 0) + 1, "site": site, "queue": g.queue,
            "priority": _priority(g.priority),
            "tags": _jsonable({**g.tags, "quanta_counts": dict(g.quanta_counts), **(extra_tags or {})}),
        }
        if g.memory_multiplier and g.memory_multiplier > 1:
            fields["memory_multiplier"] = float(g.memory_multiplier)
        if g.request_memory_max:
            fields["request_memory_max"] = int(g.request_memory_max)
        codes = _retry_unless_exit(g.retry_unless_exit)
        if codes is not None:
            fields["retry_unless_exit"] = codes
        return Job(**fields)

    init = next(((n, c) for n, c in nodes if n.name == INIT_NAME), None)
    ordered = ([init] if init else []) + [x for x in nodes if x[0].name != INIT_NAME]
    # bps metadata rides on the workflow's first job (idx 0): panray workflows have no free fields
    converted = [job(n, c, {"bps": meta} if meta and i == 0 else None) for i, (n, c) in enumerate(ordered)]
    init_job = converted.pop(0) if init else None
    jobs = converted
    final = gwf.get_final()
    if final is not None and not isinstance(final, GenericWorkflowJob):
        raise PanrayError("a final GenericWorkflow (several final jobs) is not supported; use one final job")
    final_job = job(final, gwf) if final is not None else None
    if final_job is not None and butler_config and isinstance(final_job.command, str):
        final_job = final_job.model_copy(
            update={"command": resolver.literal_paths(final_job.command, [butler_config])})
    if final_job is not None and catalog is not None:
        final_job = _clamped_final(final_job, catalog)
    return Workflow(name=gwf.name, jobs=jobs, init_job=init_job, final_job=final_job,
                    **({"owner": owner} if owner else {}))


# -- the plugin ----------------------------------------------------------------------------------


class PanrayWorkflow(BaseWmsWorkflow):
    """A GenericWorkflow converted to a panray Workflow, written to the submit directory."""

    def __init__(self, name: str, config: BpsConfig):
        super().__init__(name, config)
        self.workflow: Workflow | None = None
        self.run_ref: RunRef | None = None

    @classmethod
    def from_generic_workflow(cls, config: BpsConfig, generic_workflow: GenericWorkflow, out_prefix: str | None,
                              service_class: str) -> PanrayWorkflow:
        wf = cls(generic_workflow.name, config)
        wf.service_class = service_class
        wf.submit_path = out_prefix
        settings = Settings.load()
        meta = {key: str(config[key]) for key in ("project", "campaign", "payloadName", "operator")
                if key in config}
        if out_prefix:
            meta["path"] = str(out_prefix)
        catalog = load_catalog(settings.sites_file)
        found, butler_config = config.search("butlerConfig") if isinstance(config, BpsConfig) else (False, None)
        wf.workflow = convert(generic_workflow, sites=catalog.names(), meta=meta, catalog=catalog,
                              butler_config=str(butler_config) if found else None)
        final = generic_workflow.get_final()
        if isinstance(final, GenericWorkflowJob) and wf.workflow.final_job is not None:
            _rewrite_final_script(config, final, wf.workflow.final_job.request_cpus)
        return wf

    def write(self, out_prefix: str) -> None:
        """Saves the panray workflow next to bps's own submit files, to see what was submitted."""
        assert self.workflow is not None
        path = Path(out_prefix)
        path.mkdir(parents=True, exist_ok=True)
        (path / WORKFLOW_FILE).write_text(self.workflow.model_dump_json(indent=1))


def _check_trusted(run_file: Path, ref: RunRef, ray_address: str | None, base: Settings,
                   env: Mapping[str, str]) -> None:
    """Refuse a run file that would send this user (and their token) to a server, cluster or store
    they did not configure: anyone who can write the submit directory can write the file."""
    from panray.serve import server_info

    home, url = server_info(base) or {}, ref.url
    if url is None and _redact(ref.settings.resolved_db_url) != _redact(base.resolved_db_url):
        raise PanrayError(f"{run_file} names the state store {_redact(ref.settings.resolved_db_url)}, which is not "
                          f"your configured one ({_redact(base.resolved_db_url)}); give the run id instead")
    if url is not None and url not in {env.get("PANRAY_URL", "").rstrip("/"), home.get("url")}:
        raise PanrayError(f"{run_file} names the server {url}, which is not your configured server "
                          f"(PANRAY_URL={env.get('PANRAY_URL') or 'unset'}); give the run id instead")
    if ray_address and base.ray_address is None and ray_address != home.get("address"):
        raise PanrayError(f"{run_file} names the Ray cluster {ray_address}, which is not your configured one "
                          "(PANRAY_RAY_ADDRESS unset, no panray server in PANRAY_HOME); give the run id instead")


def _write_run_file(submit_path: str | None, ref: RunRef) -> None:
    if not submit_path:
        return
    info = {"run_id": ref.run_id, "workflow_id": ref.workflow_id, "home": str(ref.settings.home),
            "db_url": _redact(ref.settings.resolved_db_url), "ray_address": ref.settings.ray_address}
    (Path(submit_path) / RUN_FILE).write_text(json.dumps(info, indent=1))


class PanrayService(BaseWmsService):
    """bps's entry point to panray (``wmsServiceClass: panray.bps.PanrayService``).

    Groups run as blocking groups (panray prunes the descendants of any failed job).
    """

    def _open(self, settings: Settings | None = None, url: str | None = None) -> Panray:
        return Panray(settings or Settings.load(), url=url)

    def _open_ref(self, ref: RunRef) -> Panray:
        return self._open(ref.settings, ref.url)

    def _open_existing(self, ref: RunRef) -> Panray:
        """The panray of a run to read or act on: a missing local store is an error, never created."""
        if ref.url is None and not store_exists(ref.settings.resolved_db_url):
            raise NotFoundError(f"no panray store at {_redact(ref.settings.resolved_db_url)}")
        return self._open_ref(ref)

    # -- submit --------------------------------------------------------------------------------

    def prepare(self, config: BpsConfig, generic_workflow: GenericWorkflow,
                out_prefix: str | None = None) -> PanrayWorkflow:
        fqn = f"{type(self).__module__}.{type(self).__qualname__}"
        wf = PanrayWorkflow.from_generic_workflow(config, generic_workflow, out_prefix, fqn)
        if out_prefix:
            wf.write(out_prefix)
        return wf

    def submit(self, workflow: PanrayWorkflow, **kwargs: Any) -> None:
        """Submit; returns at once on a persistent cluster, waits on an embedded one.

        An embedded submit says its run id at once and shows progress while it waits; if it is
        interrupted, the run stops with its cluster and says how to resume or cancel it.
        """
        assert workflow.workflow is not None
        settings, url = Settings.load(), os.environ.get("PANRAY_URL") or None
        with self._open(settings, url) as pr:
            [wf_id] = pr.submit(workflow.workflow)
            ref = RunRef(wf_id, settings, url)
            workflow.run_id = ref.run_id
            workflow.run_ref = ref
            _write_run_file(workflow.submit_path, ref)
            if url is not None or persistent(settings):
                return
            print(f"panray run {ref.run_id}: no panray server, running on an embedded cluster until it ends "
                  "(`panray serve` first makes bps submit return at once)", file=sys.stderr, flush=True)
            try:
                pr.wait([wf_id], progress=True)  # a redrawn line on a terminal, else one every few seconds
            except KeyboardInterrupt:
                print(f"\ninterrupted: run {ref.run_id} stopped with its embedded cluster; "
                      f"`bps restart --id {ref.run_id}` runs it again, `bps cancel --id {ref.run_id}` cancels it",
                      file=sys.stderr, flush=True)
                raise

    def restart(self, wms_workflow_id: str) -> tuple[str | None, str | None, str]:
        """Rerun the failed, pruned and cancelled jobs of an ended run in place, then its final job.

        A run whose embedded submit was interrupted (nothing drives it) goes on where it stopped.
        """
        try:
            ref = RunRef.parse(wms_workflow_id)
            pr = self._open_existing(ref)
        except PanrayError as exc:
            return None, None, str(exc)
        with pr:
            try:
                row = pr.status(ref.workflow_id)[0]
                if _orphan(pr, ref):
                    pr.resume([ref.workflow_id])  # the interrupted run goes on where it stopped
                elif not pr.jobs(ref.workflow_id, status=list(_RERUN)):
                    return None, None, f"run {ref.run_id}: every job finished, nothing to restart"
                else:
                    pr.retry(ref.workflow_id)
            except (PanrayError, NotFoundError) as exc:
                return None, None, str(exc)
            if ref.url is None and not persistent(ref.settings):
                pr.wait([ref.workflow_id])
        return ref.run_id, row.name, ""

    # -- follow --------------------------------------------------------------------------------

    def list_submitted_jobs(self, wms_id: str | None = None, user: str | None = None, require_bps: bool = True,
                            pass_thru: str | None = None, is_global: bool = False) -> list[str]:
        """Run ids of the active runs (the ones cancel can act on)."""
        if wms_id is not None:
            ref = RunRef.parse(wms_id)
            if ref.url is None and not store_exists(ref.settings.resolved_db_url):
                return []
            with self._open_ref(ref) as pr:
                rows = [w.workflow_id for w in pr.workflows(active_only=True) if w.workflow_id == ref.workflow_id]
            return [RunRef(i, ref.settings, ref.url).run_id for i in rows]
        settings, url = Settings.load(), os.environ.get("PANRAY_URL") or None
        if url is None and not store_exists(settings.resolved_db_url):
            return []
        with self._open(settings, url) as pr:
            return [RunRef(w.workflow_id, settings, url).run_id for w in pr.workflows(active_only=True)
                    if user is None or w.owner == user]

    def report(self, wms_workflow_id: str | None = None, user: str | None = None, hist: float = 0,
               pass_thru: str | None = None, is_global: bool = False,
               return_exit_codes: bool = False) -> tuple[list[WmsRunReport], str]:
        if wms_workflow_id is not None:
            try:
                ref = RunRef.parse(wms_workflow_id)
                with self._open_existing(ref) as pr:
                    rows = [w for w in pr.workflows() if w.workflow_id == ref.workflow_id]
                    if not rows:
                        return [], f"no panray run {ref.run_id}"
                    orphan = _orphan(pr, ref)
                    if orphan:
                        message = _orphan_message(ref)
                    else:
                        message = "" if pr.is_final(ref.workflow_id) else _waiting_message(pr, ref)
                    return [_run_report(pr, rows[0], ref, detailed=True, orphan=orphan)], message
            except (PanrayError, NotFoundError) as exc:
                return [], str(exc)
        settings, url = Settings.load(), os.environ.get("PANRAY_URL") or None
        since = time.time() - hist * 86400
        if url is None and not store_exists(settings.resolved_db_url):
            return [], f"no panray store at {_redact(settings.resolved_db_url)}"
        with self._open(settings, url) as pr:
            rows = [w for w in pr.workflows()
                    if (user is None or w.owner == user) and (w.ended is None or w.ended >= since)]
            return [_run_report(pr, w, RunRef(w.workflow_id, settings, url), detailed=False) for w in rows], ""

    def get_status(self, wms_workflow_id: str, hist: float = 1, is_global: bool = False) -> tuple[WmsStates, str]:
        try:
            ref = RunRef.parse(wms_workflow_id)
            with self._open_existing(ref) as pr:
                if _orphan(pr, ref):
                    return WmsStates.HELD, _orphan_message(ref)
                state = run_state(pr.status(ref.workflow_id)[0].status)
                return state, _waiting_message(pr, ref) if state in (WmsStates.RUNNING, WmsStates.PENDING) else ""
        except (PanrayError, NotFoundError) as exc:
            return WmsStates.UNKNOWN, str(exc)

    def cancel(self, wms_id: str, pass_thru: str | None = None) -> tuple[bool, str]:
        """Kills running payloads through the workflow's manager; a run nobody drives is cancelled in
        the store alone, without looking for a cluster (which costs seconds of imports)."""
        try:
            ref = RunRef.parse(wms_id)
            with self._open_existing(ref) as pr:
                if pr.is_final(ref.workflow_id):
                    return False, f"run {ref.run_id} has already ended"
                if ref.url is None and not driven(ref.settings):
                    n = cancel_orphan(pr.store, ref.workflow_id)
                    return True, (f"run {ref.run_id} had no panray driving it (its embedded submit ended); "
                                  f"{n} jobs marked cancelled")
                if pr.cancel(ref.workflow_id):
                    return True, ""
                where = ref.settings.ray_address or f"the panray server of {ref.settings.home}"
                return False, (f"run {ref.run_id} marked cancelled, but its manager did not answer on {where}; "
                               "it is cancelled when the manager runs again")
        except (PanrayError, NotFoundError) as exc:
            return False, str(exc)

    def ping(self, pass_thru: str | None = None) -> tuple[int, str]:
        """The store (or the server of ``PANRAY_URL``) answers, and so does the cluster a submit would use.

        A local store that does not exist yet is no failure (the first submit creates it) and is
        not created here.
        """
        settings, url = Settings.load(), os.environ.get("PANRAY_URL") or None
        server = None if url is not None else server_info(settings)
        try:
            if url is not None or store_exists(settings.resolved_db_url):
                with self._open(settings, url) as pr:
                    pr.workflows(active_only=True)
                    if url is None and (settings.ray_address is not None or server is not None):
                        pr.runtime  # noqa: B018 - joins the cluster and checks panray's actors
                store = _redact(settings.resolved_db_url)
            else:
                store = f"{_redact(settings.resolved_db_url)} (none yet: the first submit creates it)"
        except Exception as exc:  # any failure to reach panray is ping's answer, not a crash
            return 1, f"panray unreachable: {type(exc).__name__}: {exc}"
        if url is not None:
            return 0, f"panray server {url}"
        if settings.ray_address is not None:
            where = f"cluster {settings.ray_address} (PANRAY_RAY_ADDRESS)"
        elif server is not None:
            where = f"panray server pid {server['pid']} on {server['address']} (home {settings.home})"
        else:
            where = "embedded (no panray server in this home: submit waits for each run)"
        return 0, f"panray store {store}, {where}"


#: ``bps report`` and ``bps status`` look at this many ready jobs at most for one that waits for a site.
WAITING_LOOKED_AT = 20


def _waiting_message(pr: Panray, ref: RunRef) -> str:
    """Why a ready job waits: brokerage's last decision for it found no site that takes it now
    (offline, no live pilots, ...), as ``panray explain`` shows; empty when none waits so."""
    ready = pr.jobs(ref.workflow_id, status=[JobStatus.DEFINED.value], limit=WAITING_LOOKED_AT)
    for j in ready:
        decisions = pr.explain(j.job_id)
        last = decisions[-1] if decisions else None
        if last is not None and last.site is None and last.filtered:
            why = "; ".join(f"{site}: {reason}" for site, reason in last.filtered.items())
            return (f"run {ref.run_id}: job {j.name} waits for a site that can take it ({why}); "
                    f"ready jobs: {pr.status(ref.workflow_id)[0].jobs.get(JobStatus.DEFINED.value, 0)}")
    return ""


def _orphan(pr: Panray, ref: RunRef) -> bool:
    """The run has not ended and nothing drives it (see :mod:`panray.orphans`); a server's runs are its own."""
    return ref.url is None and not driven(ref.settings) and not pr.is_final(ref.workflow_id)


def _orphan_message(ref: RunRef) -> str:
    return (f"run {ref.run_id} is held: no panray drives it (its embedded submit ended); "
            f"`bps restart --id {ref.run_id}` runs it again, `bps cancel --id {ref.run_id}` cancels it")


def _run_report(pr: Panray, w: WorkflowRow, ref: RunRef, *, detailed: bool, orphan: bool = False) -> WmsRunReport:
    jobs: list[JobRow] = pr.jobs(w.workflow_id)
    meta = dict(json.loads(jobs[0].tags or "{}").get("bps", {})) if jobs else {}
    counts = dict.fromkeys(WmsStates, 0)
    summary: dict[str, dict[WmsStates, int]] = {}
    per_label: Counter[str] = Counter()
    codes: dict[str, list[int]] = {}
    reports = []
    for j in jobs:
        state = job_state(j.status)
        counts[state] += 1
        per_label[j.label] += 1
        summary.setdefault(j.label, dict.fromkeys(WmsStates, 0))[state] += 1
        if state == WmsStates.FAILED:
            codes.setdefault(j.label, []).append(j.exit_code if j.exit_code is not None else NO_EXIT_CODE)
        if detailed:
            reports.append(WmsJobReport(wms_id=str(j.job_id), name=j.name, label=j.label, state=state))
    return WmsRunReport(
        wms_id=ref.run_id, global_wms_id=ref.run_id, path=meta.get("path"), label=w.name, run=w.name,
        project=meta.get("project"), campaign=meta.get("campaign"), payload=meta.get("payloadName"),
        operator=meta.get("operator", w.owner),
        run_summary=";".join(f"{label}:{n}" for label, n in per_label.items()),
        state=WmsStates.HELD if orphan else run_state(w.status), jobs=reports if detailed else None,
        total_number_jobs=len(jobs),
        job_state_counts=counts, job_summary=summary,
        exit_code_summary={label: codes.get(label, []) for label in per_label},
    )
