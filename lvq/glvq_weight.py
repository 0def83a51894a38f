"""GLVQ's stored form and its decoder: how a group's integer codes become weights.

For column group g (inputs [a, b), width b_g bits, vector length d) with stored row scales
s_g [out], lattice parameter (a unit generator Ĝ, or a scale c of a standard lattice) and μ_g:

    Ŵ[:, a:b] = s_g · F⁻¹_μg( decode(U_g) ),     decode = G_g (z + ½), z = U − 2^{b−1}   (Babai)
                                                  decode = c' · nearest_decode(U)         (Z/D/E8)

with G_g = Δ_b·Ĝ (lvq/lattice.py: Δ_b is the Gaussian-optimal uniform step, a fixed table) and
F⁻¹ the μ-law expansion (lvq/companding.py; μ = 0 stores "no companding"). docs/algorithms.md
("GLVQ") has the paper's equations and our decisions.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from . import lattice as lat
from .companding import compress, expand
from .groups import group_bounds
from .packing import unpack
from .qweight import QuantizedWeight, fp16_bits

WIDTH_TAG_BITS = 3  # a width in 1..8


@dataclass(frozen=True)
class Codec:
    """kind: "learned", "Z", "D" or "E8"; decoder: "babai" or "nearest"; d: vector length."""

    kind: str
    decoder: str
    d: int

    @property
    def learned(self) -> bool:
        return self.kind == "learned"

    def generator(self, param: torch.Tensor, bits: int) -> torch.Tensor:
        """Effective generator of a b-bit group from its stored parameter.

        learned: param = unit generator Ĝ [d, d] -> Δ_b Ĝ. Standard lattice: param = unit scale c
        (scalar) -> Δ_b c B / |det B|^{1/d} (babai, [d, d]) or Δ_b c / |det B|^{1/d} (nearest, scalar),
        so that c = RMS of the companded values is the natural starting point for every lattice.
        """
        step = lat.width_step(bits)
        if self.learned:
            return step * param
        B = lat.standard_generator(self.kind, self.d, dtype=param.dtype, device=param.device)
        vol = abs(float(torch.linalg.det(B.to(torch.float64)))) ** (1.0 / self.d)
        if self.decoder == "nearest":
            return step * param / vol
        return (step / vol) * param * B

    def encode(self, V: torch.Tensor, gen: torch.Tensor, bits: int,
               gen_inv: torch.Tensor | None = None) -> torch.Tensor:
        """Unsigned codes [ℓ, d] in [0, 2^b) for vectors V [ℓ, d] (gen_inv: optional G⁻¹)."""
        if self.decoder == "nearest":
            return lat.nearest_encode(V / gen, self.kind, bits)
        return lat.babai_encode(V, gen, bits, gen_inv) + (1 << (bits - 1))

    def inverse(self, gen: torch.Tensor) -> torch.Tensor | None:
        """G⁻¹ for the Babai decoder (computed once per encoding pass), None otherwise."""
        return None if self.decoder == "nearest" else torch.linalg.inv(gen.to(torch.float64))

    def decode(self, U: torch.Tensor, gen: torch.Tensor, bits: int) -> torch.Tensor:
        """Vectors [ℓ, d] of unsigned codes U [ℓ, d]; differentiable in ``gen``."""
        if self.decoder == "nearest":
            return gen * lat.nearest_decode(U, self.kind, bits, dtype=gen.dtype)
        return lat.babai_decode(U - (1 << (bits - 1)), gen)


def decode_group(U: torch.Tensor, bits: int, gen: torch.Tensor, mu: torch.Tensor | None,
                 s: torch.Tensor, codec: Codec) -> torch.Tensor:
    """Ŵ_g = s · F⁻¹_μ(decode(U)) for codes U [out, n_g], s [out, 1] -> [out, n_g]."""
    out_f, n = U.shape
    Y = codec.decode(U.reshape(-1, codec.d), gen, bits).reshape(out_f, n)
    X = Y if mu is None else expand(Y, mu)
    return s * X


@dataclass(frozen=True)
class GroupView:
    """One group in the lattice's own coordinates (for plots). G [d, d] effective generator (the
    scale times I for nearest-point decoding); Z [ℓ, d] signed codes (decoded points G(z + ½) for
    Babai); Y [ℓ, d] the group's normalised, companded weight vectors — of the original weight
    when it was given, else of the decoded one."""

    G: torch.Tensor
    mu: float
    bits: int
    Z: torch.Tensor
    Y: torch.Tensor
    from_original: bool


@dataclass(frozen=True)
class GLVQWeight(QuantizedWeight):
    """Stored GLVQ layer.

    codes: packed uint8, one buffer per width class (``code_widths``, ascending), holding the
    unsigned codes of all its groups in group order, each [out, n_g] row-major; scales: fp16
    [out, n_groups]; lattice_params: fp16 [n_lattices, d, d] unit generators (learned) or fp16
    [n_lattices] unit scales (Z/D/E8); mu: fp16 [n_mu] (None when companding is off; 0 = no
    companding for the groups using that entry). widths, lattice_index, mu_index: per group.
    """

    codes: tuple[torch.Tensor, ...]
    scales: torch.Tensor
    lattice_params: torch.Tensor
    mu: torch.Tensor | None
    widths: tuple[int, ...]
    lattice_index: tuple[int, ...]
    mu_index: tuple[int, ...]
    group_size: int
    dim: int
    lattice: str
    decoder: str
    out_features: int
    in_features: int
    method_name: str = "glvq"
    diagnostics: dict[str, Any] | None = field(default=None, compare=False, repr=False)

    trainable = ("scales", "generators", "lattice_scale", "mu")

    @property
    def codec(self) -> Codec:
        return Codec(self.lattice, self.decoder, self.dim)

    @property
    def code_widths(self) -> list[int]:
        return sorted(set(self.widths))

    def bounds(self) -> list[tuple[int, int]]:
        return group_bounds(self.in_features, self.group_size)

    def _lattice_param(self, j: int) -> torch.Tensor:
        return self.lattice_params[j].to(torch.float32)

    def group_mu(self, g: int) -> torch.Tensor | None:
        """μ of group g as a float32 scalar tensor, None when the group is not companded."""
        if self.mu is None:
            return None
        mu = self.mu[self.mu_index[g]].to(torch.float32)
        return None if float(mu) == 0.0 else mu

    def group_generator(self, g: int) -> torch.Tensor:
        """What the decoder multiplies group g's codes by: G_g [d, d] (Babai) or a scalar."""
        return self.codec.generator(self._lattice_param(self.lattice_index[g]), self.widths[g])

    def generator(self, g: int) -> torch.Tensor:
        """Effective generator G_g [d, d] of group g (Δ_b·Ĝ; c·B for a standard lattice with the
        Babai decoder; for the nearest decoder, the scale times I)."""
        gen = self.group_generator(g)
        return gen * torch.eye(self.dim, device=gen.device) if gen.dim() == 0 else gen

    def group_codes(self) -> list[torch.Tensor]:
        """Unsigned codes of every group, [out, n_g] int64 each."""
        bounds = self.bounds()
        out: list[torch.Tensor] = [torch.empty(0)] * len(bounds)
        for w, packed in zip(self.code_widths, self.codes):
            members = [g for g, b in enumerate(self.widths) if b == w]
            n_total = sum(bounds[g][1] - bounds[g][0] for g in members)
            flat = unpack(packed, w, (self.out_features * n_total,))
            pos = 0
            for g in members:
                n = bounds[g][1] - bounds[g][0]
                out[g] = flat[pos:pos + self.out_features * n].view(self.out_features, n)
                pos += self.out_features * n
        return out

    def dequantize(self) -> torch.Tensor:
        scales = self.scales.to(torch.float32)
        W = torch.empty(self.out_features, self.in_features, dtype=torch.float32, device=scales.device)
        codec = self.codec
        for g, ((a, b), U) in enumerate(zip(self.bounds(), self.group_codes())):
            W[:, a:b] = decode_group(U, self.widths[g], self.group_generator(g), self.group_mu(g),
                                     scales[:, g:g + 1], codec)
        return W

    def train_forward(self):
        """Per group Ŵ_g = s_g · F⁻¹_μ(decode(U_g)) with the codes decoded once to the part that
        does not depend on the trainable tensors: the offset codes z + ½ (Babai: G is trained)
        or the unit lattice points (nearest decoder: its scale is trained); scales and μ too."""
        codec, bounds = self.codec, self.bounds()
        fixed = []
        for g, U in enumerate(self.group_codes()):
            b = self.widths[g]
            V = U.reshape(-1, self.dim)
            if codec.decoder == "nearest":
                fixed.append(lat.nearest_decode(V, self.lattice, b, dtype=torch.float32))
            else:
                fixed.append((V - (1 << (b - 1))).to(torch.float32) + 0.5)
        lat_name = "generators" if self.lattice == "learned" else "lattice_scale"

        def forward(x: torch.Tensor, t: dict[str, torch.Tensor]) -> torch.Tensor:
            cols = []
            for g, ((a, b), F0) in enumerate(zip(bounds, fixed)):
                gen = codec.generator(t[lat_name][self.lattice_index[g]].to(torch.float32), self.widths[g])
                Y = gen * F0 if codec.decoder == "nearest" else F0 @ gen.T
                Y = Y.reshape(self.out_features, b - a)
                mu = None if self.mu is None else t["mu"][self.mu_index[g]].to(torch.float32)
                if mu is not None and bool(mu.detach() != 0):
                    Y = expand(Y, mu)
                cols.append(t["scales"][:, g:g + 1].to(torch.float32) * Y)
            return torch.nn.functional.linear(x, torch.cat(cols, 1).to(x.dtype))
        return forward

    def kernel(self):
        from . import kernels  # numba is heavy and only the CPU decoding path needs it

        mus = [0.0 if (mu := self.group_mu(g)) is None else float(mu) for g in range(len(self.widths))]
        prepared = kernels.prepare_lattice(self.group_codes(), self.widths, self.scales,
                                           [self.generator(g) for g in range(len(self.widths))], mus,
                                           self.dim, decoder=self.decoder, lattice=self.lattice)
        return kernels.GroupedKernel(prepared)

    def group_view(self, g: int, W: torch.Tensor | None = None) -> GroupView:
        """Group g as lattice coordinates; ``W`` = the layer's original weight [out, in] if known."""
        bits, d = self.widths[g], self.dim
        a, b = self.bounds()[g]
        G = self.generator(g).to(torch.float64)
        mu = self.group_mu(g)
        Z = self.group_codes()[g] - (1 << (bits - 1))
        if W is not None:
            X = W[:, a:b].to(torch.float64) / self.scales[:, g:g + 1].to(torch.float64).clamp_min(1e-12)
            Y = X if mu is None else compress(X, float(mu))
        else:
            Y = (Z.reshape(-1, d).to(torch.float64) + 0.5) @ G.T
        return GroupView(G=G, mu=0.0 if mu is None else float(mu), bits=bits, Z=Z.reshape(-1, d),
                         Y=Y.reshape(-1, d), from_original=W is not None)

    def bit_breakdown(self) -> dict[str, int]:
        code = sum(self.out_features * (b - a) * w for (a, b), w in zip(self.bounds(), self.widths))
        return {
            "codes": code,
            "generators": fp16_bits(self.lattice_params),
            "mu": fp16_bits(self.mu) if self.mu is not None else 0,
            "scales": fp16_bits(self.scales),
            "width_tags": WIDTH_TAG_BITS * len(self.widths),
        }

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"codes_b{w}": c for w, c in zip(self.code_widths, self.codes)}
        tensors["scales"] = self.scales
        tensors["generators" if self.lattice == "learned" else "lattice_scale"] = self.lattice_params
        if self.mu is not None:
            tensors["mu"] = self.mu
        meta = {"out_features": self.out_features, "in_features": self.in_features,
                "group_size": self.group_size, "dim": self.dim, "lattice": self.lattice,
                "decoder": self.decoder, "widths": list(self.widths),
                "lattice_index": list(self.lattice_index), "mu_index": list(self.mu_index)}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> "GLVQWeight":
        widths = tuple(int(w) for w in meta["widths"])
        return cls(codes=tuple(tensors[f"codes_b{w}"] for w in sorted(set(widths))),
                   scales=tensors["scales"],
                   lattice_params=tensors["generators" if meta["lattice"] == "learned" else "lattice_scale"],
                   mu=tensors.get("mu"), widths=widths,
                   lattice_index=tuple(meta["lattice_index"]), mu_index=tuple(meta["mu_index"]),
                   group_size=meta["group_size"], dim=meta["dim"], lattice=meta["lattice"],
                   decoder=meta["decoder"], out_features=meta["out_features"],
                   in_features=meta["in_features"])

    def stats(self) -> dict[str, Any]:
        """Scalars for the per-layer table; with the quantizer's diagnostics also the "groups"
        and "curve" tables (right after quantization; a reloaded weight has none)."""
        code_bits = sum((b - a) * w for (a, b), w in zip(self.bounds(), self.widths))
        out: dict[str, Any] = {
            "bits_per_weight": self.bits_per_weight(), "code_bits": code_bits / self.in_features,
            "dim": self.dim, "group_size": self.group_size, "lattice": self.lattice,
            "decoder": self.decoder,
        }
        diag = self.diagnostics
        if not diag:
            return out
        groups = diag["group_stats"]
        out.update({
            "alloc_moved": diag["alloc_moved"],
            "objective_init": diag["objective_init"],
            "objective": diag["objective"],
            "objective_ratio": diag["objective"] / max(diag["objective_init"], 1e-30),
            "mean_mu": sum(g["mu"] for g in groups) / len(groups),
            "groups_without_companding": sum(1 for g in groups if g["mu"] == 0.0),
            "groups": [dict(g) for g in groups],
            "curve": [dict(c) for c in diag["curve"]],
        })
        return out
