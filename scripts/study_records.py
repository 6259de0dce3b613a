"""A study's tidy records for ``docs/results/``: what ``fairal study`` wrote into OUT, as the tables that
``fairal report DEST`` reads (the study report, from the records alone).

    python scripts/study_records.py STUDY OUT DEST --commit SHA [--reuse-records TIDY]

DEST gets ``rounds.csv`` (every round of the finished runs), ``cases.csv.gz`` (the final round's per-case Dice on the
test and the evaluation split), ``test_cases.csv.gz`` (every round's per-case test Dice), ``baselines.csv`` and
``baseline_cases.csv`` (where the study has baselines), ``datasets.csv`` (each dataset's cases: group, split, label
volume), ``study.json`` (OUT's) and ``settings.json`` (the profile, device and versions the runs recorded, and
``sources``: which records came from where, at which commit).

``--reuse-records TIDY``: arms of the study that another experiment's tidy records already hold (a pre-registered
study may compare against earlier records instead of running them again): the rows of TIDY's runs of the study's
seeds, for each arm of the study that OUT did not run, are added. They are taken only where they are the study's
runs: the arm has no settings of its own and TIDY's recorded profile is the one the study gives that arm (a setting
added since counts as equal at its default, as when a run resumes), and each dataset's cases in TIDY's
``datasets.csv`` (group, split, label volume, Dice to the template) are OUT's, exactly. Otherwise nothing is written.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import pandas as pd

#: The columns of ``datasets.csv``: what identifies a dataset's cases (the label volume and the Dice to the
#: template are computed from every subject's deformed label, to the last digit written).
DATASET_COLUMNS = ["dataset", "case_id", "group", "split", "label_volume_mm3", "dice_to_template"]
RUN_KEYS = ["dataset", "init", "strategy", "seed"]


def dataset_cases(folders: dict[str, Path]) -> pd.DataFrame:
    """:data:`DATASET_COLUMNS` of the datasets ``{name: folder}`` (those with a manifest)."""
    frames = []
    for name, folder in folders.items():
        manifest = folder / "manifest.csv"
        if manifest.is_file():
            m = pd.read_csv(manifest, dtype={"case_id": str, "group": str})
            frames.append(m.assign(dataset=name)[[c for c in DATASET_COLUMNS if c in m.columns or c == "dataset"]])
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DATASET_COLUMNS)


def same_cases(mine: pd.DataFrame, theirs: pd.DataFrame) -> bool:
    """The same cases in the same order, groups and splits, and label volumes and Dice to the template equal to
    the digits written (a relative 1e-12)."""
    import numpy as np

    if not len(mine) or len(mine) != len(theirs) or not set(DATASET_COLUMNS) <= set(mine.columns) | {"dataset"}:
        return False
    a, b = mine.reset_index(drop=True), theirs.reset_index(drop=True)
    words = all((a[c].astype(str) == b[c].astype(str)).all() for c in ("case_id", "group", "split"))
    return words and all(np.allclose(a[c].to_numpy(float), b[c].to_numpy(float), rtol=1e-12, atol=0)
                         for c in ("label_volume_mm3", "dice_to_template"))


def _study(study_file: Path, out: Path):
    from fairal.config import get_profile
    from fairal.study import load_study

    info = json.loads((out / "study.json").read_text())
    study = load_study(study_file)
    if study.text != info["study"].get("text"):
        raise SystemExit(f"{out} holds the records of another study than {study_file} (study.json's text differs)")
    base = get_profile(info["profile"]["name"])
    return study, info, base


def reused(study, info: dict, base, out_rounds: pd.DataFrame, tidy: Path, cases_in_out: pd.DataFrame
           ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, dict]:
    """The rows of ``tidy`` for the arms OUT did not run (see the module's text): rounds, final cases, every
    round's test cases, and what was taken (for ``settings.json``)."""
    from fairal.loop import same_settings

    settings = json.loads((tidy / "settings.json").read_text())
    theirs = (settings.get("run_settings") or {}).get("profile") or {}
    ran = set(out_rounds["strategy"]) if len(out_rounds) else set()
    arms = [a for a in study.resolved_arms(base) if a.name not in ran]
    if not arms:
        raise SystemExit(f"every arm of the study has runs in its results folder; nothing to take from {tidy}")
    rounds = pd.read_csv(tidy / "rounds.csv", dtype={"group": str})
    cases_file = next(tidy / n for n in ("cases.csv.gz", "cases.csv") if (tidy / n).is_file())
    cases = pd.read_csv(cases_file, dtype={"case_id": str, "group": str})
    test_file = tidy / "test_cases.csv.gz"
    tests = pd.read_csv(test_file, dtype={"case_id": str, "group": str}) if test_file.is_file() else None
    theirs_data = pd.read_csv(tidy / "datasets.csv", dtype={"case_id": str, "group": str}) \
        if (tidy / "datasets.csv").is_file() else None
    seeds = range(int(info["seeds"]))
    keep = []
    for d in study.datasets:
        if theirs_data is None:
            raise SystemExit(f"{tidy} has no datasets.csv: its data cannot be checked against dataset {d.name}")
        if not same_cases(cases_in_out[cases_in_out["dataset"] == d.name],
                          theirs_data[theirs_data["dataset"] == d.name]):
            raise SystemExit(f"dataset {d.name}: its cases in {tidy}/datasets.csv are not the study's (group, split, "
                             "label volume or Dice to the template differ)")
        for arm in arms:
            if arm.overrides:
                raise SystemExit(f"arm {arm.name} has settings of its own ({arm.overrides}); records made "
                                 f"without them cannot stand for it")
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
             "arms": sorted({a.name for a in arms}), "seeds": list(seeds)}
    return pick(rounds), pick(cases), pick(tests), taken


def export(study_file: Path, out: Path, dest: Path, commit: str, reuse: Path | None = None) -> None:
    from fairal.report.records import load_results

    study, info, base = _study(study_file, out)
    results = load_results(out)
    finished = results.finished
    r = results.rounds
    rounds = r[[tuple(k) in finished for k in r[RUN_KEYS].itertuples(index=False, name=None)]]
    cases = results.cases if results.cases is not None else pd.DataFrame(columns=RUN_KEYS)
    tests = results.round_cases
    data = dataset_cases({d.name: d.folder or out / "data" / d.name for d in study.datasets})
    recorded = {}
    config = next(iter(sorted(out.glob("runs/*/*/*/seed-*/config.json"))), None)
    if config is not None:
        recorded = json.loads(config.read_text())
    sources = [{"records": f"runs of {out.name}", "commit": commit, "versions": recorded.get("versions"),
                "device": recorded.get("device"), "arms": sorted(set(rounds["strategy"])),
                "seeds": sorted(int(s) for s in set(rounds["seed"]))}]
    if reuse is not None:
        more_rounds, more_cases, more_tests, taken = reused(study, info, base, rounds, reuse, data)
        rounds = pd.concat([rounds, more_rounds], ignore_index=True)
        cases = pd.concat([cases, more_cases], ignore_index=True)
        tests = pd.concat([tests, more_tests], ignore_index=True) if tests is not None and more_tests is not None \
            else tests
        sources.append(taken)
    dest.mkdir(parents=True, exist_ok=True)
    rounds.sort_values([*RUN_KEYS, "round"]).to_csv(dest / "rounds.csv", index=False)
    cases.to_csv(dest / "cases.csv.gz", index=False)
    if tests is not None:
        tests.to_csv(dest / "test_cases.csv.gz", index=False, float_format="%.6g")
    if len(results.baselines):
        results.baselines.to_csv(dest / "baselines.csv", index=False)
        if results.baseline_cases is not None:
            results.baseline_cases.to_csv(dest / "baseline_cases.csv", index=False)
    data.to_csv(dest / "datasets.csv", index=False)
    shutil.copyfile(out / "study.json", dest / "study.json")
    (dest / "settings.json").write_text(json.dumps({
        "profile": info["profile"]["name"], "commit": commit, "versions": recorded.get("versions"),
        "device": recorded.get("device"), "run_settings": recorded.get("settings"), "seeds": list(range(info["seeds"])),
        "sources": sources}, indent=2, default=str) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("study", type=Path, help="the study file the results folder ran")
    ap.add_argument("out", type=Path, help="the study's results folder (fairal study STUDY OUT)")
    ap.add_argument("dest", type=Path, help="the tidy records' folder (e.g. docs/results/beyond/NAME)")
    ap.add_argument("--commit", required=True, help="the commit the study's runs were made at")
    ap.add_argument("--reuse-records", type=Path, default=None,
                    help="tidy records holding the study's other arms (e.g. docs/results/v2)")
    args = ap.parse_args()
    if not (args.out / "study.json").is_file():
        raise SystemExit(f"{args.out}: not a study's results folder (no study.json)")
    export(args.study, args.out, args.dest, args.commit, args.reuse_records)
    print(f"tidy records in {args.dest}")


if __name__ == "__main__":
    sys.exit(main())
