"""The monitor's views as HTML fragments: workflow list, workflow, jobs list, job, sites, search.

Every value from the store or a user passes through :func:`cell` (escaped) unless it is
:class:`Html` built here. Elements marked ``data-live`` are what the page's script swaps in
when it polls, so forms and scroll positions stay as the operator left them.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

from panray.exceptions import NotFoundError
from panray.monitor.charts import memory_svg
from panray.monitor.dag_view import dag_svg
from panray.monitor.reader import MonitorReader
from panray.monitor.svg import STATUS_COLOURS
from panray.statuses import FINAL_JOB_STATES, JobStatus, WorkflowStatus
from panray.store import ErrorGroupRow, JobQuery, JobRow, WorkflowQuery

ENDED = ("finished", "failed", "closed", "cancelled")
_FINAL = {s.value for s in FINAL_JOB_STATES}


class Html(str):
    """Markup built by this module: :func:`cell` leaves it as it is."""


def cell(value: object) -> Html:
    if isinstance(value, Html):
        return value
    return Html("" if value is None else escape(str(value)))


def tag(name: str, content: object = "", **attrs: object) -> Html:
    """``<name attrs>content</name>``; attribute values escaped, ``class_`` spelled ``class``."""
    parts = "".join(f' {k.rstrip("_").replace("_", "-")}="{escape(str(v))}"' for k, v in attrs.items()
                    if v is not None and v is not False)
    return Html(f"<{name}{parts}>{cell(content)}</{name}>")


def link(href: str, text: object, **attrs: object) -> Html:
    return tag("a", text, href=href, **attrs)


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], **attrs: object) -> Html:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in r) + "</tr>" for r in rows)
    return tag("table", Html(f"<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"), **attrs)


def when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else ""


def seconds(s: float | None) -> str:
    if s is None:
        return ""
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def progress(counts: Mapping[str, int]) -> Html:
    """A bar of the share of jobs in each status, with the percentage ended."""
    total = sum(counts.values())
    parts = "".join(
        f'<span class="seg" style="width:{100 * n / total:.2f}%;background:{c}" title="{s}: {n}"></span>'
        for s, c in STATUS_COLOURS.items() if (n := counts.get(s, 0)) and total)
    done = sum(counts.get(s, 0) for s in ENDED)
    pct = f"{100 * done / total:.0f}%" if total else "-"
    return Html(f'<span class="progress">{parts}</span> <span class="pct">{pct}</span>')


def counts_html(counts: Mapping[str, int], href: str | None = None) -> Html:
    """``status:n`` spans, each with ``data-status`` (tests and scripts read them), optionally links."""
    out = []
    for status in STATUS_COLOURS:
        n = counts.get(status, 0)
        if not n:
            continue
        text = tag("span", n, class_="n", data_status=status)
        label = Html(f"{escape(status)}:{text}")
        sep = "&" if "?" in (href or "") else "?"
        out.append(link(f"{href}{sep}status={status}", label, class_=f"st st-{status}") if href else
                   tag("span", label, class_=f"st st-{status}"))
    return Html(" ".join(out) or "-")


def pager(base: str, params: Mapping[str, object], offset: int, limit: int, total: int,
          keys: tuple[int, int] | None = None, exact: bool = True) -> Html:
    """Previous/next links and the shown range; with ``keys`` (first and last idx shown) the
    links page by key (``before``/``after``), carrying the offset only for the range shown.
    ``exact`` False: at least ``total`` match."""
    keep = {k: v for k, v in params.items() if v not in (None, "", (), [])}

    def at(o: int, **key: int) -> str:
        return base + "?" + urlencode({**keep, "offset": o, **key}, doseq=True)

    parts = [f"rows {offset + 1 if total else 0}-{min(offset + limit, total)} of {'' if exact else 'more than '}{total}"]
    if offset > 0:
        back = max(offset - limit, 0)
        href = at(back, before=keys[0]) if keys and back else at(back)
        parts.insert(0, link(href, "previous", class_="prev"))
    if offset + limit < total or not exact:
        parts.append(link(at(offset + limit, **({"after": keys[1]} if keys else {})), "next", class_="next"))
    return tag("p", Html(" ".join(cell(p) for p in parts)), class_="pager")


def action_button(text: str, action: Mapping[str, Any]) -> Html:
    return tag("button", text, type="button", class_="act", data_act=json.dumps(dict(action)))


# -- views ---------------------------------------------------------------------------------------


def workflow_list(reader: MonitorReader, prefix: str, query: WorkflowQuery, age_days: float | None) -> Html:
    rows, total = reader.find_workflows(query)
    ids = [w.workflow_id for w in rows]
    jobs, tasks = reader.workflow_job_counts(ids), reader.workflow_task_counts(ids)
    statuses = "".join(tag("option", s.value, value=s.value, selected=query.status == s.value) for s in WorkflowStatus)
    form = Html(
        f'<form class="filters" method="get" action="{prefix}/">'
        f'owner <input name="owner" value="{escape(query.owner or "")}" size="10"> '
        f'status <select name="status"><option value="">any</option>{statuses}</select> '
        f'name <input name="name" value="{escape(query.name or "")}" size="14"> '
        f'created within <input name="age_days" value="{"" if age_days is None else age_days:}" size="4"> days '
        '<button>filter</button></form>')
    body = table(
        ["id", "name", "owner", "status", "created", "progress", "jobs by status", "tasks by status", "jobs"],
        [(link(f"{prefix}/workflows/{w.workflow_id}", w.workflow_id), link(f"{prefix}/workflows/{w.workflow_id}", w.name),
          w.owner, tag("span", w.status, class_="wf-status"), when(w.created), progress(jobs[w.workflow_id]),
          counts_html(jobs[w.workflow_id]),
          " ".join(f"{s}:{n}" for s, n in sorted(tasks[w.workflow_id].items())) or "-", sum(jobs[w.workflow_id].values()))
         for w in rows], class_="workflows")
    params = {"owner": query.owner, "status": query.status, "name": query.name, "age_days": age_days}
    live = tag("div", Html(body + pager(f"{prefix}/", params, query.offset, query.limit, total)),
               id="workflow-list", data_live="1")
    return Html(tag("h1", "Workflows") + form + live)


def workflow_page(reader: MonitorReader, prefix: str, workflow_id: int) -> Html:
    wf = reader.workflow(workflow_id)
    tasks = reader.tasks(workflow_id)
    stats = reader.task_stats(workflow_id)
    pss = reader.task_max_pss(workflow_id)
    per_task: dict[int, dict[str, int]] = {}
    mem: dict[int, int] = {}
    wall: dict[int, float] = {}
    for r in stats:
        per_task.setdefault(r.task_id, {})[r.status] = r.n
        mem[r.task_id] = max(mem.get(r.task_id, 0), r.max_request_memory)
        wall[r.task_id] = wall.get(r.task_id, 0.0) + r.wall_seconds
    jobs_url = f"{prefix}/workflows/{workflow_id}/jobs"
    total: dict[str, int] = {}
    by_label: dict[str, dict[str, int]] = {}
    task_rows = []
    running = {t for t, c in per_task.items() if any(s not in _FINAL for s in c)}  #: tasks with jobs to cancel
    for t in tasks:
        c = per_task.get(t.task_id, {})
        for s, n in c.items():
            total[s] = total.get(s, 0) + n
            by_label.setdefault(t.label, {})[s] = by_label.get(t.label, {}).get(s, 0) + n
        ended = c.get("finished", 0) + c.get("failed", 0)
        rate = f"{100 * c.get('failed', 0) / ended:.1f}%" if ended else "-"
        max_pss = pss.get(t.task_id)
        task_rows.append((
            t.task_id, link(f"{jobs_url}?task={t.task_id}", t.label), t.chunk, t.status, progress(c),
            counts_html(c, f"{jobs_url}?task={t.task_id}"), rate, mem.get(t.task_id, ""),
            "" if max_pss is None else f"{max_pss / 1024:.0f}", seconds(wall.get(t.task_id)),
            seconds(wall.get(t.task_id, 0.0) / ended) if ended else "",
            cancel_task(workflow_id, t.task_id) if t.task_id in running else "",
        ))
    head = tag("h1", f"Workflow {wf.workflow_id}: {wf.name}")
    summary = tag("div", Html(
        f"owner {escape(wf.owner)} · status {tag('span', wf.status, class_='wf-status')} · created {when(wf.created)}"
        + (f" · ended {when(wf.ended)}" if wf.ended else "") + f" · {sum(total.values())} jobs<br>"
        + progress(total) + " " + counts_html(total, jobs_url)
        + " · " + link(jobs_url, "all jobs")), id="wf-summary", data_live="1", class_="summary")
    task_table = tag("div", table(
        ["task", "label", "chunk", "status", "progress", "jobs by status", "failure rate", "request MB (max)",
         "max PSS MB", "wall time (sum)", "mean per ended job", ""], task_rows, class_="tasks"), id="tasks", data_live="1")
    dag = tag("div", Html(dag_svg(reader.label_edges(workflow_id), by_label,
                                  lambda label: f"{jobs_url}?{urlencode({'label': label})}")), id="dag", data_live="1")
    return Html(head + summary + tag("div", "", id="act-result", class_="act-result", role="status")
                + tag("h2", "Tasks") + task_table + tag("h2", "Label graph") + dag
                + tag("h2", "Errors") + error_summary(reader, prefix, wf.workflow_id, wf.status,
                                                      {t.task_id: t.label for t in tasks}, running, mem))


ERROR_ROWS = 50  #: groups an error summary shows (largest first), so the page stays light


def cancel_task(workflow_id: int, task_id: int) -> Html:
    return action_button("cancel task", {"action": "cancel_task", "workflow_id": workflow_id, "task_id": task_id})


def retry_group(workflow_id: int, g: ErrorGroupRow, memory: int | None) -> Html:
    """*retry these* (the failed jobs the row links to) and, when the task's request is known, *retry with
    2x memory*: both rerun now, while the workflow runs or after it ended."""
    act = {"action": "retry_jobs", "workflow_id": workflow_id, "task_id": g.task_id, "error_class": g.error_class,
           "exit_code": g.exit_code}
    more = action_button(f"retry with {2 * memory} MB", {**act, "memory": 2 * memory}) if memory else Html("")
    return Html(action_button("retry these", act) + " " + more)


def error_summary(reader: MonitorReader, prefix: str, workflow_id: int, status: str, labels: Mapping[int, str],
                  running: set[int], memory: Mapping[int, int]) -> Html:
    """Failed attempts by task and cause (the store keeps them grouped by normalised message), largest
    first; each links to its failed jobs, offers to retry exactly those (optionally with twice the task's
    memory request) and *cancel task* while the task has jobs to cancel. *retry failed jobs* reruns all
    of them once the workflow ended."""
    groups = reader.error_groups(workflow_id, limit=ERROR_ROWS + 1)
    more = len(groups) > ERROR_ROWS
    groups = groups[:ERROR_ROWS]
    ended = status in {s.value for s in (WorkflowStatus.FINISHED, WorkflowStatus.SUBFINISHED, WorkflowStatus.FAILED,
                                         WorkflowStatus.CANCELLED)}
    jobs_url = f"{prefix}/workflows/{workflow_id}/jobs"
    rows = []
    for g in groups:
        filters = {"status": "failed", "task": g.task_id, "exit_code": "" if g.exit_code is None else g.exit_code,
                   "error_class": g.error_class or ""}
        rows.append((link(f"{jobs_url}?task={g.task_id}", labels.get(g.task_id, g.task_id)), g.error_class, g.exit_code,
                     tag("span", g.cause, class_="message", title=g.example_diag or ""),
                     link(f"{jobs_url}?{urlencode(filters)}", g.attempts),
                     link(f"{prefix}/jobs/{g.example_job_id}", g.example_job_id, class_="example"),
                     Html(retry_group(workflow_id, g, memory.get(g.task_id))
                          + (cancel_task(workflow_id, g.task_id) if g.task_id in running else ""))))
    retry = action_button("retry failed jobs", {"action": "retry", "workflow_id": workflow_id}) if ended and groups \
        else Html("")
    note = "" if ended or not groups else tag("p", "retry of all failed jobs is offered once the workflow has "
                                              "ended; a group's jobs can be retried now", class_="note")
    if more:
        note = Html(tag("p", f"the {ERROR_ROWS} largest groups are shown", class_="note") + cell(note))
    return tag("div", Html(table(["task", "error class", "exit code", "message (normalised)", "failed attempts",
                                  "example job", ""], rows, class_="errors") + retry + cell(note)),
               id="errors", data_live="1")


JOB_COLUMNS = ["job", "attempt", "label", "name", "status", "site", "created", "time to start", "duration",
               "max PSS/core GB", "exit", "error", "diagnostics"]


def _job_cells(prefix: str, j: JobRow, created: float, pss: Mapping[int, int]) -> tuple[object, ...]:
    start = j.start_time
    kb = pss.get(j.job_id)
    per_core = "" if kb is None else f"{kb / 2**20 / max(j.request_cpus, 1):.3f}"
    duration = (j.end_time or time.time()) - start if start else None
    return (link(f"{prefix}/jobs/{j.job_id}", j.job_id), f"{j.attempt_nr} of {j.max_attempts}", j.label, j.name,
            tag("span", j.status, class_=f"st st-{j.status}"), j.site, when(created),
            seconds(start - created) if start else "", seconds(duration), per_core, j.exit_code, j.error_class,
            (j.diag or "")[:160])


def jobs_page(reader: MonitorReader, prefix: str, workflow_id: int, query: JobQuery) -> Html:
    wf = reader.workflow(workflow_id)
    page = reader.job_page(workflow_id, query)
    pss = reader.jobs_max_pss([j.job_id for j in page.rows])
    base = f"{prefix}/workflows/{workflow_id}/jobs"
    options = "".join(tag("option", s.value, value=s.value, selected=s.value in query.status) for s in JobStatus)
    form = Html(
        f'<form class="filters" method="get" action="{base}">'
        f'status <select name="status"><option value="">any</option>{options}</select> '
        + "".join(f'{escape(k)} <input name="{k}" value="{escape(str(v) if v is not None else "")}" size="9"> '
                  for k, v in (("label", query.label), ("site", query.site), ("error_class", query.error_class),
                               ("exit_code", query.exit_code), ("name", query.name)))
        + (f'<input type="hidden" name="task" value="{query.task_id}">' if query.task_id is not None else "")
        + '<select name="sort"><option value="idx">in order</option>'
        + f'<option value="-duration"{" selected" if query.sort == "-duration" else ""}>longest first</option></select>'
        + " <button>filter</button></form>")
    params = {"status": list(query.status), "label": query.label, "site": query.site,
              "error_class": query.error_class, "exit_code": query.exit_code, "task": query.task_id,
              "name": query.name, "sort": query.sort if query.sort != "idx" else None}
    body = table(JOB_COLUMNS, [_job_cells(prefix, j, c, pss) for j, c in zip(page.rows, page.created)],
                 class_="jobs")
    keys = (page.rows[0].idx, page.rows[-1].idx) if page.rows and query.sort == "idx" else None
    live = tag("div", Html(pager(base, params, query.offset, query.limit, page.total, keys, page.exact) + body), id="jobs",
               data_live="1")
    head = tag("h1", Html("Jobs of " + link(f"{prefix}/workflows/{workflow_id}", f"workflow {workflow_id}: {wf.name}")))
    return Html(head + form + live)


def job_page(reader: MonitorReader, prefix: str, job_id: int, attempt: int | None) -> Html:
    j = reader.job(job_id)
    attempts = reader.attempts(job_id)
    shown = attempt or j.attempt_nr
    running = j.status not in _FINAL
    files = reader.attempt_files(j, shown) if (shown < j.attempt_nr or not running) else []
    file_links = Html(" ".join(
        link(f"{prefix}/api/jobs/{job_id}/files/{shown}/{name}", name, class_="file", data_fetch="1")
        for name in files)) or "-"
    wf_link = link(f"{prefix}/workflows/{j.workflow_id}", f"workflow {j.workflow_id}")
    status = tag("div", Html(
        f"{wf_link} · task {link(f'{prefix}/workflows/{j.workflow_id}/jobs?task={j.task_id}', j.task_id)}"
        f" · label {escape(j.label)} · status {tag('span', j.status, class_=f'st st-{j.status}', id='job-status')}"
        f" · attempt {j.attempt_nr} of {j.max_attempts} · site {escape(j.site or '-')}"
        f" · memory request {j.request_memory} MB · cores {j.request_cpus}"
        + (f" · exit {j.exit_code} ({escape(j.error_class or '')}): {escape(j.diag or '')}" if j.exit_code is not None
           else "")), id="job-summary", data_live="1", data_final="1" if not running else "0", class_="summary")
    attempt_rows = [(link(f"{prefix}/jobs/{job_id}?attempt={a.attempt_nr}", a.attempt_nr), a.status, a.site, a.pilot,
                     when(a.start_time), seconds(a.end_time - a.start_time if a.start_time and a.end_time else None),
                     a.exit_code, a.error_class, a.diag, a.request_memory,
                     f"{a.max_pss_kb / 1024:.1f}" if a.max_pss_kb else "", a.log_url) for a in attempts]
    history = table(["attempt", "status", "time"], [(h.attempt_nr, h.status, when(h.time)) for h in reader.history(job_id)],
                    class_="history")
    plot = Html("")
    if "prmon.txt" in files:
        plot = Html(memory_svg(reader.attempt_file(j, shown, "prmon.txt").decode("utf-8", "replace")) or "")
    plot = plot or tag("p", "no memory samples stored for this attempt yet (uploaded when it ends)", class_="note")
    log_url = f"{prefix}/api/jobs/{job_id}/log?attempt={shown}"
    return Html(
        tag("h1", f"Job {j.job_id}: {j.name}") + status
        + tag("h2", "Attempts") + tag("div", table(
            ["attempt", "status", "site", "pilot", "start", "duration", "exit", "error", "diag", "memory MB",
             "max PSS MB", "stored at"], attempt_rows, class_="attempts"), id="attempts", data_live="1")
        + tag("h2", f"Payload log (attempt {shown})")
        + tag("pre", "", id="log", class_="log", data_log=log_url)
        + tag("p", Html("stored files: " + cell(file_links)), class_="files")
        + tag("h2", "Memory") + tag("div", plot, id="memory", data_live="1")
        + tag("h2", "Status history") + tag("div", history, id="history", data_live="1")
        + tag("h2", "Brokerage") + _brokerage(reader, job_id)
    )


def _brokerage(reader: MonitorReader, job_id: int) -> Html:
    from panray.sites import Decision, format_explanation

    out = [tag("pre", f"attempt {d.attempt_nr}, {when(d.time)}\n"
               + format_explanation(Decision.from_dict(json.loads(d.decision))), class_="decision")
           for d in reader.decisions(job_id)]
    transfers = reader.transfers(job_id)
    if transfers:
        out.append(table(["attempt", "dataset", "from", "to"],
                         [(t.attempt_nr, t.dataset, t.source, t.destination) for t in transfers], class_="transfers"))
    return Html("".join(out) or tag("p", "not brokered yet", class_="note"))


RECENT_DECISIONS = 2000  #: how many of the latest placements the sites page compares with the targets


def sites_page(reader: MonitorReader) -> Html:
    placed: dict[str, int] = {}
    for d in reader.recent_decisions(limit=RECENT_DECISIONS):
        site = json.loads(d.decision).get("site")
        if site:
            placed[site] = placed.get(site, 0) + 1
    n_placed = sum(placed.values())
    rows = []
    for r in reader.sites():
        share = placed.get(r["site"], 0) / n_placed if n_placed else None
        rows.append((r["site"], r["status"], "-" if r["nodes"] is None else r["nodes"] or "none",
                     *("-" if r[k] is None else r[k] for k in ("pilots", "queued", "running")), r["finished"],
                     r["failed"], f"{r['target_share']:.0%}", "-" if share is None else f"{share:.0%}"))
    return Html(tag("h1", "Sites") + tag("div", table(
        ["site", "status", "nodes", "live pilots", "queued", "running", "finished", "failed", "target share",
         f"share of the last {n_placed} placements"], rows, class_="sites"), id="sites", data_live="1"))


def search_results(reader: MonitorReader, prefix: str, text: str) -> tuple[Html, str | None]:
    """Matches for an id or a name, and the one page to go to when there is exactly one."""
    found: list[tuple[str, str]] = []
    if text.isdigit():
        n = int(text)
        rows, _ = reader.find_workflows(WorkflowQuery(workflow_id=n, limit=1))
        found += [(f"{prefix}/workflows/{n}", f"workflow {n}: {w.name}") for w in rows]
        try:
            j = reader.job(n)
            found.append((f"{prefix}/jobs/{n}", f"job {n}: {j.name} (workflow {j.workflow_id})"))
        except NotFoundError:
            pass
    if text:
        rows, _ = reader.find_workflows(WorkflowQuery(name=text, limit=50))
        found += [(f"{prefix}/workflows/{w.workflow_id}", f"workflow {w.workflow_id}: {w.name}") for w in rows
                  if (f"{prefix}/workflows/{w.workflow_id}", f"workflow {w.workflow_id}: {w.name}") not in found]
    items = Html("".join(tag("li", link(href, label)) for href, label in found)) or tag("li", "nothing found")
    return Html(tag("h1", f"Search: {text}") + tag("ul", items)), found[0][0] if len(found) == 1 else None
