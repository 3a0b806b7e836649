"""Variants of a verified float32 model for other targets: float16, int8, and the ORT format.

Each variant is its own file beside ``model.onnx`` (which stays the float32 ONNX model):

- ``model.fp16.onnx``: float16 weights and compute, float32 inputs and outputs (``keep_io_types``), so
  the I/O contract is unchanged. For GPU targets: ONNX Runtime's CPU provider lacks float16 kernels
  for LSTM, GRU and more, and runs them in float32 with Cast nodes it inserts (smaller file, no
  speed-up on a CPU; the manifest counts the casts).
- ``model.int8.onnx``: ONNX Runtime dynamic quantization (``quantize_dynamic``, int8 weights,
  activations quantized per call): LSTM becomes ``DynamicQuantizeLSTM``, MatMul/Gemm become
  ``MatMulInteger``. ONNX Runtime has no quantized GRU kernel, so a GRU stays float32 and only the
  products around it are quantized; the manifest lists both.
- ``model.ort``, ``model.fp16.ort``, ``model.int8.ort``: the ORT format (flatbuffers) of the ONNX
  variants, for mobile and minimal builds, with ``required_operators.config`` for a reduced build of
  ONNX Runtime.

Every variant is verified like the model itself, against the float32 and float64 references, with
its own tolerance (:data:`VARIANT_TOLERANCES`); one that fails is not shipped. Where it can run is
read off ONNX Runtime's own tools (:func:`provider_support`), not a hand-kept table.

The third-party quirks live here: the quantizer's advice printed through the root logger, the ORT
converter's prints and its absolute paths in the config file, the quantizer's blindness to weights
held in ``Constant`` nodes. Torch-free; the converters are imported only when a variant is made.

Making them is :mod:`rnnexport.variants.make`; checking them, at build time and by ``verify``,
:mod:`rnnexport.variants.check`. This package re-exports both for users.
"""

from __future__ import annotations

from rnnexport.variants.check import (
    ORT_IDENTIFIER,
    VARIANT_TOLERANCES,
    ModelFacts,
    ShippedVariant,
    VariantResult,
    check_session_contract,
    file_problems,
    shipped_variants,
    variant_problem,
    variant_tolerances,
    verify_shipped_variants,
    verify_variant,
)
from rnnexport.variants.make import (
    FORMATS,
    PRECISIONS,
    REQUIRED_OPERATORS,
    SUPPORT_PROVIDERS,
    Format,
    Precision,
    ReduceRange,
    Variant,
    choose_reduce_range,
    make_variants,
    parse_choices,
    provider_support,
    required_operators_config,
    to_float16,
    to_int8,
    to_ort_format,
    variant_file,
)

__all__ = [
    "FORMATS",
    "ORT_IDENTIFIER",
    "PRECISIONS",
    "REQUIRED_OPERATORS",
    "SUPPORT_PROVIDERS",
    "VARIANT_TOLERANCES",
    "Format",
    "ModelFacts",
    "Precision",
    "ReduceRange",
    "ShippedVariant",
    "Variant",
    "VariantResult",
    "check_session_contract",
    "choose_reduce_range",
    "file_problems",
    "make_variants",
    "parse_choices",
    "provider_support",
    "required_operators_config",
    "shipped_variants",
    "to_float16",
    "to_int8",
    "to_ort_format",
    "variant_file",
    "variant_problem",
    "variant_tolerances",
    "verify_shipped_variants",
    "verify_variant",
]
