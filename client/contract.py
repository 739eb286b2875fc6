"""The contract every part of cxr-triage shares: tensor names, dtypes, model names, priorities.

Training exports networks with these names, conversion checks them, the model repository's configs
are written from them, the server's Python models read them, and the client sends them. Change a
value here and every part follows; nothing else in the project spells these out.
"""

from __future__ import annotations

import numpy as np

from cxr.client.choices import Priority

# --- Tensors ---------------------------------------------------------------------------------
#: Classifier input: one grayscale image per item, uint8, [1, S, S] (Triton adds the batch axis).
IMAGE = "IMAGE"
IMAGE_DTYPE = np.uint8
IMAGE_TRITON_DTYPE = "UINT8"

#: Classifier output: softmax probabilities per class, float32, shape [C].
PROBS = "PROBS"
PROBS_DTYPE = np.float32
PROBS_TRITON_DTYPE = "FP32"

#: Optional classifier output, sent only to clients that request it: the class activation map of
#: the triage class on the last feature map, float32, shape [h, w], scaled per image to 0..1.
HEATMAP = "HEATMAP"
HEATMAP_DTYPE = np.float32
HEATMAP_TRITON_DTYPE = "FP32"

#: Ensemble / preprocess input: the encoded file (PNG, JPEG or DICOM bytes), BYTES, shape [1].
IMAGE_BYTES = "IMAGE_BYTES"
IMAGE_BYTES_TRITON_DTYPE = "BYTES"

# --- Models ----------------------------------------------------------------------------------
#: The ensemble for thin clients: encoded bytes -> preprocess -> deployed classifier variant.
ENSEMBLE_MODEL = "pneumonia"
PREPROCESS_MODEL = "preprocess"
CLASSIFIER_PREFIX = "pneumonia_"
#: Variants served by the embedded CPU server (Python backend running onnxruntime).
CPU_VARIANTS = ("fp32", "int8")
#: Variants served as TensorRT plans on GPU servers: ``trt_`` and the precision.
TENSORRT_PREFIX = "trt_"
TENSORRT_VARIANTS = (f"{TENSORRT_PREFIX}fp16", f"{TENSORRT_PREFIX}int8")


def tensorrt_variant(precision: str) -> str:
    """The TensorRT variant of a precision, e.g. ``int8`` -> ``trt_int8``."""
    return f"{TENSORRT_PREFIX}{precision}"


def is_tensorrt(variant: str) -> bool:
    """Whether a variant is served as a TensorRT plan."""
    return variant.startswith(TENSORRT_PREFIX)


def classifier_model(variant: str) -> str:
    """Triton model name of a classifier variant, e.g. ``int8`` -> ``pneumonia_int8``."""
    return f"{CLASSIFIER_PREFIX}{variant}"


# --- Classes ---------------------------------------------------------------------------------
#: The class that triage flags as urgent when its probability reaches the operating threshold.
POSITIVE_CLASS = "PNEUMONIA"
NEGATIVE_CLASS = "NORMAL"
DEFAULT_CLASSES = (NEGATIVE_CLASS, POSITIVE_CLASS)

# --- Priorities (Triton dynamic batching, priority_levels: 2) -------------------------------
PRIORITY_STAT = 1  # urgent studies: served first
PRIORITY_ROUTINE = 2  # the default level
PRIORITIES: dict[Priority, int] = {"stat": PRIORITY_STAT, "routine": PRIORITY_ROUTINE}

# --- Model-card fields carried in config.pbtxt `parameters` ---------------------------------
#: Keys of the model card that the repository writes into each classifier's config parameters,
#: so a client reads the operating point from the server instead of shipping it.
PARAM_THRESHOLD = "threshold"
PARAM_CLASSES = "classes"  # comma-separated, in output order
PARAM_POSITIVE_CLASS = "positive_class"
PARAM_IMAGE_SIZE = "image_size"
PARAM_ARCH = "arch"
PARAM_VARIANT = "variant"
PARAM_FINGERPRINT = "data_fingerprint"
#: In the ensemble's config: the classifier it routes to (the deployed variant).
PARAM_DEPLOYED_MODEL = "deployed_model"

# --- Admin protocols ------------------------------------------------------------------------
#: Header that carries the admin key where a server restricts its admin protocols (model
#: repository, shared memory, statistics, trace, logging). Triton's gRPC endpoint reads it with
#: a prefix: ``--grpc-restricted-protocol=...:admin-key=KEY`` checks the header below.
ADMIN_HEADER = "admin-key"
GRPC_ADMIN_HEADER = "triton-grpc-protocol-admin-key"

# --- Image handling --------------------------------------------------------------------------
#: Decompression-bomb guard: refuse images above this many pixels (a 6k x 6k radiograph is 36 MP).
MAX_PIXELS = 80_000_000
#: The largest input file a client reads or sends (checked before it is read): an uncompressed
#: 16-bit image at MAX_PIXELS plus room for the DICOM header.
MAX_FILE_BYTES = 2 * MAX_PIXELS + 16 * 2**20

# --- gRPC message sizes ----------------------------------------------------------------------
#: The largest legitimate request: one file sent for server-side decoding (``IMAGE_BYTES``) plus
#: the request's framing, names and parameters. Clients refuse to send more.
MAX_REQUEST_BYTES = MAX_FILE_BYTES + 2**20
#: The largest legitimate response a client accepts (probabilities, configs, model lists).
MAX_RESPONSE_BYTES = 16 * 2**20
DEFAULT_IMAGE_SIZE = 224
