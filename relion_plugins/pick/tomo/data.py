"""Training and validation patches cut from tomograms and their label volumes."""

from __future__ import annotations

import numpy as np
import torch


def standardize(volume: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance (float32): every tomogram is seen on the same scale."""
    v = np.asarray(volume, np.float32)
    return (v - float(v.mean())) / max(float(v.std()), 1e-6)


class PatchSampler:
    """Random cubic patches (side ``patch``) with their labels.

    Centres: with ``class_balanced`` a species is drawn uniformly first, then one of its particles (so a
    rare tiny species is seen as often as an abundant one), and with ``stratified`` too a batch holds every
    species equally often (as far as its size allows), in random order; ``background_stratum`` adds the
    background as one more "species" whose patches are centred anywhere in the volume (particle-centred
    patches alone never show a species' predictions spreading over empty regions); otherwise a listed particle with
    probability ``particle_fraction`` and a uniform position in the volume otherwise. Each centre is
    shifted by up to a quarter patch, and with ``augment`` the patch is turned by a random multiple of 90°
    about z and flipped along random axes (the missing wedge stays along z).
    """

    def __init__(
        self,
        volumes: list[np.ndarray],
        labels: list[np.ndarray],
        centres: list[np.ndarray],
        patch: int,
        rng: np.random.Generator,
        class_balanced: bool = False,
        stratified: bool = False,
        particle_fraction: float = 0.7,
        augment: bool = True,
        background_stratum: bool = False,
    ):
        if not volumes:
            raise ValueError("no volumes to sample patches from")
        self.patch = int(patch)
        h = self.patch // 2 + self.patch // 4 + 1
        self.pad = h
        self.volumes = [np.pad(standardize(v), h, mode="reflect") for v in volumes]
        self.labels = [np.pad(np.asarray(lab, np.uint8), h) for lab in labels]
        self.shapes = [np.asarray(v.shape) for v in volumes]
        # centres as (volume index, z, y, x, species)
        rows = [
            np.column_stack([np.full(len(c), i), c[:, 2], c[:, 1], c[:, 0], c[:, 3]])
            for i, c in enumerate(centres)
            if len(c)
        ]
        self.centres = np.concatenate(rows) if rows else np.zeros((0, 5))
        self.rng = rng
        self.class_balanced = class_balanced
        self.stratified = stratified
        self.particle_fraction = particle_fraction
        self.augment = augment
        self.species = np.unique(self.centres[:, 4]).astype(int) if len(self.centres) else np.zeros(0, int)
        # stratum 0 = background (a uniform position), when asked for
        self.strata = np.concatenate([[0], self.species]) if background_stratum else self.species

    def _species_plan(self, batch: int) -> list[int | None]:
        """The species each patch of a batch is centred on (None: drawn per patch). Drawn independently,
        a batch of 4 patches over 4 species misses one species a third of the time, and a validation loss on
        it then says nothing about that species; stratified, every batch of at least as many patches as
        species holds them all. (On the SNR 0.5 benchmark that did not help RobPicker: docs/tomo_picker.md.)"""
        if not (self.class_balanced and self.stratified and len(self.centres)):
            return [None] * batch
        rounds = -(-batch // len(self.strata))
        return [int(s) for s in np.concatenate([self.rng.permutation(self.strata) for _ in range(rounds)])[:batch]]

    def _centre(self, species: int | None = None) -> tuple[int, np.ndarray]:
        rng = self.rng
        if self.class_balanced and len(self.centres):
            species = rng.choice(self.strata) if species is None else species
        if len(self.centres) and species != 0 and (self.class_balanced or rng.random() < self.particle_fraction):
            if self.class_balanced:
                s = species
                idx = np.flatnonzero(self.centres[:, 4] == s)
            else:
                idx = np.arange(len(self.centres))
            row = self.centres[rng.choice(idx)]
            return int(row[0]), row[1:4]
        i = int(rng.integers(len(self.volumes)))
        return i, rng.random(3) * (self.shapes[i] - 1)

    def sample(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``batch`` patches ``[B, 1, P, P, P]`` (float32) and labels ``[B, P, P, P]`` (int64)."""
        p, q = self.patch, self.patch // 4
        xs, ys = [], []
        for species in self._species_plan(batch):
            i, c = self._centre(species)
            c = np.round(c + self.rng.uniform(-q, q, 3)).astype(int)
            c = np.clip(c, 0, self.shapes[i] - 1) + self.pad - p // 2
            sl = tuple(slice(a, a + p) for a in c)
            x, y = self.volumes[i][sl], self.labels[i][sl]
            if self.augment:
                k = int(self.rng.integers(4))
                x, y = np.rot90(x, k, axes=(1, 2)), np.rot90(y, k, axes=(1, 2))
                for ax in range(3):
                    if self.rng.random() < 0.5:
                        x, y = np.flip(x, ax), np.flip(y, ax)
            xs.append(np.ascontiguousarray(x))
            ys.append(np.ascontiguousarray(y))
        return torch.from_numpy(np.stack(xs)[:, None]), torch.from_numpy(np.stack(ys).astype(np.int64))
