"""Sidecar files: metadata extracted from the JSON files training frameworks write (pure).

Each file has an extractor that copies the keys worth querying, checking their
kinds: a wrong kind is a *problem* (reported, the key skipped), never an error,
since a half-usable ``trainer_state.json`` must not cost the rest of the record.
Only a file that is not a JSON object at all raises ``SidecarError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from chunkfs.namespace.registry.values import BUILTINS, is_flat, is_key, is_number, json_safe

MAX_SIDECAR = 16 << 20
"""Sidecar files larger than this are not read (a trainer_state.json is kilobytes to a few MB)."""

Extracted = tuple[dict[str, Any], list[str]]
"""(metadata, problems) of one sidecar file."""


class SidecarError(ValueError):
    """A sidecar file that cannot be used at all (not JSON, not an object)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


_KINDS: dict[str, Callable[[Any], bool]] = {
    "integer": _is_int,
    "number": is_number,
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "list of strings": _is_str_list,
    "string or list of strings": lambda v: isinstance(v, str) or _is_str_list(v),
}


def _pick(obj: dict, spec: Mapping[str, tuple[str, str]], out: dict, problems: list[str]) -> None:
    """Copy ``spec``'s keys (source key → (our key, kind)) from ``obj``; wrong kinds go to ``problems``."""
    for src, (dst, kind) in spec.items():
        if src not in obj or obj[src] is None:
            continue
        v = obj[src]
        if _KINDS[kind](v):
            out[dst] = json_safe(v)
        else:
            problems.append(f"{src}: expected {kind}, got {type(v).__name__}")


_TRAINER_STATE = {
    "global_step": ("global_step", "integer"),
    "epoch": ("epoch", "number"),
    "best_metric": ("best_metric", "number"),
    "best_model_checkpoint": ("best_model_checkpoint", "string"),
    "max_steps": ("max_steps", "integer"),
    "num_train_epochs": ("num_train_epochs", "number"),
    "train_batch_size": ("train_batch_size", "integer"),
    "total_flos": ("total_flos", "number"),
}
_CONFIG = {
    "model_type": ("model_type", "string"),
    "architectures": ("architectures", "list of strings"),
    "torch_dtype": ("torch_dtype", "string"),
    "dtype": ("torch_dtype", "string"),  # the newer transformers name
    "hidden_size": ("hidden_size", "integer"),
    "num_hidden_layers": ("num_hidden_layers", "integer"),
    "num_attention_heads": ("num_attention_heads", "integer"),
    "intermediate_size": ("intermediate_size", "integer"),
    "vocab_size": ("vocab_size", "integer"),
    "max_position_embeddings": ("max_position_embeddings", "integer"),
    "transformers_version": ("transformers_version", "string"),
}
_ADAPTER_CONFIG = {
    "base_model_name_or_path": ("base_model", "string"),
    "peft_type": ("peft_type", "string"),
    "task_type": ("task_type", "string"),
    "r": ("r", "integer"),
    "lora_alpha": ("lora_alpha", "number"),
    "lora_dropout": ("lora_dropout", "number"),
    "target_modules": ("target_modules", "string or list of strings"),
}
_TRAINING_ARGS = {
    "learning_rate": ("learning_rate", "number"),
    "num_train_epochs": ("num_train_epochs", "number"),
    "max_steps": ("max_steps", "integer"),
    "per_device_train_batch_size": ("per_device_train_batch_size", "integer"),
    "per_device_eval_batch_size": ("per_device_eval_batch_size", "integer"),
    "gradient_accumulation_steps": ("gradient_accumulation_steps", "integer"),
    "seed": ("seed", "integer"),
    "warmup_steps": ("warmup_steps", "integer"),
    "warmup_ratio": ("warmup_ratio", "number"),
    "weight_decay": ("weight_decay", "number"),
    "max_grad_norm": ("max_grad_norm", "number"),
    "lr_scheduler_type": ("lr_scheduler_type", "string"),
    "optim": ("optim", "string"),
    "bf16": ("bf16", "boolean"),
    "fp16": ("fp16", "boolean"),
    "gradient_checkpointing": ("gradient_checkpointing", "boolean"),
}


def _trainer_state(obj: dict, out: dict, problems: list[str]) -> None:
    """The fixed keys, plus the last evaluation's ``eval_*`` numbers and the last training loss."""
    _pick(obj, _TRAINER_STATE, out, problems)
    history = obj.get("log_history")
    if history is None:
        return
    if not isinstance(history, list):
        problems.append(f"log_history: expected a list, got {type(history).__name__}")
        return
    entries = [e for e in history if isinstance(e, dict)]
    last_eval = next((e for e in reversed(entries) if any(k.startswith("eval_") for k in e)), None)
    if last_eval is not None:
        for k, v in last_eval.items():
            if k.startswith("eval_") and is_key(k) and is_number(v):
                out[k] = json_safe(v)
        if _is_int(last_eval.get("step")):
            out["eval_step"] = last_eval["step"]
    last_train = next((e for e in reversed(entries) if is_number(e.get("loss"))), None)
    if last_train is not None:
        out["train_loss"] = json_safe(last_train["loss"])


def _user_file(obj: dict, out: dict, problems: list[str]) -> None:
    """``chunkfs.json``: every key the user wrote, as long as the query language can name it."""
    for k, v in obj.items():
        if not is_key(k) or k in BUILTINS:
            problems.append(f"{k!r}: not a usable key")
        elif v is None:
            continue
        elif is_flat(v):
            out[k] = json_safe(v)
        else:
            problems.append(f"{k}: expected a string, number, boolean or list of them (the object is flat)")


SIDECARS: dict[str, Callable[[dict, dict, list[str]], None]] = {
    "config.json": lambda o, out, p: _pick(o, _CONFIG, out, p),
    "adapter_config.json": lambda o, out, p: _pick(o, _ADAPTER_CONFIG, out, p),
    "training_args.json": lambda o, out, p: _pick(o, _TRAINING_ARGS, out, p),
    "trainer_state.json": _trainer_state,
    "chunkfs.json": _user_file,
}
"""The files metadata is extracted from, in order of precedence (a later file's key wins)."""


def extract_sidecar(filename: str, data: bytes) -> Extracted:
    """(metadata, problems) of one sidecar file; ``SidecarError`` if it cannot be used at all."""
    if len(data) > MAX_SIDECAR:
        raise SidecarError(f"larger than {MAX_SIDECAR >> 20} MiB")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise SidecarError(f"not valid JSON ({str(e)[:120]})") from None
    if not isinstance(obj, dict):
        raise SidecarError(f"expected a JSON object, got {type(obj).__name__}")
    out: dict[str, Any] = {}
    problems: list[str] = []
    SIDECARS[filename](obj, out, problems)
    return out, problems


def extract_or_reason(filename: str, data: bytes) -> Extracted | str:
    """``extract_sidecar``, with a file that cannot be used at all giving the reason instead
    (which the record keeps: a bad file is reported, never an error of the write)."""
    try:
        return extract_sidecar(filename, data)
    except SidecarError as e:
        return str(e)
