"""The attribution shard format (docs/design.md#attribution-shards): safe .npz, exact round trip, merging."""
from __future__ import annotations

import re

import numpy as np
import pytest

from workflow_scripts.shards import (
    CorruptShardError,
    SampleAttribution,
    Shard,
    load_shard,
    merge_shards,
    save_shard,
)


def with_answer() -> SampleAttribution:
    return SampleAttribution(
        id="user_oriented_task_0",
        prompt="Écris “vite” — 🙂",
        response="Oui, café.",
        prompt_tokens=["<s>", "▁É", "cris", "▁“", "vite", "”", "▁—", "▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>"],
        prompt_offsets=np.array([[0, 0], [0, 1], [1, 5], [5, 7], [7, 11], [11, 12], [12, 14], [14, 15],
                                 [15, 16], [16, 16], [16, 16], [16, 16]]),
        response_tokens=["▁Oui", ",", "▁café", "."],
        response_offsets=np.array([[0, 3], [3, 4], [4, 9], [9, 10]]),
        matrix=np.arange(48, dtype=np.float32).reshape(12, 4) * np.float32(0.1) - np.float32(1.7),
    )


def empty_answer() -> SampleAttribution:
    return SampleAttribution(
        id="lima_author_2",
        prompt="Say nothing.",
        response="",
        prompt_tokens=["▁Say", "▁nothing", "."],
        prompt_offsets=np.array([[0, 3], [3, 11], [11, 12]]),
        response_tokens=[],
        response_offsets=np.zeros((0, 2), dtype=np.int64),
        matrix=np.zeros((3, 0), dtype=np.float32),
    )


def one(sample_id: str) -> SampleAttribution:
    return SampleAttribution(sample_id, "Hi.", "Yo", ["▁Hi", "."], np.array([[0, 2], [2, 3]]),
                             ["▁Yo"], np.array([[0, 2]]), np.array([[1.5], [-0.25]], dtype=np.float32))


def assert_same(a: SampleAttribution, b: SampleAttribution):
    assert (a.id, a.prompt, a.response) == (b.id, b.prompt, b.response)
    assert a.prompt_tokens == b.prompt_tokens and a.response_tokens == b.response_tokens
    assert np.array_equal(a.prompt_offsets, np.asarray(b.prompt_offsets).reshape(-1, 2))
    assert np.array_equal(a.response_offsets, np.asarray(b.response_offsets).reshape(-1, 2))
    assert a.matrix.dtype == np.float32 and a.matrix.shape == b.matrix.shape
    assert a.matrix.tobytes() == np.asarray(b.matrix, np.float32).tobytes()  # bit for bit


def test_a_shard_round_trips_exactly_including_an_empty_response(tmp_path):
    path = tmp_path / "shard-0.npz"
    shard = Shard([with_answer(), empty_answer()], {"model": "vicuna-7b", "source": "demo", "binned_levels": 0})
    save_shard(shard, path)
    loaded = load_shard(path)
    assert loaded.meta == {"model": "vicuna-7b", "source": "demo", "binned_levels": 0}
    assert [s.id for s in loaded.samples] == ["user_oriented_task_0", "lima_author_2"]
    assert_same(loaded.samples[0], with_answer())
    assert_same(loaded.samples[1], empty_answer())
    assert loaded.samples[1].matrix.shape == (3, 0)
    assert loaded.samples[1].response_offsets.shape == (0, 2)


def test_an_empty_shard_round_trips(tmp_path):
    save_shard(Shard([], {"model": "m"}), tmp_path / "empty.npz")
    loaded = load_shard(tmp_path / "empty.npz")
    assert loaded.samples == [] and loaded.meta == {"model": "m"}


def test_a_shard_opens_without_pickle(tmp_path):
    path = tmp_path / "shard.npz"
    save_shard(Shard([with_answer(), empty_answer()]), path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert all(a.dtype != object for a in arrays.values())
    assert arrays["ids"].tolist() == ["user_oriented_task_0", "lima_author_2"]
    assert arrays["prompt_lengths"].tolist() == [12, 3]
    assert arrays["response_lengths"].tolist() == [4, 0]
    assert arrays["matrices"].shape == (48,)


def test_saving_a_matrix_that_does_not_match_its_tokens_raises_and_writes_nothing(tmp_path):
    sample = with_answer()
    sample.matrix = sample.matrix[:, :3]
    path = tmp_path / "bad.npz"
    with pytest.raises(ValueError, match=re.escape("sample user_oriented_task_0: matrix shape (12, 3)")):
        save_shard(Shard([sample]), path)
    assert list(tmp_path.iterdir()) == []


def test_merge_concatenates_shards_in_the_order_given(tmp_path):
    save_shard(Shard([one("c"), one("a")], {"model": "m"}), tmp_path / "shard-1.npz")
    save_shard(Shard([one("b")], {"model": "m"}), tmp_path / "shard-0.npz")
    merged = merge_shards([tmp_path / "shard-1.npz", tmp_path / "shard-0.npz"], tmp_path / "merged.npz")
    assert [s.id for s in merged.samples] == ["c", "a", "b"]
    loaded = load_shard(tmp_path / "merged.npz")
    assert [s.id for s in loaded.samples] == ["c", "a", "b"]
    assert loaded.meta == {"model": "m"}
    for sample in loaded.samples:
        assert_same(sample, one(sample.id))


def test_merge_rejects_shards_made_in_different_precisions(tmp_path):
    """A merged file (and the note under the tables) speaks for one arithmetic only."""
    first, second = tmp_path / "shard-0.npz", tmp_path / "shard-1.npz"
    save_shard(Shard([one("a")], {"model": "m", "precision": "float32"}), first)
    save_shard(Shard([one("b")], {"model": "m", "precision": "bfloat16"}), second)
    with pytest.raises(ValueError, match=rf"{re.escape(str(second))} was made with .*'bfloat16'.*, .*shard-0.npz with"):
        merge_shards([first, second], tmp_path / "merged.npz")
    assert not (tmp_path / "merged.npz").exists()


@pytest.mark.parametrize(("precision", "cuda_matmul"), [("float32", "float32"),
                                                        ("bfloat16", "bfloat16 (float32 reductions)")])
def test_shards_of_one_mode_on_different_devices_merge_and_the_merge_names_both_devices(tmp_path, precision,
                                                                                        cuda_matmul):
    """`models.<id>.gpus` places jobs and reruns none, so a shard added after a change (or a GPU job that ran
    on the CPU) sits beside shards of the other device: each records how its device ran the mode's matmuls,
    and the merge refused them ("rerun the older shards"), which no param change would ever plan."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workflow_scripts.attribution_model import PRECISIONS, precision_record

    config = LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2)
    cpu = {"model": "m", "device": "cpu",
           **precision_record(LlamaForCausalLM(config).to(PRECISIONS[precision]).eval(), precision)}
    cuda = {**cpu, "device": "cuda:0", "matmul": cuda_matmul}  # as precision_record writes it on a GPU
    assert cpu["matmul"] != cuda_matmul and cpu["weights_dtype"] == str(PRECISIONS[precision]).removeprefix("torch.")
    first, second = tmp_path / "shard-0.npz", tmp_path / "shard-1.npz"
    save_shard(Shard([one("a")], cuda), first)
    save_shard(Shard([one("b")], cpu), second)
    merged = merge_shards([first, second], tmp_path / "merged.npz")
    assert merged.meta == {**cpu, "device": "cpu, cuda:0", "matmul": " and ".join(sorted([cpu["matmul"], cuda_matmul]))}
    assert torch.get_default_dtype() == torch.float32


def test_shards_attributed_by_other_autodiff_routes_merge_and_the_merge_counts_their_samples(tmp_path):
    """Forward and reverse mode compute the same matrices (to float precision): a shard of each merges,
    and the merged header says how many samples took each route; the arithmetic must still agree."""
    paths = [tmp_path / f"shard-{i}.npz" for i in range(3)]
    metas = [{"autodiff": "auto", "autodiff_samples": {"forward": 14, "reverse": 2}, "forward_out_of_memory": 2},
             {"autodiff": "reverse", "autodiff_samples": {"reverse": 16}},
             {"autodiff": "auto", "autodiff_samples": {"reverse": 3}, "forward_failed": "NotImplementedError: x"}]
    for path, sample, meta in zip(paths, "abc", metas):
        save_shard(Shard([one(sample)], {"model": "m", "precision": "float32", **meta}), path)
    merged = merge_shards(paths, tmp_path / "merged.npz")
    assert load_shard(tmp_path / "merged.npz").meta == merged.meta == {
        "model": "m", "precision": "float32", "autodiff": "auto, reverse",
        "autodiff_samples": {"forward": 14, "reverse": 21}, "forward_failed": "NotImplementedError: x",
        "forward_out_of_memory": 2}
    save_shard(Shard([one("c")], {"model": "m", "precision": "bfloat16", **metas[2]}), paths[2])
    with pytest.raises(ValueError, match="rerun the older shards"):
        merge_shards(paths, tmp_path / "merged.npz")


def test_shards_generated_in_batches_of_other_sizes_merge_and_the_merge_names_the_sizes(tmp_path):
    """`attribution.generate_batch` changes speed only and reruns no shard, so a shard generated after a change
    sits beside older ones: the merge must take both (refusing them asked for a rerun no plan would make),
    and say every batch size; a shard of the reference responses has none."""
    paths = [tmp_path / f"shard-{i}.npz" for i in range(3)]
    for path, sample, batch in zip(paths, "abc", (16, 4, 16)):
        save_shard(Shard([one(sample)], {"model": "m", "source": "computed:generate", "generate_batch": batch}), path)
    merged = merge_shards(paths, tmp_path / "merged.npz")
    assert load_shard(tmp_path / "merged.npz").meta == merged.meta == {
        "model": "m", "source": "computed:generate", "generate_batch": "4, 16"}
    save_shard(Shard([one("d")], {"model": "m", "source": "computed:generate", "generate_batch": 8}), paths[0])
    assert merge_shards(paths[:1], tmp_path / "merged.npz").meta["generate_batch"] == "8"


def test_merge_rejects_a_sample_in_two_shards_naming_both_files(tmp_path):
    first, second = tmp_path / "shard-0.npz", tmp_path / "shard-1.npz"
    save_shard(Shard([one("a"), one("b")]), first)
    save_shard(Shard([one("c"), one("b")]), second)
    with pytest.raises(ValueError) as error:
        merge_shards([first, second], tmp_path / "merged.npz")
    assert str(error.value) == f"sample b is in both {first} and {second}"
    assert not (tmp_path / "merged.npz").exists()


def test_loading_an_npz_that_is_not_a_shard_raises_naming_the_file(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(other))}: cannot read attribution shard"):
        load_shard(other)


def test_loading_a_shard_of_another_format_raises_naming_the_file(tmp_path):
    other = tmp_path / "future.npz"
    np.savez(other, header=np.array('{"format": "shiftlens-attribution/2"}'))
    with pytest.raises(ValueError, match=rf"^{re.escape(str(other))}: .*not a shiftlens-attribution/1 file"):
        load_shard(other)


def test_loading_a_file_that_is_not_npz_raises_naming_the_file(tmp_path):
    text = tmp_path / "notes.npz"
    text.write_text("not an archive")
    with pytest.raises(ValueError, match=rf"^{re.escape(str(text))}: cannot read attribution shard"):
        load_shard(text)


@pytest.mark.parametrize("keep", [0.3, 0.9])
def test_a_truncated_shard_fails_the_merge_naming_it_and_is_deleted_for_the_next_run(tmp_path, keep):
    save_shard(Shard([one("a"), one("b")], {}), tmp_path / "shard-0.npz")
    save_shard(Shard([one("c")], {}), tmp_path / "shard-1.npz")
    damaged = tmp_path / "shard-1.npz"
    damaged.write_bytes(damaged.read_bytes()[: int(damaged.stat().st_size * keep)])
    with pytest.raises(CorruptShardError, match=re.escape(f"{damaged}: cannot read attribution shard")) as error:
        merge_shards([tmp_path / "shard-0.npz", damaged], tmp_path / "merged.npz")
    assert "deleted it: run the same snakemake command with `--forcerun merge_attributions` added" in str(error.value)
    assert not damaged.exists() and (tmp_path / "shard-0.npz").exists() and not (tmp_path / "merged.npz").exists()


def test_a_damaged_shard_member_is_reported_not_crashed_on(tmp_path):
    path = tmp_path / "shard.npz"
    save_shard(Shard([one("a")], {}), path)
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = b"\xff" * 16  # flipped bytes inside a compressed member
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptShardError, match=re.escape(str(path))):
        load_shard(path)
    assert path.exists()  # only a consumer that can have it recomputed deletes it


@pytest.mark.parametrize("damage, reason", [
    (lambda a: a.pop("prompt_lengths"), "no array 'prompt_lengths'"),
    (lambda a: a.update(matrices=a["matrices"][:-1]), "the matrices hold 47 values, the lengths say 48"),
    (lambda a: a.update(matrices=np.append(a["matrices"], 0.5)), "the matrices hold 49 values, the lengths say 48"),
    (lambda a: a.update(prompt_tokens=a["prompt_tokens"][:-1]), "11 prompt tokens, the lengths say 12"),
    (lambda a: a.update(ids=a["ids"][:0]), "0 ids for 1 samples"),
    # a pickled array runs code when read: a shard from anywhere must never be unpickled
    (lambda a: a.update(ids=a["ids"].astype(object)), "Object arrays cannot be loaded when allow_pickle=False"),
])
def test_a_shard_whose_arrays_do_not_fit_together_is_corrupt_named_and_deleted(tmp_path, damage, reason):
    """A missing array raised a bare KeyError and the file stayed; a short array was sliced quietly."""
    path = tmp_path / "shard.npz"
    save_shard(Shard([with_answer()], {}), path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    damage(arrays)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    with pytest.raises(CorruptShardError, match=rf"shard.npz: cannot read attribution shard \(ValueError: {reason}"):
        load_shard(path, discard_corrupt=True)
    assert not path.exists()
