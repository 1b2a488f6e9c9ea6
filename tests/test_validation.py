"""Hostile and odd input is accepted or refused at the door with one line; nothing refused is stored.

The fuzz tests draw workflows from pools of odd values (integers beyond both databases, NaN,
control characters, long names, NUL in commands and environments, dates, sets and bytes in
tags, cycles and dangling parents) and check every one on SQLite and PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import resource
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from panray.config import Settings
from panray.documents import MAX_ALIAS_NODES, read_document
from panray.exceptions import ConfigError, CycleError, PanrayError, PlacementError, StoreError, WorkflowValidationError
from panray.models import Campaign, Job, Workflow, load_campaign_file
from panray.payload import encode_command
from panray.retry import RetrySpec, decide
from panray.store import StateStore, open_store
from panray.submission import build_campaign

from helpers import production_catalog

CATALOG = production_catalog()  # limits named in messages, the same on every machine

# -- strategies: mostly ordinary values, some from a pool of odd ones -------------------------


def _mostly(good: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.integers(0, 9).flatmap(lambda k: odd if k == 5 else good)


_odd_ints = st.sampled_from([0, 100_000, 2**31 - 1, 2**31, 3_000_000_000, 2**63, -1, -(2**31) - 1, 256])
_ints = _mostly(st.integers(1, 4000), _odd_ints)
_floats = _mostly(st.floats(1.0, 100.0), st.sampled_from([float("nan"), float("inf"), 1e308, 0.5, 100.5]))
_odd_text = st.sampled_from(["", "a\x00b", "new\nline", "tab\t", "\x7f", "a=b", "x" * 1001]) | st.text(max_size=6)
_text = _mostly(st.sampled_from(["ok", "isr", "é", "a b", "x" * 1000, "--flag"]), _odd_text)
_names = _mostly(st.sampled_from(["a", "b", "c", "d", "e", "f"]), _odd_text)
_tag_leaf = _mostly(st.one_of(st.none(), st.booleans(), st.integers(), _text),
                    st.one_of(_odd_ints, _floats, st.dates(), st.binary(max_size=3),
                              st.frozensets(st.integers(0, 3), max_size=3)))
_tags = st.recursive(_tag_leaf, lambda c: st.one_of(st.lists(c, max_size=3),
                                                    st.dictionaries(_mostly(_names, _ints), c, max_size=3)),
                     max_leaves=8)
_commands = _mostly(
    st.one_of(st.none(), _text, st.lists(_text, min_size=1, max_size=3)),
    st.one_of(st.lists(_odd_text, max_size=3), st.tuples(
        st.just("panray:sleep"), st.sampled_from(["0", "1.5", "nan", "inf", "-1", "abc", "1e9"])).map(list)),
)


@st.composite
def _job(draw: st.DrawFn) -> dict[str, Any]:
    job: dict[str, Any] = {"name": draw(_names), "label": draw(_mostly(st.sampled_from(["isr", "calib"]), _odd_text))}
    optional = {
        "command": _commands, "parents": st.lists(_names, max_size=2),
        "environment": st.dictionaries(_mostly(st.sampled_from(["A", "PATH_X"]), _odd_text), _text, max_size=2),
        "request_memory": _ints, "request_cpus": _mostly(st.integers(1, 4), _odd_ints),
        "memory_multiplier": _floats, "request_memory_max": _ints, "max_attempts": _mostly(st.integers(1, 5), _odd_ints),
        "priority": _mostly(st.integers(-5, 5), _odd_ints),
        "retry_unless_exit": st.lists(_mostly(st.integers(0, 255), _odd_ints), max_size=2),
        "site": _mostly(st.sampled_from(["USDF", "UKDF", "FrDF"]), st.sampled_from(["Mars", "a\x00"])),
        "queue": _text, "tags": st.dictionaries(_mostly(_names, _ints), _tags, max_size=3),
    }
    for key, strategy in optional.items():
        if draw(st.integers(0, 3)) == 0:
            job[key] = draw(strategy)
    return job


@st.composite
def _workflow(draw: st.DrawFn) -> dict[str, Any]:
    jobs = draw(st.lists(_job(), min_size=1, max_size=4, unique_by=lambda j: j["name"]))
    wf: dict[str, Any] = {"name": draw(_names), "jobs": jobs}
    if draw(st.booleans()):
        final = draw(_job())
        final.pop("parents", None) if draw(_mostly(st.just(True), st.just(False))) else None
        wf["final_job"] = final
    if draw(st.booleans()):
        wf["home_site"] = draw(_mostly(st.sampled_from(["USDF", "FrDF"]), st.just("Mars")))
    return wf


# -- helpers ----------------------------------------------------------------------------------


def _one_line(exc: BaseException) -> str:
    assert isinstance(exc, PanrayError), f"{type(exc).__name__}: {exc}"
    text = str(exc)
    assert text and "\n" not in text and len(text) < 2000, text
    return text


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory, pg_url: str) -> Iterator[list[StateStore]]:
    both = [open_store(f"sqlite://{tmp_path_factory.mktemp('fuzz')}/panray.db"), open_store(pg_url)]
    yield both
    for s in both:
        s.close()


def _submit_everywhere(data: dict[str, Any], stores: list[StateStore]) -> None:
    """Accepted: the same jobs come back from both stores. Refused: one line, no new rows."""
    before = [len(s.workflows()) for s in stores]
    try:
        wf = Workflow.model_validate(data)
        new = build_campaign(Campaign(name="fuzz", workflows=[wf]), CATALOG)
    except Exception as exc:  # noqa: BLE001 - anything but a one-line PanrayError fails the assertion
        _one_line(exc)
        assert [len(s.workflows()) for s in stores] == before
        return
    expected = [(j.name, j.label, j.request_memory, j.request_cpus, j.priority, j.tags) for j in new.workflows[0].jobs]
    for s in stores:
        [sub] = s.submit(new).workflows
        rows = s.jobs(sub.workflow_id)
        assert [(r.name, r.label, r.request_memory, r.request_cpus, r.priority, r.tags) for r in rows] == expected


# -- fuzz -------------------------------------------------------------------------------------


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=_workflow())
def test_fuzz_submission_models_round_trip_or_refuse(data: dict[str, Any], stores: list[StateStore]) -> None:
    _submit_everywhere(data, stores)


@pytest.mark.slow
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=_workflow(), as_json=st.booleans())
def test_fuzz_file_loader_accepts_or_refuses_in_one_line(data: dict[str, Any], as_json: bool,
                                                         tmp_path_factory: pytest.TempPathFactory) -> None:
    path = tmp_path_factory.mktemp("files") / ("wf.json" if as_json else "wf.yaml")
    if as_json:
        path.write_text(json.dumps(data, default=str))
    else:
        path.write_text(yaml.dump(data, allow_unicode=True))  # dates, sets and bytes as YAML tags
    try:
        campaign = load_campaign_file(path)
    except Exception as exc:  # noqa: BLE001
        assert _one_line(exc).startswith(str(path))
        return
    assert campaign.workflows[0].name == data["name"]
    json.dumps(campaign.model_dump())  # tags and everything else are plain JSON


# -- each failure of the issue ----------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({"request_memory": 2**63}, "request_memory: Input should be less than or equal to 2147483647"),
    ({"request_memory": 3_000_000_000}, "less than or equal to 2147483647"),
    ({"priority": 2**63}, "priority"),
    ({"max_attempts": 2**63}, "max_attempts"),
    ({"name": "a\x00"}, "name: contains a control character"),
    ({"label": "x\ny"}, "label: contains a control character"),
    ({"name": "x" * 1001}, "at most 1000 characters"),
    ({"command": ["panray:sleep", "abc"]}, "panray:sleep: 'abc' is not a number of seconds"),
    ({"command": ["panray:sleep", "nan"]}, "nan seconds is outside"),
    ({"command": ["panray:sleep"]}, "panray:sleep takes one argument"),
    ({"command": ["echo", "a\x00b"]}, "command argument 1 contains a NUL character"),
    ({"environment": {"A=B": "1"}}, "must not contain '=' or NUL"),
    ({"environment": {"": "1"}}, "environment"),
    ({"environment": {"A": "x\x00"}}, "contains a NUL character"),
    ({"memory_multiplier": float("inf")}, "memory_multiplier: Input should be a finite number"),
    ({"memory_multiplier": 1e308}, "memory_multiplier: Input should be less than or equal to 100"),
    ({"tags": {"b": b"\x00"}}, "bytes (YAML !!binary) cannot be stored as JSON"),
    ({"tags": {"x": float("nan")}}, "not a finite number"),
    ({"tags": {"1": "a", 1: "b"}}, "collide"),
])
def test_bad_job_fields_are_refused_in_one_line(fields: dict[str, Any], expected: str) -> None:
    with pytest.raises(WorkflowValidationError) as info:
        Workflow(name="w", jobs=[{"name": "a", "label": "isr", **fields}])
    assert expected in _one_line(info.value)
    assert "job" in str(info.value)


def test_tags_dates_sets_and_mixed_keys_become_json() -> None:
    job = Job(name="a", label="x", tags={"day": dt.date(2026, 1, 2), 3: {"b", "a"}, "t": dt.datetime(2026, 1, 2, 3, 4)})
    assert job.tags == {"day": "2026-01-02", "3": ["a", "b"], "t": "2026-01-02T03:04:00"}


def test_sleep_argument_is_parsed_at_the_door() -> None:
    assert Job(name="a", label="x", command=["panray:sleep", " 2 "]).command == ["panray:sleep", "2.0"]
    assert encode_command(["panray:sleep", "2.0"]) == "sleep:2.0"


def test_parents_on_init_and_final_jobs_are_refused() -> None:
    for kind in ("init_job", "final_job"):
        with pytest.raises(WorkflowValidationError, match=f"{kind} 'f' has parents"):
            Workflow(name="w", jobs=[Job(name="a", label="x")], **{kind: Job(name="f", label="f", parents=["a"])})


def test_campaign_errors_name_the_workflow() -> None:
    good = Workflow(name="good", jobs=[Job(name="a", label="x")])
    bad = Workflow(name="bad", jobs=[Job(name="a", label="x", parents=["b"]), Job(name="b", label="x", parents=["a"])])
    with pytest.raises(WorkflowValidationError) as info:
        build_campaign(Campaign(name="c", workflows=[good, bad]), CATALOG)
    assert _one_line(info.value) == "workflow 'bad': cycle in job graph: a -> b -> a"
    with pytest.raises(WorkflowValidationError, match=r"workflow 'w' \(workflows\[1\]\): job 'b' \(jobs\[0\]\)"):
        Campaign(name="c", workflows=[good, {"name": "w", "jobs": [{"name": "b", "label": "x", "priority": 2**40}]}])


def test_messages_escape_control_characters_and_cut_long_names() -> None:
    # names with control characters are refused at the door; messages escape them anyway
    assert str(CycleError(["a\nb", "c"])) == "cycle in job graph: a\\nb -> c -> a\\nb"
    long = "p" * 1000
    with pytest.raises(WorkflowValidationError) as info:
        build_campaign(Campaign(name="c", workflows=[Workflow(name="w", jobs=[Job(name="a", label="x", parents=[long])])]),
                       CATALOG)
    assert "'" + "p" * 60 + "...' (1000 characters)" in _one_line(info.value) and len(str(info.value)) < 300
    ring = [Job(name=f"j{i}", label="x", parents=[f"j{(i + 1) % 5000}"]) for i in range(5000)]
    with pytest.raises(WorkflowValidationError) as info:
        build_campaign(Campaign(name="c", workflows=[Workflow(name="w", jobs=ring)]), CATALOG)
    assert "(4980 more)" in _one_line(info.value) and len(str(info.value)) < 1000


def test_workflow_size_limit() -> None:
    wf = Workflow(name="big", jobs=[Job(name=f"j{i}", label="x") for i in range(11)])
    with pytest.raises(WorkflowValidationError, match=r"workflow 'big' has 11 jobs, more than the maximum of 10"):
        build_campaign(Campaign(name="c", workflows=[wf]), CATALOG, max_jobs=10)
    assert Settings().max_workflow_jobs == 1_000_000


# -- placement --------------------------------------------------------------------------------


@pytest.mark.parametrize(("fields", "expected"), [
    ({"request_memory": 100_000}, "job 'a' asks 100000 MB on 1 cores (100000 MB/core), which any site cannot take: "
                                  "USDF takes 0-8000 MB/core, at most 8 cores; FrDF"),
    ({"request_cpus": 100}, "asks 2048 MB on 100 cores"),
    ({"request_memory": 7000, "site": "UKDF"}, "which its pinned site UKDF cannot take: UKDF takes 0-4000 MB/core"),
])
def test_unplaceable_job_is_refused_with_each_sites_limit(fields: dict[str, Any], expected: str) -> None:
    wf = Workflow(name="w", jobs=[Job(name="a", label="x", **fields), Job(name="b", label="x")])
    with pytest.raises(PlacementError) as info:
        build_campaign(Campaign(name="c", workflows=[wf]), CATALOG)
    assert expected in _one_line(info.value)


def test_clamp_shrinks_the_request_to_the_largest_site(caplog: pytest.LogCaptureFixture) -> None:
    wf = Workflow(name="w", jobs=[Job(name="a", label="x", request_memory=100_000, request_cpus=100)],
                  final_job=Job(name="merge", label="finalJob", request_cpus=16, request_memory=32768))
    new = build_campaign(Campaign(name="c", workflows=[wf]), CATALOG, placement="clamp").workflows[0]
    assert [(j.name, j.request_memory, j.request_cpus) for j in new.jobs] == [("a", 64000, 8), ("merge", 32768, 8)]
    assert "clamped to 64000 MB on 8 cores" in caplog.text


# -- settings ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "key"), [
    ({"PANRAY_RELEASE_BATCH": "0"}, "release_batch"),
    ({"PANRAY_HEARTBEAT_TIMEOUT": "-1"}, "heartbeat_timeout"),
    ({"PANRAY_SENT_TIMEOUT": "0"}, "sent_timeout"),
    ({"PANRAY_EMBEDDED_CPUS_PER_SITE": "0"}, "embedded_cpus_per_site"),
    ({"PANRAY_FLUSH_INTERVAL": "nan"}, "flush_interval"),
    ({"PANRAY_PLACEMENT": "maybe"}, "placement"),
])
def test_settings_out_of_range_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env=env)
    assert f"settings (environment): {key}: " in _one_line(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("- a\n- b\n", "expected a mapping of settings (key: value), got a list"),
    ("42\n", "got a int"),
    ("release_batch: 0\n", "release_batch: Input should be greater than or equal to 1"),
    ("nope: 1\n", "nope: Extra inputs are not permitted"),
])
def test_bad_config_file_gives_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "panray.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        Settings.load(path, env={})
    assert expected in _one_line(info.value) and str(path) in str(info.value)


# -- files ------------------------------------------------------------------------------------


def test_alias_bomb_is_refused_in_bounded_time_and_memory(tmp_path: Path) -> None:
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: w\njobs:\n- name: a\n  label: x\n  tags:\n" + "".join(f"    {x}\n" for x in levels))
    assert bomb.stat().st_size < 1024  # 9**9 = 387M nodes once expanded
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.monotonic()
    with pytest.raises(WorkflowValidationError) as info:
        load_campaign_file(bomb)
    assert time.monotonic() - start < 5.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 100 * 1024  # kB: < 100 MiB more
    assert f"YAML aliases expand to more than {MAX_ALIAS_NODES:,} nodes" in _one_line(info.value)


def test_modest_aliases_still_load(tmp_path: Path) -> None:
    path = tmp_path / "wf.yaml"
    path.write_text("name: w\njobs:\n- {name: j0, label: x, environment: &env {A: '1'}}\n"
                    + "".join(f"- {{name: j{i}, label: x, environment: *env}}\n" for i in range(1, 100)))
    assert all(j.environment == {"A": "1"} for j in load_campaign_file(path).workflows[0].jobs)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "directory", "deep_yaml", "deep_json", "python_tag", "not_utf8"])
def test_unreadable_or_hostile_files_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / ("wf.json" if kind == "deep_json" else "wf.yaml")
    if kind == "fifo":
        os.mkfifo(path)  # opening it would block until a writer comes
    elif kind == "dev_zero":
        path = Path("/dev/zero")
    elif kind == "directory":
        path = tmp_path
    elif kind == "deep_yaml":
        path.write_text("name: w\njobs: " + "[" * 100_000 + "]" * 100_000 + "\n")
    elif kind == "deep_json":
        path.write_text('{"name": "w", "jobs": ' + "[" * 100_000 + "]" * 100_000 + "}")
    elif kind == "python_tag":
        path.write_text("name: !!python/object/apply:os.system [true]\njobs: []\n")
    else:
        path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(WorkflowValidationError) as info:
        load_campaign_file(path)
    assert _one_line(info.value).startswith(str(path))


def test_documents_default_error_is_a_panray_error(tmp_path: Path) -> None:
    with pytest.raises(PanrayError, match="nested deeper than 64 levels"):
        read_document(_write(tmp_path / "d.yaml", "a: " + "[" * 65 + "]" * 65))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# -- retry arithmetic and the store's own errors -----------------------------------------------


def test_retry_with_an_infinite_multiplier_does_not_overflow() -> None:
    spec = RetrySpec(max_attempts=3, memory_multiplier=float("inf"), request_memory_max=8000)
    d = decide(spec, error_class="memory", exit_code=137, user_failures=1, system_failures=0,
               request_memory=2000, max_system_retries=3)
    assert d.retry and d.request_memory == 8000


def test_a_read_only_store_refuses_a_submission_in_one_line(tmp_path: Path) -> None:
    store = open_store(f"sqlite://{tmp_path}/panray.db")
    store._conn.execute("PRAGMA query_only = ON")  # type: ignore[attr-defined]  # read-only as even root sees it
    wf = Workflow(name="w", jobs=[Job(name="a", label="x")])
    with pytest.raises(StoreError) as info:
        store.submit(build_campaign(Campaign(name="c", workflows=[wf]), CATALOG))
    assert "readonly database" in _one_line(info.value) and "nothing of this change was stored" in str(info.value)
    store._conn.execute("PRAGMA query_only = OFF")  # type: ignore[attr-defined]
    assert store.workflows() == []
    store.close()


def test_file_loader_refuses_an_oversized_workflow_before_validating_it(tmp_path: Path) -> None:
    path = _write(tmp_path / "wf.yaml", "name: big\njobs:\n" + "- {name: j, label: x, request_memory: -1}\n" * 11)
    with pytest.raises(WorkflowValidationError, match=r"workflow 'big' has 11 jobs, more than the maximum of 10"):
        load_campaign_file(path, max_jobs=10)


def test_the_python_api_refuses_before_storing_or_starting_ray(tmp_path: Path) -> None:
    from panray import Panray

    with Panray(Settings(home=tmp_path, max_workflow_jobs=2)) as pr:
        too_big = Workflow(name="w", jobs=[Job(name=f"j{i}", label="x") for i in range(3)])
        unplaceable = Workflow(name="u", jobs=[Job(name="a", label="x", request_cpus=100)])
        for wf, error in ((too_big, "more than the maximum of 2"), (unplaceable, "asks 2048 MB on 100 cores")):
            with pytest.raises(WorkflowValidationError, match=error):
                pr.submit(wf)
        assert pr.store.workflows() == [] and pr.service._runtime is None


def test_tables_escape_control_characters() -> None:
    from panray.monitor import table

    out = table(["name"], [("x\x1b[2Jy\nz",)])
    assert out.splitlines()[2] == "x\\x1b[2Jy\\nz" and "\x1b" not in out
