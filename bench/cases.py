"""The whole-model benchmark matrix: frozen cases, the per-device subsets, and the provider builders.

A case is (mode, provider, img_size, batch). Providers of ``resformer_mtl``:

- ``eager``: fp32 reference (the speedup baseline of its group);
- ``autocast-bf16``: the reference under bf16 autocast;
- ``compile``: ``torch.compile`` of the fp32 reference, default mode (the "vs compiled" baseline);
- ``compile-bf16`` (GPU): the same under bf16 autocast, the like-for-like baseline of ``fastmtl`` on GPU;
- ``compile-max-autotune`` (GPU, inference): ``torch.compile(mode="max-autotune")`` of the fp32 reference;
- ``fastmtl``: inference = :func:`fastmtl.inference.optimize.optimize_for_inference` (BN folding, channels_last, Triton
  kernels + bf16 + compile on GPU; fp32, and compile only with ``--bench-cpu-compile``, on CPU); training (GPU) =
  Triton kernels + channels_last + bf16 autocast + compile.

Every provider but ``fastmtl`` (and every peer) is built with ``kernels="reference"`` (``bench.test_model.
provider_kernels``), so that no baseline is timed with fastmtl's Triton kernels inside it; each row records its
kernel backend (``extra_info["kernels"]``) and the fallbacks seen while it ran.

Peers, eager fp32 on the same input: ``resformer_mtl_nodfe``, ``unet_resnet34_mtl`` and ``smp_unet_r34``
(segmentation_models_pytorch ``Unet("resnet34", encoder_weights=None, classes=1, aux_params=dict(classes=3))``).

The GPU matrix is every provider at IMG_SIZES x GPU_BATCHES. On CPU (2 cores, 15-minute budget for the whole
suite) only the combinations in ``CPU_INFER`` / ``CPU_TRAIN`` run; the others are skipped with the reason.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from bench.shapes import GPU_BATCHES
from fastmtl.models.launches import IMG_SIZES

MODEL = "resformer_mtl"
PEERS = ("resformer_mtl_nodfe", "unet_resnet34_mtl", "smp_unet_r34")
INFER_PROVIDERS = ("eager", "autocast-bf16", "compile", "compile-bf16", "compile-max-autotune", "fastmtl")
TRAIN_PROVIDERS = ("eager", "autocast-bf16", "compile", "compile-bf16", "fastmtl")
GPU_ONLY = frozenset({"compile-bf16", "compile-max-autotune"})
COMPILED = frozenset({"compile", "compile-bf16", "compile-max-autotune"})

# CPU subset, chosen so the full CPU suite stays under 15 minutes on a shared 2-core machine: one forward of
# resformer_mtl there takes ~3 s at 224 x 1 (~10 s when the cores are busy), ~12 s at 512 x 1, ~30 s at 224 x 8
# and a training step at 224 x 8 ~2 minutes. So: 512 x 8 and batch-8 training are dropped, peers run at 224 x 1.
CPU_INFER: dict[tuple[int, int], tuple[str, ...]] = {
    (224, 1): ("eager", "autocast-bf16", "compile", "fastmtl", *PEERS),
    (224, 8): ("eager", "fastmtl"),
    (512, 1): ("eager",),
}
CPU_TRAIN: dict[tuple[int, int], tuple[str, ...]] = {(224, 1): ("eager", "unet_resnet34_mtl", "smp_unet_r34")}
# torch.compile on CPU spends ~5 minutes in Inductor's C++ code generation per model and shape on 2 cores.
CPU_COMPILE_REASON = (
    "torch.compile on CPU takes ~5 min per model/shape on a 2-core machine; pass --bench-cpu-compile "
    "(or FASTMTL_BENCH_CPU_COMPILE=1) to include it"
)

QUICK_IMG_SIZES = (32, 64)
QUICK_TRAIN_SIZES = (64,)  # at 32 x 1 the peers' 1x1 bottleneck BN cannot train (one value per channel)
QUICK_BATCHES = (1,)
QUICK_INFER = ("eager", "autocast-bf16", "compile", "fastmtl", *PEERS)
QUICK_TRAIN = ("eager", "compile", "fastmtl", *PEERS)

# The GPU suite's subset (``--bench-suite``), most important first: inference at 224 px batch 64 and training at the
# paper's batch 8 then 64, each as bf16 eager autocast (the baseline), bf16 compiled, and the fastmtl path.
SUITE_PROVIDERS = ("autocast-bf16", "fastmtl", "compile-bf16")
SUITE_SHAPES = {"infer": ((224, 64),), "train": ((224, 8), (224, 64))}


def env_flag(name: str) -> bool:
    """True when environment variable ``name`` is set to something other than "", "0", "false", "no", "off"."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class ModelCase:
    """One timed whole-model callable: ``mode`` "infer" or "train", a provider or peer, and the input shape."""

    mode: str
    provider: str
    img_size: int
    batch: int

    @property
    def model(self) -> str:
        return self.provider if self.provider in PEERS else MODEL

    @property
    def group(self) -> str:
        return f"{self.mode}-{self.img_size}px-b{self.batch}"

    @property
    def id(self) -> str:
        return f"{self.img_size}px-b{self.batch}-{self.provider}"

    @property
    def compiled(self) -> bool:
        return self.provider in COMPILED or self.provider == "fastmtl"

    @property
    def amp(self) -> bool:
        """Runs under bf16 autocast (on CPU only the explicit autocast provider does)."""
        return self.provider.endswith("-bf16")


def cases(mode: str, quick: bool, suite: bool = False) -> list[ModelCase]:
    """Every case of ``mode``: the full GPU matrix, the GPU suite's subset, or the quick smoke set (img 32/64,
    batch 1)."""
    if suite and not quick:
        return [ModelCase(mode, p, s, b) for s, b in SUITE_SHAPES[mode] for p in SUITE_PROVIDERS]
    if quick:
        providers, sizes = (QUICK_INFER, QUICK_IMG_SIZES) if mode == "infer" else (QUICK_TRAIN, QUICK_TRAIN_SIZES)
        return [ModelCase(mode, p, s, b) for s in sizes for b in QUICK_BATCHES for p in providers]
    providers = (INFER_PROVIDERS if mode == "infer" else TRAIN_PROVIDERS) + PEERS
    return [ModelCase(mode, p, s, b) for s in IMG_SIZES for b in GPU_BATCHES for p in providers]


def cpu_skip_reason(case: ModelCase, quick: bool, cpu_compile: bool) -> str | None:
    """Why ``case`` does not run on a CPU-only machine, or None when it does."""
    if case.provider in GPU_ONLY:
        return f"needs CUDA: {case.provider} is a GPU-only provider"
    if case.mode == "train" and case.provider == "fastmtl":
        return "needs CUDA: the training fast path is Triton kernels + bf16 + compile"
    if case.provider == "compile" or (case.mode == "train" and case.compiled):
        if not cpu_compile:
            return CPU_COMPILE_REASON
    if quick:
        return None
    table = CPU_INFER if case.mode == "infer" else CPU_TRAIN
    allowed = table.get((case.img_size, case.batch))
    if allowed is None or case.provider not in allowed:
        if case.batch not in (1, 8):
            return f"needs CUDA: batch {case.batch} is a GPU batch size (CPU batches are 1 and 8)"
        return f"CPU budget: {case.group} {case.provider} is not in the CPU subset (see bench/cases.py); GPU only"
    return None
