"""DeepSpeed's own estimate of a rank's model-state bytes, recorded beside the suite's formulas for comparison.

DeepSpeed ships ``estimate_zero2_model_states_mem_needs`` and ``estimate_zero3_model_states_mem_needs``; they
assume fp16 parameters and fp32 Adam whatever a case runs, so the estimate is shown, never judged
(``parabench.measure.formulas`` holds what a rank is expected to hold).
"""

from __future__ import annotations


def deepspeed_estimate(strategy: str, parameters: int, largest_layer: int, shards: int) -> int | None:
    """DeepSpeed's own estimate of a rank's model-state bytes (``estimate_zero2/3_model_states_mem_needs``,
    no offload; it assumes fp16 parameters and fp32 Adam), or None for other strategies."""
    try:
        if strategy in ("deepspeed-zero1", "deepspeed-zero2"):
            from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

            return int(estimate_zero2_model_states_mem_needs(parameters, num_gpus_per_node=shards, cpu_offload=False,
                                                             additional_buffer_factor=1.0)[1])
        if strategy == "deepspeed-zero3":
            from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

            return int(estimate_zero3_model_states_mem_needs(parameters, largest_layer, num_gpus_per_node=shards,
                                                             cpu_offload=False, cpu_offload_params=False,
                                                             additional_buffer_factor=1.0)[1])
    except ImportError:
        return None
    return None
