"""Frozen configuration dataclasses, one per method, plus the calibration settings.

Every config validates itself in ``__post_init__`` and raises ``ValueError`` with a message a user
can act on. The CLI and the dashboard only *build* configs; the library reads them.

``to_dict()`` / ``config_from_dict()`` give the JSON form stored in saved runs.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar


class ConfigBase:
    """Shared helpers for the method configs (each subclass is a frozen dataclass)."""

    method: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)  # type: ignore[call-overload]
        return {"method": self.method, **d}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """Build the named preset (e.g. ``"fast"`` or ``"quality"``), with ``overrides`` on top."""
        if name not in cls.presets:
            raise ValueError(
                f"unknown preset {name!r} for {cls.method}; choose one of {sorted(cls.presets)}"
            )
        return cls(**{**cls.presets[name], **overrides})


def _check_range(name: str, value: float, lo: float, hi: float, hint: str = "") -> None:
    if not (lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}{'. ' + hint if hint else ''}")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


@dataclass(frozen=True)
class RTNConfig(ConfigBase):
    """Round-to-nearest: asymmetric min-max per group of ``group_size`` input columns, fp16
    scale and zero per (row, group)."""

    bits: int = 4
    group_size: int = 128

    method: ClassVar[str] = "rtn"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"fast": {}, "quality": {}}

    def __post_init__(self) -> None:
        _check_int("bits", self.bits)
        _check_range("bits", self.bits, 1, 8, "RTN stores integer codes of 1 to 8 bits")
        _check_int("group_size", self.group_size)
        _check_range("group_size", self.group_size, 1, 1 << 20)


@dataclass(frozen=True)
class GPTQConfig(ConfigBase):
    """GPTQ (Frantar et al. 2022) on the RTN grid: damping ``damp`` x mean diag(H), lazy batch
    updates in blocks of ``block_size`` columns, optional activation order."""

    bits: int = 4
    group_size: int = 128
    damp: float = 0.01
    act_order: bool = False
    block_size: int = 128

    method: ClassVar[str] = "gptq"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"fast": {}, "quality": {"act_order": True}}

    def __post_init__(self) -> None:
        _check_int("bits", self.bits)
        _check_range("bits", self.bits, 1, 8, "GPTQ stores integer codes of 1 to 8 bits")
        _check_int("group_size", self.group_size)
        _check_range("group_size", self.group_size, 1, 1 << 20)
        _check_range("damp", self.damp, 0.0, 1.0, "damping is a fraction of H's mean diagonal")
        _check_int("block_size", self.block_size)
        _check_range("block_size", self.block_size, 1, 1 << 16)


@dataclass(frozen=True)
class CalibConfig:
    """Calibration data: ``n_windows`` windows of ``seqlen`` tokens from ``corpus``.

    ``corpus`` is a corpus name (``lvq.data.list_corpora()``) or a path to a text file.
    """

    corpus: str = "wiki-bundled"
    n_windows: int = 32
    seqlen: int = 512
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self) -> None:
        _check_int("n_windows", self.n_windows)
        _check_range("n_windows", self.n_windows, 1, 100_000)
        _check_int("seqlen", self.seqlen)
        _check_range("seqlen", self.seqlen, 8, 1 << 17)
        _check_int("batch_size", self.batch_size)
        _check_range("batch_size", self.batch_size, 1, 4096)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def config_from_dict(d: dict[str, Any]):
    """Rebuild a method config from its ``to_dict()`` form (inverse of ``to_dict``)."""
    from .methods import get_method

    d = dict(d)
    name = d.pop("method", None)
    if name is None:
        raise ValueError("config has no 'method' field")
    cls = get_method(name).config_cls
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - fields
    if unknown:
        raise ValueError(f"unknown settings for {name}: {sorted(unknown)}")
    for f in dataclasses.fields(cls):  # JSON turns tuples into lists
        if f.name in d and isinstance(d[f.name], list):
            d[f.name] = tuple(d[f.name])
    return cls(**d)


# ----------------------------------------------------------------------------------------------
# GLVQ (owned by lvq/glvq.py; edit only this section)
# ----------------------------------------------------------------------------------------------
GLVQ_DIMS = (2, 4, 8, 16, 32)
GLVQ_LATTICES = ("learned", "Z", "D", "E8")
GLVQ_DECODERS = ("babai", "nearest")
GLVQ_FEEDBACK_UNITS = ("vector", "group")


@dataclass(frozen=True)
class GLVQConfig(ConfigBase):
    """Grouped lattice vector quantization (Zhang et al., NeurIPS 2025); the math is in lvq/glvq.py.

    bits: average target code bits per weight (fractional targets mix integer widths per group;
    scales, generators, μ and width tags come on top, ~0.14 bpw at group 128, d = 8).
    group_size: input columns per group; dim: lattice dimension d (must divide group_size).
    Paper ablation switches (Tables 6/7): bit_allocation, shared_lattice (one generator for the
    layer, scaled per width by a fixed table), shared_companding (one μ per layer), companding,
    decoder ("babai"; "nearest" = exact Conway–Sloane decoding, standard lattices only: lattice
    "Z", "D" or "E8", whose scale is learned instead of a generator).

    Our decisions where the paper is silent (measured on synthetic 1536×576 layers with a
    correlated H, 2 bpw; GPTQ g128 = 1.00):
    * error_feedback + feedback_unit="vector" (default): GPTQ's OBS update after every d-column
      slice of a group, with the lattice learned for that sequential objective: 0.68× GPTQ's
      layer objective (at 2.15 vs 2.28 bpw). feedback_unit="group" (joint Babai per group, update
      after the group): 1.37×; no feedback (the paper): ~11×.
    * identity_companding=True (default): a group may store μ = 0 (no companding) when that gives
      the lower initial objective. The paper's strict μ ∈ [mu_min, mu_max] (False) measured 1.09×
      vs 0.68× on the same layer: on near-Gaussian groups companding costs.
    * Learning (Adam on G and ln μ) lowers the objective by 1–4% over the Cholesky-initialised,
      scale-searched G₀ on these layers (up to ~6% with an anisotropic H); it cannot change the
      cell shape's cost on i.i.d. data. lr is relative to G₀'s RMS entry; lr_log is Adam's step
      on ln μ (and on a standard lattice's scale).
    * lattice_reg = λ of λ‖G − G₀‖²/‖G₀‖² (objective normalised to 1 at G₀); sv_band bounds G's
      singular values relative to G₀'s; learning stops after ``steps`` or ``patience`` steps
      without a relative improvement of ``tol``.

    Cost, measured on the whole bundled SmolLM2-135M at 2 bpw (210 linears, 32×512 calibration
    windows; ``python -m lvq.bench``): fast (10 steps) 228 s of quantization on this 2-core
    machine when idle (366 s with another job on the other core), peak RSS 3.6 GB; quality (100
    steps) 890 s with the other core busy. On 21 real layers (blocks 0, 7, 15) the geometric-mean
    relative output error is 0.0406 without learning, 0.0385 fast, 0.0346 quality (5.6x fast's time).
    """

    bits: float = 2.0
    group_size: int = 128
    dim: int = 8
    companding: bool = True
    shared_companding: bool = False
    bit_allocation: bool = True
    shared_lattice: bool = False
    error_feedback: bool = True
    feedback_unit: str = "vector"
    decoder: str = "babai"
    lattice: str = "learned"
    steps: int = 30
    lr: float = 1e-2
    lattice_reg: float = 1e-3
    sv_band: tuple[float, float] = (0.25, 4.0)
    tol: float = 1e-4
    patience: int = 5
    mu_min: float = 10.0
    mu_max: float = 255.0
    identity_companding: bool = True
    lr_log: float = 0.05
    damp: float = 0.01
    seed: int = 0

    method: ClassVar[str] = "glvq"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"steps": 10},
        "quality": {"steps": 100, "patience": 10},
    }

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, float)):
            raise ValueError(f"bits must be a number, got {self.bits!r}")
        _check_range("bits", float(self.bits), 1.0, 8.0, "GLVQ targets 1 to 8 bits per weight")
        _check_int("group_size", self.group_size)
        _check_range("group_size", self.group_size, 32, 512)
        _check_int("dim", self.dim)
        if self.dim not in GLVQ_DIMS:
            raise ValueError(f"dim must be one of {GLVQ_DIMS}, got {self.dim}")
        if self.group_size % self.dim:
            raise ValueError(
                f"dim={self.dim} does not divide group_size={self.group_size}; "
                f"pick a group size that is a multiple of {self.dim}"
            )
        if self.decoder not in GLVQ_DECODERS:
            raise ValueError(f"decoder must be one of {GLVQ_DECODERS}, got {self.decoder!r}")
        if self.feedback_unit not in GLVQ_FEEDBACK_UNITS:
            raise ValueError(
                f"feedback_unit must be one of {GLVQ_FEEDBACK_UNITS}, got {self.feedback_unit!r}")
        if self.lattice not in GLVQ_LATTICES:
            raise ValueError(f"lattice must be one of {GLVQ_LATTICES}, got {self.lattice!r}")
        if self.decoder == "nearest" and self.lattice == "learned":
            raise ValueError(
                "nearest-point decoding needs a standard lattice (lattice='Z', 'D' or 'E8'); "
                "a learned lattice uses Babai rounding (decoder='babai')"
            )
        if self.lattice == "E8" and self.dim != 8:
            raise ValueError("the E8 lattice needs dim=8")
        _check_int("steps", self.steps)
        _check_range("steps", self.steps, 0, 100_000)
        _check_range("lr", self.lr, 0.0, 1.0)
        _check_range("lattice_reg", self.lattice_reg, 0.0, 1e6)
        lo, hi = self.sv_band
        if not (0 < lo <= 1 <= hi):
            raise ValueError(f"sv_band must satisfy 0 < low <= 1 <= high, got {self.sv_band}")
        _check_range("tol", self.tol, 0.0, 1.0)
        _check_int("patience", self.patience)
        _check_range("patience", self.patience, 1, 100_000)
        _check_range("lr_log", self.lr_log, 0.0, 10.0)
        _check_range("mu_min", self.mu_min, 1e-3, 1e4, "the paper uses mu in [10, 255]")
        _check_range("mu_max", self.mu_max, self.mu_min, 1e4, "mu_max must be >= mu_min")
        _check_range("damp", self.damp, 0.0, 1.0)


# ----------------------------------------------------------------------------------------------
# CRVQ and AQLM (owned by lvq/crvq.py; edit only this section)
# ----------------------------------------------------------------------------------------------
CRVQ_IMPORTANCE = ("residual", "hessian_max")
CRVQ_REORDER = ("critical_first", "full")


@dataclass(frozen=True)
class CRVQConfig(ConfigBase):
    """Channel-relaxed vector quantization (Xu et al., TACL 2025).

    A basic codebook of 2**codebook_bits entries of dimension ``dim`` encodes every vector;
    ``num_extended`` extended codebooks of 2**extended_bits entries encode only the critical
    vector-groups (the first floor(critical_ratio * in / dim) after sorting by importance).
    critical_ratio = 0 is AQLM with one codebook. reorder: "critical_first" moves only the
    critical channels to the front (the others keep their order); "full" sorts every channel by
    importance (see lvq/crvq.py for why the default differs).
    """

    dim: int = 8
    codebook_bits: int = 8
    num_extended: int = 3
    extended_bits: int = 8
    critical_ratio: float = 0.02
    importance: str = "residual"
    reorder: str = "critical_first"
    beam_width: int = 1
    epochs: int = 10
    tol: float = 1e-3
    adam_steps: int = 50
    lr: float = 1e-2
    kmeans_iters: int = 20
    finetune: bool = False
    finetune_steps: int = 50
    finetune_lr: float = 1e-4
    seed: int = 0

    method: ClassVar[str] = "crvq"
    # Cost on the bundled SmolLM2-135M, this 2-core machine idle. fast, measured on the whole
    # model (`python -m lvq quantize --method crvq --preset fast`): quantization 276 s (6.4 min
    # wall with loading and evaluation), process peak RSS 2.9 GB, 0.885 bpw, ppl 5622 (fp32 25.5).
    # quality (the paper's released d=8, e=8, m=3, lambda=2%), measured on the whole model on one
    # thread while another benchmark shared the cores: quantization 2274 s, process peak RSS
    # 2.5 GB, 1.34 bpw (four 256x8 fp16 codebooks weigh on 576-wide layers), ppl 1120.
    # finetune=True adds ~6 s per pass per block (bench, one busy core: 2635 s with 10 passes vs
    # 830 s without, over 30 blocks), up to finetune_steps passes each.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"dim": 8, "codebook_bits": 6, "extended_bits": 6, "num_extended": 3,
                 "critical_ratio": 0.02, "epochs": 2, "adam_steps": 20, "kmeans_iters": 10},
        "quality": {"dim": 8, "codebook_bits": 8, "extended_bits": 8, "num_extended": 3,
                    "critical_ratio": 0.02, "beam_width": 1, "epochs": 10, "adam_steps": 50},
    }

    def __post_init__(self) -> None:
        for name in ("dim", "codebook_bits", "num_extended", "extended_bits", "beam_width",
                     "epochs", "adam_steps", "kmeans_iters", "finetune_steps"):
            _check_int(name, getattr(self, name))
        if self.dim not in (2, 4, 8, 16):
            raise ValueError(f"dim must be one of (2, 4, 8, 16), got {self.dim}")
        _check_range("codebook_bits", self.codebook_bits, 1, 16)
        _check_range("extended_bits", self.extended_bits, 1, 16)
        _check_range("num_extended", self.num_extended, 0, 8)
        _check_range("critical_ratio", self.critical_ratio, 0.0, 1.0,
                     "it is the fraction of input channels treated as critical (0.01-0.05 typical)")
        if self.importance not in CRVQ_IMPORTANCE:
            raise ValueError(f"importance must be one of {CRVQ_IMPORTANCE}, got {self.importance!r}")
        if self.reorder not in CRVQ_REORDER:
            raise ValueError(f"reorder must be one of {CRVQ_REORDER}, got {self.reorder!r}")
        _check_range("beam_width", self.beam_width, 1, 64)
        _check_range("epochs", self.epochs, 0, 1000)
        _check_range("tol", self.tol, 0.0, 1.0)
        _check_range("adam_steps", self.adam_steps, 0, 100_000)
        _check_range("lr", self.lr, 0.0, 1.0)
        _check_range("kmeans_iters", self.kmeans_iters, 0, 10_000)
        _check_range("finetune_steps", self.finetune_steps, 0, 100_000)
        _check_range("finetune_lr", self.finetune_lr, 0.0, 1.0)


@dataclass(frozen=True)
class AQLMConfig(ConfigBase):
    """Additive quantization (AQLM): ``num_codebooks`` codebooks of 2**codebook_bits entries on
    every vector, no critical channels. The CRVQ core with critical_ratio = 0."""

    dim: int = 8
    codebook_bits: int = 8
    num_codebooks: int = 1
    beam_width: int = 1
    epochs: int = 10
    tol: float = 1e-3
    adam_steps: int = 50
    lr: float = 1e-2
    kmeans_iters: int = 20
    seed: int = 0

    method: ClassVar[str] = "aqlm"
    # fast: 0.79 bpw on SmolLM2-135M, 3.3 min (1 thread, idle); quality (1x8, d=8): 1.09 bpw.
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"codebook_bits": 6, "epochs": 2, "adam_steps": 20, "kmeans_iters": 10},
        "quality": {"codebook_bits": 8, "epochs": 10, "adam_steps": 50},
    }

    def __post_init__(self) -> None:
        for name in ("dim", "codebook_bits", "num_codebooks", "beam_width", "epochs",
                     "adam_steps", "kmeans_iters"):
            _check_int(name, getattr(self, name))
        if self.dim not in (2, 4, 8, 16):
            raise ValueError(f"dim must be one of (2, 4, 8, 16), got {self.dim}")
        _check_range("codebook_bits", self.codebook_bits, 1, 16)
        _check_range("num_codebooks", self.num_codebooks, 1, 8)
        _check_range("beam_width", self.beam_width, 1, 64)
        _check_range("epochs", self.epochs, 0, 1000)
        _check_range("tol", self.tol, 0.0, 1.0)
        _check_range("adam_steps", self.adam_steps, 0, 100_000)
        _check_range("lr", self.lr, 0.0, 1.0)
        _check_range("kmeans_iters", self.kmeans_iters, 0, 10_000)
