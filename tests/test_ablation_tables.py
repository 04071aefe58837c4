"""The learning ablation's table: each row judged on fold 2, fold 3 reported, deltas against `preset`;
the records checked against the rows of today."""

import json
import os
import sys

# The benchmarks are scripts in one folder that import each other by name.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))


def _record(name, threshold, tuning, bpq):
    waterfall = {"nuclei": 20, "no_proposal": 2, "low_score": 4, "suppressed": 1, "mask_miss": 1}
    waterfall["matched"] = 12
    waterfall["by_size"] = {
        "< 12 px": {
            "nuclei": 8,
            "no_proposal": 2,
            "low_score": 2,
            "suppressed": 1,
            "mask_miss": 0,
            "matched": 3,
        },
        ">= 12 px": {
            "nuclei": 12,
            "no_proposal": 0,
            "low_score": 2,
            "suppressed": 0,
            "mask_miss": 1,
            "matched": 9,
        },
    }
    return {
        "name": name,
        "images": 5632,
        "threshold": threshold,
        "bpq_by_threshold": tuning,  # as json.dump writes the tuning dict: the thresholds as strings
        "fold3": {"bpq": bpq, "recall": 0.6, "precision": 0.75, "dq": 0.66, "sq": 0.7},
        "waterfall": waterfall,
        "step_seconds": 1.5,
        "class_loss": 0.5,
    }


def test_fold_two_is_read_at_the_chosen_threshold_and_fold_three_against_the_preset():
    from ablation_learning import table

    records = [
        _record("preset-5632", 0.4, {"0.3": 0.31, "0.4": 0.35, "0.5": 0.33}, 0.30),
        _record("p2-5632", 0.5, {"0.3": 0.30, "0.4": 0.36, "0.5": 0.38}, 0.32),
    ]
    timing = {"p2": {"seconds": [1.5, 2.0], "base": [1.0, 2.0]}}
    lines = table(records, timing).splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    col = {h: i for i, h in enumerate(header)}
    preset, p2 = cells
    assert (preset[col["fold-2 bPQ"]], p2[col["fold-2 bPQ"]]) == ("0.3500", "0.3800")
    assert (preset[col["bPQ - preset"]], p2[col["bPQ - preset"]]) == ("+0.0000", "+0.0200")
    # 4 of 20 nuclei lost at low_score; the step ratio per round 1.5 and 1.0: median 1.25.
    assert p2[col["low_score"]] == "20.0%"
    assert p2[col["class loss"]] == "0.500"
    assert p2[col["step vs base"]].startswith("1.25x")


def test_the_scoring_page_reports_fold_two_at_the_threshold_it_chose():
    from ablation_learning import scoring_page

    weight = {"fold2": {"0.2": 0.30, "0.3": 0.34}, "threshold": 0.3, "bpq": 0.31}
    result = {"run": "learning", "weights": {"0.5": {**weight, "recall": 0.5, "precision": 0.8, "sq": 0.75}}}
    page = scoring_page("python experiments/ablation_learning.py --scoring learning", [result])
    assert "Command: `python experiments/ablation_learning.py --scoring learning`" in page
    assert "| learning | 0.5 | 0.3 | 0.3400 | 0.3100 | 0.500 | 0.800 | 0.750 |" in page


def test_the_size_table_gives_each_bands_shares_matched_without_a_proposal_and_at_a_low_score():
    import pytest
    from ablation_learning import size_table

    records = [
        _record("preset-5632", 0.4, {"0.4": 0.3}, 0.3),
        _record("box128-5632-seed1", 0.4, {"0.4": 0.3}, 0.3),
    ]
    lines = size_table(records).splitlines()
    assert lines[0] == "| row | images | seed | < 12 px (8) | >= 12 px (12) |"
    # < 12 px: 3, 2 and 2 of 8; >= 12 px: 9, 0 and 2 of 12
    assert lines[3] == "| box128 | 5,632 | 1 | 38% / 25% / 25% | 75% / 0% / 17% |"
    # A run diagnosed since the border was counted: its column, empty for the run before.
    records[1]["waterfall"]["at_border"] = {"nuclei": 4, "matched": 1, "no_proposal": 2, "low_score": 1}
    lines = size_table(records).splitlines()
    assert lines[0].endswith("| >= 12 px (12) | cut by the border (4) |")
    assert lines[2].endswith("| 75% / 0% / 17% |  |")
    assert lines[3].endswith("| 75% / 0% / 17% | 25% / 50% / 25% |")
    records[1]["waterfall"]["by_size"]["< 12 px"]["nuclei"] = 9
    with pytest.raises(SystemExit, match="box128-5632-seed1 was diagnosed on other nuclei than preset-5632"):
        size_table(records)


def test_a_row_timed_but_not_trained_shows_its_cost_in_the_last_column_alone():
    from ablation_learning import table

    records = [_record("base-5632", 0.4, {"0.4": 0.35}, 0.30)]
    # Each row's ratio is to the base of its own --time run: rois256 was timed in a slower one.
    timing = {
        "scale2": {"seconds": [4.0, 6.0], "base": [1.0, 2.0]},
        "rois256": {"seconds": [4.0, 8.0], "base": [2.0, 4.0]},
    }
    lines = table(records, timing).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [r[0] for r in rows] == ["base", "scale2", "rois256"]  # in the order of ROWS after the trained
    scale2 = rows[1]
    assert len(scale2) == len(header)
    assert scale2[header.index("images")] == "not trained"
    assert scale2[-1].startswith("3.50x")  # rounds 4/1 and 6/2
    assert all(c == "" for c in scale2[3:-1])
    assert rows[2][-1].startswith("2.00x")


def test_the_inference_page_reports_each_variant_at_its_fold_two_threshold():
    from ablation_learning import inference_page

    variant = {"fold2": {"0.3": 0.36, "0.4": 0.38}, "threshold": 0.4, "bpq": 0.39, "eval_seconds": 61.4}
    result = {
        "run": "base-5632",
        "variants": {"flips": {**variant, "recall": 0.5, "precision": 0.8, "sq": 0.75}},
    }
    page = inference_page("python experiments/ablation_learning.py --inference base-5632", [result])
    row = [line for line in page.splitlines() if line.startswith("| base-5632 | flips |")][0]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3:] == ["0.4", "0.3800", "0.3900", "0.500", "0.800", "0.750", "", "", "", "61"]
    assert "model.test_time_flips" in cells[2]
    # A sweep that followed the nuclei through diagnose: its no_proposal and low_score shares.
    result["variants"]["flips"].update(no_proposal=0.1234, low_score=0.2)
    page = inference_page("python experiments/ablation_learning.py --inference base-5632", [result])
    row = [line for line in page.splitlines() if line.startswith("| base-5632 | flips |")][0]
    assert [c.strip() for c in row.strip("|").split("|")][-4:] == ["12.3%", "20.0%", "", "61"]
    # And, once recorded, the low_score nuclei that no box-head output overlaps at any score.
    result["variants"]["flips"].update(low_score_no_box=0.051)
    page = inference_page("python experiments/ablation_learning.py --inference base-5632", [result])
    row = [line for line in page.splitlines() if line.startswith("| base-5632 | flips |")][0]
    assert [c.strip() for c in row.strip("|").split("|")][-4:] == ["12.3%", "20.0%", "5.1%", "61"]
    header = [line for line in page.splitlines() if line.startswith("| run |")][0]
    assert header.count("|") == row.count("|")


def test_a_second_seed_is_its_own_row_against_the_preset_of_its_seed():
    from ablation_learning import ROW_NAMES, parse_run_name, run_name, table

    assert run_name("box128", 5632) == "box128-5632"
    assert run_name("box128", 5632, 1) == "box128-5632-seed1"
    assert parse_run_name("box128-5632-seed1") == ("box128", 1)
    assert parse_run_name("base-5632") == ("base", 0)
    assert all(parse_run_name(run_name(row, 5632, 3)) == (row, 3) for row in ROW_NAMES)  # no "-" in a row
    records = [
        _record("preset-5632", 0.4, {"0.4": 0.35}, 0.30),
        _record("preset-5632-seed1", 0.4, {"0.4": 0.35}, 0.34),
        _record("box128-5632-seed1", 0.4, {"0.4": 0.35}, 0.35),
        _record("rois256-5632-seed2", 0.4, {"0.4": 0.35}, 0.35),
    ]
    lines = table(records, {}).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    col = {h: i for i, h in enumerate(header)}
    assert [(r[0], r[col["seed"]]) for r in rows] == [
        ("preset", "0"),
        ("preset", "1"),
        ("box128", "1"),
        ("rois256", "2"),
    ]
    # box128 seed 1 against preset seed 1 (0.34), not preset seed 0 (0.30); no preset of seed 2: no delta
    assert rows[2][col["bPQ - preset"]] == "+0.0100"
    assert rows[3][col["bPQ - preset"]] == ""


def _trained(work, name, overrides, **changes):
    """``<work>/<name>/config.json`` as `train` writes it: the `learning` config with ``overrides``, then
    ``changes`` (section -> {field: value}) standing for a preset edited since. Returns that config."""
    from maskrcnn.config import apply_overrides, load_config

    config = apply_overrides(load_config("learning"), overrides).to_dict()
    for section, fields in changes.items():
        config[section].update(fields)
    (work / name).mkdir(parents=True, exist_ok=True)
    (work / name / "config.json").write_text(json.dumps(config))
    return json.loads(json.dumps(config))


def test_a_record_that_is_not_its_row_of_today_is_refused(tmp_path):
    import pytest
    from ablation_learning import check_record

    def kept(name, overrides, **changes):
        return {
            "name": name,
            "overrides": overrides,
            "trained_config": _trained(tmp_path, name, overrides, **changes),
        }

    overrides = ["model.box_head_width=128", "train.seed=1"]
    check_record(kept("box128-5632-seed1", overrides), "r")
    with pytest.raises(SystemExit, match=r"without \['train.seed=1'\] of row 'box128'"):
        check_record({**kept("box128-5632-seed1", overrides), "overrides": overrides[:1]}, "r")
    with pytest.raises(SystemExit, match="model.roi_canonical_size=56.0"):
        check_record({**kept("preset-5632", []), "name": "base-5632"}, "base-5632.json")
    # The preset edited after the run: its record is the old preset, not today's.
    from maskrcnn.config import load_config

    width = load_config("learning").model.box_head_width
    with pytest.raises(SystemExit, match=rf"model.box_head_width: {2 * width} -> {width}\)"):
        check_record(kept("preset-5632", [], model={"box_head_width": 2 * width}), "preset-5632.json")
    # A field added to the config since (absent from the run's config.json) is not a change.
    record = kept("rpn512-5632", ["model.rpn_train_anchors_per_image=512"])
    del record["trained_config"]["model"]["roi_positive_iou"]
    check_record(record, "r")


def _train_rows(work, rows):
    """Records and run folders in ``work`` as `learning.run` leaves them: (name, fold-3 bPQ, class losses)."""
    for name, bpq, class_losses in rows:
        row = name.split("-")[0]
        overrides = ["model.box_head_width=128"] if row == "box128" else []
        _trained(work, name, overrides)
        (work / f"{name}.json").write_text(
            json.dumps({**_record(name, 0.4, {"0.4": bpq}, bpq), "overrides": overrides})
        )
        lines = ["stage,epoch,step,split,loss,rpn_class,rpn_box,class,box,mask"]
        lines += [f"0,{e},{e + 1},train,1,1,1,{c},1,1" for e, c in enumerate(class_losses)]
        (work / name / "log.csv").write_text("\n".join(lines) + "\n")


def test_page_rebuilds_the_page_from_the_records_and_trains_nothing(tmp_path):
    import shutil

    from ablation_learning import main, records_dir

    work = tmp_path / "work"
    _train_rows(work, [("preset-5632", 0.30, (0.6, 0.5)), ("box128-5632", 0.33, (0.5, 0.4))])
    out = tmp_path / "page.md"
    # --data is a folder that does not exist: nothing is built or trained.
    assert main(["--data", str(tmp_path / "none"), "--work", str(work), "--page", "--out", str(out)]) == 0
    rows = [
        line
        for line in out.read_text().splitlines()
        if line.startswith("| preset") or line.startswith("| box")
    ]
    assert len(rows) == 4  # the table, then the sizes'
    assert "| +0.0300 |" in rows[1] and "| 0.400 |" in rows[1]  # delta; last epoch's loss
    assert rows[3] == "| box128 | 5,632 | 0 | 38% / 25% / 25% | 75% / 0% / 17% |"
    assert not (work / "folds").exists()
    # The records are kept beside the page: without the work folder (a fresh clone), the same page.
    assert sorted(os.listdir(records_dir(str(out)))) == ["box128-5632.json", "preset-5632.json"]
    page = out.read_text()
    # The header's command is the latest run's; the page says how each of its rows is made again.
    assert "--rows ROW --seed SEED --images IMAGES --out " + str(out) in " ".join(page.split())
    shutil.rmtree(work)
    assert main(["--data", str(tmp_path / "none"), "--work", str(work), "--page", "--out", str(out)]) == 0
    assert out.read_text() == page


def test_a_run_kept_from_another_page_is_a_row_that_says_where_it_was_trained(tmp_path):
    import pytest
    from ablation_learning import main, records_dir

    work = tmp_path / "work"
    _train_rows(work, [("preset-5632", 0.30, (0.6, 0.5))])
    page = ["--data", str(tmp_path / "none"), "--work", str(work), "--page", "--out"]
    old = str(tmp_path / "old.md")
    assert main([*page, old]) == 0
    # old.md's run of seed 1, trained as a row of then (`adam`) whose config is today's preset.
    other = json.load(open(os.path.join(records_dir(old), "preset-5632.json")))
    other.update(name="adam-5632-seed1", bpq_by_threshold={"0.4": 0.2}, overrides=["train.seed=1"])
    other["trained_config"]["train"]["seed"] = 1
    source = os.path.join(records_dir(old), "adam-5632-seed1.json")
    with open(source, "w") as f:
        json.dump(other, f)
    out = str(tmp_path / "page.md")
    assert main([*page, out, "--keep", source, "preset-5632-seed1"]) == 0
    text = open(out).read()
    assert "| preset | " in text and "| 5,632 | 1 | 0.2000 |" in text
    kept_with = f"--keep {os.path.relpath(source)} preset-5632-seed1"
    assert f"- `preset-5632-seed1`: adam-5632-seed1 of old.md (`{kept_with}`).\n" in text
    assert text.count("old.md") == 1  # the run of seed 0, trained here, is not listed
    assert main([*page, out]) == 0  # the kept record stays: the same page but for its command
    assert open(out).read().partition("Rows:")[2] == text.partition("Rows:")[2]
    # Kept again from there, it says both pages.
    third = str(tmp_path / "third.md")
    kept = os.path.join(records_dir(out), "preset-5632-seed1.json")
    assert main([*page, third, "--keep", kept, "preset-5632-seed1"]) == 0
    assert "preset-5632-seed1 of page.md (there: adam-5632-seed1 of old.md) (`--keep " in open(third).read()
    # Refused: not the row's config of today, a run the work folder trained itself, a name of no budget.
    with pytest.raises(SystemExit, match="box_head_width: 1024 -> 128"):
        main([*page, out, "--keep", source, "box128-5632-seed1"])
    with pytest.raises(SystemExit, match="trained preset-5632 itself"):
        main([*page, out, "--keep", os.path.join(records_dir(old), "preset-5632.json"), "preset-5632"])
    with pytest.raises(SystemExit, match=r"name it <row>-5632\[-seed<N>\]"):
        main([*page, out, "--keep", source, "preset-2000-seed1"])
    with pytest.raises(SystemExit, match="name it"):
        main([*page, out, "--keep", source, "preset"])


def test_a_row_of_the_page_without_its_record_is_refused_not_dropped(tmp_path):
    import shutil

    import pytest
    from ablation_learning import main, records_dir

    work = tmp_path / "work"
    _train_rows(work, [("preset-5632", 0.30, (0.6, 0.5)), ("box128-5632", 0.33, (0.5, 0.4))])
    out = tmp_path / "page.md"
    args = ["--data", str(tmp_path / "none"), "--work", str(work), "--page", "--out", str(out)]
    assert main(args) == 0
    page = out.read_text()
    shutil.rmtree(work)
    os.remove(os.path.join(records_dir(str(out)), "box128-5632.json"))
    with pytest.raises(SystemExit, match=r"holds rows \[\('box128', 0, 5632\)\] whose records"):
        main(args)
    assert out.read_text() == page
    # A page of no rows yet, or another page, is written from what there is.
    assert main([*args[:-1], str(tmp_path / "other.md")]) == 0


def test_bench_learnings_command_line_repeats_the_run_with_every_option_that_differs():
    import argparse

    import harness
    from bench_learning import command_line

    args = argparse.Namespace(
        data="/d", work="runs/learning", config="learning", images=5632, name=None, set=[], out=None
    )
    args.out = os.path.join(harness.RESULTS, "learning.md")
    assert command_line(args) == "make bench-learning DATA=/d"
    args.work, args.name, args.set = "runs/ablation", "preset-5632", ["train.seed=1"]
    assert command_line(args) == (
        'make bench-learning DATA=/d ARGS="--work runs/ablation --name preset-5632 --set train.seed=1"'
    )


def test_inference_sweeps_only_the_variants_it_has_not_kept(tmp_path, monkeypatch):
    import ablation_learning

    kept = {"run": "preset-5632", "variants": {"as trained": {"bpq": 0.40}}, "commit": "old"}
    (tmp_path / "inference-preset-5632.json").write_text(json.dumps(kept))
    asked = []

    def sweep(work, run, variants, thresholds, folder):
        asked.append(dict(variants))
        return {name: {"bpq": 0.41} for name in variants}

    monkeypatch.setattr(ablation_learning, "sweep", sweep)
    out = ablation_learning.inference(str(tmp_path), "preset-5632", ["rpnnms05", "as trained"])
    assert asked == [{"rpnnms05": {"rpn_nms_threshold": 0.5}}]
    assert list(out["variants"]) == ["rpnnms05", "as trained"]  # in the order asked
    assert out["variants"]["as trained"] == {"bpq": 0.40}
    saved = json.loads((tmp_path / "inference-preset-5632.json").read_text())
    assert saved["variants"]["rpnnms05"]["bpq"] == 0.41 and "commit" in saved["variants"]["rpnnms05"]
    ablation_learning.inference(str(tmp_path), "preset-5632", ["rpnnms05", "as trained"])
    assert len(asked) == 1  # both kept now: nothing swept again


def test_roi_sampling_page_shows_each_rule_by_size():
    import roi_sampling

    shares = {"< 12 px": 0.348, ">= 12 px": 0.6}
    result = {
        "nuclei": 5023,
        "images": 128,
        "split": "Fold 1",
        "positive_slots": 42,
        "nuclei_by_size": {"< 12 px": 1054, ">= 12 px": 3969},
        "uniform": {"covered": 0.519, "by_size": shares},
        "per_nucleus": {"covered": 0.593, "by_size": {"< 12 px": 0.583, ">= 12 px": 0.59}},
    }
    record = {"date": "2026-12-06", "device": "cpu", "host": "h", "commit": "abc"}
    text = roi_sampling.page(result, "python experiments/roi_sampling.py", record)
    assert "| positives drawn | nuclei covered a step | < 12 px (1,054) | >= 12 px (3,969) |" in text
    assert "| uniform | 51.9% | 34.8% | 60.0% |" in text
    assert "| per_nucleus | 59.3% | 58.3% | 59.0% |" in text
    assert "128 tiles of `Fold 1` (5,023 nuclei" in text and "at most 42 a tile" in text


def test_a_run_folder_is_reused_only_for_the_config_it_was_trained_with():
    import dataclasses

    import pytest
    from learning import check_reused

    from maskrcnn.config import apply_overrides, load_config

    asked = apply_overrides(load_config("learning"), ["train.seed=1"])
    # Copied under another name, its dataset folder elsewhere: the same training.
    copied = dataclasses.replace(
        asked, name="adam-5632-seed1", data=dataclasses.replace(asked.data, data_dir="/elsewhere")
    )
    check_reused("w", copied, asked)
    # Trained before the preset changed its optimizer, or with another seed: another run, named.
    before = apply_overrides(asked, ["train.optimizer='sgd'", "train.stages[0].learning_rate=2e-2"])
    with pytest.raises(SystemExit, match=r"w was trained with .*train.optimizer: 'sgd' -> 'adam'"):
        check_reused("w", before, asked)
    with pytest.raises(SystemExit, match=r"train.seed: 0 -> 1"):
        check_reused("w", load_config("learning"), asked)
