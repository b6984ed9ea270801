"""`rlft compare`: the report from synthetic run directories (no training), its statistics against direct
rliable calls, the config-difference table, the PNGs, errors, and the page in headless Chromium.

The Chromium test needs Debian's `chromium` and `chromium-driver` (.ci/run installs them) and selenium (the
dev extra); it drives /usr/bin/chromium through /usr/bin/chromedriver, downloading nothing, and skips with
the reason where they are absent.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from rlft.cli import main
from rlft.tools.compare import FIGURE_NAMES, compare

REPS = 300  # bootstrap replications: enough for the checks, fast on a shared CPU
VARIANTS = {
    # label: (config changes, final held-out success per seed; the outlier makes IQM differ from the mean)
    "grpo": ({"rl": {"algorithm": "grpo", "trainer": {"learning_rate": 1e-4}}}, [0.55, 0.6, 0.65, 0.05]),
    "ppo": (
        {"rl": {"algorithm": "ppo", "trainer": {"learning_rate": 3e-4, "critic": "separate"}}},
        [0.7, 0.8, 0.85, 1.0],
    ),
}
SEEDS = [0, 1, 2, 3]
DIFFERING = {"rl.algorithm", "rl.trainer.learning_rate", "rl.trainer.critic"}


def _config(label: str, seed: int, root: Path) -> dict:
    base = {
        "name": f"{label}_s{seed}",
        "output_dir": str(root),
        "seed": seed,
        "model": {"tiny": {"hidden_size": 64, "num_layers": 2}, "lora": None},
        "env": {"id": "rlft/FrozenLake-v0", "kwargs": {"map_name": "4x4"}, "max_turns": 8},
        "rl": {"init_from": "sft", "trainer": {"per_device_train_batch_size": 8}},
        "eval": {"episodes": 16, "every_steps": 4},
        "tracking": {"wandb": {"mode": "offline", "group": f"group-{seed}", "tags": []}},
    }
    changes = VARIANTS[label][0]
    base["rl"] = {
        **base["rl"],
        **{k: v for k, v in changes["rl"].items() if k != "trainer"},
        "trainer": {**base["rl"]["trainer"], **changes["rl"]["trainer"]},
    }
    return base


def write_run(
    root: Path, label: str, seed: int, final_success: float, eval_json: bool = True, alarm: bool = False
) -> Path:
    """A run directory as rlft writes it: config.yaml, metrics.jsonl (sft, rl with held-out evals, eval
    stage records) and eval.json."""
    run = root / f"{label}_s{seed}"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(_config(label, seed, root), sort_keys=False))
    rng = np.random.default_rng(seed + (100 if label == "ppo" else 0))
    records = [{"stage": "sft", "step": 10, "time": 0.0, "loss": 1.0}]
    env_steps = 0.0
    for step in range(0, 41):
        if step:
            env_steps += 30 + float(rng.integers(0, 5))  # seeds reach different env steps: interpolation
            proxy = 0.1 * step + rng.normal(0, 0.05)
            gold = (0.1 * step if step < 25 else 2.5 - 0.08 * (step - 25)) + rng.normal(0, 0.05)
            record = {
                "stage": "rl",
                "step": step,
                "time": float(step),
                "loss": 0.5,
                "episode/env_steps_total": env_steps,
                "episode/return": gold,
                "episode/reward/env": gold,
                "episode/reward/valid_action": -0.1 + 0.002 * step,
                "reward/env/mean": gold / 8,
                "proxy/return": proxy,
                "gold/return": gold,
                "gold/success": min(1.0, 0.02 * step),
            }
            if alarm and step >= 33:
                record.update({"alarm/overoptimization": 1.0, "alarm/proxy_t": 5.0, "alarm/gold_t": -4.0})
            records.append(record)
        if step % 4 == 0:
            success = final_success * (step / 40) ** 0.7
            records.append(
                {
                    "stage": "rl",
                    "step": step,
                    "time": float(step),
                    "eval/success": success,
                    "eval/return": success - 0.2,
                    "eval/val_success": success,
                    "eval/train_success": min(1.0, success + step / 100),
                    "generalisation/gap": min(1.0, success + step / 100) - success,
                    "episode/env_steps_total": env_steps,
                    **({"generalisation/overfit_alarm": 1.0} if alarm and step >= 36 else {}),
                }
            )
    records.append({"stage": "eval", "step": None, "time": 99.0, "rl/greedy/success": final_success})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if eval_json:
        results = {
            "seeds": {"first": 10_000_000, "count": 16},
            "policies": {
                "sft": {"success": 0.1, "return": -0.1},
                "rl": {"success": final_success, "return": final_success - 0.2, "greedy": {}, "sampled": {}},
                "expert": {"success": 1.0, "return": 0.8},
            },
        }
        (run / "eval.json").write_text(json.dumps(results))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """2 variants x 4 seeds under one folder; one run has no eval.json (its last eval/success counts)."""
    root = tmp_path_factory.mktemp("runs") / "exp"
    for label, (_, finals) in VARIANTS.items():
        for seed, final in zip(SEEDS, finals):
            write_run(
                root,
                label,
                seed,
                final,
                eval_json=(label, seed) != ("grpo", 3),
                alarm=(label, seed) == ("ppo", 1),
            )
    return root


@pytest.fixture(scope="module")
def report(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "report.html"
    return compare([runs], out, reps=REPS, seed=0)


def test_variants_group_seeds(report):
    assert [v.label for v in report.variants] == ["grpo", "ppo"]
    assert [v.seeds for v in report.variants] == [SEEDS, SEEDS]


def test_iqm_and_intervals_match_rliable(report):
    from rliable import library as rly
    from rliable import metrics

    for label, (_, finals) in VARIANTS.items():
        scores = np.array(finals)[:, None]
        iqm = metrics.aggregate_iqm(scores)
        assert report.points["success"][label][0] == pytest.approx(iqm)
        assert report.finals["success"].scores[label] == pytest.approx(finals)
    # the outlier seed: the IQM is not the mean, so the test would notice a mean passed off as IQM
    assert report.points["success"]["grpo"][0] != pytest.approx(np.mean(VARIANTS["grpo"][1]))
    assert report.finals["success"].sources["grpo"][-1] == "last eval/success"
    # the intervals are rliable's stratified bootstrap, reproducible from the seed
    np.random.seed(0)
    _, direct = rly.get_interval_estimates(
        {k: np.array(v[1])[:, None] for k, v in VARIANTS.items()},
        lambda s: np.array(
            [metrics.aggregate_iqm(s), metrics.aggregate_median(s), metrics.aggregate_mean(s)]
        ),
        reps=REPS,
    )
    for label in VARIANTS:
        np.testing.assert_allclose(report.intervals["success"][label], direct[label])
        low, high = report.intervals["success"][label][:, 0]
        assert low <= report.points["success"][label][0] <= high and low < high


def test_performance_profile_is_rliables_score_distribution():
    from rliable import library as rly

    from rlft.tools.report.stats import score_distribution

    scores = np.array([[0.05], [0.55], [0.6], [0.6], [1.0]])
    taus = np.linspace(-0.1, 1.1, 49)
    np.testing.assert_array_equal(score_distribution(scores, taus), rly.score_distributions(scores, taus))
    assert score_distribution(scores, np.array([0.6]))[0] == pytest.approx(0.2)  # strictly above tau: 1 of 5


def test_curves_are_interpolated_onto_the_common_range():
    from rlft.tools.report.runs import Run
    from rlft.tools.report.stats import Series, band, series

    # seed 1 reaches env step 10, seed 2 env step 20: the grid stops at 10, where seed 2 interpolates to 2
    curve = band(
        [
            Series(np.array([0.0, 10.0]), np.array([0.0, 1.0])),
            Series(np.array([0.0, 20.0]), np.array([0.0, 4.0])),
        ],
        reps=50,
        points=11,
    )
    assert curve.x[0] == 0.0 and curve.x[-1] == 10.0 and curve.seeds == 2
    assert curve.mean[-1] == pytest.approx(1.5) and curve.mean[5] == pytest.approx(0.75)
    assert np.all(curve.low <= curve.mean + 1e-12) and np.all(curve.high >= curve.mean - 1e-12)
    # a step without env steps takes the latest earlier step's; a step logged twice (resume) keeps the later
    run = Run(
        Path("r"),
        "r",
        0,
        {},
        records=[
            {"stage": "rl", "step": 1, "episode/env_steps_total": 30, "k": 1.0},
            {"stage": "rl", "step": 2, "k": 2.0},
            {"stage": "rl", "step": 3, "episode/env_steps_total": 90, "k": 3.0},
            {"stage": "rl", "step": 3, "episode/env_steps_total": 95, "k": 3.5},
            {"stage": "eval", "step": 4, "episode/env_steps_total": 120, "k": 9.0},
            {"stage": "rl", "step": 5, "episode/env_steps_total": 150, "k": "nan"},
        ],
    )
    got = series(run, "k")
    assert got.x.tolist() == [30.0, 30.0, 95.0] and got.y.tolist() == [1.0, 2.0, 3.5]


def test_config_difference_table_lists_exactly_the_differing_keys(report):
    assert set(report.differences) == DIFFERING  # not seed, name, output_dir or tracking.wandb.group
    page = report.html.read_text()
    table = page.split("<h2>Configuration differences</h2>", 1)[1].split("<h2>", 1)[0]
    assert {k for k in DIFFERING if f"<code>{k}</code>" in table} == DIFFERING
    assert table.count("<tr>") == 1 + len(DIFFERING)  # header + one row per differing key
    assert "(absent)" in table  # rl.trainer.critic: only ppo has it


def test_every_figure_png_exists_and_is_inlined(report):
    assert [p.name for p in report.plots] == list(FIGURE_NAMES)
    assert all(p.figure is not None for p in report.plots), [p.notes for p in report.plots]
    page = report.html.read_text()
    for name, png in report.pngs.items():
        assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f'id="fig-{name}"' in page
    assert page.count('src="data:image/png;base64,') == len(FIGURE_NAMES)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # opens offline
    assert "Over-optimisation alarms" in page and "eval/success" not in report.plots[0].notes
    # the generalisation figure lists the first overfitting alarm (ppo seed 1 fires from step 36)
    gap = next(p for p in report.plots if p.name == "generalisation_gap")
    assert (
        [n for n in gap.notes if "overfitting alarm" in n]
        == [n for n in gap.notes if n.startswith("ppo") and "ppo_s1" in n]
        != []
    )
    assert "overfitting alarm first at" in page


def test_missing_keys_skip_figures_with_a_note(tmp_path):
    bare = tmp_path / "runs" / "bare"
    bare.mkdir(parents=True)
    (bare / "config.yaml").write_text(yaml.safe_dump(_config("grpo", 0, tmp_path)))
    (bare / "metrics.jsonl").write_text('{"stage": "sft", "step": 1, "loss": 1.0}\n{"stage": "rl", "st\n')
    result = compare([tmp_path / "runs"], tmp_path / "r.html", reps=REPS)
    assert all(p.figure is None and p.notes for p in result.plots)
    assert not list(result.figures_dir.glob("*.png"))
    page = result.html.read_text()
    assert "set eval.every_steps" in page and "1 unreadable line(s) skipped" in page


def test_cli_writes_the_report_and_fails_clearly(runs, tmp_path, capsys):
    out = tmp_path / "cli" / "report.html"
    assert (
        main(["compare", str(runs / "grpo_s0"), str(runs / "ppo_s1"), "--out", str(out), "--reps", "50"]) == 0
    )
    assert out.is_file() and (tmp_path / "cli" / "report_figures" / "learning_curves.png").is_file()
    assert main(["compare", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "rlft: error:" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["compare", str(tmp_path / "empty"), "--out", str(out)]) == 2
    assert "no run directory" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- Chromium
CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def _driver():
    pytest.importorskip("selenium", reason="selenium is in the dev extra: pip install -e '.[dev]'")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip(
            "Debian's chromium and chromium-driver are not installed (.ci/run installs them: "
            "apt-get install -y --no-install-recommends chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


IMAGES_JS = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.alt]);"


def _load(driver, path: Path) -> tuple[list, list]:
    driver.get(path.resolve().as_uri())
    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    return severe, driver.execute_script(IMAGES_JS)


def test_page_in_headless_chromium(report, tmp_path):
    driver = _driver()
    try:
        # the checks fire: a broken image and a console error are caught
        bad = tmp_path / "bad.html"
        bad.write_text(
            '<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
            '<img alt="broken" src="data:image/png;base64,AAAA">'
            "<script>console.error('boom')</script></body></html>"
        )
        severe, images = _load(driver, bad)
        assert severe and images == [[True, 0, "broken"]]

        severe, images = _load(driver, report.html)
        assert severe == []
        assert len(images) == len(FIGURE_NAMES)
        assert all(complete and width > 0 for complete, width, _ in images), images
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {  # the whole page in one screenshot
                "width": 1400,
                "height": min(int(height), 16000),
                "deviceScaleFactor": 1,
                "mobile": False,
            },
        )
        screenshot = report.html.with_name("report_screenshot.png")
        assert driver.save_screenshot(str(screenshot))
        assert screenshot.stat().st_size > 10_000
        print(f"screenshot: {screenshot}")
    finally:
        driver.quit()


def test_finals_are_finite(report):
    for metric in ("success", "return"):
        for label in VARIANTS:
            assert all(math.isfinite(v) for v in report.points[metric][label])


# ------------------------------------------------------------------------------------ reference rows
def test_reference_rows_come_from_eval_json_beside_the_variants(report):
    """sft and expert of every run's eval.json: the same score on the seeds the variants share, so one row each
    over all their seeds (grpo_s3 has no eval.json), listed after the variants in the finals table."""
    refs = report.references["success"]
    assert list(refs.scores) == ["sft", "expert"]  # REFERENCE_POLICIES order; no untrained / random here
    assert refs.scores["sft"] == [0.1] * 4 and refs.seeds["sft"] == SEEDS
    assert refs.scores["expert"] == [1.0] * 4 and refs.sources["expert"] == ["eval.json (expert)"] * 4
    assert report.points["success"]["expert"][0] == pytest.approx(1.0)
    page = report.html.read_text()
    table = page.split("<h3>Final held-out success</h3>", 1)[1].split("</table>", 1)[0]
    order = [table.index(f"<b>{label}</b>") for label in ("grpo", "ppo", "sft", "expert")]
    assert order == sorted(order) and "reference policies" in table


def _one_seed_run(root: Path, name: str, seed: int, policies: dict[str, tuple[int, int]]) -> Path:
    """A run whose eval.json has each policy's per-episode summary: policy -> (successes, episodes)."""
    from rlft.rollout.evaluation import wilson_interval

    run = root / name
    run.mkdir(parents=True)
    config = _config("grpo", seed, root)
    config["name"] = name
    config["rl"]["trainer"]["learning_rate"] = 1e-4 if name.startswith("a") else 2e-4
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summaries = {}
    for policy, (wins, n) in policies.items():
        low, high = wilson_interval(wins, n)
        summaries[policy] = {
            "episodes": n,
            "success": wins / n,
            "success_ci_low": low,
            "success_ci_high": high,
            "return": wins / n - 0.2,
            "return_ci_low": wins / n - 0.3,
            "return_ci_high": wins / n - 0.1,
        }
    (run / "eval.json").write_text(json.dumps({"seeds": {"first": 0, "count": 50}, "policies": summaries}))
    return run


def test_one_seed_variants_show_per_episode_wilson_intervals_and_seed_counts(tmp_path):
    """One seed per variant: the bootstrap interval is a point, so the row takes eval.json's per-episode
    Wilson CI; the variants table's seeds column counts seeds (1), it does not show the seed (7); SFT differs
    between the variants, so each gets its own sft row, while the shared expert is one row."""
    from rlft.rollout.evaluation import wilson_interval

    root = tmp_path / "runs"
    _one_seed_run(root, "a", 7, {"rl": (24, 50), "sft": (10, 50), "untrained": (0, 50), "expert": (50, 50)})
    _one_seed_run(root, "b", 7, {"rl": (30, 50), "sft": (12, 50), "untrained": (0, 50), "expert": (50, 50)})
    result = compare([root], tmp_path / "r.html", reps=50)
    intervals = result.intervals["success"]
    low, high = wilson_interval(24, 50)
    assert (low, high) == pytest.approx((0.3480, 0.6149), abs=1e-4)  # by hand: 0.48 of 50, z = 1.96
    np.testing.assert_allclose(intervals["a"], [[low] * 3, [high] * 3])
    np.testing.assert_allclose(intervals["b"][:, 0], wilson_interval(30, 50))
    np.testing.assert_allclose(result.intervals["return"]["a"][:, 0], [0.48 - 0.3, 0.48 - 0.1])
    assert list(result.references["success"].scores) == ["untrained", "sft (a)", "sft (b)", "expert"]
    np.testing.assert_allclose(intervals["sft (a)"][:, 0], wilson_interval(10, 50))
    assert result.per_episode["success"] == {"a", "b", "untrained", "sft (a)", "sft (b)", "expert"}
    page = result.html.read_text()
    finals = page.split("<h3>Final held-out success</h3>", 1)[1].split("</table>", 1)[0]
    assert f"0.48 [{low:.4g}, {high:.4g}]" in finals and "1 seed: per-episode Wilson 95% CI" in finals
    variants = page.split("<h2>Variants</h2>", 1)[1].split("</table>", 1)[0]
    assert "<th>seeds</th><th>seed values</th>" in variants
    assert "<td><b>a</b></td><td class=num>1</td><td>7</td>" in variants
