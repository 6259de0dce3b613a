"""``fairal monailabel-app``: write a MONAI Label app folder whose strategies, scoring, training and inference are
fairal's (the server side is :mod:`fairal.owndata.monailabel`, which imports MONAI Label; this module does not, so the
folder can be written where MONAI Label is not installed)."""

from __future__ import annotations

import shutil
from pathlib import Path

from fairal.acquisition import parse_strategy
from fairal.data.cohort import check_label_value, check_spacing
from fairal.io import check_replaceable, publish_folder, within, write_json
from fairal.owndata.query import load_query_model, query_profile
from fairal.owndata.serving import DEFAULT_LEASE_MINUTES, check_app_settings
from fairal.plugins import loaded

MAIN_PY = '''\
"""A MONAI Label app of fairal (written by `fairal monailabel-app`; settings in fairal.json).

    monailabel start_server --app THIS_FOLDER --studies STUDIES --host 127.0.0.1

This folder is code the server runs: keep it writable only by the account that runs the server.
"""

from fairal.owndata.monailabel import FairalApp


class App(FairalApp):
    pass
'''


def write_app(out: str | Path, strategy: str, group_by: list[str], profile: str, overrides: dict[str, str],
              seed: int = 0, spacing: float = 2.0, label_value: float | None = None, model: str | Path | None = None,
              overwrite: bool = False, group_dice: str = "auto", lease_minutes: float = DEFAULT_LEASE_MINUTES
              ) -> Path:
    """Write the app folder ``out`` (whole or not at all): ``main.py``, ``fairal.json`` and, with ``model``, the
    model of an earlier ``fairal query`` as the app's first model. ``group_dice``: where the Dice of the group
    weights comes from (``labeled``, ``cross-validated``, or ``auto``: cross-validated once every group has enough
    labeled images, :data:`fairal.owndata.serving.AUTO_CROSS_VALIDATED_MIN`); ``lease_minutes``: how long an image
    served by Next Sample is held for its client (:class:`fairal.owndata.serving.Leases`)."""
    from importlib.metadata import version


    strat = parse_strategy(strategy)  # every setting is refused before anything is written
    prof = query_profile(profile, overrides)
    check_spacing(spacing)
    check_label_value(label_value)
    check_app_settings(group_dice, lease_minutes)
    out = Path(out)
    check_replaceable(out, overwrite, [model] if model else [], what="OUT")
    if model is not None:
        load_query_model(Path(model), prof, 0.0)  # a model of fairal query, of this profile's architecture
    with publish_folder(out, "monailabel-app") as tmp:
        within(tmp, "main.py").write_text(MAIN_PY)  # no path or name of the user's in the code
        settings = {"strategy": strat.name, "group_by": list(group_by), "profile": profile, "set": dict(overrides),
                    "seed": seed, "spacing": spacing, "label_value": label_value, "group_dice": group_dice,
                    "lease_minutes": lease_minutes, "fairal_version": version("fairal")}
        if loaded():
            settings["plugins"] = loaded()  # the server loads them too: a plugin's strategy is the app's as well
        write_json(within(tmp, "fairal.json"), settings)
        if model is not None:
            within(tmp, "model").mkdir()
            shutil.copyfile(model, within(tmp, "model", "model.pt"))
    return out
