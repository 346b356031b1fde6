"""Broad tasks over the mini-web, in the WideSearch task format.

Every task is one list page of the mini-web (its "entity set") plus a choice of attribute
columns: the rows are the list's members, the cells are copied from the "Facts" lines of each
member's entity page. So a task is answerable exactly as intended: find the set on the list page,
then visit every member's page for its attributes.

Train and test never share a (family, entity set) pair: each family's sets are shuffled with the
seed and a fixed share goes to test. A set can yield more than one task (different columns);
those all stay in the set's split.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from wideseek_exp import WideseekError
from wideseek_exp.buildinfo import BuildResult, build_folder, fingerprint
from wideseek_exp.search.facts import package_versions
from wideseek_exp.search.miniweb import CORPUS_VERSION, ListPage, MiniWeb, build_miniweb
from wideseek_exp.tasks.record import TaskRecord, normalize_column

# Bump whenever the generated tasks change for the same seed and corpus.
TASKS_VERSION = "miniweb-tasks-2"
TEST_FRACTION = 0.2
MIN_ROWS, MAX_ROWS = 3, 60
MIN_ATTRIBUTES, MAX_ATTRIBUTES = 2, 4
ROW_BUCKETS = ((3, 5), (6, 10), (11, 20), (21, 40), (41, 60))


@dataclass(frozen=True)
class Column:
    display: str  # the table header the query asks for
    fact: str | None  # the "Facts" label on the entity page; None: the entity's own name
    tolerance: float | None = None  # set for quantities, compared with number_near
    date: bool = False  # years: norm_date + date_near

    def pipeline(self) -> dict:
        if self.date:
            # A year parses to the first day of that year, so date_near (31 days) asks for the
            # exact year. number_near's relative tolerance would accept decades of error.
            return {"preprocess": ["norm_date"], "metric": ["date_near"]}
        if self.tolerance is None:
            # names and codes: one right answer, compared as normalised strings.
            return {"preprocess": ["norm_str"], "metric": ["exact_match"]}
        return {"preprocess": ["extract_number"], "metric": ["number_near"], "criterion": self.tolerance}


def _text(display: str) -> Column:
    """A name or code column whose header is also its label on the entity page."""
    return Column(display, display)


def _key(display: str) -> Column:
    """The key column: the entity's own name (the page title), compared exactly."""
    return Column(display, None)


# Tolerances, each with its reason:
# populations are estimates that differ by a few percent between sources and years;
POPULATION = Column("Population", "Population", 0.05)
# areas are stable, but often quoted rounded to three or four significant figures;
AREA = Column("Area (km2)", "Area (km2)", 0.01)
# 0.1% accepts two-decimal rounding of atomic masses yet still tells cobalt (58.933) from
# nickel (58.693);
ATOMIC_MASS = Column("Atomic mass", "Atomic mass", 0.001)
# airport elevations differ by a few feet between surveys and databases;
ELEVATION = Column("Elevation (ft)", "Elevation (ft)", 0.05)
# coordinates: 0.1% of the value is at most ~0.2 degrees, about the size of a city.
LATITUDE = Column("Latitude", "Latitude", 0.001)
LONGITUDE = Column("Longitude", "Longitude", 0.001)


@dataclass(frozen=True)
class Family:
    name: str
    category: str  # the list-page category its entity sets come from
    key: Column
    noun: str  # one row is one <noun>
    attributes: tuple[Column, ...]
    variants: int  # tasks per entity set (distinct column choices)
    # Families with very many sets keep only their largest ones, so that no family dominates
    # and tables lean towards the broad end.
    max_sets: int | None = None


COUNTRY_COLUMNS = (
    _text("Capital"),
    POPULATION,
    AREA,
    _text("Currency codes"),
    _text("ISO alpha-2 code"),
    _text("ISO alpha-3 code"),
    _text("Subregion"),
)
ELEMENT_COLUMNS = (
    _text("Symbol"),
    _text("Atomic number"),
    ATOMIC_MASS,
    _text("Group"),
    _text("Period"),
    _text("Block"),
    Column("Discovery year", "Discovery year", date=True),
)
STATE_COLUMNS = (
    _text("Abbreviation"),
    _text("Capital"),
    Column("Statehood year", "Statehood year", date=True),
    _text("FIPS code"),
    _text("Capital time zone"),
)

FAMILIES = (
    Family("countries_of_region", "countries-by-region", _key("Country"), "country or territory",
           COUNTRY_COLUMNS, variants=3),
    Family("countries_bordering", "countries-bordering", _key("Country"), "country",
           COUNTRY_COLUMNS, variants=1, max_sets=80),
    Family("countries_by_currency", "countries-by-currency", _key("Country"), "country or territory",
           COUNTRY_COLUMNS, variants=3),
    Family("countries_by_language", "countries-by-language", _key("Country"), "country or territory",
           COUNTRY_COLUMNS, variants=3),
    Family("elements_by_position", "elements-by-position", _key("Element"), "element",
           ELEMENT_COLUMNS, variants=2),
    Family("elements_by_discovery", "elements-by-discovery", _key("Element"), "element",
           ELEMENT_COLUMNS, variants=3),
    Family("us_states_by_admission", "us-states-by-admission", _key("State"), "state",
           STATE_COLUMNS, variants=3),
    Family("us_states_by_time_zone", "us-states-by-time-zone", _key("State"), "state",
           STATE_COLUMNS, variants=4),
    Family("airports_by_country", "airports-by-country", _key("Airport"), "airport",
           (_text("IATA code"), _text("ICAO code"), _text("City"), ELEVATION, _text("Time zone")), variants=1,
           max_sets=80),
    Family("cities_by_country", "cities-by-country", _key("City"), "city",
           (POPULATION, _text("Time zone"), LATITUDE, LONGITUDE), variants=1),
    Family("currencies_of_region", "currencies-by-region", _key("Currency"), "currency",
           (_text("Code"), _text("Numeric code"), _text("Minor units")), variants=2),
    Family("languages_of_region", "languages-by-region", _key("Language"), "language",
           (_text("ISO 639-1 code"), _text("ISO 639-2 code"), _text("ISO 639-3 code"), _text("Native name")),
           variants=2),
)

QUERY_OPENINGS = (
    "List all of the {description}. For each one, give the {attributes}.",
    "I am putting together a reference table of the {description}. Find every one of them and record the "
    "{attributes}.",
    "Compile a complete table of the {description}, with the {attributes} of each.",
    "Which are the {description}? Name every one of them and look up the {attributes}.",
)
QUERY_FORMAT = (
    "\n\nPresent the result as one markdown table, one row per {noun}, with exactly these columns in this "
    "order:\n{header}\nWrite numbers as plain digits, without thousands separators or units, and copy names and "
    "codes exactly. Do not leave out any {noun} or any cell, and do not ask me questions: just output the table "
    "in this format:\n```markdown\n{{data_content}}\n```"
)


@dataclass(frozen=True)
class _Draft:
    """A task before it has an id: what it asks, and its gold table."""

    family: str
    entity_set: str
    variant: int
    query: str
    columns: tuple[Column, ...]  # key first
    rows: tuple[tuple[str, ...], ...]


def _join_words(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _eligible_columns(family: Family, members: list, web: MiniWeb) -> list[Column]:
    """Attributes every member's page states and that are not the same for all of them (a
    constant column, such as the group in "elements of group 1", is no question)."""
    eligible = []
    for column in family.attributes:
        values = [web.entities[url].fact(column.fact) for _, url in members]
        if all(v is not None for v in values) and len(set(values)) > 1:
            eligible.append(column)
    return eligible


def _drafts_for_set(family: Family, page: ListPage, web: MiniWeb, seed: int) -> list[_Draft]:
    members = list(page.members)
    names = [name for name, _ in members]
    if not MIN_ROWS <= len(members) <= MAX_ROWS or len(set(names)) != len(names):
        return []
    eligible = _eligible_columns(family, members, web)
    if len(eligible) < MIN_ATTRIBUTES:
        return []
    rng = random.Random(f"{seed}:{family.name}:{page.slug}")
    choices: list[tuple[Column, ...]] = []
    for _ in range(family.variants * 10):  # a few draws; small sets may have fewer distinct choices
        if len(choices) == family.variants:
            break
        k = rng.randint(MIN_ATTRIBUTES, min(MAX_ATTRIBUTES, len(eligible)))
        picked = set(rng.sample(range(len(eligible)), k))
        chosen = tuple(col for i, col in enumerate(eligible) if i in picked)
        if chosen not in choices:
            choices.append(chosen)

    drafts = []
    for variant, attributes in enumerate(choices):
        columns = (family.key, *attributes)
        rows = tuple(
            (name, *(web.entities[url].fact(col.fact) for col in attributes)) for name, url in members
        )
        header = "| " + " | ".join(col.display for col in columns) + " |"
        opening = rng.choice(QUERY_OPENINGS).format(
            description=page.description, attributes=_join_words([col.display for col in attributes])
        )
        query = opening + QUERY_FORMAT.format(noun=family.noun, header=header)
        drafts.append(_Draft(family.name, page.slug, variant, query, columns, rows))
    return drafts


def _split_sets(family: Family, sets: list[str], seed: int) -> dict[str, str]:
    shuffled = sorted(sets)
    random.Random(f"{seed}:{family.name}:split").shuffle(shuffled)
    n_test = max(1, round(TEST_FRACTION * len(shuffled))) if len(shuffled) > 1 else 0
    return {entity_set: ("test" if i < n_test else "train") for i, entity_set in enumerate(shuffled)}


def _record(draft: _Draft, instance_id: str, split: str) -> TaskRecord:
    required = [normalize_column(col.display) for col in draft.columns]
    return TaskRecord(
        instance_id=instance_id,
        query=draft.query,
        language="en",
        unique_columns=[normalize_column(draft.columns[0].display)],
        required=required,
        eval_pipeline={name: col.pipeline() for name, col in zip(required, draft.columns)},
        gold_columns=[col.display for col in draft.columns],
        gold_rows=[list(row) for row in draft.rows],
        meta={"family": draft.family, "entity_set": draft.entity_set, "split": split},
    )


def generate_tasks(seed: int = 0, web: MiniWeb | None = None) -> dict[str, list[TaskRecord]]:
    """All tasks, by split ("train", "test"), in a stable order."""
    web = web or build_miniweb()
    by_split: dict[str, list[_Draft]] = {"train": [], "test": []}
    for family in FAMILIES:
        pages = sorted((p for p in web.lists.values() if p.category == family.category), key=lambda p: p.slug)
        drafts_by_set = {p.slug: _drafts_for_set(family, p, web, seed) for p in pages}
        drafts_by_set = {slug: drafts for slug, drafts in drafts_by_set.items() if drafts}
        if family.max_sets is not None:
            largest = sorted(drafts_by_set, key=lambda slug: (-len(drafts_by_set[slug][0].rows), slug))
            drafts_by_set = {slug: drafts_by_set[slug] for slug in sorted(largest[: family.max_sets])}
        split_of = _split_sets(family, list(drafts_by_set), seed)
        for slug, drafts in drafts_by_set.items():
            by_split[split_of[slug]].extend(drafts)
    records: dict[str, list[TaskRecord]] = {}
    for split, drafts in by_split.items():
        drafts.sort(key=lambda d: (d.family, d.entity_set, d.variant))
        records[split] = [_record(d, f"miniweb-{split}-{i:04d}", split) for i, d in enumerate(drafts)]
    return records


def _card(records: dict[str, list[TaskRecord]], seed: int) -> dict:
    per_family: dict[str, dict[str, int]] = defaultdict(lambda: {"train": 0, "test": 0})
    histogram: dict[str, Counter] = {split: Counter() for split in records}
    for split, tasks in records.items():
        for task in tasks:
            per_family[task.meta["family"]][split] += 1
            n = len(task.gold_rows)
            bucket = next(f"{lo}-{hi}" for lo, hi in ROW_BUCKETS if lo <= n <= hi)
            histogram[split][bucket] += 1
    return {
        "seed": seed,
        "tasks_version": TASKS_VERSION,
        "corpus_version": CORPUS_VERSION,
        "counts": {split: len(tasks) for split, tasks in records.items()},
        "families": dict(sorted(per_family.items())),
        "entity_sets": {split: len({t.meta["entity_set"] + "/" + t.meta["family"] for t in tasks})
                        for split, tasks in records.items()},
        "row_histogram": {split: {f"{lo}-{hi}": histogram[split][f"{lo}-{hi}"] for lo, hi in ROW_BUCKETS}
                          for split in records},
    }


def tasks_fingerprint(seed: int) -> str:
    return fingerprint("miniweb-tasks", TASKS_VERSION, CORPUS_VERSION, package_versions(), seed)


def build_tasks(out_dir: Path, seed: int = 0, force: bool = False) -> BuildResult:
    """Write train.jsonl, test.jsonl and card.json into `out_dir` (a no-op when up to date)."""

    def build(tmp: Path) -> dict:
        records = generate_tasks(seed)
        for split, tasks in records.items():
            lines = "".join(json.dumps(t.to_json(), ensure_ascii=False) + "\n" for t in tasks)
            (tmp / f"{split}.jsonl").write_text(lines, encoding="utf-8")
        card = _card(records, seed)
        (tmp / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        return {"train": card["counts"]["train"], "test": card["counts"]["test"], "families": len(card["families"])}

    return build_folder("tasks", Path(out_dir), tasks_fingerprint(seed), build, force=force)


def load_tasks(path: Path) -> list[TaskRecord]:
    """Tasks from one jsonl file; a malformed line raises WideseekError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise WideseekError(f"cannot read task file {path}: {exc}") from None
    tasks = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            tasks.append(TaskRecord.from_json(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise WideseekError(f"malformed task in {path} line {number}: {type(exc).__name__}: {exc}") from None
    return tasks
