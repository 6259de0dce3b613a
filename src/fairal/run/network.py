"""The networks fairal trains: a table of builders by name (:data:`NETWORKS`; the built-in ``unet`` is the paper's
U-Net), the profile's setting ``network`` that picks one, and the one place that builds a network for training
(:func:`build_network`) and the one that builds a network to load a checkpoint into (:func:`load_network`).

Every part of fairal that trains or loads a network comes here: an AL run's rounds, the baselines, the harm
calibration, ``fairal query`` (training and ``--model``) and the MONAI Label app. The builder is looked up when the
network is built, not when a module is imported, so a network registered by a plugin (:func:`register_network`) is
the one every caller builds, whichever loaded first; a grid's workers receive the table's registered entries with
the driver's other registrations (:mod:`fairal.plugins`).

A checkpoint of a network other than the built-in one names it in its ``meta`` (:func:`network_meta`), so that a
model is never loaded into another network; the built-in network's checkpoints are as they were.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from fairal.config import DEFAULT_NETWORK, NETWORK_NAME, Profile
from fairal.errors import FairalError
from fairal.run.model import build_unet, load_weights, read_checkpoint


@dataclass(frozen=True)
class NetworkSettings:
    """What a builder gets: the profile's ``features`` (channels per level), the channel ``dropout`` of the MC-dropout
    strategies (0: none; the network's dropout layers must be ``torch.nn.Dropout*`` for MC-dropout sampling), the
    ``foreground_prior`` that its output bias may start at (None: no prior), and the image's and the output's
    channels (one each: the T1 image, the structure's logits)."""

    features: tuple[int, ...]
    dropout: float = 0.0
    foreground_prior: float | None = None
    in_channels: int = 1
    out_channels: int = 1


@dataclass(frozen=True)
class Network:
    """An entry of :data:`NETWORKS`: its ``name`` (the profile's ``network``), ``build(settings)`` returning a
    ``torch.nn.Module`` that maps ``(N, in_channels, X, Y, Z)`` images to logits of the same spatial shape (its
    initial weights drawn from torch's generator, which fairal seeds), and a line that says what it is."""

    name: str
    build: Callable[[NetworkSettings], nn.Module]
    description: str = ""


def _unet(settings: NetworkSettings) -> nn.Module:
    if (settings.in_channels, settings.out_channels) != (1, 1):
        raise FairalError(f"network unet: one input and one output channel, got {settings.in_channels} and "
                          f"{settings.out_channels}")
    return build_unet(settings.features, foreground_prior=settings.foreground_prior, dropout=settings.dropout)


#: The networks by name; :func:`register_network` adds one.
NETWORKS: dict[str, Network] = {
    DEFAULT_NETWORK: Network(DEFAULT_NETWORK, _unet, "the paper's 3D U-Net (GroupNorm, features channels per level)"),
}
BUILT_IN_NETWORKS = frozenset(NETWORKS)


def register_network(network: Network) -> Network:
    """Add a network to :data:`NETWORKS`: a profile with ``network = NAME`` (``--set network=NAME``) then trains
    and loads it everywhere. Returns the entry."""
    if not isinstance(network, Network):
        raise FairalError(f"register_network takes a fairal.run.network.Network, got {type(network).__name__}")
    if not isinstance(network.name, str) or not NETWORK_NAME.fullmatch(network.name):
        raise FairalError(f"a network's name is lower-case letters, digits, '-' and '_', starting with a letter; "
                          f"got {network.name!r}")
    if network.name in NETWORKS:
        raise FairalError(f"the network {network.name!r} exists already")
    if not callable(network.build):
        raise FairalError(f"network {network.name!r}: build must be callable, got {type(network.build).__name__}")
    NETWORKS[network.name] = network
    return network


def unregister_network(name: str) -> None:
    """Remove a network added by :func:`register_network` (a built-in one stays)."""
    if name in BUILT_IN_NETWORKS:
        raise FairalError(f"the network {name!r} is built in")
    NETWORKS.pop(name)


def network_of(profile: Profile) -> Network:
    """The entry of the profile's ``network``; an unknown name is refused naming the known ones (checked before
    any work by the callers that write records)."""
    name = profile.network
    if name not in NETWORKS:
        raise FairalError(f"setting network: unknown network {name!r}; networks: {', '.join(NETWORKS)} (a plugin's "
                          "network is known once the plugin is loaded: fairal --plugin FILE, docs/api.md)")
    return NETWORKS[name]


def build_network(profile: Profile, *, dropout: float = 0.0, foreground_prior: float | None = None) -> nn.Module:
    """The profile's network, freshly built (weights from torch's generator): the one place fairal builds a
    network to train."""
    entry = network_of(profile)
    model = entry.build(NetworkSettings(tuple(profile.features), float(dropout), foreground_prior))
    if not isinstance(model, nn.Module):
        raise FairalError(f"network {entry.name!r}: build must return a torch.nn.Module, got {type(model).__name__}")
    return model


def network_meta(profile: Profile) -> dict:
    """What a checkpoint's ``meta`` says of its network: its name when it is not the built-in one (the built-in
    network's checkpoints carry nothing new)."""
    return {} if profile.network == DEFAULT_NETWORK else {"network": profile.network}


def load_network(path: str | os.PathLike, profile: Profile, *, dropout: float = 0.0) -> tuple[nn.Module, dict]:
    """The profile's network with the weights of the checkpoint ``path``, and the checkpoint's ``meta``: the one
    place fairal builds a network to load a checkpoint into. A checkpoint of another network (its ``meta``'s
    ``network``, else the built-in one) or of another architecture is refused naming the file."""
    payload = read_checkpoint(path)
    meta = payload["meta"]
    held = meta.get("network", DEFAULT_NETWORK) if isinstance(meta, dict) else DEFAULT_NETWORK
    if held != profile.network:
        raise FairalError(f"checkpoint file {path} holds the network {held!r}, the profile's network is "
                          f"{profile.network!r} (--set network={held})")
    model = build_network(profile, dropout=dropout)
    return model, load_weights(payload, model, path)
