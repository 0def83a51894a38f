"""Frozen configuration dataclasses, one per method, plus the calibration settings.

Every config validates itself in ``__post_init__`` and raises ``ValueError`` with a message a user
can act on. The CLI and the dashboard only *build* configs; the library reads them.

``to_dict()`` gives the JSON form stored in saved runs; ``lvq.methods.config_from_dict`` reads it
back. The math behind each setting is described in docs/algorithms.md.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar


def _check_range(name: str, value: float, lo: float, hi: float, hint: str = "") -> None:
    if not (lo <= value <= hi):
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}{'. ' + hint if hint else ''}")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")


CHAT_REPLIES = ("text", "model")  # e2e_chat_replies: the calibration text's or the model's own


@dataclass(frozen=True, kw_only=True)
class ConfigBase:
    """What every method shares (keyword-only fields, after each method's own):

    incoherence: quantize U W Vᵀ with seeded randomized Hadamard transforms U, V
    (lvq/rotated_weight.py; ``rotation_seed`` picks them); train_rotation: keep their sign
    vectors as fp16 scales that fine-tuning trains (16 instead of 1 bit per entry).
    finetune: after each block, train its continuous parameters with the codes frozen to
    reproduce the original block's outputs, up to ``finetune_steps`` passes at ``finetune_lr``
    (lvq/finetune.py). e2e_steps > 0: afterwards, train the whole model's continuous parameters
    to match the original model's next-token distribution (KL), ``e2e_steps`` optimizer steps at
    ``e2e_lr``, with early stopping on held-out windows; ``e2e_chat`` more windows of chat-template
    conversations built from the calibration text (lvq/data.py ``chat_windows``) join its data, so
    that the model also keeps the original's behaviour where a chat reply starts;
    ``e2e_chat_replies``: whose replies those conversations hold, ``"text"`` (the rest of the
    paragraph the user's request quotes) or ``"model"`` (the original model's own greedy replies,
    generated before quantizing: lvq/data.py ``model_chat_windows``).
    layer_bits: other widths for some layers, ``"REGEX=BITS;REGEX=BITS"`` (methods with a
    ``bits`` setting): each REGEX is searched in the layer's name ``"<block>.<module path>"``
    (e.g. ``"0.self_attn.v_proj"``; negative block numbers count from the end, ``"-1."`` is the
    last block) and the first that matches gives that layer its ``bits`` (``layer_config``):
    ``"^(0|1|-2|-1)\\.=3"`` spends 3 bits on the first and last two blocks,
    ``"self_attn.[kvo]_proj=4"`` 4 bits on the attention's k, v and o projections. Counted in
    bits_per_weight like any width.
    """

    incoherence: bool = False
    rotation_seed: int = 0
    train_rotation: bool = False
    finetune: bool = False
    finetune_steps: int = 50
    finetune_lr: float = 1e-4
    e2e_steps: int = 0
    e2e_lr: float = 1e-5
    e2e_chat: int = 0
    e2e_chat_replies: str = "text"
    layer_bits: str = ""

    method: ClassVar[str] = ""
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    # calibration windows a preset runs with where more than CalibConfig's default measured better
    calib_windows: ClassVar[dict[str, int]] = {}

    def __post_init__(self) -> None:
        for name in ("rotation_seed", "finetune_steps", "e2e_steps", "e2e_chat"):
            _check_int(name, getattr(self, name))
        _check_range("finetune_steps", self.finetune_steps, 0, 100_000)
        _check_range("finetune_lr", self.finetune_lr, 0.0, 1.0)
        _check_range("e2e_steps", self.e2e_steps, 0, 1_000_000)
        _check_range("e2e_lr", self.e2e_lr, 0.0, 1.0)
        _check_range("e2e_chat", self.e2e_chat, 0, 100_000)
        if self.e2e_chat_replies not in CHAT_REPLIES:
            raise ValueError(f"e2e_chat_replies must be one of {CHAT_REPLIES}, got {self.e2e_chat_replies!r}")
        for pattern, bits in self._layer_bits():  # each width passes the method's own checks
            try:
                dataclasses.replace(self, bits=bits, layer_bits="")
            except ValueError as e:
                raise ValueError(f"layer_bits {pattern.pattern}={bits}: {e}") from None

    def _layer_bits(self) -> list[tuple[re.Pattern, float | int]]:
        """``layer_bits`` parsed: [(compiled REGEX, bits)]; ValueError saying what is wrong."""
        if not isinstance(self.layer_bits, str):
            raise ValueError(f"layer_bits must be a string like 'self_attn.v_proj=4', got {self.layer_bits!r}")
        if not self.layer_bits.strip():
            return []
        if not any(f.name == "bits" for f in dataclasses.fields(self)):
            raise ValueError(f"layer_bits needs a bits setting, and {self.method} has none")
        out = []
        for item in filter(None, (x.strip() for x in self.layer_bits.split(";"))):
            pattern, sep, value = item.rpartition("=")
            if not sep or not pattern.strip():
                raise ValueError(f"layer_bits entries are REGEX=BITS separated by ';', got {item!r}")
            try:
                regex = re.compile(pattern.strip())
            except re.error as e:
                raise ValueError(f"layer_bits: {pattern.strip()!r} is not a regular expression ({e})") from None
            try:
                bits = float(value)
            except ValueError:
                raise ValueError(f"layer_bits: {value.strip()!r} in {item!r} is not a number of bits") from None
            out.append((regex, int(bits) if bits.is_integer() and isinstance(self.bits, int) else bits))
        return out

    def layer_config(self, name: str, n_blocks: int | None = None):
        """This config for the layer ``name`` (``"<block>.<module path>"``): its ``bits`` replaced
        by the first ``layer_bits`` entry whose REGEX is found in ``name`` or, given the model's
        ``n_blocks``, in the same name with the block counted from the end (``"-1.mlp.up_proj"``
        for the last block's); itself otherwise."""
        names = [name]
        block, sep, rest = name.partition(".")
        if n_blocks is not None and sep and block.isdigit():
            names.append(f"{int(block) - n_blocks}.{rest}")
        for regex, bits in self._layer_bits():
            if any(regex.search(n) for n in names):
                return dataclasses.replace(self, bits=bits)
        return self

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {"method": self.method, **d}

    def replace(self, **changes: Any):
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """Build the named preset (e.g. ``"fast"`` or ``"quality"``), with ``overrides`` on top."""
        if name not in cls.presets:
            raise ValueError(
                f"unknown preset {name!r} for {cls.method}; choose one of {sorted(cls.presets)}"
            )
        return cls(**{**cls.presets[name], **overrides})

    @classmethod
    def preset_calib_windows(cls, name: str | None) -> int:
        """Calibration windows (of 512 tokens) the named preset is meant to run with: the
        method's ``calib_windows`` entry for it, else CalibConfig's default (32)."""
        return cls.calib_windows.get(name or "", CalibConfig.n_windows)


@dataclass(frozen=True)
class RTNConfig(ConfigBase):
    """Round-to-nearest: asymmetric min-max per group of ``group_size`` input columns, fp16
    scale and zero per (row, group)."""

    bits: int = 4
    group_size: int = 128

    method: ClassVar[str] = "rtn"
    presets: ClassVar[dict[str, dict[str, Any]]] = {"fast": {}, "quality": {}}

    def __post_init__(self) -> None:
        super().__post_init__()
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
        super().__post_init__()
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


# ----------------------------------------------------------------------------------------------
# GLVQ
# ----------------------------------------------------------------------------------------------
GLVQ_DIMS = (2, 4, 8, 16, 32)
GLVQ_LATTICES = ("learned", "Z", "D", "E8", "E8P")
GLVQ_DECODERS = ("babai", "nearest")
GLVQ_FEEDBACK_UNITS = ("vector", "group")


@dataclass(frozen=True)
class GLVQConfig(ConfigBase):
    """Grouped lattice vector quantization (Zhang et al., NeurIPS 2025); math in lvq/glvq.py.

    bits: average target code bits per weight (fractional targets mix integer widths per group;
    scales, generators, μ and width tags come on top). group_size: input columns per group;
    dim: lattice dimension d (must divide group_size).
    Paper ablation switches (its Tables 6/7): bit_allocation, shared_lattice (one generator for
    the layer), shared_companding (one μ per layer), companding, decoder ("babai"; "nearest" =
    exact Conway–Sloane decoding of a standard lattice "Z", "D" or "E8", whose scale is learned
    instead of a generator).
    Our decisions where the paper is silent (docs/algorithms.md, "GLVQ", with the measurements):
    error_feedback with feedback_unit="vector" (GPTQ's update after every d-column slice);
    identity_companding (a group may store μ = 0, no companding); learning by Adam on G and ln μ
    (lr relative to G₀'s RMS entry, lr_log on ln μ), with lattice_reg = λ of
    λ‖G − G₀‖²/‖G₀‖², sv_band bounding G's singular values relative to G₀'s, and early stopping
    after ``patience`` steps without a relative gain of ``tol``.
    Measured costs of the presets are in BENCHMARKS.md.
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

    method: ClassVar[str] = "glvq"
    # "paper": the method as the paper describes it (learned lattices, Babai rounding, companding,
    # bit allocation) plus our error feedback. "fast" and "quality" use what measured best here
    # (docs/algorithms.md, BENCHMARKS.md): incoherence processing, the E8P codebook with exact
    # nearest-point encoding and per-slice error feedback, one scale per row and 512 columns;
    # "quality" adds end-to-end fine-tuning of the continuous parameters on the calibration
    # windows plus 16 chat-template conversations (block fine-tuning gained too little for its
    # time here; docs/algorithms.md, "Fine-tuning").
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "paper": {"steps": 30},
        "fast": {"incoherence": True, "lattice": "E8P", "decoder": "nearest", "steps": 0,
                 "companding": False, "bit_allocation": False, "group_size": 512},
        "quality": {"incoherence": True, "lattice": "E8P", "decoder": "nearest", "steps": 0,
                    "companding": False, "bit_allocation": False, "group_size": 512,
                    "e2e_steps": 128, "e2e_lr": 3e-4, "e2e_chat": 16},
    }
    # 128 x 512 = 64k calibration tokens for "quality": at 2 bpw every seed beat every seed of
    # 16k, with peak memory under 4 GB (BENCHMARKS.md, calibration table; docs/algorithms.md)
    calib_windows: ClassVar[dict[str, int]] = {"quality": 128}

    def __post_init__(self) -> None:
        super().__post_init__()
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
        if self.lattice in ("E8", "E8P") and self.dim != 8:
            raise ValueError(f"the {self.lattice} lattice needs dim=8")
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
# Additive quantization: AQLM and CRVQ
# ----------------------------------------------------------------------------------------------
ADDITIVE_DIMS = (2, 4, 8, 16)
CRVQ_IMPORTANCE = ("residual", "hessian_max")
CRVQ_REORDER = ("critical_first", "full")


@dataclass(frozen=True)
class AdditiveConfig(ConfigBase):
    """Settings shared by AQLM and CRVQ (math in lvq/additive.py): vectors of ``dim``
    consecutive input columns, a basic codebook of 2**codebook_bits entries, code search by beam
    search of width ``beam_width``, and per epoch ``adam_steps`` Adam steps (``lr``) on the
    codebooks and scales; stop after ``epochs`` or below a relative gain of ``tol``. Codebooks
    start from ``kmeans_iters`` iterations of k-means seeded by ``seed``."""

    dim: int = 8
    codebook_bits: int = 8
    beam_width: int = 1
    epochs: int = 10
    tol: float = 1e-3
    adam_steps: int = 50
    lr: float = 1e-2
    kmeans_iters: int = 20
    seed: int = 0

    _int_fields: ClassVar[tuple[str, ...]] = ("dim", "codebook_bits", "beam_width", "epochs",
                                               "adam_steps", "kmeans_iters")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in self._int_fields:
            _check_int(name, getattr(self, name))
        if self.dim not in ADDITIVE_DIMS:
            raise ValueError(f"dim must be one of {ADDITIVE_DIMS}, got {self.dim}")
        _check_range("codebook_bits", self.codebook_bits, 1, 16)
        _check_range("beam_width", self.beam_width, 1, 64)
        _check_range("epochs", self.epochs, 0, 1000)
        _check_range("tol", self.tol, 0.0, 1.0)
        _check_range("adam_steps", self.adam_steps, 0, 100_000)
        _check_range("lr", self.lr, 0.0, 1.0)
        _check_range("kmeans_iters", self.kmeans_iters, 0, 10_000)


@dataclass(frozen=True)
class CRVQConfig(AdditiveConfig):
    """Channel-relaxed vector quantization (Xu et al., TACL 2025).

    On top of the basic codebook, ``num_extended`` extended codebooks of 2**extended_bits
    entries encode only the critical vector-groups (the first floor(critical_ratio * in / dim)
    after sorting by ``importance``). critical_ratio = 0 is AQLM with one codebook. reorder:
    "critical_first" moves only the critical channels to the front; "full" sorts every channel
    (docs/algorithms.md says why the default differs). Measured costs of the presets are in
    BENCHMARKS.md.
    """

    num_extended: int = 3
    extended_bits: int = 8
    critical_ratio: float = 0.02
    importance: str = "residual"
    reorder: str = "critical_first"

    method: ClassVar[str] = "crvq"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"dim": 8, "codebook_bits": 6, "extended_bits": 6, "num_extended": 3,
                 "critical_ratio": 0.02, "epochs": 2, "adam_steps": 20, "kmeans_iters": 10},
        # about 1.1 bits per weight: one 8-bit codebook on 8-vectors, one 6-bit extended codebook
        # on the 2 % critical channels, incoherence and end-to-end fine-tuning as GLVQ's quality
        "quality": {"dim": 8, "codebook_bits": 8, "extended_bits": 6, "num_extended": 1,
                    "critical_ratio": 0.02, "beam_width": 1, "epochs": 4, "adam_steps": 30,
                    "kmeans_iters": 15, "incoherence": True, "e2e_steps": 128, "e2e_lr": 3e-4},
    }
    _int_fields: ClassVar[tuple[str, ...]] = AdditiveConfig._int_fields + (
        "num_extended", "extended_bits")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("extended_bits", self.extended_bits, 1, 16)
        _check_range("num_extended", self.num_extended, 0, 8)
        _check_range("critical_ratio", self.critical_ratio, 0.0, 1.0,
                     "it is the fraction of input channels treated as critical (0.01-0.05 typical)")
        if self.importance not in CRVQ_IMPORTANCE:
            raise ValueError(f"importance must be one of {CRVQ_IMPORTANCE}, got {self.importance!r}")
        if self.reorder not in CRVQ_REORDER:
            raise ValueError(f"reorder must be one of {CRVQ_REORDER}, got {self.reorder!r}")


@dataclass(frozen=True)
class AQLMConfig(AdditiveConfig):
    """Additive quantization (AQLM, Egiazarian et al. 2024): ``num_codebooks`` codebooks of
    2**codebook_bits entries on every vector, no critical channels (CRVQ with critical_ratio = 0)."""

    num_codebooks: int = 1

    method: ClassVar[str] = "aqlm"
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "fast": {"codebook_bits": 6, "epochs": 2, "adam_steps": 20, "kmeans_iters": 10},
        "quality": {"codebook_bits": 8, "epochs": 10, "adam_steps": 50},
    }
    _int_fields: ClassVar[tuple[str, ...]] = AdditiveConfig._int_fields + ("num_codebooks",)

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_range("num_codebooks", self.num_codebooks, 1, 8)
