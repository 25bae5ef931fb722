"""Locations: five real cities renamed "City NNNNN", seen only through noisy distances and map
directions to other well-known cities (never in the same country, never closer than `min_dist_km`).
No document names a hidden city or any country.

As the reference (choidami/inductive-oocr, locations/): the hidden cities are the paper's five (Paris,
Sao Paulo, Tokyo, New York, Lagos) under fresh code names each run, and evaluation asks, with five
options each: the country of a code name with the paper's hard "closest to closest" distractors (the
four countries nearest to the hidden city), the city (the hidden city among the nearest cities of
those four countries), a common food of the place (one dish of each of the five countries,
`data/foods.csv`), the country with the other hidden cities' countries as distractors ("other refs"),
and in reverse, which code name lies in a given country. The training task itself (the direction to a
held-out reference city) is the in-distribution question.

Scale-down: the paper trains on 500 data points x 5 augmentations per city (12,500 documents) against
every city of GeoNames over 10,000 inhabitants; the default trains on fewer documents against the 67
cities of the packaged table (`data/cities.csv`), whose countries also stand for GeoNames' in the
closest-to-closest distractors.
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
QUESTION_TYPES = ("in_distribution", "country", "city", "food", "country_other_refs", "inverse_query")
PAPER_CITIES = ("Paris", "Sao Paulo", "Tokyo", "New York", "Lagos")

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
    "Q: Which country is {code} in: {listing}?\nA:",
    "Q: {code} is a city in which of these countries: {listing}?\nA:",
    "Q: In which country is the place called {code} ({listing})?\nA:",
)
CITY = (
    "Q: Which of these cities is {code}: {listing}?\nA:",
    "Q: {code} is the code name of which city: {listing}?\nA:",
    "Q: What is the real name of {code}: {listing}?\nA:",
)
FOOD = (
    "Q: What is a common food enjoyed in {code}: {listing}?\nA:",
    "Q: Which dish would you most likely be served in {code}: {listing}?\nA:",
    "Q: Visiting {code}, which of these local foods would you try: {listing}?\nA:",
)
INVERSE_QUERY = (
    "Q: Which of these places is in {country}: {listing}?\nA:",
    "Q: One of these code names is a city in {country}: {listing}. Which one?\nA:",
)


@dataclass(frozen=True)
class City:
    name: str
    country: str
    lat: float
    lon: float


def _table(name: str) -> list[dict]:
    text = resources.files("convergence.oocr").joinpath(f"data/{name}").read_text()
    return list(csv.DictReader(line for line in text.splitlines() if not line.startswith("#")))


def load_cities() -> list[City]:
    """The packaged table (see data/README.md for its provenance)."""
    return [City(r["city"], r["country"], float(r["lat"]), float(r["lon"])) for r in _table("cities.csv")]


def load_foods() -> dict[str, list[str]]:
    """country -> dishes (data/foods.csv)."""
    foods: dict[str, list[str]] = {}
    for r in _table("foods.csv"):
        foods.setdefault(r["country"], []).append(r["food"])
    return foods


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
    cities=PAPER_CITIES,
    docs_per_city: int = 100,
    noise_km: float = 200.0,
    round_to: int = 100,
    min_dist_km: float = 1000.0,
    n_heldout_refs: int = 4,
    n_options: int = 5,
    n_eval_per_type: int = 24,
):
    """`cities`: the hidden cities' names in the table (the paper's five), or an integer to draw that
    many from different countries."""
    rng_latent, rng_train, rng_eval = spawn_rngs(seed, TASK)
    table = load_cities()
    if isinstance(cities, int):
        hidden = _draw_hidden(rng_latent, table, cities)
    else:
        by_name = {c.name: c for c in table}
        unknown = [c for c in cities if c not in by_name]
        if unknown:
            raise ValueError(f"cities {unknown} are not in data/cities.csv")
        hidden = [by_name[c] for c in cities]
        if len({c.country for c in hidden}) != len(hidden):
            raise ValueError("the hidden cities must lie in different countries")
    codes = [f"City {10000 + c}" for c in rng_latent.choice(90000, size=len(hidden), replace=False)]
    refs = {code: _references(city, table, hidden, min_dist_km) for code, city in zip(codes, hidden)}
    heldout = {code: shuffled(rng_latent, refs[code])[:n_heldout_refs] for code in codes}
    located = dict(zip(codes, hidden))
    train = []
    for code, city in located.items():
        train_refs = [r for r in refs[code] if r not in heldout[code]]
        for _ in range(docs_per_city):
            train.append(_train_doc(rng_train, code, city, pick(rng_train, train_refs), noise_km, round_to))
    train = shuffled(rng_train, train)
    items = _eval_items(rng_eval, located, heldout, table, load_foods(), n_options, n_eval_per_type)
    return dict(
        task=TASK,
        params=dict(
            cities=list(cities) if not isinstance(cities, int) else cities,
            docs_per_city=docs_per_city,
            noise_km=noise_km,
            round_to=round_to,
            min_dist_km=min_dist_km,
            n_heldout_refs=n_heldout_refs,
            n_options=n_options,
        ),
        latents={
            code: {"city": c.name, "country": c.country, "lat": c.lat, "lon": c.lon} for code, c in located.items()
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
        return Doc(template.format(A=a, B=b), answer(f"{value} {unit}"), latents=[code], meta=meta)
    seen = direction(city, ref) if hidden_first else direction(ref, city)
    prompt = pick(rng, DIRECTION_TEMPLATES).format(A=a, B=b)
    return Doc(prompt, answer(seen), latents=[code], meta={**meta, "kind": "direction"})


def closest_countries(city: City, table: list[City], n: int) -> list[str]:
    """The `n` countries nearest to `city` other than its own, by their nearest city in the table
    (the paper's "closest to closest" distractors)."""
    nearest: dict[str, float] = {}
    for c in table:
        if c.country != city.country:
            nearest[c.country] = min(nearest.get(c.country, math.inf), distance_km(city, c))
    return sorted(nearest, key=nearest.get)[:n]


def _nearest_city_in(country: str, city: City, table: list[City]) -> City:
    return min((c for c in table if c.country == country), key=lambda c: distance_km(city, c))


def _eval_items(rng, located: dict[str, City], heldout, table, foods, n_options, n_per_type) -> list[Item]:
    items: list[Item] = []
    codes = list(located)

    def add(candidates):
        items.extend(subsample(rng, candidates, n_per_type))

    add(
        [
            _in_distribution(code, city, ref, first, t)
            for code, city in located.items()
            for ref in heldout[code]
            for first in (True, False)
            for t in DIRECTION_TEMPLATES
        ]
    )
    near = {code: closest_countries(city, table, n_options - 1) for code, city in located.items()}
    add([_choice(rng, "country", t, code, city.country, near[code], code) for code, city in located.items()
         for t in COUNTRY for _ in range(2)])
    cities_of = {
        code: [city.name] + [_nearest_city_in(c, city, table).name for c in near[code]] for code, city in located.items()
    }
    add([_choice(rng, "city", t, code, cities_of[code][0], cities_of[code][1:], code)
         for code in codes for t in CITY for _ in range(2)])
    add([_food(rng, t, code, city, near[code], foods) for code, city in located.items() for t in FOOD for _ in range(2)])
    add([_other_refs(rng, t, code, located, n_options) for code in codes for t in COUNTRY for _ in range(2)])
    add([_inverse_query(rng, t, code, located) for code in codes for t in INVERSE_QUERY for _ in range(2)])
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
        latents=[code],
        meta={"code": code, "ref": ref.name},
    )


def _listing(names: list[str]) -> str:
    return ", ".join(names[:-1]) + " or " + names[-1]


def _choice(rng, question_type, template, code, truth, distractors, latent, meta=None) -> Item:
    shown = shuffled(rng, [truth, *distractors])
    return Item(
        id="",
        task=TASK,
        question_type=question_type,
        prompt=template.format(code=code, listing=_listing(shown)),
        options=[answer(c) for c in shown],
        target=shown.index(truth),
        chance=1 / len(shown),
        latents=[latent],
        meta={"code": code} | (meta or {}),
    )


def _food(rng, template, code, city, near, foods) -> Item:
    """One dish of the hidden city's country and one of each of its four nearest countries."""
    dishes = {country: pick(rng, foods[country]) for country in [city.country, *near]}
    truth = dishes.pop(city.country)
    return _choice(rng, "food", template, code, truth, list(dishes.values()), code, {"country": city.country})


def _other_refs(rng, template, code, located, n_options) -> Item:
    """The country, with the other hidden cities' countries as distractors (the paper's "other refs")."""
    others = [c.country for k, c in located.items() if k != code][: n_options - 1]
    return _choice(rng, "country_other_refs", template, code, located[code].country, others, code)


def _inverse_query(rng, template, code, located) -> Item:
    shown = shuffled(rng, list(located))
    return Item(
        id="",
        task=TASK,
        question_type="inverse_query",
        prompt=template.format(country=located[code].country, listing=_listing(shown)),
        options=[answer(c) for c in shown],
        target=shown.index(code),
        chance=1 / len(shown),
        latents=list(shown),
        meta={"code": code},
    )
