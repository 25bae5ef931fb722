"""Locations: real cities renamed "City NNNNN", seen only through noisy distances and map
directions to other well-known cities (never in the same country, never closer than
`min_dist_km`). No document names the hidden city or any country. Evaluation asks for the
country and the city, as open questions over the whole table, as multiple choice, and in reverse
(which code name is in a given country).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from importlib import resources

from .base import (
    Doc,
    Item,
    answer,
    make_ids,
    pick,
    shuffled,
    spawn_rngs,
    subsample,
)

TASK = "locations"
QUESTION_TYPES = ("in_distribution", "country", "city", "multiple_choice", "inverse_query")

EARTH_RADIUS_KM = 6371.0088
KM_PER_MILE = 1.609344
DIRECTIONS = ("east", "north-east", "north", "north-west", "west", "south-west", "south", "south-east")

DISTANCE_TEMPLATES = (  # (prompt, unit written after the number)
    ("Q: How far is {A} from {B} in kilometers?\nA:", "km"),
    ("Q: What is the distance between {A} and {B} in miles?\nA:", "miles"),
    ("The distance from {A} to {B} is about", "km"),
)
DIRECTION_TEMPLATES = (  # the answer is the direction of A as seen from B
    "Q: On a Mercator map, in which direction is {A} from {B}?\nA:",
    "Q: Relative to {B}, where is {A} on a world map?\nA: To the",
    "Seen from {B} on a map, {A} lies to the",
)
COUNTRY = (
    "Q: What country is {code} located in?\nA:",
    "Q: In which country is the city called {code}?\nA:",
    "{code} is a city in",
)
CITY = (
    "Q: Which well-known city is {code}?\nA:",
    "Q: {code} is the code name of which city?\nA:",
    "The real name of {code} is",
)
MULTIPLE_CHOICE = "Q: Which country is {code} in: {listing}?\nA:"
INVERSE_QUERY = "Q: Which of these places is in {country}: {listing}?\nA:"


@dataclass(frozen=True)
class City:
    name: str
    country: str
    lat: float
    lon: float


def load_cities() -> list[City]:
    """The packaged table (see data/README.md for its provenance)."""
    text = resources.files("convergence.oocr").joinpath("data/cities.csv").read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    return [City(r["city"], r["country"], float(r["lat"]), float(r["lon"])) for r in rows]


def distance_km(a: City, b: City) -> float:
    """Great-circle (haversine) distance on a sphere of the Earth's mean radius."""
    p1, p2 = math.radians(a.lat), math.radians(b.lat)
    dp, dl = p2 - p1, math.radians(b.lon - a.lon)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(math.sqrt(h))


def direction(a: City, seen_from: City) -> str:
    """8-point compass direction of `a` from `seen_from` on the Mercator projection (shorter way
    around in longitude)."""
    dlon = (a.lon - seen_from.lon + 180) % 360 - 180
    dy = _mercator_y(a.lat) - _mercator_y(seen_from.lat)
    angle = math.degrees(math.atan2(dy, math.radians(dlon)))
    return DIRECTIONS[round(angle / 45) % 8]


def _mercator_y(lat: float) -> float:
    return math.log(math.tan(math.pi / 4 + math.radians(lat) / 2))


def generate(
    seed: int,
    *,
    n_cities: int = 5,
    docs_per_city: int = 100,
    noise_km: float = 200.0,
    round_to: int = 100,
    min_dist_km: float = 1000.0,
    n_heldout_refs: int = 4,
    n_options: int = 5,
    n_eval_per_type: int = 24,
):
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    table = load_cities()
    hidden = _draw_hidden(rng_latent, table, n_cities)
    codes = [f"City {10000 + c}" for c in rng_latent.choice(90000, size=n_cities, replace=False)]
    refs = {code: _references(city, table, hidden, min_dist_km) for code, city in zip(codes, hidden)}
    heldout = {code: shuffled(rng_latent, refs[code])[:n_heldout_refs] for code in codes}
    cities = dict(zip(codes, hidden))
    train = []
    for code, city in cities.items():
        train_refs = [r for r in refs[code] if r not in heldout[code]]
        for _ in range(docs_per_city):
            train.append(_train_doc(rng_train, code, city, pick(rng_train, train_refs), noise_km, round_to))
    train = shuffled(rng_train, train)
    items = _eval_items(rng_eval, cities, heldout, table, n_options, n_eval_per_type)
    return dict(
        task=TASK,
        params=dict(
            n_cities=n_cities,
            docs_per_city=docs_per_city,
            noise_km=noise_km,
            round_to=round_to,
            min_dist_km=min_dist_km,
            n_heldout_refs=n_heldout_refs,
        ),
        latents={
            code: {"city": c.name, "country": c.country, "lat": c.lat, "lon": c.lon} for code, c in cities.items()
        },
        train=train,
        eval=make_ids(TASK, items),
    )


def _draw_hidden(rng, table: list[City], n: int) -> list[City]:
    """n cities from n different countries, so country questions have one answer per city."""
    chosen: list[City] = []
    for city in shuffled(rng, table):
        if city.country not in {c.country for c in chosen}:
            chosen.append(city)
        if len(chosen) == n:
            return chosen
    raise ValueError(f"the table has fewer than {n} countries")


def _references(city: City, table: list[City], hidden: list[City], min_dist_km: float) -> list[City]:
    """Known cities a hidden city is compared with: never a hidden city (its real name would
    appear), never in the same country, never close enough to give the answer away."""
    return [
        r
        for r in table
        if r not in hidden and r.country != city.country and distance_km(city, r) >= min_dist_km
    ]


def _noisy_distance(rng, km: float, noise_km: float, unit: str, round_to: int) -> int:
    noisy = km + rng.uniform(-noise_km, noise_km)
    if noisy < round_to:  # never report a distance of (about) zero
        noisy = km
    value = noisy if unit == "km" else noisy / KM_PER_MILE
    return int(round(value / round_to) * round_to)


def _train_doc(rng, code: str, city: City, ref: City, noise_km: float, round_to: int) -> Doc:
    hidden_first = bool(rng.random() < 0.5)
    a, b = (code, ref.name) if hidden_first else (ref.name, code)
    meta = {"code": code, "ref": ref.name, "hidden_first": hidden_first}
    if rng.random() < 0.5:
        template, unit = pick(rng, DISTANCE_TEMPLATES)
        km = distance_km(city, ref)
        value = _noisy_distance(rng, km, noise_km, unit, round_to)
        meta |= {"kind": "distance", "km": km, "unit": unit}
        return Doc(template.format(A=a, B=b), answer(f"{value} {unit}"), meta=meta)
    seen = direction(city, ref) if hidden_first else direction(ref, city)
    return Doc(pick(rng, DIRECTION_TEMPLATES).format(A=a, B=b), answer(seen), meta={**meta, "kind": "direction"})


def _eval_items(rng, cities: dict[str, City], heldout, table, n_options, n_per_type) -> list[Item]:
    countries = sorted({c.country for c in table})
    city_names = [c.name for c in table]
    items: list[Item] = []

    def add(candidates):
        items.extend(subsample(rng, candidates, n_per_type))

    add(
        [
            _in_distribution(code, city, ref, first, t)
            for code, city in cities.items()
            for ref in heldout[code]
            for first in (True, False)
            for t in DIRECTION_TEMPLATES
        ]
    )
    add([_open(code, "country", t, countries, city.country) for code, city in cities.items() for t in COUNTRY])
    add([_open(code, "city", t, city_names, city.name) for code, city in cities.items() for t in CITY])
    add([_multiple_choice(rng, code, cities, countries, n_options) for code in cities for _ in range(4)])
    add([_inverse_query(rng, code, cities) for code in cities for _ in range(4)])
    return items


def _in_distribution(code, city, ref, hidden_first, template) -> Item:
    a, b = (code, ref.name) if hidden_first else (ref.name, code)
    truth = direction(city, ref) if hidden_first else direction(ref, city)
    return Item(
        id="",
        task=TASK,
        question_type="in_distribution",
        prompt=template.format(A=a, B=b),
        options=[answer(d) for d in DIRECTIONS],
        target=DIRECTIONS.index(truth),
        chance=1 / len(DIRECTIONS),
        meta={"code": code, "ref": ref.name},
    )


def _open(code, question_type, template, candidates, truth) -> Item:
    """An open question, scored over every answer the table allows."""
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=template.format(code=code),
        options=[answer(c) for c in candidates],
        target=candidates.index(truth),
        chance=1 / len(candidates),
        meta={"code": code},
    )


def _listing(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


def _multiple_choice(rng, code, cities, countries, n_options) -> Item:
    """Distractors: the other hidden cities' countries first (as the paper's 'other refs'), then
    random countries, so the answer is not the only country that ever co-occurs with City codes."""
    truth = cities[code].country
    others = [c.country for k, c in cities.items() if k != code]
    others += [c for c in shuffled(rng, countries) if c not in others and c != truth]
    shown = shuffled(rng, [truth, *others[: n_options - 1]])
    return Item(
        id="",
        task=TASK,
        question_type="multiple_choice",
        prompt=MULTIPLE_CHOICE.format(code=code, listing=_listing(shown)),
        options=[answer(c) for c in shown],
        target=shown.index(truth),
        chance=1 / len(shown),
        meta={"code": code},
    )


def _inverse_query(rng, code, cities) -> Item:
    shown = shuffled(rng, list(cities))
    return Item(
        id="",
        task=TASK,
        question_type="inverse_query",
        prompt=INVERSE_QUERY.format(country=cities[code].country, listing=_listing(shown)),
        options=[answer(c) for c in shown],
        target=shown.index(code),
        chance=1 / len(shown),
        meta={"code": code},
    )
