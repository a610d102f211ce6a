"""Workloads: the data order, model building, losses, fingerprints, and vit-beans' loading code on local files."""

from __future__ import annotations

import math
import pickle
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from parabench.cases.requirements import Machine, unmet
from parabench.workloads import WORKLOADS, step_indices
from parabench.workloads.base import tensor_digest
from parabench.workloads.digits import MlpDigits, VitDigits
from parabench.workloads.text import STDLIB_FILES, Gpt2Text, stdlib_corpus

# --------------------------------------------------------------------------- step_indices

sizes = st.integers(1, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n)))


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(0, 10_000), st.integers(0, 5))
def test_an_epoch_visits_distinct_indices_in_range(n_and_batch, seed, epoch):
    n, global_batch = n_and_batch
    steps_per_epoch = n // global_batch
    first = epoch * steps_per_epoch
    seen: list[int] = []
    for step in range(first, first + steps_per_epoch):
        batch = step_indices(step, global_batch, n, seed)
        assert batch.shape == (global_batch,)
        assert batch.dtype == torch.long
        seen.extend(batch.tolist())
    assert len(set(seen)) == len(seen) == steps_per_epoch * global_batch
    assert all(0 <= i < n for i in seen)


@settings(max_examples=100, deadline=None)
@given(sizes, st.integers(0, 10_000), st.integers(0, 50))
def test_step_indices_is_a_pure_function(n_and_batch, seed, step):
    n, global_batch = n_and_batch
    assert torch.equal(step_indices(step, global_batch, n, seed), step_indices(step, global_batch, n, seed))


def _epoch_order(epoch: int, global_batch: int, n: int, seed: int) -> list[int]:
    steps_per_epoch = n // global_batch
    return [i for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch)
            for i in step_indices(step, global_batch, n, seed).tolist()]


@settings(max_examples=100, deadline=None)
@given(st.integers(10, 300).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n))),
       st.integers(0, 10_000), st.integers(0, 5))
def test_each_epoch_has_its_own_order(n_and_batch, seed, epoch):
    n, global_batch = n_and_batch
    assert _epoch_order(epoch, global_batch, n, seed) != _epoch_order(epoch + 1, global_batch, n, seed)


def test_different_seeds_give_different_orders():
    assert not torch.equal(step_indices(0, 32, 1000, 0), step_indices(0, 32, 1000, 1))


def test_a_new_epoch_starts_after_the_last_full_batch():
    # 10 examples, batch 3: steps 0-2 are epoch 0 (one example dropped), step 3 starts epoch 1.
    epoch0 = torch.cat([step_indices(s, 3, 10, 7) for s in range(3)])
    assert len(set(epoch0.tolist())) == 9
    epoch1_first = step_indices(3, 3, 10, 7)
    generator = torch.Generator().manual_seed(7 * 100_003 + 1)
    assert torch.equal(epoch1_first, torch.randperm(10, generator=generator)[:3])


@pytest.mark.parametrize("global_batch, n", [(11, 10), (2, 1), (1000, 999)])
def test_global_batch_larger_than_the_dataset_raises(global_batch, n):
    with pytest.raises(ValueError, match=rf"global batch {global_batch}.*\({n} examples\)"):
        step_indices(0, global_batch, n, 0)


# --------------------------------------------------------------------------- in-memory workloads

TENSOR_WORKLOADS = {"mlp-digits": MlpDigits, "vit-digits": VitDigits, "gpt2-text": Gpt2Text}


@pytest.fixture(scope="module")
def loaded():
    """One loaded instance per workload (loading is the slow part)."""
    return {name: cls() for name, cls in TENSOR_WORKLOADS.items()}


# The model sizes of the scaling module: Ψ from the configs (GPT2Config's and ViTConfig's defaults are GPT-2 small,
# 124,439,808 with the LM head tied, and ViT-Base/16, 85.8 M with a 10-way head)
SIZED_WORKLOADS = {"gpt2-text-3m": 3_241_472, "gpt2-124m-text": 124_439_808, "vit-base-digits": 85_806_346}


@pytest.mark.parametrize("name", sorted(SIZED_WORKLOADS))
def test_the_larger_sizes_build_from_their_configs_and_train_a_step(name):
    workload = WORKLOADS.get(name)
    torch.manual_seed(0)
    model = workload.build_model()
    assert sum(p.numel() for p in model.parameters()) == SIZED_WORKLOADS[name]
    loss = workload.loss(model, workload.batch(torch.arange(2)))
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name", sorted(TENSOR_WORKLOADS))
def test_the_registry_holds_these_workloads(name):
    assert type(WORKLOADS.get(name)) is TENSOR_WORKLOADS[name]


@pytest.mark.parametrize("name", sorted(TENSOR_WORKLOADS))
def test_model_is_a_function_of_the_seed(name, loaded):
    workload = loaded[name]
    torch.manual_seed(0)
    a = _state(workload.build_model())
    torch.manual_seed(0)
    b = _state(workload.build_model())
    torch.manual_seed(1)
    c = _state(workload.build_model())
    assert a.keys() == b.keys() and a
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point())


@pytest.mark.parametrize("name", sorted(TENSOR_WORKLOADS))
def test_a_batch_of_four_gives_a_finite_scalar_loss_with_gradients(name, loaded):
    workload = loaded[name]
    torch.manual_seed(0)
    model = workload.build_model()
    batch = workload.batch(torch.arange(4))
    assert all(len(v) == 4 for v in batch.values())
    loss = workload.loss(model, batch)
    assert loss.dim() == 0 and math.isfinite(loss.item())
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(TENSOR_WORKLOADS))
def test_the_loss_is_the_mean_over_equal_shards(name, loaded):
    # What data parallelism relies on: mean of the shards' losses == the global batch's loss.
    workload = loaded[name]
    torch.manual_seed(0)
    model = workload.build_model().eval()
    with torch.no_grad():
        whole = workload.loss(model, workload.batch(torch.arange(8)))
        halves = [workload.loss(model, workload.batch(torch.arange(i, i + 4))) for i in (0, 4)]
    assert torch.allclose(whole, torch.stack(halves).mean(), atol=1e-5)


@pytest.mark.parametrize("name", sorted(TENSOR_WORKLOADS))
def test_fingerprint_is_stable_and_short_hex(name, loaded):
    workload = loaded[name]
    first = workload.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert workload.fingerprint() == first
    assert TENSOR_WORKLOADS[name]().fingerprint() == first  # a fresh instance, reloaded data


def test_fingerprints_differ_between_workloads(loaded):
    fingerprints = {name: w.fingerprint() for name, w in loaded.items()}
    assert len(set(fingerprints.values())) == len(fingerprints)


def test_fingerprint_changes_with_the_model_config(loaded):
    class WiderMlp(MlpDigits):
        hidden = 128

    assert WiderMlp().fingerprint() != loaded["mlp-digits"].fingerprint()


def test_digits_data(loaded):
    workload = loaded["mlp-digits"]
    assert workload.num_examples() == 1797
    batch = workload.batch(torch.tensor([0, 5, 9]))
    assert batch["pixels"].shape == (3, 64) and batch["pixels"].dtype == torch.float32
    assert 0.0 <= batch["pixels"].min() and batch["pixels"].max() <= 1.0
    assert batch["label"].dtype == torch.long
    assert batch["label"].tolist() == [0, 5, 9]  # load_digits' first ten are the digits 0-9
    assert loaded["vit-digits"].num_examples() == 1797
    torch.manual_seed(0)
    accuracy = workload.accuracy(workload.build_model(), workload.batch(torch.arange(50)))
    assert 0.0 <= accuracy <= 1.0


def test_gpt2_blocks_are_64_bytes_of_the_corpus(loaded):
    workload = loaded["gpt2-text"]
    ids = workload.tensors["input_ids"]
    assert ids.dim() == 2 and ids.shape[1] == 64 and ids.dtype == torch.long
    assert ids.shape[0] == workload.num_examples() > 100
    assert 0 <= ids.min() and ids.max() < 256
    # Blocks are the corpus' bytes, contiguous, in file order, the incomplete last block dropped.
    files = stdlib_corpus()
    assert [p.rsplit("/", 1)[-1] for p in files] == list(STDLIB_FILES)
    corpus = b"".join(open(p, "rb").read() for p in files)
    assert len(corpus) - 64 < ids.numel() <= len(corpus)
    assert bytes(ids.flatten().tolist()) == corpus[:ids.numel()]


def test_gpt2_initial_loss_is_near_uniform(loaded):
    workload = loaded["gpt2-text"]
    torch.manual_seed(0)
    loss = workload.loss(workload.build_model(), workload.batch(torch.arange(4))).item()
    assert abs(loss - math.log(256)) < 1.0


DROPOUT_KEYS = {"vit-digits": ("hidden_dropout_prob", "attention_probs_dropout_prob"),
                # (summary_first_dropout belongs to GPT2DoubleHeadsModel's head, which GPT2LMHeadModel lacks)
                "gpt2-text": ("resid_pdrop", "embd_pdrop", "attn_pdrop")}


@pytest.mark.parametrize("name", sorted(DROPOUT_KEYS))
def test_dropout_is_off(name, loaded):
    workload = loaded[name]
    config = workload.config()
    probabilities = {key: getattr(config, key) for key in DROPOUT_KEYS[name]}
    assert all(p == 0.0 for p in probabilities.values()), probabilities
    torch.manual_seed(0)
    model = workload.build_model().train()
    assert all(m.p == 0.0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    batch = workload.batch(torch.arange(4))
    with torch.no_grad():
        assert torch.equal(workload.loss(model, batch), workload.loss(model, batch))


def test_tensor_workload_pickles_without_its_data(loaded):
    workload = loaded["mlp-digits"]
    workload.tensors  # loaded here: under xdist no earlier test of this worker may have loaded it
    assert workload._tensors is not None
    copy = pickle.loads(pickle.dumps(workload))
    assert copy._tensors is None
    assert torch.equal(copy.batch(torch.arange(3))["pixels"], workload.batch(torch.arange(3))["pixels"])


def test_tensor_digest_sees_values_shapes_and_dtypes():
    a = torch.arange(6, dtype=torch.float32)
    assert tensor_digest(a) == tensor_digest(a.clone())
    assert tensor_digest(a) != tensor_digest(a.view(2, 3))
    assert tensor_digest(a) != tensor_digest(a.to(torch.int32))
    b = a.clone()
    b[5] = 7
    assert tensor_digest(a) != tensor_digest(b)
    assert re.fullmatch(r"[0-9a-f]{16}", tensor_digest(a, b))


# --------------------------------------------------------------------------- vit-beans on local files

BEANS_LABELS = ["angular_leaf_spot", "bean_rust", "healthy"]


@pytest.fixture(scope="module")
def beans_dirs(tmp_path_factory):
    """A tiny ViT and image processor saved as a model directory, and a 12-row dataset in beans' schema."""
    import datasets
    import numpy as np
    from PIL import Image
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    root = tmp_path_factory.mktemp("vit_beans")
    model_dir, dataset_dir = root / "model", root / "beans"
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=64, num_labels=3)
    torch.manual_seed(0)
    ViTForImageClassification(config).save_pretrained(model_dir)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(model_dir)

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8), "RGB") for _ in range(12)]
    features = datasets.Features({"image": datasets.Image(), "labels": datasets.ClassLabel(names=BEANS_LABELS)})
    table = datasets.Dataset.from_dict({"image": images, "labels": [i % 3 for i in range(12)]}, features=features)
    (dataset_dir / "data").mkdir(parents=True)
    table.to_parquet(str(dataset_dir / "data" / "train-00000-of-00001.parquet"))
    return model_dir, dataset_dir


@pytest.fixture(scope="module")
def beans(beans_dirs):
    from parabench.workloads.beans import VitBeans

    model_dir, dataset_dir = beans_dirs
    return VitBeans(model_id=str(model_dir), dataset_id=str(dataset_dir))


def test_local_layout_loads_with_datasets(beans_dirs):
    import datasets

    loaded = datasets.load_dataset(str(beans_dirs[1]), split="train")
    assert len(loaded) == 12
    assert loaded.features["labels"].names == BEANS_LABELS


def test_local_beans_needs_no_hub(beans):
    from parabench.workloads.beans import hub_unavailable

    assert hub_unavailable(beans.model_id, beans.dataset_id) is None
    assert unmet("vit-beans", beans.requires, 1, Machine(cuda_devices=0, max_cpu_world_size=4)) is None


def test_local_beans_data(beans):
    assert beans.labels == BEANS_LABELS
    assert beans.num_examples() == 12
    batch = beans.batch(torch.arange(4))
    assert batch["pixel_values"].shape == (4, 3, 32, 32)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].shape == (4,) and batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == [0, 1, 2, 0]
    # the processor normalises (mean 0.5, std 0.5): values in [-1, 1]
    assert -1.0 - 1e-5 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1.0 + 1e-5
    again = beans.batch(torch.tensor([3, 0]))
    assert torch.equal(again["pixel_values"][1], batch["pixel_values"][0])


def test_local_beans_model_and_training(beans):
    torch.manual_seed(0)
    model = beans.build_model()
    assert model.classifier.out_features == 3
    assert model.config.id2label == dict(enumerate(BEANS_LABELS))
    assert model.config.hidden_dropout_prob == 0.0 and model.config.attention_probs_dropout_prob == 0.0
    batch = beans.batch(torch.arange(4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = beans.loss(model, batch)
        assert math.isfinite(loss.item())
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses
    accuracy = beans.accuracy(model, batch)
    assert 0.0 <= accuracy <= 1.0


def test_local_beans_fingerprint_and_pickling(beans):
    fingerprint = beans.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint) and beans.fingerprint() == fingerprint
    assert beans.describe()["model"] == beans.model_id
    copy = pickle.loads(pickle.dumps(beans))
    assert copy._dataset is None and copy._processor is None
    assert copy.model_id == beans.model_id and copy.num_examples() == 12


def test_hub_ids_are_unavailable_without_network():
    from huggingface_hub import try_to_load_from_cache

    from parabench.workloads.beans import DATASET_ID, MODEL_ID, VitBeans, hub_unavailable

    if isinstance(try_to_load_from_cache(MODEL_ID, "config.json"), str):
        pytest.skip(f"{MODEL_ID} is in the local Hugging Face cache")
    hub_unavailable.cache_clear()
    try:
        reason = hub_unavailable()
        assert reason is not None
        assert "Hugging Face" in reason and MODEL_ID in reason
        workload = VitBeans()
        assert (workload.model_id, workload.dataset_id) == (MODEL_ID, DATASET_ID)
        skip = unmet("vit-beans", workload.requires, 1, Machine(cuda_devices=0, max_cpu_world_size=4))
        assert skip == f"vit-beans {reason}"
    finally:
        hub_unavailable.cache_clear()


def test_local_model_with_hub_dataset_gives_a_reason_not_an_exception(beans_dirs):
    from parabench.workloads.beans import VitBeans, hub_unavailable

    hub_unavailable.cache_clear()
    try:
        workload = VitBeans(model_id=str(beans_dirs[0]), dataset_id="beans")
        reason = unmet("vit-beans", workload.requires, 1, Machine(cuda_devices=0, max_cpu_world_size=4))
        assert reason is None or "beans" in reason
    finally:
        hub_unavailable.cache_clear()
