"""A study's tidy records for ``docs/results/``: what ``fairal study`` wrote into OUT, as the tables that
``fairal report DEST`` reads (the study report, from the records alone).

    python scripts/study_records.py STUDY OUT DEST --commit SHA [--reuse-records TIDY]

DEST gets ``rounds.csv`` (every round of the finished runs), ``cases.csv.gz`` (the final round's per-case Dice on
the test and the evaluation split), ``test_cases.csv.gz`` (every round's per-case test Dice), ``baselines.csv`` and
``baseline_cases.csv`` (where the study has baselines), ``datasets.csv`` (each dataset's cases: group, split, label
volume), ``study.json`` (OUT's, with the study file's arms and seeds, whichever the last command ran),
``calibration/LADDER/`` (a ladder's harm calibration: ``calibration.json``, ``levels.csv``, ``dice.csv``,
``settings.json``) and ``settings.json`` (the profile, device and versions the runs recorded, and ``sources``: which
records came from where, at which commit).

``--reuse-records TIDY``: arms of the study that another experiment's tidy records already hold (a pre-registered
study may compare against earlier records instead of running them again): the rows of TIDY's runs of the study's
seeds, for each dataset and arm of the study that OUT has no run of, are added. They are taken only where they are
the study's runs: the arm has no settings of its own and TIDY's recorded profile is the one the study gives that
arm (a setting added since counts as equal at its default, as when a run resumes), and each dataset's cases in
TIDY's ``datasets.csv`` (group, split, label volume, Dice to the template) are OUT's, exactly. Otherwise nothing is
written.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

from fairal.records import RUN_KEYS

#: The columns of ``datasets.csv``: what identifies a dataset's cases (the label volume and the Dice to the
#: template are computed from every subject's deformed label, to the last digit written).
DATASET_COLUMNS = ["dataset", "case_id", "group", "split", "label_volume_mm3", "dice_to_template"]


def dataset_cases(folders: dict[str, Path]) -> pd.DataFrame:
    """:data:`DATASET_COLUMNS` of the datasets ``{name: folder}`` (those with a manifest)."""
    frames = []
    for name, folder in folders.items():
        manifest = folder / "manifest.csv"
        if manifest.is_file():
            m = pd.read_csv(manifest, dtype={"case_id": str, "group": str})
            frames.append(m.assign(dataset=name)[[c for c in DATASET_COLUMNS if c in m.columns or c == "dataset"]])
        else:
            raise SystemExit(f"dataset {name}: no manifest at {manifest}")
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DATASET_COLUMNS)


def same_cases(mine: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    """The same cases in the same order, groups and splits, and label volumes and Dice to the template equal to
    the digits written (a relative 1e-12)."""
    import numpy as np

    for table, whose in ((mine, "the study's manifest"), (theirs, "datasets.csv")):
        if missing := [c for c in DATASET_COLUMNS if c not in table.columns]:
            raise SystemExit(f"{whose} lacks {', '.join(missing)}: the datasets cannot be compared")
    if not len(mine) or len(mine) != len(theirs):
        return False
    a, b = mine.reset_index(drop=True), theirs.reset_index(drop=True)
    words = all((a[c].astype(str) == b[c].astype(str)).all() for c in ("case_id", "group", "split"))
    return words and all(np.allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-12, atol=0, equal_nan=True)
                         for c in ("label_volume_mm3", "dice_to_template"))


def _study(study_file: Path, out: Path):
    from fairal.config import get_profile
    from fairal.grid.spec import load_study, study_seeds

    try:
        info = json.loads((out / "study.json").read_text())
        recorded_text, profile_name = info["study"].get("text"), info["profile"]["name"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise SystemExit(f"{out}: no readable study.json (a results folder of fairal study?)") from None
    study = load_study(study_file)
    if study.text != recorded_text:
        raise SystemExit(f"{out} holds the records of another study than {study_file} (study.json's text differs)")
    base = get_profile(profile_name)
    # study.json says what the last command ran (--seeds, --strategies); the records are the study file's plan
    info["seeds"] = study_seeds(study, base, None)
    return study, info, base


def reused(study, info: dict, base, out_rounds: pd.DataFrame, tidy: Path, cases_in_out: pd.DataFrame
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The rows of ``tidy`` for the arms OUT did not run (see the module's text): rounds, final cases, every
    round's test cases, and what was taken (for ``settings.json``)."""
    from fairal.run.loop import same_settings

    if not (tidy / "settings.json").is_file() or not (tidy / "rounds.csv").is_file():
        raise SystemExit(f"{tidy}: no tidy records (rounds.csv and settings.json)")
    settings = json.loads((tidy / "settings.json").read_text())
    # a study's records have a profile per arm (arms may have settings of their own); an experiment's one for all
    profiles = settings.get("arm_profiles") or {}
    if "sources" in settings and not profiles:
        raise SystemExit(f"{tidy} holds a study's records without their arms' profiles: they cannot be checked")
    ran = set(zip(out_rounds["dataset"], out_rounds["strategy"], strict=True)) if len(out_rounds) else set()
    # per dataset, the arms OUT has no run of (a study may run an arm on some datasets and take it on others)
    wanted = {d.name: [a for a in study.resolved_arms(base) if (d.name, a.name) not in ran] for d in study.datasets}
    arms = list({a.name: a for d in study.datasets for a in wanted[d.name]}.values())
    if not arms:
        raise SystemExit(f"every arm of the study has runs in its results folder; nothing to take from {tidy}")
    rounds = pd.read_csv(tidy / "rounds.csv", dtype={"group": str})
    cases_file = next((tidy / n for n in ("cases.csv.gz", "cases.csv") if (tidy / n).is_file()), None)
    if cases_file is None:
        raise SystemExit(f"{tidy}: no cases.csv.gz (the final round's per-case Dice)")
    cases = pd.read_csv(cases_file, dtype={"case_id": str, "group": str})
    test_file = tidy / "test_cases.csv.gz"
    tests = pd.read_csv(test_file, dtype={"case_id": str, "group": str}) if test_file.is_file() else None
    theirs_data = pd.read_csv(tidy / "datasets.csv", dtype={"case_id": str, "group": str}) \
        if (tidy / "datasets.csv").is_file() else None
    seeds = range(int(info["seeds"]))
    keep = []
    for d in (d for d in study.datasets if wanted[d.name]):
        if theirs_data is None:
            raise SystemExit(f"{tidy} has no datasets.csv: its data cannot be checked against dataset {d.name}")
        if not same_cases(cases_in_out[cases_in_out["dataset"] == d.name],
                          theirs_data[theirs_data["dataset"] == d.name]):
            raise SystemExit(f"dataset {d.name}: its cases in {tidy}/datasets.csv are not the study's (group, split, "
                             "label volume or Dice to the template differ)")
        for arm in wanted[d.name]:
            if arm.overrides:
                raise SystemExit(f"arm {arm.name} has settings of its own ({arm.overrides}); records made "
                                 f"without them cannot stand for it")
            theirs = profiles.get(arm.strategy) if profiles else (settings.get("run_settings") or {}).get("profile")
            if not theirs:
                raise SystemExit(f"{tidy}/settings.json records no profile of {arm.strategy}: its runs cannot be "
                                 "checked")
            mine = study.profile_for(base, d, arm, info.get("cli_overrides") or {}).as_dict()
            mine = json.loads(json.dumps({k: v for k, v in mine.items() if k != "strategies"}))  # as a run records it
            if not same_settings({"profile": theirs}, {"profile": mine}):
                differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                said = ", ".join(f"{k}: {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ)
                raise SystemExit(f"arm {arm.name} on dataset {d.name}: {tidy}'s runs were made with other settings "
                                 f"({said})")
            for init in study.inits:
                for seed in seeds:
                    key = (d.name, init, arm.strategy, seed)
                    if not ((rounds[RUN_KEYS] == pd.Series(dict(zip(RUN_KEYS, key, strict=True)))).all(axis=1)).any():
                        raise SystemExit(f"{tidy} has no run {'/'.join(map(str, key))} for arm {arm.name}")
                    keep.append((*key, arm.name))
    take = pd.DataFrame(keep, columns=[*RUN_KEYS, "arm"])

    def pick(table: pd.DataFrame | None) -> pd.DataFrame | None:
        if table is None:
            return None
        t = table.merge(take, on=RUN_KEYS)
        return t.assign(strategy=t["arm"]).drop(columns="arm")

    taken = {"records": str(tidy), "commit": settings.get("commit"), "versions": settings.get("versions"),
             "device": settings.get("device"), "analysis_plan": settings.get("analysis_plan"),
             "arms": sorted({a.name for a in arms}), "seeds": list(seeds),
             "runs": {d: sorted(a.name for a in w) for d, w in wanted.items() if w},
             "profiles": {a.name: profiles.get(a.strategy) if profiles else
                          (settings.get("run_settings") or {}).get("profile") for a in arms}}
    return pick(rounds), pick(cases), pick(tests), taken


def export(study_file: Path, out: Path, dest: Path, commit: str, reuse: Path | None = None) -> None:
    """The tidy records of ``out`` (and of ``reuse`` where it holds the study's other arms) into ``dest``: a new
    folder, or one this script wrote before (replaced whole); everything is checked before anything is written."""
    from fairal.errors import FairalError
    from fairal.report.tidy import load_results

    if not (out / "study.json").is_file():
        raise SystemExit(f"{out}: not a study's results folder (no study.json)")
    for other, what in ((out, "the results folder"), (reuse, "the reused records")):
        if other is not None and (dest.resolve() == other.resolve() or dest.resolve().is_relative_to(other.resolve())):
            raise SystemExit(f"{dest} is {what} or inside it: the records go to a folder of their own")
    if dest.exists() and any(dest.iterdir()) and not _own_records(dest):
        raise SystemExit(f"{dest} is not empty and holds no records of this script: choose a new folder")
    study, info, base = _study(study_file, out)
    if any(out.glob("runs/*/*/*/seed-*/rounds.csv")) or any(out.glob("baseline/*/baseline_table.csv")):
        try:
            results = load_results(out)
        except FairalError as err:
            raise SystemExit(f"{out}: {err}") from None
        r, tests, baselines, base_cases = (results.rounds, results.round_cases, results.baselines,
                                           results.baseline_cases)
        cases = results.cases if results.cases is not None else pd.DataFrame(columns=[*RUN_KEYS, "case_id"])
        rounds = r[[tuple(k) in results.finished for k in r[RUN_KEYS].itertuples(index=False, name=None)]] \
            if len(r) else pd.DataFrame(columns=[*RUN_KEYS, "round"])
    else:  # every arm from earlier records
        r = rounds = pd.DataFrame(columns=[*RUN_KEYS, "round"])
        cases, tests, baselines, base_cases = pd.DataFrame(columns=[*RUN_KEYS, "case_id"]), None, pd.DataFrame(), None
    data = dataset_cases({d.name: d.folder or out / "data" / d.name for d in study.datasets})
    configs = {}  # the first recorded config of each arm (its folder's name)
    for path in sorted(out.glob("runs/*/*/*/seed-*/config.json")):
        configs.setdefault(path.parts[-3], json.loads(path.read_text()))
    recorded = next(iter(configs.values()), {})
    arm_profiles = {arm: c.get("settings", {}).get("profile") for arm, c in configs.items()}
    sources = [{"records": f"runs of {out.name}", "commit": commit, "versions": recorded.get("versions"),
                "device": recorded.get("device"), "arms": sorted(set(rounds["strategy"])),
                "seeds": sorted(int(s) for s in set(rounds["seed"]))}]
    if reuse is not None:
        more_rounds, more_cases, more_tests, taken = reused(study, info, base, r, reuse, data)
        rounds = pd.concat([rounds, more_rounds], ignore_index=True)
        cases = pd.concat([cases, more_cases], ignore_index=True)
        # every round's test cases only where both have them (the report's test-split AUC needs them for all runs)
        tests = pd.concat([tests, more_tests], ignore_index=True) if tests is not None and more_tests is not None \
            else None
        sources.append(taken)
        arm_profiles.update(taken["profiles"])
    if not len(rounds):
        raise SystemExit(f"{out} has no finished run" + (f", and {reuse} none of the study's" if reuse else ""))
    part = dest.with_name(dest.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    rounds.sort_values([*RUN_KEYS, "round"]).to_csv(part / "rounds.csv", index=False)
    gz = {"method": "gzip", "mtime": 0}
    cases.to_csv(part / "cases.csv.gz", index=False, compression=gz)
    if tests is not None:
        tests.to_csv(part / "test_cases.csv.gz", index=False, float_format="%.6g", compression=gz)
    if len(baselines):
        baselines.to_csv(part / "baselines.csv", index=False)
        if base_cases is not None:
            base_cases.to_csv(part / "baseline_cases.csv", index=False)
    data.to_csv(part / "datasets.csv", index=False)
    recorded_study = json.loads((out / "study.json").read_text())
    if study.arms is not None:  # the study file's arms, whichever of them the last command ran (--strategies)
        recorded_study["study"]["arms"] = [dataclasses.asdict(a) for a in study.arms]
    recorded_study["seeds"] = info["seeds"]  # and its seeds, whichever the last command ran (--seeds)
    (part / "study.json").write_text(json.dumps(recorded_study, indent=2, default=str) + "\n")
    for cal in sorted(out.glob("calibration/*/calibration.json")):  # a ladder's harm calibration: its records
        target = part / "calibration" / cal.parent.name
        target.mkdir(parents=True)
        for name in ("calibration.json", "levels.csv", "dice.csv", "settings.json"):
            if (cal.parent / name).is_file():
                shutil.copyfile(cal.parent / name, target / name)
    (part / "settings.json").write_text(json.dumps({
        "profile": info["profile"]["name"], "commit": commit, "versions": recorded.get("versions"),
        "device": recorded.get("device"), "run_settings": recorded.get("settings"), "seeds": list(range(info["seeds"])),
        "arm_profiles": arm_profiles, "sources": sources}, indent=2, default=str) + "\n")
    if dest.exists():  # this script's records of before: replaced whole
        shutil.rmtree(dest)
    part.rename(dest)


def _own_records(folder: Path) -> bool:
    """``folder`` holds records this script wrote (its settings.json names their sources)."""
    try:
        return "sources" in json.loads((folder / "settings.json").read_text())
    except (OSError, ValueError):
        return False


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", type=Path, help="the study file the results folder ran")
    ap.add_argument("out", type=Path, help="the study's results folder (fairal study STUDY OUT)")
    ap.add_argument("dest", type=Path, help="the tidy records' folder (e.g. docs/results/beyond/NAME)")
    ap.add_argument("--commit", required=True, help="the commit the study's runs were made at")
    ap.add_argument("--reuse-records", type=Path, default=None,
                    help="tidy records holding the study's other arms (e.g. docs/results/v2)")
    args = ap.parse_args(argv)
    from fairal.errors import FairalError

    try:
        export(args.study, args.out, args.dest, args.commit, args.reuse_records)
    except FairalError as err:  # a study file or its data that cannot be read: the message, not a traceback
        raise SystemExit(f"error: {err}") from None
    print(f"tidy records in {args.dest}")


if __name__ == "__main__":
    sys.exit(main())
