"""Convert a BERT sentence-embedding checkpoint (safetensors + tokenizer.json) to GGUF.

Small on purpose: it handles the BERT family llama.cpp runs as an embedding model
(WordPiece vocabulary, absolute positions, mean or CLS pooling), which is what the
bundled all-MiniLM-L6-v2 is. Tensor names come from the `gguf` package's own BERT
mapping; the vocabulary is written the way llama.cpp's "bert" tokenizer reads it
(a word-initial piece carries U+2581, a "##" continuation loses its prefix).
Anything it does not recognise is an error, never a silently different model.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import gguf
import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16}
# Buffers and heads that an embedding model does not use.
_SKIPPED = ("embeddings.position_ids", "pooler.", "cls.")
_POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS}


class ConversionError(ValueError):
    pass


def read_safetensors(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """Every tensor of a safetensors file (the format: u64 header size, JSON header, data)."""
    with path.open("rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
        data = f.read()
    tensors: dict[str, np.ndarray[Any, Any]] = {}
    for name, info in header.items():
        if name == "__metadata__" or name.startswith(_SKIPPED):
            continue
        if info["dtype"] not in _DTYPES:
            raise ConversionError(f"tensor {name}: dtype {info['dtype']} is not supported")
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=_DTYPES[info["dtype"]])
        tensors[name] = array.reshape(info["shape"]).astype(np.float32)
    return tensors


def pooling_of(model_dir: Path) -> str:
    """The sentence-transformers pooling (1_Pooling/config.json): "mean" or "cls"."""
    config_path = model_dir / "1_Pooling" / "config.json"
    if not config_path.is_file():
        return "mean"
    config = json.loads(config_path.read_text())
    if config.get("pooling_mode_cls_token"):
        return "cls"
    if config.get("pooling_mode_mean_tokens"):
        return "mean"
    raise ConversionError("only mean and CLS pooling are supported")


def _vocab(model_dir: Path) -> tuple[list[str], list[int], dict[str, int]]:
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    if tokenizer["model"]["type"] != "WordPiece":
        raise ConversionError("only WordPiece tokenizers are supported")
    by_id = sorted(tokenizer["model"]["vocab"].items(), key=lambda item: item[1])
    special = {t["content"]: t["id"] for t in tokenizer.get("added_tokens", []) if t["special"]}
    tokens: list[str] = []
    types: list[int] = []
    for position, (token, token_id) in enumerate(by_id):
        if position != token_id:
            raise ConversionError("the vocabulary's ids are not contiguous")
        if token in special:
            tokens.append(token)
            types.append(gguf.TokenType.CONTROL)
        elif token.startswith("##"):
            tokens.append(token[2:])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append("\u2581" + token)
            types.append(gguf.TokenType.NORMAL)
    return tokens, types, special


def _write_header(writer: gguf.GGUFWriter, config: dict[str, Any], pooling: str) -> None:
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_layer_norm_eps(config["layer_norm_eps"])
    writer.add_causal_attention(False)
    writer.add_pooling_type(_POOLING[pooling])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)


def _write_vocab(writer: gguf.GGUFWriter, model_dir: Path, type_count: int) -> None:
    tokens, types, special = _vocab(model_dir)
    writer.add_tokenizer_model("bert")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_type_count(type_count)
    for name, setter in (
        ("[CLS]", writer.add_bos_token_id),
        ("[SEP]", writer.add_sep_token_id),
        ("[UNK]", writer.add_unk_token_id),
        ("[PAD]", writer.add_pad_token_id),
        ("[MASK]", writer.add_mask_token_id),
    ):
        if name in special:
            setter(special[name])
    writer.add_add_bos_token(True)
    writer.add_add_sep_token(True)


def convert(model_dir: Path, out: Path, name: str) -> None:
    """Write `out` (GGUF, F32) from the BERT checkpoint in `model_dir`."""
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "bert":
        raise ConversionError(f"model_type {config.get('model_type')!r} is not bert")
    tensors = read_safetensors(model_dir / "model.safetensors")
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, config["num_hidden_layers"])
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(name)
    _write_header(writer, config, pooling_of(model_dir))
    _write_vocab(writer, model_dir, config.get("type_vocab_size", 2))
    for hf_name, array in tensors.items():
        mapped = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if mapped is None:
            raise ConversionError(f"tensor {hf_name} has no GGUF name")
        writer.add_tensor(mapped, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
