"""Long help texts shown in the dashboard (kept apart from the wiring)."""

INTRO = """\
# lvq — vector quantization lab
Quantize a language model's linear layers with **GLVQ** (learned lattices per weight group),
**CRVQ** (additive codebooks with extra codebooks for critical channels) or the scalar baselines
**RTN** and **GPTQ**; look inside the result; compare perplexity against size; chat with it.
"""

Q4_NOTE = """\
> **Note on the bundled model.** SmolLM2-135M's weights were shipped as **Q4_1** (4-bit codes in
> blocks of 32 inputs with a scale and a minimum). 4-bit RTN with groups of 32 reproduces them
> exactly, so **4-bit results flatter every method**: the interesting range is **1–3 bits**.
"""

QUANTIZE_HELP = """\
**How a run works.** The model is walked one decoder block at a time: the calibration windows go
through the block, H = XᵀX/n is collected for every linear layer, then each weight W is replaced
by its quantized version minimising ‖(W − Ŵ)X‖². Perplexity is measured before and after on an
evaluation text disjoint from the calibration text (non-overlapping windows; the protocol is
printed next to each number). Runs are saved and appear in the run table and on every page.
"""

PRESETS_NOTE = """\
<small>Presets: **fast** for a first look in minutes on a CPU, **quality** for the best result. Measured
costs and perplexities of every setting: BENCHMARKS.md (2-core CPU; a GPU is much faster).</small>
"""

CALIB_HELP = """\
Calibration text: the bundled Wikipedia articles work offline; hub corpora (WikiText-2, C4) need a
network. Or upload your own UTF-8 `.txt` (at most 20 MB; its first 80 % of paragraphs calibrate,
the rest evaluates).
"""

BITALLOC_HELP = """\
**Where the bits and the error go.** The overview shows the whole model at a glance: one cell per
block and layer type, coloured by the layer's relative output error, its bits per weight
(overhead included) or its code bits. Pick a layer to see its groups.
**Salience-driven bit allocation (GLVQ)** gives each group of input columns N−1, N or N+1 bits with
the average kept at the target; a group's salience is Σ W²ᵢⱼ / U²ⱼⱼ over its columns (U: the
Cholesky factor of H⁻¹), i.e. how much the output moves when the group is perturbed, and salient
groups get more bits. Runs without it (the RHT + E8P presets: 2 bits everywhere) are flat: then
the error is what varies.
"""

LATTICE_HELP = """\
**Inside one group.** Each group of a GLVQ layer has its own generator matrix G (d × d) and μ.
Weight vectors are normalised, companded with μ-law, then encoded as z = round(G⁻¹ w̃) (Babai
rounding-off) and decoded as G z. The plots take two coordinates (a, b) of the d-dimensional
lattice: the 2 × 2 block of G on them, its Babai cells (parallelograms), and the group's
companded weight vectors projected on those coordinates. The integer grid with the same cell area
is drawn for contrast. Fixed codebooks with nearest-point decoding (E8, and E8P of the presets)
have no parallelograms: each weight vector is joined to the point its code decodes to. For rotated
layers (incoherence processing, W′ = U W Vᵀ) the last two plots show the same weights before and
after the rotation: outliers spread out and the distribution becomes close to Gaussian.
"""

CHANNELS_HELP = """\
**Critical channels (CRVQ).** Input channels are scored by how badly a single codebook fits them
(importance = mean over rows of the residual² × H_jj), sorted, and the first λ fraction become
*critical*: extra additive codebooks encode only them. The permutation that sorts them is stored.
"""

COMPARE_HELP = """\
Every saved run and the benchmark table (`assets/bench_results.csv`, written by `make bench`) on one
plot. The dashed step line is the Pareto front: no other run is both smaller and better. The
dotted line is the unquantized model. Perplexities are comparable only under the same protocol
(text, seqlen, windows) — check the table.
"""

CHAT_HELP = """\
Send one prompt to the original model (left) and to a quantized run (right); both stream token by
token. Sampling uses the same temperature / top-p on both sides, so differences are partly chance:
use temperature 0 for a greedy, repeatable comparison. Under each reply: its speed (tokens per
second after the first token; the first token's wait is the prompt's prefill), how the model's
linears compute and its size. Both sides generate at once and share the CPU.
"""

LEARN = {
    "lattice": """\
### 1. A lattice
A lattice is every integer combination of the columns of a generator G: {G z : z ∈ ℤᵈ}. A lattice
quantizer stores z (a few bits per coordinate) and G (once per group). Skewing and stretching G
fits the cells to correlated weights; the cell *area* |det G| sets the resolution.
""",
    "babai": """\
### 2. Babai rounding-off
Finding the nearest lattice point is hard in high dimension. Babai's rounding-off is cheap:
z = round(G⁻¹ w). Its cells are parallelograms, not the Voronoi cells of the lattice, so for a
skewed G it sometimes picks a point that is not the nearest (red). Drag the target and the skew.
""",
    "companding": """\
### 3. Companding
Weights are heavy-tailed: most are small. μ-law companding F(x) = sign(x) ln(1 + μ|x|)/ln(1 + μ)
stretches small values before uniform rounding, so levels are dense near 0 and sparse in the
tails. It pays on heavy-tailed groups and costs on Gaussian-like ones — try both sources.
""",
    "additive": """\
### 4. Additive codebooks
AQLM/CRVQ store each vector as a sum of one entry from each of M codebooks: ŵ = C₁[b₁] + … + C_M[b_M].
With K entries per codebook that is M·log₂K bits per vector but K^M reachable points. Each extra
codebook (trained by k-means on the residual) lowers the error.
""",
    "critical": """\
### 5. Critical channels
A few input channels carry outliers. CRVQ sorts channels by importance and spends extra codebooks
only on the top λ fraction: a small bit cost for a large error cut when outliers are concentrated.
""",
    "bound": """\
### 6. The distortion–rate bound
For a unit-variance Gaussian source no quantizer at R bits per dimension can beat MSE D(R) = 2^(−2R).
Scalar rounding sits ~1.5 dB (0.25 bit) above it at high rate; lattices and trellises close part of
that gap through better cell shapes. Measured points at 2 bits come from the literature.
""",
}
