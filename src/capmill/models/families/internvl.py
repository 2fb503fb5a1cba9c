"""InternVL 3.5 in the transformers (-HF) format: the processor's chat template, image tiles by the processor.

The CapRL-InternVL card says "the exact same inference approach as InternVL-3.5"; its transformers form is
`processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
return_tensors="pt")` then `generate`, which `Family.encode` does batched. Checkpoints in the original
remote-code format (`internvl_chat`) need converting for transformers, or the vLLM engine.
"""

from __future__ import annotations

from typing import Any, ClassVar

from capmill.errors import ModelLoadError
from capmill.models.families.base import Family


class InternVLFamily(Family):
    name: ClassVar[str] = "internvl"

    def check_config(self, config: dict[str, Any], model: str) -> None:
        if config.get("model_type") == "internvl_chat":
            raise ModelLoadError(
                f"{model} is an InternVL checkpoint in the original remote-code format (internvl_chat); the "
                "transformers engine loads the -HF format: convert it with transformers' "
                "models/internvl/convert_internvl_weights_to_hf.py, or use --engine vllm"
            )
