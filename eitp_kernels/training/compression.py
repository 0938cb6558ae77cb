"""Model compression: magnitude pruning + int8 codes + zstd, without pickle.

File layout (all integers little-endian):

    magic    8 bytes  b"EITPZ\\x00\\x01\\x00"  (format 1)
    length   8 bytes  u64, size of the JSON header in bytes (<= 16 MiB)
    header   JSON     {"format": 1, "payload_bytes": n, "payload_sha256": ..., "tensors": {...}}
    payload  zstd frame of a safetensors file holding, per weight tensor
             NAME: int8 codes NAME.q and float32 scales NAME.scale (per
             tensor, per channel along dim 0, or per group along the last dim,
             as the header's granularity says); every other tensor (biases,
             buffers) as is.

An int8 entry's header may carry ``"activation_mode"`` (0 none, 1 symmetric,
2 affine per tensor: how the layer's inputs were fake-quantized in QAT).
The per-channel int8 entries of a layer's ``weight`` are exactly what
``eitp_kernels.nn.export_int8`` returns for it (``weight_int8`` = the codes,
``weight_scale`` = the scales, ``activation_mode``): ``save_compressed``
accepts that state (or the QAT model itself) and ``load_compressed_int8``
builds the int8 model (Int8Linear / Int8Conv1d / Int8Conv2d) from the stored
codes and scales without a float copy of those weights. ``load_compressed``
still returns the dequantized float state dict.

Loading checks the magic, the header size, the JSON, the payload's sha256 and
decompressed size, and every tensor's dtype and shape against the header,
and decompresses in bounded chunks: a truncated, corrupted or hostile file
is a ValueError, and a lying size never makes it allocate what it claims.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import struct

import torch
from torch import nn

from eitp_kernels import _dtensor
from eitp_kernels.training.formulas import magnitude_prune

MAGIC = b"EITPZ\x00\x01\x00"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 << 20
_CHUNK = 1 << 20


@dataclasses.dataclass
class CompressionReport:
    """What ``save_compressed`` wrote, measured on what it stored.

    Fields:
      parameters: elements of every tensor stored (weights, biases, buffers).
      quantized_parameters: elements stored as int8 codes (the >= 2-D float
        tensors, and the int8 layers of an export_int8 state).
      original_bytes: bytes of the tensors *given* to save_compressed, each at
        its own dtype. For a float model, its float size; for an
        ``export_int8`` state, its int8 size (codes, 1 byte each, plus float32
        scales), not the float model it was exported from: save the QAT model
        itself for a ratio against float weights.
      compressed_bytes: the size of the file on disk (magic, header and
        payload), bytes.
      sparsity: the *measured* fraction of the int8 codes that are 0, over all
        quantized parameters: at least the requested ``sparsity`` after
        pruning (weights that were already small, or round to 0, add to it),
        and nonzero even for ``sparsity=0``.
      code_entropy_bits: entropy of the pooled int8 codes, bits per quantized
        parameter: the floor an ideal order-0 entropy coder reaches for the
        codes alone.
      achieved_bits: ``8 * compressed_bytes / quantized_parameters``: file bits
        per quantized parameter, **including** the scales, the tensors stored
        as they are (biases, buffers), the JSON header and the magic; so it
        can exceed ``code_entropy_bits`` by more than the coder's own loss on
        small models.
      ratio (property): ``original_bytes / compressed_bytes``.
    """

    parameters: int
    quantized_parameters: int
    original_bytes: int
    compressed_bytes: int
    sparsity: float
    code_entropy_bits: float
    achieved_bits: float

    @property
    def ratio(self) -> float:
        """original_bytes / compressed_bytes (dimensionless)."""
        return self.original_bytes / self.compressed_bytes


GRANULARITIES = ("tensor", "channel", "group")


def _quant_kwargs(granularity: str, group_size: int) -> dict:
    """Symmetric int8: per tensor, per output channel (dim 0), or per group of
    ``group_size`` along the last dim."""
    if granularity == "group":
        return {"granularity": "group", "group_size": group_size}
    return {"granularity": granularity, "axis": 0}


def _scale_shape(shape: list[int], granularity: str, group_size: int) -> list[int]:
    if granularity == "tensor":
        return []
    if granularity == "channel":
        return shape[:1]
    return shape[:-1] + [shape[-1] // group_size]


def _quantize(weight: torch.Tensor, granularity: str, group_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    from eitp_kernels.ops.quant import quantize_int8

    codes, scale, _ = quantize_int8(weight.detach().float(), symmetric=True, **_quant_kwargs(granularity, group_size))
    # a DTensor weight is quantized shard by shard; only its codes and scales are gathered
    return _dtensor.full(codes).cpu().contiguous(), _dtensor.full(scale).cpu().contiguous()


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    from eitp_kernels.ops.quant import dequantize_int8

    return dequantize_int8(codes, scale, **_quant_kwargs(granularity, group_size))


def _code_entropy_bits(codes: list[torch.Tensor]) -> float:
    """Entropy in bits of all int8 codes pooled: one 256-bin histogram (fused op)."""
    from eitp_kernels.ops.entropy import histogram_entropy

    if not codes:
        return 0.0
    return float(histogram_entropy(torch.cat([c.flatten() for c in codes]), base=2))


_INT8_SUFFIXES = ("weight_int8", "weight_scale", "activation_mode")


def _activation_modes(model: nn.Module) -> dict[str, int]:
    """``{"<layer>.weight": activation mode code}`` for the fake-quant layers of a QAT model."""
    from eitp_kernels.nn import qat

    return {(f"{name}." if name else "") + "weight": qat._ACTIVATION_MODES[m._activation]
            for name, m in model.named_modules() if isinstance(m, qat._FAKE_QUANT_LAYERS)}


def _split_int8_entries(state: dict) -> tuple[dict, dict]:
    """Pull export_int8's ``<layer>.weight_int8 / weight_scale / activation_mode``
    triplets out of ``state``: (the rest of the state, {"<layer>.weight": (codes,
    scale, mode)}), each triplet checked (int8 codes, float32 (out,) scales,
    finite and > 0, a 0-d mode in {0, 1, 2})."""
    rest, int8 = dict(state), {}
    for key in [k for k in state if isinstance(k, str) and k.endswith("weight_int8")]:
        base = key[: -len("weight_int8")]
        if base and not base.endswith("."):
            continue
        keys = [base + suffix for suffix in _INT8_SUFFIXES]
        missing = [k for k in keys if k not in state]
        if missing:
            raise ValueError(f"save_compressed: state has {key!r} but no {missing[0]!r} (export_int8 output "
                             "holds all three)")
        codes, scale, mode = (state[k] for k in keys)
        if not all(isinstance(t, torch.Tensor) for t in (codes, scale, mode)):
            raise TypeError(f"save_compressed: {base}weight_int8 / weight_scale / activation_mode must be tensors")
        if codes.dtype != torch.int8 or codes.dim() < 2:
            raise ValueError(f"save_compressed: {key!r} must be int8 codes with >= 2 dims, got {codes.dtype} "
                             f"{tuple(codes.shape)}")
        if not scale.is_floating_point() or tuple(scale.shape) != tuple(codes.shape[:1]):
            raise ValueError(f"save_compressed: {base}weight_scale must be float of shape {tuple(codes.shape[:1])}, "
                             f"got {scale.dtype} {tuple(scale.shape)}")
        if scale.numel() and not bool(((scale > 0) & torch.isfinite(scale)).all()):
            raise ValueError(f"save_compressed: {base}weight_scale must be finite and > 0 everywhere")
        if mode.dim() != 0 or mode.is_floating_point() or int(mode) not in (0, 1, 2):
            raise ValueError(f"save_compressed: {base}activation_mode must be a 0-d integer in (0, 1, 2)")
        for k in keys:
            del rest[k]
        int8[base + "weight"] = (codes.detach().cpu().contiguous(), scale.detach().cpu().float().contiguous(),
                                 int(mode))
    return rest, int8


# The payload's compression when save_compressed gets no level: zstd level 19's
# parameters (btultra2, optimal parsing, which codes the int8 literals best) with a
# 128 KiB window, one search attempt and matches of >= 6 bytes. Pruned int8 codes
# hold few long matches, so level 19's deep search costs time and finds nothing:
# on a 4.2M-parameter MLP pruned to 0.5 the file is 0.8% smaller than level 19's and
# save_compressed 8.6x faster (`python benchmarks/save_compressed_speed.py 2`).
_FAST_PARAMETERS = {"window_log": 17, "chain_log": 16, "hash_log": 16, "search_log": 1, "min_match": 6}


def _compressor(level: int | None):
    import zstandard

    if level is None:
        return zstandard.ZstdCompressor(
            compression_params=zstandard.ZstdCompressionParameters.from_level(19, **_FAST_PARAMETERS))
    return zstandard.ZstdCompressor(level=level)


def save_compressed(model: nn.Module | dict, path: str | os.PathLike, *, sparsity: float = 0.0,
                    granularity: str = "channel", group_size: int = 128, level: int | None = None
                    ) -> CompressionReport:
    """Prune (to ``sparsity`` per weight tensor), quantize weights to symmetric
    int8 (``granularity`` "channel": per output channel, the default; "tensor";
    or "group": groups of ``group_size`` along the last dim), and write the
    zstd-compressed safetensors file at ``path``.

    ``level``: None (default) uses zstd level 19's coder with a shallow match
    search (``_FAST_PARAMETERS``: as small a file as level 19 on int8 codes,
    an order of magnitude faster); an int is a plain zstd level (1..22).
    Files read the same either way.

    ``model``: a module (pruned in place when sparsity > 0, so it matches what
    is saved) or a state dict. Tensors with >= 2 dims are quantized; others
    are stored as they are. The int8 layers of an ``export_int8`` state (or
    of an int8 model's state) are stored as they are, per channel, whatever
    ``granularity`` says; a QAT model's fake-quant layers record their
    activation mode (see the module docstring). Returns a ``CompressionReport``.

    An FSDP2 (``fully_shard``) or other DTensor model: every rank calls it
    (collectives); weights are quantized shard by shard and only their codes
    and scales are gathered (docs/design.md §3.3); global rank 0 writes the
    file, identical to the unwrapped model's.
    """
    import safetensors.torch

    if level is not None and (isinstance(level, bool) or not isinstance(level, int)):
        raise TypeError(f"save_compressed: level must be None or an int zstd level, got {level!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"save_compressed: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"save_compressed: group_size must be a positive int, got {group_size!r}")
    modes: dict[str, int] = {}
    if isinstance(model, nn.Module):
        if sparsity > 0:
            magnitude_prune(model, sparsity)
        state = model.state_dict()
        modes = _activation_modes(model)
    elif isinstance(model, dict):
        if sparsity > 0:
            raise ValueError("save_compressed: sparsity needs a module (pruning is applied to it in place)")
        state = model
    else:
        raise TypeError(f"save_compressed: model must be an nn.Module or a state dict, got {type(model).__name__}")

    state, exported = _split_int8_entries(state)
    stored, described, all_codes = {}, {}, []
    original_bytes = parameters = quantized = zeros = 0

    def add_int8(name, codes, scale, dtype, entry_granularity, mode):
        nonlocal quantized, zeros
        stored[name + ".q"], stored[name + ".scale"] = codes.contiguous(), scale.contiguous()
        described[name] = {"kind": "int8", "shape": list(codes.shape), "dtype": str(dtype).replace("torch.", ""),
                           "granularity": entry_granularity, "group_size": group_size}
        if mode is not None:
            described[name]["activation_mode"] = mode
        all_codes.append(codes)
        quantized += codes.numel()
        zeros += int((codes == 0).sum())

    for name, (codes, scale, mode) in exported.items():
        original_bytes += codes.numel() + scale.numel() * 4
        parameters += codes.numel()
        add_int8(name, codes, scale, torch.float32, "channel", mode)
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"save_compressed: state entry {name!r} is not a tensor")
        tensor = tensor.detach() if _dtensor.is_dtensor(tensor) else tensor.detach().cpu()
        original_bytes += tensor.numel() * tensor.element_size()
        parameters += tensor.numel()
        if tensor.dim() >= 2 and tensor.is_floating_point():
            if granularity == "group" and tensor.shape[-1] % group_size:
                raise ValueError(f"save_compressed: group_size={group_size} does not divide the last dim of "
                                 f"{name!r} {tuple(tensor.shape)}")
            codes, scale = _quantize(tensor, granularity, group_size)
            add_int8(name, codes, scale, tensor.dtype, granularity, modes.get(name))
        else:
            tensor = _dtensor.full(tensor).cpu()
            stored[name] = tensor.contiguous()
            described[name] = {"kind": "raw", "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
    payload = safetensors.torch.save(stored)
    compressed = _compressor(level).compress(payload)
    report = CompressionReport(
        parameters=parameters, quantized_parameters=quantized, original_bytes=original_bytes, compressed_bytes=0,
        sparsity=zeros / quantized if quantized else 0.0, code_entropy_bits=_code_entropy_bits(all_codes),
        achieved_bits=0.0,
    )
    header = {"format": FORMAT_VERSION, "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "tensors": described}
    header_bytes = json.dumps(header, sort_keys=True).encode()
    blob = MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + compressed
    if _dtensor.writes_files(state.values()):
        with open(path, "wb") as f:
            f.write(blob)
    report.compressed_bytes = len(blob)
    report.achieved_bits = 8 * report.compressed_bytes / max(quantized, 1)
    return report


def _read_header(f, path) -> dict:
    magic = f.read(len(MAGIC))
    if magic != MAGIC:
        raise ValueError(f"load_compressed: {path} is not an eitp compressed model (bad magic {magic[:8]!r})")
    raw_len = f.read(8)
    if len(raw_len) != 8:
        raise ValueError(f"load_compressed: {path} is truncated (no header length)")
    (length,) = struct.unpack("<Q", raw_len)
    if length > MAX_HEADER_BYTES:
        raise ValueError(f"load_compressed: {path} claims a {length}-byte header (limit {MAX_HEADER_BYTES})")
    raw = f.read(length)
    if len(raw) != length:
        raise ValueError(f"load_compressed: {path} is truncated inside its header")
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"load_compressed: {path} has a corrupted header ({error})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        raise ValueError(f"load_compressed: {path} has an unsupported format {header.get('format') if isinstance(header, dict) else header!r}")
    if not isinstance(header.get("payload_bytes"), int) or header["payload_bytes"] < 0 or not isinstance(header.get("tensors"), dict):
        raise ValueError(f"load_compressed: {path} has a malformed header")
    return header


def _decompress_bounded(f, limit: int, path) -> bytes:
    """Stream-decompress, never holding more than what actually decompresses, up to ``limit`` bytes."""
    import zstandard

    out = io.BytesIO()
    reader = zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=False)
    try:
        while True:
            chunk = reader.read(_CHUNK)
            if not chunk:
                break
            if out.tell() + len(chunk) > limit:
                raise ValueError(f"load_compressed: {path} decompresses to more than its header's {limit} bytes")
            out.write(chunk)
    except zstandard.ZstdError as error:
        raise ValueError(f"load_compressed: {path} has a corrupted or truncated payload ({error})") from None
    if out.tell() != limit:
        raise ValueError(f"load_compressed: {path} is truncated: payload decompressed to {out.tell()} of {limit} bytes")
    return out.getvalue()


def _check_tensor(name, tensor, dtype, shape, path):
    if tensor.dtype != dtype or list(tensor.shape) != list(shape):
        raise ValueError(f"load_compressed: {path}: tensor {name!r} is {tensor.dtype} {list(tensor.shape)}, "
                         f"header says {dtype} {list(shape)}")


def _read_entries(path) -> dict[str, tuple]:
    """Every tensor of the file, checked against the header: name -> ("raw", tensor)
    or ("int8", codes, scale, granularity, group_size, dtype, activation_mode)."""
    import safetensors.torch

    with open(path, "rb") as f:
        header = _read_header(f, path)
        payload = _decompress_bounded(f, header["payload_bytes"], path)
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise ValueError(f"load_compressed: {path} payload checksum mismatch (corrupted)")
    try:
        stored = safetensors.torch.load(payload)
    except Exception as error:  # safetensors raises its own error types
        raise ValueError(f"load_compressed: {path} payload is not valid safetensors ({error})") from None
    entries = {}
    for name, info in header["tensors"].items():
        try:
            dtype = getattr(torch, info["dtype"])
            shape = info["shape"]
            kind = info["kind"]
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"load_compressed: {path}: malformed entry for {name!r}") from None
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"load_compressed: {path}: {name!r} has an unknown dtype {info['dtype']!r}")
        if kind == "int8":
            codes, scale = stored.get(name + ".q"), stored.get(name + ".scale")
            if codes is None or scale is None:
                raise ValueError(f"load_compressed: {path}: tensor {name!r} is missing from the payload")
            _check_tensor(name + ".q", codes, torch.int8, shape, path)
            granularity = info.get("granularity", "channel")
            group_size = info.get("group_size", 128)
            if granularity not in GRANULARITIES or not isinstance(group_size, int) or group_size < 1 or (
                    granularity == "group" and (not shape or shape[-1] % group_size)):
                raise ValueError(f"load_compressed: {path}: bad granularity {granularity!r} / group_size "
                                 f"{group_size!r} for {name!r}")
            _check_tensor(name + ".scale", scale, torch.float32, _scale_shape(list(shape), granularity, group_size), path)
            mode = info.get("activation_mode", 0)
            if isinstance(mode, bool) or mode not in (0, 1, 2):
                raise ValueError(f"load_compressed: {path}: bad activation_mode {mode!r} for {name!r}")
            entries[name] = ("int8", codes, scale, granularity, group_size, dtype, mode)
        elif kind == "raw":
            tensor = stored.get(name)
            if tensor is None:
                raise ValueError(f"load_compressed: {path}: tensor {name!r} is missing from the payload")
            _check_tensor(name, tensor, dtype, shape, path)
            entries[name] = ("raw", tensor)
        else:
            raise ValueError(f"load_compressed: {path}: unknown tensor kind {kind!r} for {name!r}")
    return entries


def _as_float(entry: tuple) -> torch.Tensor:
    if entry[0] == "raw":
        return entry[1]
    _, codes, scale, granularity, group_size, dtype, _ = entry
    return _dequantize(codes, scale, granularity, group_size).to(dtype)


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_compressed``; return the dequantized state dict
    (and load it into ``model`` when given: an FSDP2 / DTensor model's
    parameters take their own shards of it, no communication)."""
    state = {name: _as_float(entry) for name, entry in _read_entries(path).items()}
    if model is not None:
        # an FSDP2 / DTensor model's parameters take their shards of the full tensors
        model.load_state_dict(_dtensor.shard_like(state, model.state_dict()))
    return state


def load_compressed_int8(path: str | os.PathLike, model_or_factory) -> nn.Module:
    """Read a file written by ``save_compressed`` into an int8 model.

    ``model_or_factory``: the float architecture (a module, or a callable
    building one), as for ``eitp_kernels.nn.load_int8``. Every int8 entry
    ``<layer>.weight`` whose layer is an nn.Linear, nn.Conv1d or nn.Conv2d
    becomes that layer's ``weight_int8`` / ``weight_scale`` (the stored codes
    and scales, no float copy; a per-tensor scale is repeated per channel,
    which gives the same values) and ``activation_mode`` (from the header, 0
    when the file was saved from a float model); the model's layers become
    Int8Linear / Int8Conv1d / Int8Conv2d through ``load_int8``, whose checks
    apply. Every other tensor is loaded dequantized, as ``load_compressed``
    does. A layer stored per group (granularity="group") cannot become an int8
    layer (its scales are not per channel): ValueError.
    """
    from eitp_kernels.nn import int8

    model = model_or_factory if isinstance(model_or_factory, nn.Module) else model_or_factory()
    if not isinstance(model, nn.Module):
        raise TypeError(f"load_compressed_int8: model_or_factory must be an nn.Module or build one, got "
                        f"{type(model).__name__}")
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name, entry in _read_entries(path).items():
        layer_name, _, leaf = name.rpartition(".")
        layer = modules.get(layer_name)
        if entry[0] != "int8" or leaf != "weight" or layer is None or int8._int8_type_for(layer) is None:
            state[name] = _as_float(entry)
            continue
        _, codes, scale, granularity, _, _, mode = entry
        if granularity == "group":
            raise ValueError(f"load_compressed_int8: {path}: {name!r} is stored per group; int8 layers need "
                             "scales per channel (save with granularity='channel' or 'tensor')")
        prefix = f"{layer_name}." if layer_name else ""
        state[prefix + "weight_int8"] = codes
        state[prefix + "weight_scale"] = scale.expand(codes.shape[0]).contiguous() if granularity == "tensor" else scale
        state[prefix + "activation_mode"] = torch.tensor(mode, dtype=torch.int8)
    return int8.load_int8(state, model)
