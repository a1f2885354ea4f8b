r"""Writes a training checkpoint as a Hugging Face folder: config.json, safetensors, the
tokenizer files and generation_config.json (SPEC §7 evaluation decoding).

    python scripts/export_hf.py --checkpoint=/ckpt/run1 --out=/ckpt/run1/hf
    python scripts/export_hf.py --checkpoint=/ckpt/run1/checkpoints/400 --out=/tmp/hf400

--checkpoint is a workdir (its newest checkpoint) or one step's folder. The folder loads with
`transformers.AutoModelForCausalLM.from_pretrained` and `g2rpo_jax.models.from_pretrained`.
A LoRA run is exported merged: W + (alpha/r)·A·B, a plain model with no adapter tensors.
"""

import json
import os

import jax
import transformers
from absl import app, flags

from g2rpo_jax import checkpoint, cli, lora
from g2rpo_jax.data import tokenization
from g2rpo_jax.models import save_pretrained

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "Workdir or checkpoint step folder.")
_OUT = flags.DEFINE_string("out", None, "The Hugging Face folder to write.")
_DTYPE = flags.DEFINE_enum(
    "dtype",
    None,
    ["float32", "bfloat16", "float16"],
    "dtype on disk (default: the weights' training dtype).",
)
flags.mark_flags_as_required(["checkpoint", "out"])


def export(path: str, out: str, dtype: str | None = None) -> dict:
    """Exports; returns the checkpoint's meta (step, workdir, config)."""
    checkpoint.quiet_orbax_logs()
    model, meta = checkpoint.load_policy(path, jax.devices("cpu")[0])
    save_pretrained(lora.merged(model), out, dtype=dtype)
    tokenizer = transformers.AutoTokenizer.from_pretrained(meta["tokenizer_path"])
    tokenizer.save_pretrained(out)
    base = meta["config"]["model"]["path"]
    eos = tokenization.stop_ids(tokenizer, model.config, base if os.path.isdir(base) else "")
    evaluation = meta["config"]["eval"]
    transformers.GenerationConfig(
        bos_token_id=model.config.bos_token_id,
        eos_token_id=list(eos),
        pad_token_id=tokenizer.pad_token_id,
        do_sample=True,
        temperature=evaluation["temperature"],
        top_p=evaluation["top_p"],
        top_k=evaluation["top_k"],
    ).save_pretrained(out)
    with open(os.path.join(out, "g2rpo_checkpoint.json"), "w") as f:
        json.dump({"workdir": meta["workdir"], "step": meta["step"]}, f, indent=2)
    return meta


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    meta = export(_CHECKPOINT.value, _OUT.value, _DTYPE.value)
    print(f"exported step {meta['step']} of {meta['workdir']} to {_OUT.value}")


if __name__ == "__main__":
    cli.run(main)
