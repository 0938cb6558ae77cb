"""Model compression: magnitude pruning + int8 codes + zstd, without pickle.

File layout (all integers little-endian):

    magic    8 bytes  b"EITPZ\\x00\\x01\\x00"  (format 1)
    length   8 bytes  u64, size of the JSON header in bytes (<= 16 MiB)
    header   JSON     {"format": 1, "payload_bytes": n, "payload_sha256": ..., "report": {...}, "tensors": {...}}
    payload  zstd frame of a safetensors file holding, per weight tensor
             NAME: int8 codes NAME.q and float32 scales NAME.scale (per
             tensor, per channel along dim 0, or per group along the last dim,
             as the header's granularity says); every other tensor (biases,
             buffers) as is.

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

from eitp_kernels.training.formulas import magnitude_prune

MAGIC = b"EITPZ\x00\x01\x00"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 16 << 20
_CHUNK = 1 << 20


@dataclasses.dataclass
class CompressionReport:
    parameters: int  # elements in all tensors stored
    quantized_parameters: int  # elements stored as int8 codes
    original_bytes: int  # the state dict's tensors at their own dtypes
    compressed_bytes: int  # the file on disk
    sparsity: float  # fraction of quantized weights that are zero codes
    code_entropy_bits: float  # entropy of the int8 codes, bits per quantized parameter (lower bound for any coder)
    achieved_bits: float  # file bits per quantized parameter (floats and headers included)

    @property
    def ratio(self) -> float:
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
    return codes.contiguous(), scale.contiguous()


def _dequantize(codes: torch.Tensor, scale: torch.Tensor, granularity: str, group_size: int) -> torch.Tensor:
    from eitp_kernels.ops.quant import dequantize_int8

    return dequantize_int8(codes, scale, **_quant_kwargs(granularity, group_size))


def _code_entropy_bits(codes: list[torch.Tensor]) -> float:
    """Entropy in bits of all int8 codes pooled: one 256-bin histogram (fused op)."""
    from eitp_kernels.ops.entropy import histogram_entropy

    if not codes:
        return 0.0
    return float(histogram_entropy(torch.cat([c.flatten() for c in codes]), base=2))


def save_compressed(model: nn.Module | dict, path: str | os.PathLike, *, sparsity: float = 0.0,
                    granularity: str = "channel", group_size: int = 128, level: int = 19) -> CompressionReport:
    """Prune (to ``sparsity`` per weight tensor), quantize weights to symmetric
    int8 (``granularity`` "channel": per output channel, the default; "tensor";
    or "group": groups of ``group_size`` along the last dim), and write the
    zstd-compressed safetensors file at ``path``.

    ``model``: a module (pruned in place when sparsity > 0, so it matches what
    is saved) or a state dict. Tensors with >= 2 dims are quantized; others
    are stored as they are. Returns a ``CompressionReport``.
    """
    import safetensors.torch
    import zstandard

    if granularity not in GRANULARITIES:
        raise ValueError(f"save_compressed: granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"save_compressed: group_size must be a positive int, got {group_size!r}")
    if isinstance(model, nn.Module):
        if sparsity > 0:
            magnitude_prune(model, sparsity)
        state = model.state_dict()
    elif isinstance(model, dict):
        if sparsity > 0:
            raise ValueError("save_compressed: sparsity needs a module (pruning is applied to it in place)")
        state = model
    else:
        raise TypeError(f"save_compressed: model must be an nn.Module or a state dict, got {type(model).__name__}")

    stored, described, all_codes = {}, {}, []
    original_bytes = parameters = quantized = zeros = 0
    for name, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"save_compressed: state entry {name!r} is not a tensor")
        tensor = tensor.detach().cpu()
        original_bytes += tensor.numel() * tensor.element_size()
        parameters += tensor.numel()
        if tensor.dim() >= 2 and tensor.is_floating_point():
            if granularity == "group" and tensor.shape[-1] % group_size:
                raise ValueError(f"save_compressed: group_size={group_size} does not divide the last dim of "
                                 f"{name!r} {tuple(tensor.shape)}")
            codes, scale = _quantize(tensor, granularity, group_size)
            stored[name + ".q"], stored[name + ".scale"] = codes.contiguous(), scale.contiguous()
            described[name] = {"kind": "int8", "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", ""),
                               "granularity": granularity, "group_size": group_size}
            all_codes.append(codes)
            quantized += codes.numel()
            zeros += int((codes == 0).sum())
        else:
            stored[name] = tensor.contiguous()
            described[name] = {"kind": "raw", "shape": list(tensor.shape), "dtype": str(tensor.dtype).replace("torch.", "")}
    payload = safetensors.torch.save(stored)
    compressed = zstandard.ZstdCompressor(level=level).compress(payload)
    report = CompressionReport(
        parameters=parameters, quantized_parameters=quantized, original_bytes=original_bytes, compressed_bytes=0,
        sparsity=zeros / quantized if quantized else 0.0, code_entropy_bits=_code_entropy_bits(all_codes),
        achieved_bits=0.0,
    )
    header = {"format": FORMAT_VERSION, "payload_bytes": len(payload),
              "payload_sha256": hashlib.sha256(payload).hexdigest(), "tensors": described}
    header_bytes = json.dumps(header, sort_keys=True).encode()
    with open(path, "wb") as f:
        f.write(MAGIC + struct.pack("<Q", len(header_bytes)) + header_bytes + compressed)
    report.compressed_bytes = os.path.getsize(path)
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


def load_compressed(path: str | os.PathLike, model: nn.Module | None = None) -> dict[str, torch.Tensor]:
    """Read a file written by ``save_compressed``; return the dequantized state dict
    (and load it into ``model`` when given)."""
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
    state = {}
    for name, info in header["tensors"].items():
        try:
            dtype = getattr(torch, info["dtype"])
            shape = info["shape"]
            kind = info["kind"]
        except (KeyError, TypeError, AttributeError):
            raise ValueError(f"load_compressed: {path}: malformed entry for {name!r}") from None
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
            state[name] = _dequantize(codes, scale, granularity, group_size).to(dtype)
        elif kind == "raw":
            tensor = stored.get(name)
            if tensor is None:
                raise ValueError(f"load_compressed: {path}: tensor {name!r} is missing from the payload")
            _check_tensor(name, tensor, dtype, shape, path)
            state[name] = tensor
        else:
            raise ValueError(f"load_compressed: {path}: unknown tensor kind {kind!r} for {name!r}")
    if model is not None:
        model.load_state_dict(state)
    return state
