from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
from harness_hawkes import Hawkes, expected_gap, least_squares_fit, log_likelihood
from harness_hawkes import _model as model_module
from harness_hawkes._process import fit_users
from scipy.integrate import quad

from harness.errors import HarnessError, UsageError
from harness.interactions import Interactions

HOUR = 3600.0


def stream_from_visits(visits: dict[int, list[float]], n_users: int | None = None,
                       events_per_visit: int = 2, spacing: float = 60.0) -> Interactions:
    """A sessionized stream: each visit start (seconds) gets a few events ``spacing`` apart."""
    rows = []
    visit_id = 0
    for user in sorted(visits):
        for start in visits[user]:
            for j in range(events_per_visit):
                rows.append((start + j * spacing, user, visit_id))
            visit_id += 1
    rows.sort()
    t, user, visit = (np.array(col) for col in zip(*rows, strict=True))
    n_users = n_users if n_users is not None else int(user.max()) + 1
    return Interactions.from_arrays(user, np.zeros(len(t), int), t, n_users=n_users, n_items=1,
                                    session=visit, visit=visit)


def simulate_starts(mu: float, alpha: float, beta: float, end: float, seed: int) -> np.ndarray:
    from tick.hawkes import SimuHawkesExpKernels

    sim = SimuHawkesExpKernels(adjacency=np.array([[alpha]]), decays=np.array([[beta]]),
                               baseline=np.array([mu]), end_time=end, seed=seed, verbose=False)
    sim.simulate()
    return np.asarray(sim.timestamps[0])


# -- the process ---------------------------------------------------------------------------------


def test_tick_fit_recovers_simulated_parameters_and_picks_the_true_decay() -> None:
    times = simulate_starts(0.3, 0.5, 2.0, end=4000.0, seed=1)
    [(user, mu, alpha, beta)] = fit_users([(7, times - times[0])], (0.5, 2.0, 8.0))
    assert user == 7 and beta == 2.0
    assert mu == pytest.approx(0.3, abs=0.05)
    assert alpha == pytest.approx(0.5, abs=0.08)


def test_log_likelihood_matches_direct_sum_and_quadrature() -> None:
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 20, 12))
    times[3] = times[2]  # a tie
    mu, alpha, beta, end = 0.4, 0.6, 1.3, 25.0

    def intensity(s: float, strict: bool = True) -> float:
        past = times[times < s] if strict else times[times <= s]
        return mu + alpha * beta * float(np.exp(-beta * (s - past)).sum())

    # intensity at event i sums over events strictly before it in index order
    logs = sum(math.log(mu + alpha * beta * sum(math.exp(-beta * (times[i] - times[j]))
                                                for j in range(i))) for i in range(len(times)))
    points = np.unique(np.r_[0.0, times, end])
    integral = sum(quad(intensity, a, b)[0] for a, b in zip(points[:-1], points[1:], strict=True))
    assert log_likelihood(times, mu, alpha, beta, end) == pytest.approx(logs - integral, rel=1e-9)


@pytest.mark.parametrize("mu", [1e-4, 0.05, 1.0, 40.0])
def test_expected_gap_of_a_poisson_process_is_analytic(mu: float) -> None:
    cutoff = 30.0
    got = expected_gap([mu], [0.0], [1.0], [0.0], cutoff)[0]
    assert got == pytest.approx((1 - math.exp(-mu * cutoff)) / mu, rel=1e-8)


def test_expected_gap_matches_quadrature() -> None:
    mu = np.array([0.2, 0.05, 1.0, 0.3])
    alpha = np.array([0.5, 0.9, 0.1, 1.4])
    beta = np.array([1.0, 0.1, 10.0, 3.0])
    excitation = np.array([2.0, 0.5, 1.0, 0.0])
    cutoff = 50.0
    got = expected_gap(mu, alpha, beta, excitation, cutoff)
    for k in range(len(mu)):
        m, a, b, e = mu[k], alpha[k], beta[k], excitation[k]
        reference = quad(lambda u: math.exp(-(m * u + a * e * (1 - math.exp(-b * u)))),  # noqa: B023
                         0, cutoff, limit=200)[0]
        assert got[k] == pytest.approx(reference, rel=1e-8)


def test_expected_gap_matches_monte_carlo_of_the_next_event() -> None:
    # Thinning simulation of the first event after t, where the intensity is
    # mu + alpha * beta * excitation * exp(-beta u); gaps beyond the cut-off count as the cut-off.
    mu, alpha, beta, excitation, cutoff = 0.1, 0.8, 0.7, 3.0, 40.0
    rng = np.random.default_rng(3)
    n = 200_000
    bound = mu + alpha * beta * excitation  # the intensity only decays after t
    u = np.zeros(n)
    done = np.zeros(n, bool)
    while not done.all():
        active = np.flatnonzero(~done)
        u[active] += rng.exponential(1 / bound, active.size)
        lam = mu + alpha * beta * excitation * np.exp(-beta * u[active])
        accept = (rng.random(active.size) * bound <= lam) | (u[active] >= cutoff)
        done[active[accept]] = True
    samples = np.minimum(u, cutoff)
    expected = expected_gap([mu], [alpha], [beta], [excitation], cutoff)[0]
    assert abs(samples.mean() - expected) < 4 * samples.std() / math.sqrt(n)


# -- the model -----------------------------------------------------------------------------------


def simulated_users(n_users: int, seed: int, end_hours: float = 400.0,
                    mu: float = 0.1, alpha: float = 0.5, beta: float = 1.0
                    ) -> dict[int, list[float]]:
    out = {}
    for u in range(n_users):
        kept: list[float] = []
        for start in simulate_starts(mu, alpha, beta, end_hours, seed + u) * HOUR:
            if not kept or start - kept[-1] > 600.0:  # a visit lasts 60 s: keep them apart
                kept.append(float(start))
        out[u] = kept
    return out


def test_model_recovers_the_visit_rate_and_excitation() -> None:
    visits = simulated_users(25, seed=10, end_hours=1500.0)
    model = Hawkes(history="all", n_jobs=1, refit="frozen")
    model.fit(stream_from_visits(visits))
    assert model.fit_report["fitted"] == 25
    unit = model.time_unit_
    rates = [mu / (1 - a) / unit * HOUR for mu, a, _ in model.params_.values()]
    assert np.median(rates) == pytest.approx(0.1 / (1 - 0.5), rel=0.15)
    assert np.median([a for _, a, _ in model.params_.values()]) == pytest.approx(0.5, abs=0.15)


def reference_prediction(model: Hawkes, starts: list[float], user: int, t: float,
                         window: int | None) -> float:
    mu, alpha, beta = model.params_[user]
    past = np.array([s for s in starts if s <= t])
    if window:
        past = past[-window:]
    unit = model.time_unit_
    excitation = np.exp(-beta * (t - past) / unit).sum()
    return expected_gap([mu], [alpha], [beta], [excitation], model.cutoff_ / unit)[0] * unit


@pytest.mark.parametrize("history", ["last15", "all"])
def test_predictions_use_training_and_observed_visits(history: str) -> None:
    visits = simulated_users(6, seed=20)
    stream = stream_from_visits(visits)
    cut = int(0.7 * len(stream))
    model = Hawkes(history=history, n_jobs=1, refit="frozen")
    model.fit(stream[:cut])
    assert model.fit_report["fitted"] == 6
    rest = stream[cut:]
    window = 15 if history == "last15" else None
    checked = 0
    for k in range(0, len(rest), 7):
        model.observe(rest[k : k + 7])
        block = rest[k : k + 7]
        got = model.predict_return_time(block.user, block.t)
        for j in range(len(block)):
            u, t = int(block.user[j]), float(block.t[j])
            starts = [s for s in visits[u] if s <= stream.t[cut + k + len(block) - 1]]
            assert got[j] == pytest.approx(reference_prediction(model, starts, u, t, window),
                                           rel=1e-9)
            checked += 1
    assert checked > 50
    assert model.fit_report["predictions"]["fitted"] == checked


def test_a_new_visit_excites_the_process() -> None:
    visits = simulated_users(3, seed=30, end_hours=800.0, alpha=0.7)
    stream = stream_from_visits(visits)
    model = Hawkes(history="all", decay=1.0, n_jobs=1, refit="frozen")
    model.fit(stream)
    user = max(model.params_, key=lambda u: model.params_[u][1])
    assert model.params_[user][1] > 0.2
    t_last = visits[user][-1]
    later = t_last + 50 * HOUR
    quiet = model.predict_return_time(np.array([user]), np.array([later]))[0]
    new_visit = Interactions.from_arrays([user], [0], [later], n_users=3, n_items=1,
                                         session=[10**6], visit=[10**6])
    model.observe(new_visit)
    excited = model.predict_return_time(np.array([user]), np.array([later]))[0]
    assert excited < quiet
    assert 0 < excited <= model.cutoff_


def test_fallback_rules_and_counts() -> None:
    visits = simulated_users(4, seed=40)
    visits[10] = [0.0, 5 * HOUR, 7 * HOUR]  # 3 visits < min_sessions
    visits[11] = [3 * HOUR]  # one visit
    stream = stream_from_visits(visits, n_users=13, spacing=60.0)
    model = Hawkes(min_sessions=5, n_jobs=1, refit="frozen")
    model.fit(stream)
    report = model.fit_report
    assert report["users"] == 6
    assert report["fitted"] == 4
    assert report["fallback_few_sessions"] == 2
    assert report["fallback_failed_fit"] == 0
    # return gaps: end of a visit (start + 60 s) to the next start
    assert model.predict_return_time(np.array([10]), np.array([8 * HOUR]))[0] == pytest.approx(
        ((5 * HOUR - 60) + (2 * HOUR - 60)) / 2)
    gaps = [b - (a + 60) for v in visits.values() for a, b in zip(v[:-1], v[1:], strict=False)]
    pred = model.predict_return_time(np.array([11, 12]), np.array([4 * HOUR, 4 * HOUR]))
    np.testing.assert_allclose(pred, np.mean(gaps))
    assert report["global_mean_gap_seconds"] == pytest.approx(np.mean(gaps))
    assert report["predictions"] == {"fitted": 0, "fallback": 2, "unseen_user": 1}


def test_failed_fits_fall_back_and_are_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    visits = simulated_users(5, seed=50)
    visits[7] = [100.0] * 6  # every visit at one instant: no fit possible
    real = model_module.fit_users
    monkeypatch.setattr(model_module, "fit_users", lambda tasks, decays: [
        (u, math.nan, math.nan, math.nan) if u == 3 else row for u, row in
        ((row[0], row) for row in real(tasks, decays))])
    model = Hawkes(n_jobs=1, refit="frozen")
    model.fit(stream_from_visits(visits, events_per_visit=1))
    assert model.fit_report["fallback_failed_fit"] == 2
    assert model.fit_report["fitted"] == 4
    assert 3 not in model.params_ and 7 not in model.params_
    starts = visits[3]
    assert model.predict_return_time(np.array([3]), np.array([starts[-1]]))[0] == \
        pytest.approx(np.mean(np.diff(starts)))


def test_serial_and_parallel_fits_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    visits = {u: (np.cumsum(np.random.default_rng(u).exponential(5 * HOUR, 8))).tolist()
              for u in range(30)}
    stream = stream_from_visits(visits, events_per_visit=1)
    monkeypatch.setattr(model_module, "MIN_FITS_FOR_WORKERS", 10)
    serial, parallel = Hawkes(n_jobs=1, refit="frozen"), Hawkes(n_jobs=2, refit="frozen")
    serial.fit(stream)
    parallel.fit(stream)
    assert serial.fit_report["workers"] == 1 and parallel.fit_report["workers"] == 2
    assert parallel.params_ == serial.params_


def test_pickle_and_deepcopy_predict_the_same() -> None:
    stream = stream_from_visits(simulated_users(4, seed=60))
    model = Hawkes(n_jobs=1)
    model.fit(stream[:-20])
    users, times = stream.user[-20:], stream.t[-20:]
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.observe(stream[-20:])
        model_copy = copy.deepcopy(model)
        model_copy.observe(stream[-20:])
        np.testing.assert_array_equal(clone.predict_return_time(users, times),
                                      model_copy.predict_return_time(users, times))
    assert model.get_params() == {"history": "last15", "min_sessions": 5, "decay": None,
                                  "cutoff": None, "n_jobs": 1, "refit": "sliding"}


# -- errors --------------------------------------------------------------------------------------


def test_asking_hawkes_to_rank_is_a_clear_error_before_the_run() -> None:
    from harness.evaluate import Protocol, check_compatible, evaluate

    with pytest.raises(UsageError, match=r"'hawkes' cannot run the 'streaming' protocol.*"
                                         r"return_time.*--protocol sessions"):
        check_compatible(Hawkes, "streaming", "hawkes")

    class Exploding(Hawkes):
        def fit(self, train, *, seed=0):
            raise AssertionError("fit must not run")

    stream = stream_from_visits(simulated_users(2, seed=70))
    with pytest.raises(UsageError, match="cannot run the 'streaming' protocol"):
        evaluate(Exploding(), stream, Protocol("streaming"))
    model = Hawkes(n_jobs=1)
    model.fit(stream)
    with pytest.raises(NotImplementedError):
        model.score(stream[:1])
    assert Hawkes.capabilities == frozenset({"return_time"})


def test_needs_a_sessionized_stream() -> None:
    plain = Interactions.from_arrays([0, 0], [0, 0], [0.0, 1.0], name="plain.csv")
    with pytest.raises(HarnessError, match=r"needs a sessionized stream.*'plain.csv'.*"
                                           r"--protocol sessions"):
        Hawkes().fit(plain)


@pytest.mark.parametrize("params, match", [
    ({"history": "last51"}, "unknown hawkes history 'last51'; did you mean 'last15'"),
    ({"min_sessions": 1}, "min_sessions must be an integer >= 2"),
    ({"decay": -1.0}, "decay must be a positive number or None, but got -1.0"),
    ({"cutoff": 0}, "cutoff must be a positive number or None"),
    ({"n_jobs": 0}, "n_jobs must be a positive integer or -1"),
    ({"refit": "slide"}, "unknown hawkes refit 'slide'; did you mean 'sliding'"),
])
def test_bad_parameters_are_reported_at_fit(params: dict, match: str) -> None:
    stream = stream_from_visits(simulated_users(2, seed=80))
    with pytest.raises(UsageError, match=match):
        Hawkes(**params).fit(stream)


def test_not_fitted() -> None:
    with pytest.raises(UsageError, match=r"not fitted; call fit\(train\) before"):
        Hawkes().predict_return_time(np.array([0]), np.array([0.0]))


def test_registered_entry_point() -> None:
    from harness.registry import Registry

    assert Registry.from_entry_points("models").get("hawkes") is Hawkes


# -- the sliding refit (THRNN's baseline) ---------------------------------------------------------


def contrast(times: np.ndarray, beta: float, mu: float, alpha: float) -> float:
    """``int_0^T lambda^2 - 2 sum_i lambda(t_i)``, integrated numerically between events."""
    def intensity(s: float) -> float:
        past = times[times < s]
        return mu + alpha * beta * float(np.exp(-beta * (s - past)).sum())

    points = np.unique(times)
    integral = sum(quad(lambda s: intensity(s) ** 2, lo, hi)[0]
                   for lo, hi in zip(points[:-1], points[1:], strict=True))
    return integral - 2 * sum(intensity(s) for s in times)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_least_squares_fit_is_the_exact_minimum_of_ticks_contrast(seed: int) -> None:
    from scipy.optimize import minimize
    from tick.hawkes import HawkesExpKern

    times = simulate_starts(0.5, 0.6, 2.0, end=30.0, seed=seed)
    times = times - times[0]
    mu, alpha, clipped = least_squares_fit(times, 2.0)
    best = minimize(lambda p: contrast(times, 2.0, *p), x0=[1.0, 0.3], method="L-BFGS-B",
                    bounds=[(0, None), (0, None)], options={"ftol": 1e-12, "gtol": 1e-9})
    assert (mu, alpha) == pytest.approx(tuple(best.x), rel=1e-3) and not clipped
    learner = HawkesExpKern(decays=2.0, gofit="least-squares")
    learner.fit([times])
    tick_fit = (float(learner.baseline[0]), float(learner.adjacency[0, 0]))
    assert (mu, alpha) == pytest.approx(tick_fit, rel=0.02)  # tick's descent stops nearby
    assert contrast(times, 2.0, mu, alpha) <= contrast(times, 2.0, *tick_fit) + 1e-9


def test_least_squares_fit_clips_negative_adjacency() -> None:
    times = np.arange(12.0)  # perfectly regular visits: excitation would only hurt
    mu, alpha, clipped = least_squares_fit(times, 0.5)
    assert clipped and alpha == 0.0 and mu == pytest.approx(12 / 11)  # n / T
    assert math.isnan(least_squares_fit(np.zeros(5), 0.5)[0])  # one instant: no time scale
    assert math.isnan(least_squares_fit(np.array([3.0]), 0.5)[0])


def sliding_reference(starts: list[float], t: float, cutoff: float, decay: float = 0.5
                      ) -> float | None:
    """A fit on the last 15 starts up to ``t`` (days, gaps over 500 h cut to 500 h); None when
    the fit is degenerate."""
    window = np.array([s for s in starts if s <= t][-15:])
    relative = np.r_[0.0, np.cumsum(np.minimum(np.diff(window), 500 * HOUR))] / 86400.0
    mu, alpha, _ = least_squares_fit(relative, decay)
    if math.isnan(mu):
        return None
    now = relative[-1] + (t - window[-1]) / 86400.0
    excitation = sum(math.exp(-decay * (now - r)) for r in relative)
    return expected_gap([mu], [alpha], [decay], [excitation], cutoff / 86400.0)[0] * 86400.0


def test_sliding_refit_fits_the_last_15_visits_before_each_prediction() -> None:
    visits = simulated_users(5, seed=90)
    visits[2][10:] = [s + 900 * HOUR for s in visits[2][10:]]  # one gap over 500 h
    stream = stream_from_visits(visits)
    cut = int(0.6 * len(stream))
    model = Hawkes(n_jobs=1)
    model.fit(stream[:cut])
    assert model.fit_report["refit"] == "sliding" and model.params_ == {}
    rest = stream[cut:]
    checked = degenerate = 0
    for k in range(0, len(rest), 5):
        block = rest[k : k + 5]
        model.observe(block)
        got = model.predict_return_time(block.user, block.t)
        for j in range(len(block)):
            u, t = int(block.user[j]), float(block.t[j])
            want = sliding_reference(visits[u], t, model.cutoff_)
            degenerate += want is None
            want = model.fallback_gap_[u] if want is None else want
            assert got[j] == pytest.approx(want, rel=1e-9)
            checked += 1
    assert checked > 50 and degenerate < checked
    report = model.fit_report
    windows = {(int(u), sum(s <= t for s in visits[int(u)])) for u, t in zip(rest.user, rest.t)}
    assert report["fitted"] + report["fallback_failed_fit"] == len(windows)  # one fit per window
    assert report["predictions"]["fitted"] == checked - degenerate


def test_sliding_refit_clips_negative_adjacency_and_counts_it(monkeypatch: pytest.MonkeyPatch) -> None:
    visits = simulated_users(2, seed=91)
    stream = stream_from_visits(visits)
    monkeypatch.setattr(model_module, "least_squares_fit", lambda times, beta: (0.4, 0.0, True))
    model = Hawkes(n_jobs=1)
    model.fit(stream)
    users, t = np.array([0, 1]), np.array([visits[0][-1], visits[1][-1]]) + 60.0
    got = model.predict_return_time(users, t)
    poisson = (1 - math.exp(-0.4 * model.cutoff_ / 86400.0)) / 0.4 * 86400.0  # alpha clipped to 0
    np.testing.assert_allclose(got, poisson, rtol=1e-6)
    assert model.fit_report["clipped_fits"] == 2 and model.fit_report["fitted"] == 2
    model.predict_return_time(users, t)  # same windows: no new fits
    assert model.fit_report["clipped_fits"] == 2 and model.fit_report["predictions"]["fitted"] == 4


def test_sliding_windows_shorter_than_min_sessions_fall_back() -> None:
    visits = {0: [0.0, 5 * HOUR, 9 * HOUR], 1: simulated_users(1, seed=92)[0]}
    model = Hawkes(n_jobs=1, min_sessions=5)
    model.fit(stream_from_visits(visits))
    got = model.predict_return_time(np.array([0]), np.array([9 * HOUR + 60]))[0]
    assert got == pytest.approx(((5 * HOUR - 60) + (4 * HOUR - 60)) / 2)
    assert model.fit_report["fallback_few_sessions"] == 1
