"""The site catalog: the packaged file loads, and every kind of bad file is named precisely."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import yaml

from panray.exceptions import SiteConfigError, UnknownSiteError
from panray.sites import SiteStatus, load_catalog
from panray.sites.catalog import auto_memory_per_core, auto_slots

GOOD = {
    "sites": {
        "USDF": {"drp_share": 0.35, "memory_min_mb": 0, "memory_max_mb": 8000, "max_cores": 8,
                 "pilots": 2, "slots": 4, "prompt_pilots": 4, "storage_endpoint": "file:///s/USDF"},
        "FrDF": {"drp_share": 0.40, "memory_min_mb": 0, "memory_max_mb": 6000, "max_cores": 8,
                 "pilots": 2, "slots": 4, "storage_endpoint": "gs://frdf-out"},
        "UKDF": {"drp_share": 0.25, "memory_min_mb": 500, "memory_max_mb": 4000, "max_cores": 4,
                 "pilots": 2, "slots": 4, "storage_endpoint": "file:///s/UKDF"},
    }
}


def _write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _with(site: str, **fields: object) -> dict:
    sites = {name: dict(entry) for name, entry in GOOD["sites"].items()}
    sites[site].update(fields)
    return {"sites": sites}


def test_packaged_catalog_loads():
    cat = load_catalog()
    assert cat.names() == ["USDF", "FrDF", "UKDF"]
    assert cat.shares() == pytest.approx({"USDF": 0.35, "FrDF": 0.40, "UKDF": 0.25})
    usdf = cat.get("USDF")
    assert usdf.status is SiteStatus.ONLINE and usdf.prompt_pilots == 4
    assert [s.ray_resource for s in cat] == ["site:USDF", "site:FrDF", "site:UKDF"]
    assert all(s.pilots * s.slots == s.capacity > 0 for s in cat)


def test_auto_limits_follow_the_machine_and_numbers_stay(tmp_path):
    """The shipped catalog sizes jobs to the machine; a production catalog's numbers are kept as given."""
    cores, memory_mb = os.cpu_count() or 1, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    shipped = load_catalog()
    assert {s.name: s.max_cores for s in shipped} == dict.fromkeys(["USDF", "FrDF", "UKDF"], cores)
    assert shipped.get("USDF").memory_max_mb == memory_mb // cores
    assert shipped.get("UKDF").memory_max_mb == 4000
    cat = load_catalog(_write(tmp_path, _with("UKDF", max_cores="auto", memory_max_mb="auto", slots="auto")))
    ukdf = cat.get("UKDF")
    assert (ukdf.max_cores, ukdf.memory_max_mb, ukdf.slots) == (cores, memory_mb // cores, auto_slots(0.25, 2))
    assert (cat.get("USDF").max_cores, cat.get("USDF").memory_max_mb) == (8, 8000)
    assert load_catalog(_write(tmp_path, _with("UKDF", max_cores="6"))).get("UKDF").max_cores == 6


def test_auto_slots_follow_cores_and_memory():
    """Issue 17: fixed counts gave 40 slots on a 2-core machine; auto gives 2 per pilot there (12 in
    all for the shipped three sites of two pilots), more on a big node, and memory bounds them."""
    shares = {"USDF": 0.35, "FrDF": 0.40, "UKDF": 0.25}
    laptop = {n: auto_slots(s, pilots=2, cores=2, memory_mb=24000) for n, s in shares.items()}
    assert laptop == {"USDF": 2, "FrDF": 2, "UKDF": 2} and 2 * sum(laptop.values()) == 12
    node = {n: auto_slots(s, pilots=2, cores=32, memory_mb=256000) for n, s in shares.items()}
    assert node == {"USDF": 11, "FrDF": 13, "UKDF": 8}  # 64 in all: 2 per core
    assert auto_slots(0.40, pilots=2, cores=32, memory_mb=16000) == 2, "one per 2 GB: 7 in all"
    assert auto_memory_per_core(cores=2, memory_mb=24000) == 12000


def test_file_catalog_keeps_given_values(tmp_path):
    cat = load_catalog(_write(tmp_path, _with("UKDF", ray_resource="ukdf_nodes", home_queue="Q")))
    assert cat.get("UKDF").ray_resource == "ukdf_nodes"
    assert cat.get("UKDF").home_queue == "Q"
    assert cat.get("FrDF").storage_endpoint == "gs://frdf-out"


@pytest.mark.parametrize(
    ("fields", "where"),
    [
        ({"drp_share": "lots"}, "sites.FrDF.drp_share: Input should be a valid number"),
        ({"drp_share": 1.5}, "sites.FrDF.drp_share: Input should be less than or equal to 1"),
        ({"status": "sleeping"}, "sites.FrDF.status: Input should be"),
        ({"colour": "blue"}, "sites.FrDF.colour: Extra inputs are not permitted"),
        ({"storage_endpoint": "/no/scheme"}, "sites.FrDF.storage_endpoint: String should match"),
        ({"memory_min_mb": 9000}, "sites.FrDF: Value error, memory_min_mb 9000 is above"),
        ({"name": "Lyon"}, "sites.FrDF.name is 'Lyon', not its key 'FrDF'"),
        ({"max_cores": "eight"}, "sites.FrDF.max_cores: Value error, expected a positive integer or 'auto', got 'eight'"),
        ({"max_cores": "Auto"}, "sites.FrDF.max_cores: Value error, expected a positive integer or 'auto', got 'Auto'"),
        ({"max_cores": True}, "sites.FrDF.max_cores: Value error, expected a positive integer or 'auto', got True"),
        ({"max_cores": 0}, "sites.FrDF.max_cores: Input should be greater than 0"),
        ({"max_cores": 2.5}, "sites.FrDF.max_cores: Input should be a valid integer"),
        ({"memory_max_mb": "lots"}, "sites.FrDF.memory_max_mb: Value error, expected a positive integer or 'auto'"),
        ({"slots": "many"}, "sites.FrDF.slots: Value error, expected a positive integer or 'auto', got 'many'"),
    ],
)
def test_bad_field_names_file_and_field(tmp_path, fields, where):
    path = _write(tmp_path, _with("FrDF", **fields))
    with pytest.raises(SiteConfigError) as err:
        load_catalog(path)
    assert str(err.value).startswith(f"{path}: ")
    assert where in str(err.value)


def test_missing_field_is_named(tmp_path):
    data = _with("UKDF")
    del data["sites"]["UKDF"]["max_cores"]
    with pytest.raises(SiteConfigError, match=r"sites\.UKDF\.max_cores: Field required"):
        load_catalog(_write(tmp_path, data))


def test_unknown_site_names_the_known_ones():
    with pytest.raises(UnknownSiteError) as err:
        load_catalog().get("CERN")
    assert err.value.site == "CERN"
    assert "known sites: FrDF, UKDF, USDF" in str(err.value)


def test_duplicate_site_names_rejected(tmp_path):
    path = tmp_path / "sites.yaml"
    entry = "{drp_share: 0.5, memory_min_mb: 0, memory_max_mb: 4000, max_cores: 4, pilots: 1, "
    entry += "slots: 1, storage_endpoint: 'file:///x'}"
    path.write_text(textwrap.dedent(f"""\
        sites:
          USDF: {entry}
          FrDF: {entry}
          USDF: {entry}
        """))
    with pytest.raises(SiteConfigError, match=r"sites\.yaml: duplicate key 'USDF' \(line 4\)"):
        load_catalog(path)


def test_shares_of_online_sites_must_sum_to_one(tmp_path):
    with pytest.raises(SiteConfigError, match=r"sum to 1\.05, not 1 \(USDF=0\.35, FrDF=0\.45"):
        load_catalog(_write(tmp_path, _with("FrDF", drp_share=0.45)))


def test_offline_site_share_not_counted_and_shares_renormalize(tmp_path):
    data = _with("UKDF", status="offline")
    data["sites"]["USDF"]["drp_share"] = 0.35 / 0.75
    data["sites"]["FrDF"]["drp_share"] = 0.40 / 0.75
    cat = load_catalog(_write(tmp_path, data))
    assert set(cat.shares()) == {"USDF", "FrDF"}
    frdf = 0.40 / 0.75
    assert cat.shares(["FrDF", "UKDF"]) == pytest.approx(
        {"FrDF": frdf / (frdf + 0.25), "UKDF": 0.25 / (frdf + 0.25)}
    )


def test_unreadable_or_malformed_file(tmp_path):
    with pytest.raises(SiteConfigError, match="missing.yaml: cannot read site catalog"):
        load_catalog(tmp_path / "missing.yaml")
    with pytest.raises(SiteConfigError, match="expected a mapping"):
        load_catalog(_write(tmp_path, ["USDF"]))
