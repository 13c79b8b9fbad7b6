"""One catalogue of the paper's outputs: the report, the sweeps' `for:`, the profiles' `covers:` and the README map
all agree with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from stmkit import catalogue, sweeps
from stmkit.config import ConfigError, load_profile
from stmkit.report import Context, build_sections

ROOT = Path(__file__).resolve().parents[1]


def test_the_catalogue_lists_every_paper_table_and_figure_once():
    assert catalogue.ORDER == [f"table{n:02d}" for n in range(1, 22)] + [f"fig{n:02d}" for n in range(1, 15)]
    for o in catalogue.CATALOGUE:
        kind, n = ("Table", int(o.id[5:])) if o.id.startswith("table") else ("Figure", int(o.id[3:]))
        assert o.title.startswith(f"{kind} {n}. ")
        assert bool(o.needs) != bool(o.unavailable), o.id  # either a run makes it, or the kit says why it cannot


def test_the_report_sections_carry_the_catalogue_titles_and_needs(tmp_path):
    sections = build_sections(Context(tmp_path, "cpu-demo", {}))
    assert [s.id for s in sections] == catalogue.ORDER
    for s in sections:
        o = catalogue.BY_ID[s.id]
        assert s.title == o.title
        assert s.status == ("unavailable" if o.unavailable else "missing")
        assert (o.unavailable or o.needs) in s.body


@pytest.mark.parametrize("sweep", sorted(p.stem for p in sweeps.SWEEPS_DIR.glob("*.yaml")))
def test_every_sweep_feeds_only_known_outputs(sweep):
    path = sweeps.SWEEPS_DIR / f"{sweep}.yaml"
    profile = yaml.safe_load(path.read_text()).get("profile", sweep)  # derived sweeps list their runs on loading
    known = set(catalogue.ORDER) | set(catalogue.KIT_OUTPUTS) | {catalogue.FEEDS_ALL}
    for run in sweeps.load_sweep(profile, path):
        assert set(run.feeds) <= known, (sweep, run.name)


def test_a_sweep_naming_an_unknown_output_is_refused(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("profile: smoke\nruns:\n  - name: score\n    notebook: 01_score_tokens\n    for: [table99]\n")
    with pytest.raises(ConfigError, match="'for' names 'table99', which is not an output the kit knows"):
        sweeps.load_sweep("smoke", path)


@pytest.mark.parametrize("profile", ["smoke", "cpu-demo", "cpu-full", "paper"])
def test_what_a_profile_covers_is_in_the_catalogue_and_fed_by_its_sweep(profile):
    covers = load_profile(profile).covers
    assert set(covers) <= set(catalogue.ORDER)
    fed = {f for r in sweeps.load_sweep(profile, None) for f in r.feeds if f != catalogue.FEEDS_ALL}
    assert set(covers) <= fed, sorted(set(covers) - fed)


def test_the_readme_map_has_one_row_per_catalogue_entry_in_order():
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- paper-map:start -->", 1)[1].split("<!-- paper-map:end -->", 1)[0]
    titles = [re.split(r"(?<!\\)\|", row)[1].strip().replace("\\|", "|") for row in block.strip().splitlines()[2:]]
    assert titles == [catalogue.TITLES[i] for i in catalogue.ORDER]
