"""What every rank imports before it is forked: the server that forks ranks (``parabench.runtime.pool``) imports this once.

A spawned rank paid these imports itself on its first task, in every rank of every pool: 4-6 s on this
2-core class (``torch._dynamo``, which the first torch optimizer pulls in, ~2.5 s; transformers' GPT-2
and ViT ~4 s). Imported once in the server and inherited by its forks, a pool after the first starts in
~0.1 s and its first gpt2-text task takes 0.7 s instead of 6.

Forking is safe only from a process whose threads hold no locks. After these imports the server has,
besides its main thread, OpenBLAS's worker threads (numpy's and scipy's, which transformers pulls in
through scikit-learn), which OpenBLAS stops around a fork itself; pyarrow's jemalloc would add a
background thread, which is turned off here. No framework is set up: transformers imports DeepSpeed's
modules (through accelerate), as a spawned GPT-2 rank did, but nothing initialises them, so each
family's ranks start from the same clean state.

Nor is CUDA: it fails in every process forked after it was initialised. DeepSpeed's accelerator detection
asks ``torch.cuda.device_count()`` and ``is_available()`` at import, which by default initialise the CUDA
driver; with ``PYTORCH_NVML_BASED_CUDA_CHECK=1`` they ask NVML instead, which leaves CUDA untouched.
DeepSpeed 0.19.8 defaults the variable to 1 itself, but keeps a 0 found in the environment; here it is set.
The server checks that CUDA is untouched before it forks anything (``worker.require_cuda_untouched``).
"""

import os

# pyarrow (through transformers → pandas) allocates with jemalloc, whose background thread would be running
# when the server forks. Read when pyarrow loads.
os.environ.setdefault("JE_ARROW_MALLOC_CONF", "background_thread:false")
# Read at every torch.cuda.is_available()/device_count() call. Set, not defaulted: with 0 the server poisons its forks.
os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "1"

from parabench.runtime.worker import quiet_libraries, require_cuda_untouched  # noqa: E402

quiet_libraries()  # before transformers reads its logging variables

import importlib.util  # noqa: E402

import torch  # noqa: E402,F401

if importlib.util.find_spec("deepspeed") is not None:
    # Before transformers, which imports DeepSpeed from its modeling_utils: DeepSpeed 0.19.7 imports transformers'
    # OPT model at its own import, which then finds modeling_utils half-initialised (a circular ImportError with
    # transformers 4.51). Imported first, both load; with 0.19.8 this only moves an import transformers does anyway.
    import deepspeed  # noqa: E402,F401
import datasets  # noqa: E402,F401  (the workloads' data pipelines)
import sklearn.datasets  # noqa: E402,F401  (digits)
import torch._dynamo  # noqa: E402,F401
import torch.distributed  # noqa: E402,F401
import torch.nn.parallel  # noqa: E402,F401
import transformers.models.gpt2.modeling_gpt2  # noqa: E402,F401
import transformers.models.vit.modeling_vit  # noqa: E402,F401

import parabench.runtime.train  # noqa: E402,F401
from parabench.cases.plugins import load_plugins  # noqa: E402

load_plugins()  # the packages' workloads, strategies and optimizers (docs/plugins.md), registered once for every rank

require_cuda_untouched()  # last: after every import, before the server forks its first rank
