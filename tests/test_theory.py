"""Theory beside measurement: every shipped prediction against a real measurement at 64 seeds, a
wrong prediction flagged, the expression language's rejections, the table and the figures."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from skipbench import grid, harness, report, results, theory
from skipbench.registry import load_registry
from skipbench.results import Columns
from skipbench.expressions import evaluate_expression
from skipbench.specs import Prediction, PredictionSetting, SpecError, Variant

SEEDS = 64
PROFILE = """\
description = "theory tests: initialization only, small probe batches"
seeds = 64
[options.identity]
steps = 0
eval_batch = 64
[options.probes]
rows = 128
"""
# a residual-linear twin whose declared prediction drops the factor 2 of E||W2 h||^2 = 2 ||h||^2
WRONG = """\
[variants.residual-wrong]
builder = "residual"
params = { order = "branch-only", branch_scale = 0.5 }
network = { head = "linear" }

[[variants.residual-wrong.predictions]]
metric = "act_growth"
moment = 2
expression = "(1 + branch_scale**2)**n_blocks"
formula = "(1 + a^2)^L: deliberately wrong"
source = "tests/test_theory.py"
"""


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("theory")
    (root / "profile.toml").write_text(PROFILE)
    (root / "wrong.toml").write_text(WRONG)
    return root


@pytest.fixture(scope="module")
def registry(files):
    return load_registry(entrypoints=False, env=False, pyproject=None, variant_files=[str(files / "wrong.toml")])


def measure(registry, files, variants, measurement, depths, width, mode=None):
    """(table, theory.rows) of a real run through the engine: the grid's tasks, each by
    harness.run_task, then theory.evaluate and theory.rows."""
    run = grid.make_run(registry, str(files / "profile.toml"), variants, measurements=[measurement], depths=depths,
                        width=width, batch=16, jobs=1, mode=mode)
    assert len(run.plans[0].seeds) == SEEDS
    table = results.concat(harness.run_task(registry, run.plans[0], task) for task in run.tasks(registry))
    assert results.count(table, "failed") == 0
    predictions = theory.evaluate(registry, run, table)
    return table, predictions, theory.rows(table, predictions)


def agree(rows, expected: dict) -> None:
    """Every (variant, depth) of `expected` has one row with that prediction, 64 seeds and |z| <= 4."""
    assert sorted((r["variant"], r["depth"]) for r in rows) == sorted(expected)
    for r in rows:
        assert r["value"] == pytest.approx(expected[r["variant"], r["depth"]], rel=1e-12, abs=1e-15)
        assert r["n"] == SEEDS and r["z"] is not None, r
        assert abs(r["z"]) <= theory.DEPARTURE_Z and not r["flagged"], r
    print({(r["variant"], r["depth"]): round(r["z"], 2) for r in rows})  # the observed z-scores (pytest -s)


@pytest.fixture(scope="module")
def residual_run(registry, files):
    return measure(registry, files, ["residual-linear", "residual-wrong"], "gradient-flow", [2, 6], 64)


# -- one test per shipped prediction ------------------------------------------------------------
def test_plain_he_relu_keeps_the_squared_activation_norm(registry, files):
    """E[act_growth^2] = 1 for He-normal ReLU layers (depth / width small: the log of act_growth^2
    has variance ~5 depth / width, and its mean over seeds must be near normal)."""
    _, _, rows = measure(registry, files, ["plain"], "gradient-flow", [2, 4], 64)
    agree(rows, {("plain", 2): 1.0, ("plain", 4): 1.0})


def test_residual_linear_grows_by_one_plus_two_a_squared(residual_run):
    rows = [r for r in residual_run[2] if r["variant"] == "residual-linear"]
    assert rows[0]["declared_by"] == "variant residual-linear"
    agree(rows, {("residual-linear", 2): 1.5, ("residual-linear", 6): 1.5**3})


def test_nf_residual_grows_by_l_alpha_squared(registry, files):
    _, _, rows = measure(registry, files, ["nf-residual"], "gradient-flow", [2, 8], 64)
    agree(rows, {("nf-residual", 2): 1 + 0.2**2, ("nf-residual", 8): 1 + 4 * 0.2**2})


def test_identity_at_init_variants_have_mse_zero(registry, files):
    _, _, rows = measure(registry, files, ["rezero", "skipinit", "fixup"], "identity", [2, 4], 16)
    agree(rows, {(v, d): 0.0 for v in ("rezero", "skipinit", "fixup") for d in (2, 4)})
    assert all(r["mean"] == 0 and r["se"] == 0 and r["z"] == 0 for r in rows)  # exactly, in every seed


def test_highway_gate_mean_at_init_by_quadrature(registry, files):
    _, _, rows = measure(registry, files, ["highway"], "probes", [1, 3], 32)
    expected = theory.gaussian_sigmoid_mean(-2.0, 1 / 32, 32)
    assert all(r["index"] == 0 for r in rows)
    agree(rows, {("highway", 1): expected, ("highway", 3): expected})


def test_stochastic_depth_keeps_the_mean_survival_probability(registry, files):
    _, _, rows = measure(registry, files, ["stochastic-depth"], "probes", [2, 8], 16)
    agree(rows, {("stochastic-depth", 2): 0.5, ("stochastic-depth", 8): 1 - 5 / 8 * 0.5})  # 1 - (L+1)/(2L) (1-p_L)
    _, _, rows = measure(registry, files, ["stochastic-depth"], "probes", [8], 16, mode="eval")
    agree(rows, {("stochastic-depth", 8): 1.0})  # every block runs (scaled by p_l) in eval mode


def test_gate_quadrature_matches_a_brute_force_integral():
    """Gauss-Hermite and Gauss-Laguerre against Simpson's rule on a fine grid (scipy's chi2 density)."""
    stats = pytest.importorskip("scipy.stats")
    integrate = pytest.importorskip("scipy.integrate")
    special = pytest.importorskip("scipy.special")
    z = np.linspace(-12, 12, 2001)
    for bias, scale2, dof in ((-2.0, 1 / 32, 32), (0.5, 2 / 4, 4)):
        u = np.linspace(0, stats.chi2(dof).ppf(1 - 1e-13), 3001)
        inner = integrate.simpson(special.expit(bias + np.sqrt(scale2 * u)[:, None] * z) * stats.norm.pdf(z), x=z)
        expected = integrate.simpson(inner * stats.chi2(dof).pdf(u), x=u)
        assert theory.gaussian_sigmoid_mean(bias, scale2, dof) == pytest.approx(expected, abs=1e-8)
    assert theory.gaussian_sigmoid_mean(-2.0, 0.0, 32) == pytest.approx(1 / (1 + math.exp(2)), abs=1e-15)


# -- departures ---------------------------------------------------------------------------------
def test_a_wrong_prediction_is_flagged(residual_run):
    table, predictions, rows = residual_run
    wrong = [r for r in rows if r["variant"] == "residual-wrong"]
    assert [r["value"] for r in wrong] == [1.25, 1.25**3]
    assert all(r["flagged"] and r["z"] > theory.DEPARTURE_Z for r in wrong)
    text = theory.text_table(table, predictions)
    flagged = [line for line in text.splitlines() if theory.FLAG in line and "residual-wrong" in line]
    assert len(flagged) == 2
    assert "(1 + a^2)^L: deliberately wrong. Source: tests/test_theory.py" in text
    assert "(!): departs by more than 4 standard errors" in " ".join(text.split()) and ": 2 of 4." in text


def _setting(**params) -> PredictionSetting:
    return PredictionSetting(4, 8, 2, 2, params)


def test_rows_zero_spread_nonfinite_and_errors():
    """SE 0: z = 0 when the mean is the prediction, else infinite (flagged); undefined and
    non-finite seeds are left out and counted; a prediction that raised has no z; the flag's
    threshold grows as the seeds get fewer."""
    value = np.array([0.0] * 8 + [np.nan, np.inf])
    table = results.task_table([Columns("mse_init", value, "mse", np.arange(10))], variant="v", builder="b",
                               measurement="identity", depth=2, width=8, batch=2, experiment="")
    base = {"experiment": "", "variant": "v", "measurement": "identity", "metric": "mse_init", "index": None,
            "depth": 2, "width": 8, "moment": 1, "formula": "f", "source": "s", "declared_by": "builder b", "error": ""}
    exact, off, failed = theory.rows(table, [{**base, "value": 0.0}, {**base, "value": 1e-3},
                                             {**base, "value": None, "error": "the prediction is inf"}])
    assert (exact["z"], exact["flagged"], exact["n"], exact["nonfinite"]) == (0.0, False, 8, 2)
    assert "2 non-finite seed value(s) left out" in exact["notes"]
    assert off["z"] == -math.inf and off["flagged"]
    assert failed["z"] is None and not failed["flagged"] and "the prediction is inf" in failed["notes"]
    # few seeds: the threshold is read on Student's t, so a finite z of 5 is not a departure at 8
    # seeds but is at 64; an exact disagreement (SE 0) is one at any number of seeds
    assert theory.threshold(8) > 8 and 4 < theory.threshold(64) < 4.5 and theory.threshold(1) == math.inf
    few = table.filter(pc.less(table["seed"], 3))
    [row] = theory.rows(few, [{**base, "value": 1e-3}])
    assert row["z"] == -math.inf and row["flagged"]


# -- declarations -------------------------------------------------------------------------------
BAD_EXPRESSIONS = {
    "branch_scale.real": "attribute access (branch_scale.real) is not allowed",
    "__import__('os')": "__import__() is not one of the functions",
    "'1' * n_blocks": "'1' is not a number",
    "n_blocks if depth else 1": "IfExp",
    "depth > 1": "Compare",
    "sqrt(x=depth)": "sqrt() takes plain positional arguments",
    "(1 +": "not a valid expression",
    "depth % 2": "operator Mod is not allowed",
}


@pytest.mark.parametrize("expression", list(BAD_EXPRESSIONS))
def test_expression_rejections_name_the_variant_in_one_line(tmp_path, expression):
    file = tmp_path / "bad.toml"
    file.write_text(f'[variants.oops]\nbuilder = "residual"\n[[variants.oops.predictions]]\nmetric = "act_growth"\n'
                    f'expression = "{expression}"\n')
    with pytest.raises(SpecError) as info:
        load_registry(entrypoints=False, env=False, pyproject=None, variant_files=[str(file)])
    message = str(info.value)
    assert message.startswith(f"{file}: variant 'oops': predictions[0]: prediction of act_growth: expression ")
    assert BAD_EXPRESSIONS[expression] in message and "\n" not in message


def test_expression_names_are_checked_against_the_builder(tmp_path):
    file = tmp_path / "bad.toml"
    file.write_text('[variants.oops]\nbuilder = "residual"\n[[variants.oops.predictions]]\nmetric = "act_growth"\n'
                    'expression = "alpha * order"\n')  # alpha is nf-residual's; order is residual's str parameter
    with pytest.raises(SpecError, match=r"unknown name\(s\) alpha, order; allowed names: depth, width, batch, "
                                        r"n_blocks, bias, branch_scale, zero_init_last"):
        load_registry(entrypoints=False, env=False, pyproject=None, variant_files=[str(file)])
    file.write_text('[variants.oops]\nbuilder = "residual"\n[[variants.oops.predictions]]\nmetric = "act_growth"\n'
                    'expression = "1"\nmoment = 3\n')
    with pytest.raises(SpecError, match="moment must be 1 or 2"):
        load_registry(entrypoints=False, env=False, pyproject=None, variant_files=[str(file)])


def test_expressions_evaluate_in_floats():
    assert evaluate_expression("(1 + 2 * a**2)**n_blocks", {"a": 0.5, "n_blocks": 3}) == 1.5**3
    assert evaluate_expression("sqrt(max(depth, 4)) - -1", {"depth": 9}) == 4.0
    with pytest.raises(OverflowError):  # integers would run away; floats overflow at once
        evaluate_expression("10**10**10", {})
    prediction = Prediction("m", "1 / (depth - 4)")
    assert theory._prediction_value(prediction, _setting())[1].startswith("the prediction raised ZeroDivisionError")
    assert prediction.formula == "1 / (depth - 4)"


def test_variant_predictions_pickle_and_reach_the_definition(registry):
    variant = registry.variants["residual-linear"]
    clone = pickle.loads(pickle.dumps(variant))
    assert clone == variant and hash(clone) == hash(variant) and clone.predictions == variant.predictions
    definition = registry.definition(variant)
    assert definition["predictions"][0]["expression"] == "(1 + 2 * branch_scale**2)**n_blocks"
    assert "predictions" not in definition["builder_definition"]  # the residual builder declares none
    assert registry.definition(registry.variants["plain"])["builder_definition"]["predictions"][0]["moment"] == 2
    assert "predictions" not in registry.definition(registry.variants["dense"])["builder_definition"]
    with pytest.raises(SpecError, match="tuple of Prediction"):
        Variant("v", "plain", predictions=("1",))


def test_predictions_do_not_apply_outside_their_theory(registry):
    """The builders' callables return None where their closed form does not hold."""
    def predict(builder, params, last=None, network=None, options=None, mode=None):
        reg = registry.builders[builder]
        full = {p.name: p.default for p in reg.params} | params
        setting = PredictionSetting(4, 8, 2, 4, full, {}, {"stem": "none", "head": "none", **(network or {})},
                                    options or {}, "", mode, {**full, **(last or {})})
        return [p.predict(setting) for p in reg.predictions]

    assert predict("plain", {"activation": "gelu"}) == [None]
    assert predict("plain", {"init": "torch-default"}) == [None]
    assert predict("plain", {}, last={"activation": "identity"}) == [2.0]
    assert predict("rezero", {"alpha_init": 0.1}) == [None]
    assert predict("rezero", {}, network={"head": "linear"}) == [None]
    assert predict("fixup", {}, last={"post_activation": True}) == [None]
    assert predict("highway", {}, options={"inputs": "uniform"}) == [None]
    assert predict("highway", {}, network={"stem": "linear"}, options={"inputs": "normal"}) == [None]
    assert predict("stochastic-depth", {}, mode="eval") == [1.0]
    assert predict("nf-residual", {}, last={"alpha": 0.0}) == [pytest.approx(1 + 3 * 0.2**2)]


# -- presentation -------------------------------------------------------------------------------
def test_text_table_fits_120_columns_with_footnotes(residual_run):
    table, predictions, _ = residual_run
    assert theory.text_table(table, []) == ""
    long = "a-variant-name-long-enough-to-need-wrapping-in-a-narrow-terminal-table"
    renamed = [{**p, "variant": long + p["variant"], "experiment": "an-experiment-with-a-long-name"}
               for p in predictions]
    table = table.set_column(0, "variant", pc.binary_join_element_wise(long, table["variant"], ""))
    table = table.set_column(table.schema.get_field_index("experiment"), "experiment",
                             pa.array(["an-experiment-with-a-long-name"] * len(table)))
    for preds, tab in ((predictions, residual_run[0]), (renamed, table)):
        text = theory.text_table(tab, preds)
        assert max(len(line) for line in text.splitlines()) <= report.TERMINAL_WIDTH
        assert "[1] variant residual-linear: E[act_growth^2] = (1 + 2 a^2)^L" in text.replace(long, "")
        assert "Source: He et al. 2015" in text


def test_figures_draw_measured_band_and_dashed_prediction(residual_run):
    table, predictions, _ = residual_run
    [(stem, title, fig)] = theory.figures(table, predictions)
    assert stem == "theory-gradient-flow-act-growth-squared" and "E[act_growth^2]" in title
    lines = fig.axes[0].get_lines()
    dashed = [line for line in lines if line.get_linestyle() == "--"]
    assert len(dashed) == 2 and [list(line.get_xdata()) for line in dashed] == [[2, 6], [2, 6]]
    assert list(dashed[1].get_ydata()) == [1.25, 1.25**3]
    assert len(fig.axes[0].collections) == 2  # one ±2 SE band per variant
    import matplotlib.pyplot as plt

    plt.close(fig)


@pytest.mark.parametrize("n", [2, 3, 8, 64, 256, 10_000])
def test_threshold_is_students_t_quantile_of_the_normal_tail(n):
    """threshold(n) is computed from scipy.special (a lighter import); it is the quantile of
    Student's t with n - 1 degrees of freedom whose upper tail is the normal's beyond
    DEPARTURE_Z, as scipy.stats defines both, to the last bit."""
    from scipy import stats

    expected = float(stats.t.isf(stats.norm.sf(theory.DEPARTURE_Z), n - 1))
    assert theory.threshold(n) == max(theory.DEPARTURE_Z, expected)
