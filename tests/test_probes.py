"""Linear probes and the Atlantis reconstruction (METHOD §11): reference values, an independent OLS, and the
properties a probe must have (exact recovery of a linear map, nothing from noise)."""
import numpy as np
import pytest
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LinearRegression
from threadpoolctl import threadpool_limits

from worldrep.probes import (atlantis_groups, atlantis_reconstruction, atlantis_split, control_targets, fit_ols,
                             fit_ridge_cv, predict, probe_metrics, probe_split, standard_probe)

ALPHAS = [0.001, 0.01, 0.1, 1, 10, 100, 1000, 10000]  # the shipped configs' probes.ridge_alphas


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """The CPU is shared: oversubscribed BLAS threads make a 433 × 257 solve 50× slower."""
    with threadpool_limits(1):
        yield


def linear_world(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(reps [n, d], xy [n, 2]): integer coordinates mixed with d − 2 nuisance features by an invertible map,
    so x and y are exactly linear in the representation (plus an offset)."""
    rng = np.random.default_rng(seed)
    xy = np.column_stack([rng.integers(-1800, 1801, n), rng.integers(-900, 901, n)]).astype(np.float64)
    latent = np.column_stack([xy, rng.normal(size=(n, d - 2))])
    return latent @ rng.normal(size=(d, d)) + rng.normal(size=d), xy


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_recovers_coordinates_that_are_linear_in_the_representation(seed):
    reps, xy = linear_world(600, 256, seed)
    metrics = standard_probe(reps, xy, probe_split(len(reps), seed), ALPHAS, control_targets(xy, 7))
    assert metrics["r2_x"] > 0.999 and metrics["r2_y"] > 0.999 and metrics["r2_mean"] > 0.999
    assert max(metrics["mae_x"], metrics["mae_y"], metrics["mean_error"], metrics["median_error"]) < 1e-6
    assert (metrics["n_train"], metrics["n_test"]) == (433, 167)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_probe_finds_nothing_in_noise(seed):
    """With d = 32 and 3,250 train rows the overfit term is ≈ d/n_train ≈ 0.01, so test R² stays near 0."""
    rng = np.random.default_rng(seed)
    reps, xy = rng.normal(size=(4500, 32)), rng.integers(-900, 901, size=(4500, 2)).astype(float)
    metrics = standard_probe(reps, xy, probe_split(4500, seed), ALPHAS, control_targets(xy, 7))
    assert abs(metrics["r2_x"]) < 0.05 and abs(metrics["r2_y"]) < 0.05


def test_probe_split_sizes_and_rounding():
    train, test = probe_split(4500)
    assert (len(train), len(test)) == (3250, 1250)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(4500))
    assert np.array_equal(np.concatenate([train, test]), np.random.default_rng(42).permutation(4500))
    assert len(probe_split(9)[0]) == 6  # 9 · 13/18 = 6.5 -> 6: half to even
    assert len(probe_split(27)[0]) == 20  # 19.5 -> 20
    assert len(probe_split(5602)[0]) == 4046  # 4046.11...


def test_probe_split_is_seeded():
    assert np.array_equal(probe_split(100, 7)[0], probe_split(100, 7)[0])
    assert not np.array_equal(probe_split(100, 7)[0], probe_split(100, 8)[0])


def test_metrics_on_a_hand_computed_example():
    true = np.array([[0, 0], [2, 0], [0, 4], [2, 4]])
    pred = np.array([[0, 0], [2, 0], [1, 4], [5, 0]])  # errors 0, 0, 1 and a 3-4-5 triangle
    metrics = probe_metrics(pred, true)
    # x: mean 1, SS_tot 4, SS_res 1 + 9 = 10. y: mean 2, SS_tot 16, SS_res 16.
    expected = {"r2_x": -1.5, "r2_y": 0.0, "r2_mean": -0.75, "mae_x": 1.0, "mae_y": 1.0,
                "mean_error": 1.5, "median_error": 0.5}
    assert metrics == pytest.approx(expected, abs=1e-12)


def test_r2_uses_the_test_set_mean():
    """A constant shift of both predictions and truth leaves R² unchanged: SS_tot is about the test mean."""
    rng = np.random.default_rng(3)
    true, pred = rng.normal(size=(50, 2)), rng.normal(size=(50, 2))
    shifted = probe_metrics(pred + 1000, true + 1000)
    assert shifted["r2_x"] == pytest.approx(probe_metrics(pred, true)["r2_x"], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1])
def test_ols_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(300, 40)) * rng.uniform(0.1, 10, size=40)  # unstandardised features
    Y = X @ rng.normal(size=(40, 2)) + [5.0, -3.0] + rng.normal(size=(300, 2))
    W, b = fit_ols(X, Y)
    reference = LinearRegression().fit(X, Y)
    np.testing.assert_allclose(W, reference.coef_.T, rtol=0, atol=1e-8)
    np.testing.assert_allclose(b, reference.intercept_, rtol=0, atol=1e-8)
    assert W.dtype == np.float64 and W.shape == (40, 2)


def test_ols_accepts_float32_input_and_solves_in_float64():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(100, 5)).astype(np.float32)
    W64, b64 = fit_ols(X.astype(np.float64), X[:, :2].astype(np.float64))
    W, b = fit_ols(X, X[:, :2])
    assert W.dtype == np.float64
    np.testing.assert_array_equal(W, W64)
    np.testing.assert_allclose(predict(W, b, X), X[:, :2], atol=1e-10)


# ---- Atlantis reconstruction -------------------------------------------------------------------------------

def test_atlantis_split_bookkeeping():
    is_atlantis = np.zeros(40, dtype=bool)
    is_atlantis[[3, 10, 11, 25, 39]] = True
    train, baseline, test = atlantis_split(is_atlantis, seed=5, n_train=20, n_baseline=6)
    real = np.flatnonzero(~is_atlantis)
    order = real[np.random.default_rng(5).permutation(len(real))]
    assert np.array_equal(train, order[:20]) and np.array_equal(baseline, order[20:26])
    assert np.array_equal(test, [3, 10, 11, 25, 39])
    assert not is_atlantis[np.concatenate([train, baseline])].any()
    assert len(np.intersect1d(train, baseline)) == 0


def test_atlantis_split_refuses_too_few_cities():
    is_atlantis = np.array([False] * 30 + [True] * 3)
    with pytest.raises(ValueError, match="30"):
        atlantis_split(is_atlantis, n_train=25, n_baseline=6)
    with pytest.raises(ValueError, match="Atlantis city"):
        atlantis_split(np.zeros(50, dtype=bool), n_train=20, n_baseline=5)


def test_atlantis_reconstruction_errors():
    """Exactly linear for real cities, scrambled for Atlantis: baseline errors ~0, Atlantis errors large."""
    reps, xy = linear_world(400, 64, seed=6)
    is_atlantis = np.zeros(400, dtype=bool)
    is_atlantis[-30:] = True
    reps[is_atlantis] = reps[np.random.default_rng(0).permutation(np.flatnonzero(~is_atlantis))[:30]]
    baseline, atlantis = atlantis_reconstruction(reps, xy, is_atlantis, n_train=300, n_baseline=50)
    assert baseline.shape == (50,) and atlantis.shape == (30,)
    assert baseline.max() < 1e-6 and np.median(atlantis) > 100


def test_atlantis_groups_pool_and_test():
    baseline = [np.array([1.0, 2.0]), np.array([3.0]), np.array([4.0, 5.0])]
    atlantis = [np.array([10.0, 12.0]), np.array([100.0, 300.0]), np.array([14.0])]
    groups = atlantis_groups(baseline, atlantis, [False, True, False], control_atlantis_errors=np.array([2.0, 4.0]))
    assert groups["baseline"] == {"models": 3, "cities": 5, "mean": 3.0, "median": 3.0}
    assert groups["atlantis_without_distance"] == {"models": 2, "cities": 3, "mean": 12.0, "median": 12.0}
    assert groups["atlantis_with_distance"] == {"models": 1, "cities": 2, "mean": 200.0, "median": 200.0}
    reference = mannwhitneyu([10.0, 12.0, 14.0], [100.0, 300.0], alternative="two-sided")
    assert groups["mann_whitney"]["u"] == reference.statistic == 0.0
    assert groups["mann_whitney"]["p_value"] == pytest.approx(reference.pvalue)
    assert groups["control_atlantis_mean"] == 3.0


def test_atlantis_groups_without_a_distance_pair():
    groups = atlantis_groups([np.ones(3)], [np.ones(2)], [False])
    assert groups["atlantis_with_distance"] == {"models": 0, "cities": 0, "mean": None, "median": None}
    assert groups["mann_whitney"] is None and "control_atlantis_mean" not in groups


# ---- 3-D views -------------------------------------------------------------------------------------------------

def planted_reps(n=400, d=12, seed=0):
    """Cities on a plane; representations carry x, y along two random directions plus one dominant nuisance
    direction (variance 100x) orthogonal to both, and small noise."""
    rng = np.random.default_rng(seed)
    xy = rng.uniform(-100, 100, (n, 2))
    basis, _ = np.linalg.qr(rng.normal(size=(d, 3)))
    nuisance = rng.normal(0, 1000, n)
    reps = xy @ basis[:, :2].T + np.outer(nuisance, basis[:, 2]) + rng.normal(0, 1e-3, (n, d))
    return reps, xy, nuisance


def test_pca_view_matches_sklearn_up_to_sign_and_fixes_the_sign():
    from sklearn.decomposition import PCA
    from worldrep.probes import pca_view
    reps = np.random.default_rng(1).normal(size=(200, 8)) * np.arange(1, 9)
    view = pca_view(reps)
    reference = PCA(3).fit_transform(reps)
    for k in range(3):
        assert min(np.abs(view[:, k] - reference[:, k]).max(), np.abs(view[:, k] + reference[:, k]).max()) < 1e-9
    # The sign is a property of the direction (largest loading positive), not of the data: negated data gives
    # the same directions, hence negated coordinates; an SVD-sign view could come back either way.
    assert np.allclose(pca_view(-reps), -view)


def test_mixed_view_recovers_the_map_and_the_nuisance_axis():
    from worldrep.probes import mixed_view
    reps, xy, nuisance = planted_reps()
    view = mixed_view(reps, xy, np.arange(300))
    assert np.abs(view[:, :2] - xy).max() < 1e-2  # probe-predicted x and y
    # axis 3: the first PC after removing the probe directions is the nuisance direction (up to sign)
    assert abs(np.corrcoef(view[:, 2], nuisance)[0, 1]) > 0.999


def test_mixed_view_third_axis_is_orthogonal_to_the_probe_directions():
    from worldrep.probes import fit_ols, mixed_view
    rng = np.random.default_rng(3)
    reps, xy = rng.normal(size=(300, 10)), rng.normal(size=(300, 2))
    view = mixed_view(reps, xy, np.arange(200))
    W, _ = fit_ols(reps[:200], xy[:200])
    centred = reps - reps.mean(axis=0)
    # axis 3 = centred reps @ v with v ⟂ span(W): regress it on the centred reps to read v back
    v, *_ = np.linalg.lstsq(centred, view[:, 2] - view[:, 2].mean(), rcond=None)
    assert np.abs(W.T @ v).max() < 1e-8 * np.linalg.norm(W) * np.linalg.norm(v)


@pytest.mark.parametrize("steps, expected", [
    (range(0, 8205 * 41, 8204), [8204, 3 * 8204, 6 * 8204, 15 * 8204, 23 * 8204]),
    ([0, 1, 2, 3, 4], [1, 3]),  # a short run keeps what it has
    ([0], []),
    ([4, 0, 2, 6, 8, 12], [2, 6, 12]),  # unsorted input; s = 2
])
def test_view_steps(steps, expected):
    from worldrep.probes import view_steps
    assert view_steps(steps) == expected


def test_atlantis_predictions_are_the_rows_behind_the_errors():
    from worldrep.probes import atlantis_predictions, atlantis_reconstruction, atlantis_split, euclidean_errors
    rng = np.random.default_rng(5)
    n = 60
    is_atlantis = np.zeros(n, bool)
    is_atlantis[-6:] = True
    reps, xy = rng.normal(size=(n, 5)), rng.normal(size=(n, 2))
    base_pred, atl_pred = atlantis_predictions(reps, xy, is_atlantis, seed=1, n_train=40, n_baseline=10)
    _, baseline, test = atlantis_split(is_atlantis, 1, 40, 10)
    base_err, atl_err = atlantis_reconstruction(reps, xy, is_atlantis, seed=1, n_train=40, n_baseline=10)
    assert base_pred.shape == (10, 2) and atl_pred.shape == (6, 2)
    assert np.array_equal(euclidean_errors(base_pred, xy[baseline]), base_err)
    assert np.array_equal(euclidean_errors(atl_pred, xy[test]), atl_err)


# ---- the ridge probe and the control task ------------------------------------------------------------------------

def loo_ridge(X: np.ndarray, Y: np.ndarray, alphas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ridge probe written out: for each alpha and each left-out row, centre the other rows, solve
    (XᵀX + αI) w = Xᵀy, predict the left-out row; keep per column the alpha of least squared error; refit on all."""
    def fit(X, Y, alpha):
        mx, my = X.mean(0), Y.mean(0)
        W = np.linalg.solve((X - mx).T @ (X - mx) + alpha * np.eye(X.shape[1]), (X - mx).T @ (Y - my))
        return W, my - mx @ W

    errors = np.zeros((len(alphas), Y.shape[1]))
    for a, alpha in enumerate(alphas):
        for i in range(len(X)):
            keep = np.arange(len(X)) != i
            W, b = fit(X[keep], Y[keep], alpha)
            errors[a] += (X[i] @ W + b - Y[i]) ** 2
    best = np.asarray(alphas)[errors.argmin(0)]
    fits = [fit(X, Y[:, [k]], alpha) for k, alpha in enumerate(best)]
    return np.hstack([W for W, _ in fits]), np.concatenate([b for _, b in fits]), best


@pytest.mark.parametrize("seed", [0, 1])
def test_ridge_probe_matches_leave_one_out_written_out(seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(60, 8))
    Y = np.column_stack([X @ rng.normal(size=8) + rng.normal(scale=4.0, size=60), rng.normal(size=60) * 50])
    W, b, alpha = fit_ridge_cv(X, Y, ALPHAS)
    W_ref, b_ref, alpha_ref = loo_ridge(X, Y, ALPHAS)
    assert list(alpha) == list(alpha_ref) and alpha[0] != alpha[1]  # a signal and a noise column: two alphas
    np.testing.assert_allclose(W, W_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b, b_ref, rtol=1e-8, atol=1e-8)


def test_ridge_scores_noise_near_zero_where_ols_overfits():
    """The laptop world's shape (564 cities, 128 features): OLS on random features scores well below 0 on test,
    the ridge probe about 0; on features that hold the map both score the same."""
    rng = np.random.default_rng(3)
    xy = rng.integers(-900, 901, size=(564, 2)).astype(float)
    split = probe_split(564, 42)
    noise = standard_probe(rng.normal(size=(564, 128)), xy, split, ALPHAS, control_targets(xy, 7))
    assert noise["r2_mean"] < -0.3 and abs(noise["ridge_r2_mean"]) < 0.05
    assert noise["ridge_alpha_x"] == noise["ridge_alpha_y"] == max(ALPHAS)
    reps, xy = linear_world(564, 128, 4)
    real = standard_probe(reps + rng.normal(scale=0.1, size=reps.shape), xy, split, ALPHAS, control_targets(xy, 7))
    assert real["r2_mean"] > 0.99 and abs(real["ridge_r2_mean"] - real["r2_mean"]) < 0.01


def test_control_task_and_selectivity():
    """The control targets are the same coordinates, permuted by the seed; a map scores near 1 on the task and
    about what noise scores on the control, so its selectivity is high; noise features have none."""
    reps, xy = linear_world(600, 64, 5)
    control = control_targets(xy, 7)
    assert sorted(map(tuple, control)) == sorted(map(tuple, xy)) and not np.array_equal(control, xy)
    np.testing.assert_array_equal(control, control_targets(xy, 7))
    assert not np.array_equal(control, control_targets(xy, 8))
    row = standard_probe(reps, xy, probe_split(600, 42), ALPHAS, control)
    assert row["selectivity"] == row["r2_mean"] - row["control_r2_mean"]
    assert row["ridge_selectivity"] == row["ridge_r2_mean"] - row["ridge_control_r2_mean"]
    assert row["ridge_control_r2_mean"] < 0.05 and row["ridge_selectivity"] > 0.95
    noise = np.random.default_rng(6).normal(size=(600, 64))
    empty = standard_probe(noise, xy, probe_split(600, 42), ALPHAS, control)
    assert abs(empty["ridge_selectivity"]) < 0.05


def test_ridge_tends_to_ols_as_alpha_goes_to_zero():
    rng = np.random.default_rng(7)
    X = rng.normal(size=(200, 30)) * rng.uniform(0.5, 5, 30) + rng.normal(0, 3, 30)
    Y = X @ rng.normal(size=(30, 2)) + rng.normal(scale=10, size=(200, 2))
    W_ols, b_ols = fit_ols(X, Y)
    gaps = []
    for alpha in (1e-2, 1e-5, 1e-8):
        W, b, chosen = fit_ridge_cv(X, Y, [alpha])
        assert list(chosen) == [alpha, alpha]
        gaps.append(np.abs(W - W_ols).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-9 * np.abs(W_ols).max()
    np.testing.assert_allclose(fit_ridge_cv(X, Y, [1e-8])[1], b_ols, rtol=1e-8)
