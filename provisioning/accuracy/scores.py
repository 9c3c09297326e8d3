"""Verification pairs of a labelled set: same-person, different-person, and doubtful (may be one person)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from provisioning.accuracy.dataset import LabelledSet
from provisioning.accuracy.observe import Sighting


@dataclass(frozen=True)
class ScorePair:
    """Two sightings' cosine, and what kind of pair it is."""

    a: int  # indexes into the sample list
    b: int
    score: float
    kind: str  # "photo" (two photos), "clip" (two frames of one clip), "photo-clip"


@dataclass(frozen=True)
class ScoreSets:
    """Pairs of gate-passing sightings. `owners` holds each impostor pair's two identity indexes."""

    samples: tuple[Sighting, ...]
    identities: tuple[str, ...]
    genuine: tuple[ScorePair, ...]
    impostor: tuple[ScorePair, ...]
    doubtful: tuple[ScorePair, ...]
    clips: frozenset[str]

    def describe(self, pair: ScorePair) -> str:
        """Who and where, e.g. `barack_obama (images/obama.jpg ~ images/obama2.jpg)`."""
        x, y = self.samples[pair.a], self.samples[pair.b]
        where = [s.source + (f" frame {s.frame}" if s.source in self.clips else "") for s in (x, y)]
        who = x.identity if x.identity == y.identity else f"{x.identity} / {y.identity}"
        return f"{who} ({where[0]} ~ {where[1]})"

    @staticmethod
    def values(pairs: Sequence[ScorePair]) -> np.ndarray:
        return np.array([p.score for p in pairs], np.float64)

    def owners(self) -> np.ndarray:
        index = {name: i for i, name in enumerate(self.identities)}
        return np.array([[index[self.samples[p.a].identity], index[self.samples[p.b].identity]]
                         for p in self.impostor], np.int64).reshape(-1, 2)


def score_sets(labelled: LabelledSet, samples: Sequence[Sighting]) -> ScoreSets:
    """Every pair of samples: same identity from two different photos or two frames of a clip is genuine;
    different identities are impostors unless `labelled.doubtful` says they may be one person."""
    emb = np.stack([s.embedding for s in samples if s.embedding is not None]).astype(np.float64)
    if len(emb) != len(samples):
        raise ValueError("every sample needs an embedding")
    cos = emb @ emb.T
    clips = frozenset(c.path for c in labelled.clips)
    genuine, impostor, doubtful = [], [], []
    for i in range(len(samples)):
        for j in range(i + 1, len(samples)):
            x, y = samples[i], samples[j]
            in_clip = (x.source in clips) + (y.source in clips)
            kind = ("photo", "photo-clip", "clip")[in_clip]
            pair = ScorePair(i, j, float(cos[i, j]), kind)
            if x.identity == y.identity:
                if x.source != y.source or x.frame != y.frame:
                    genuine.append(pair)
            elif labelled.doubtful(x.identity, y.identity):
                doubtful.append(pair)
            else:
                impostor.append(pair)
    ids = tuple(dict.fromkeys(s.identity for s in samples))
    return ScoreSets(tuple(samples), ids, tuple(genuine), tuple(impostor), tuple(doubtful), clips)
